"""A ``BusScheduler`` stand-in with no thread: the simulation calls ``service()``.

The runtime builds one per ``[[bus]]`` through ``bus_factory`` and uses only the
scheduler's public surface (``switch_relay``, ``read_now``, ``set_meters``,
``start``/``stop``/``join``, ``stats``, ``bus``, ``port_error``); results go to its
inbox as typed events (``agent.drivers.events``), as from the real scheduler. The
policy is the real scheduler's own: a ``BusSchedule`` (``agent.drivers.schedule``)
decides what runs and what each outcome means (job order, retries, quarantine and
its back-off, the event-log cadence); this module only executes its actions on the
simulated line, as ``bus.BusScheduler`` executes them on a port. What differs is
how time passes: ``service()`` runs every queued job, then every poll due when it
was called, in the schedule's order, and the simulation moves the clock to the next
due time in between (``next_due_mono``). The simulated buses do not discover or
scan (the world has no unconfigured meters).

Two ways to talk to the meters (``mode``):
  codec   the agent's real ``ModbusMeter``/``ModbusCoilRelay``/``ModbusClient`` over an
          in-memory ``Transport`` (``simline.MemLine``) whose devices answer at once:
          real frames, real CRCs (a corrupt frame is a flipped byte the client's CRC
          check must catch), the driver's own serial-number refresh;
  direct  the same readings built straight from the meter, frame by frame as the codec
          path would (values quantised as the float32 registers are, the same clock
          moves, the same draws from the random stream): the same messages, byte for
          byte, at less cost (bench/results/simulation.md measures both).
Every frame moves the clock by its line time at the bus's baud rate (request and
answer bytes, turnaround, silent interval), a silent meter by the driver's
timeout, so reading times spread over a poll cycle as on a wire.

Protocols (``--protocols mixed``: a bus per protocol, docs/simulation.md). Modbus is
the above, in both modes. An IEC 62056-21 bus in codec mode is the shipped
``IecMeter`` (``make_driver``) over ``simline.IecMemLine`` (real sign-on, option
select, baud switch, data message and BCC). A DLMS bus is direct in both modes, and
so is an IEC bus in direct mode: its readings come from the same household values
(``simline.instant`` and the register), carrying the quantities its driver reads
(``IEC_QUANTITIES``, ``DLMS_QUANTITIES``) in that protocol's resolution (the
register in exact Wh, not float32 kWh), with the line time of its session: an IEC
mode C readout (sign-on and identification at 300 baud, the data message at the
bus's speed, the serial in every readout); a DLMS poll on a kept association (SNRM
and AARQ as the meter reader 0x20 when there is none, a GET-With-List of the
registers, their scaler_units the first time, the serial every
``SERIAL_REFRESH_READS`` polls and after a timeout, as ``DlmsMeter`` does). IEC
meters have no breaker: their relays are coils of the Modbus bus's modules
(``relayed`` there). A DLMS meter's relay is its disconnect control, switched
through the shipped ``meter_relay`` and ``switch_and_confirm`` on ``_DlmsDirect``, which costs the
change to the utility-settings client 0x30 (release, SNRM, AARQ with HLS-GMAC, the
HLS reply, then a ciphered ACTION and a GET of control_state) and back to the reader
at the next poll; a silent meter cannot be switched (its breaker is inside it).

Buses are served one after another on the one clock (docs/simulation.md). The
simulated meters keep an event log (the world's tamper entries,
``Field.tamper_due``): reading it costs no line time; it is read when the schedule
asks (``ReadEvents``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from agent.clock import Clock
from agent.config import BusConfig, MeterConfig
from agent.drivers.actions import Action, NotAttempted, Poll, Read, ReadEvents, Switch
from agent.drivers.dlms.cosem import REGISTERS as DLMS_REGISTERS
from agent.drivers.driver import MeterDriver, MeterEvent
from agent.drivers.events import BusEvent
from agent.drivers.iec62056.codec import (
    encode_ack,
    encode_data_message,
    encode_identification,
    encode_request,
)
from agent.drivers.iec62056.obis import QUANTITIES as IEC_OBIS
from agent.drivers.modbus.client import ModbusClient
from agent.drivers.modbus.device import ModbusMeter
from agent.drivers.protocol import protocol_spec
from agent.drivers.reading import Reading
from agent.drivers.schedule import BusSchedule, MeterStats
from agent.drivers.transport import character_time_s, frame_time_s
from agent.errors import ChecksumError, DriverError, RelayError, TimeoutError_
from agent.relay.base import Relay, switch_outcome
from agent.relay.meter import meter_relay
from agent.relay.modbus_coil import ModbusCoilRelay
from sim.neighbourhood.simline import (
    IEC_GAP_S,
    IEC_REACTION_S,
    CoilModule,
    Field,
    IecMemLine,
    MemLine,
    SdmDevice,
    Timing,
    iec_readout,
    instant,
)
from sim.neighbourhood.simline import IEC_IDENT as IEC_IDENTIFICATION
from sim.neighbourhood.world import Household, register_wh

MODEL: Final = "eastron-sdm120"
SERIAL_REFRESH_READS: Final = 96  # the driver's (direct mode mirrors it)
# SDM120 plan: input registers 0x00..0x1F and 0x46..0x4B, serial 0xFC00 (2 words).
_DIRECT_FRAMES: Final = ((8, 5 + 64), (8, 5 + 12))
_SERIAL_FRAME: Final = (8, 5 + 4)
_SERIAL, _INSTANT, _ENERGY = 0, 1, 2  # what a frame reads
_FRAME_KIND: Final = {_SERIAL_FRAME: _SERIAL, _DIRECT_FRAMES[0]: _INSTANT,
                      _DIRECT_FRAMES[1]: _ENERGY}
# Modbus function 5 (write coil, echoed) and function 1 (read it back): request and
# answer bytes of each.
_COIL_WRITE: Final = (8, 8)
_COIL_READ: Final = (8, 6)

# -- IEC 62056-21 mode C, as agent.drivers.iec62056.device reads it -------------------
IEC_QUANTITIES: Final = frozenset(q for q, _unit, _factors in IEC_OBIS.values())
IEC_INITIAL_BAUD: Final = 300


IEC_IDENT: Final = len(encode_identification(IEC_IDENTIFICATION))
IEC_ACK: Final = len(encode_ack("5"))

# -- DLMS/COSEM over HDLC (IS 15959), as agent.drivers.dlms.device reads it ------------
DLMS_QUANTITIES: Final = frozenset(r.quantity for r in DLMS_REGISTERS)
# (request, answer) bytes of each exchange, about what the driver's HDLC frames carry
# for these APDUs (7 registers; ciphered APDUs are 5 + 12 bytes longer).
_DLMS_SNRM: Final = (9, 32)  # SNRM / UA with the negotiated parameters
_DLMS_AARQ_LLS: Final = (72, 55)  # AARQ with the LLS password / AARE
_DLMS_AARQ_HLS: Final = (90, 72)  # AARQ for HLS-GMAC with the challenge / AARE
_DLMS_HLS_REPLY: Final = (50, 45)  # ACTION reply_to_HLS_authentication (pass 3 and 4)
_DLMS_RELEASE: Final = ((25, 25), (9, 9))  # RLRQ / RLRE, then DISC / UA
_DLMS_GET_SERIAL: Final = (27, 30)
_DLMS_GET_SCALERS: Final = (120, 100)  # GET-With-List of 7 scaler_units and 7 values
_DLMS_GET_VALUES: Final = (78, 60)  # GET-With-List of 7 values
_DLMS_ACTION: Final = (44, 36)  # ciphered ACTION on disconnect control
_DLMS_GET_STATE: Final = (43, 35)  # ciphered GET of control_state
_READER, _SETTINGS = "reader", "settings"  # the association a DLMS meter has open


@dataclass
class _SerialCache:
    """The serial number the driver keeps in codec mode, as direct mode keeps it."""

    reads_since_serial: int = SERIAL_REFRESH_READS
    serial: int | None = None


class _DirectCoil:
    """A coil module's relay for direct mode, a ``Relay`` as ``ModbusCoilRelay`` is:
    each frame moves the clock by its line time; the world's coil follows when the
    read-back is answered (as this bus always applied it)."""

    def __init__(self, bus: SimBus, meter_id: str) -> None:
        self.name = f"sim-coil:{meter_id}"
        self.bus, self.meter_id = bus, meter_id
        self._asked: bool | None = None

    def _frame(self, request_bytes: int, answer_bytes: int) -> None:
        field, timing = self.bus.field, self.bus.timing
        field.advance_us(timing.request_us(request_bytes))
        field.advance_us(timing.answer_us(answer_bytes))

    def switch(self, connect: bool) -> None:
        self._frame(*_COIL_WRITE)
        self._asked = connect

    def read(self) -> str:
        self._frame(*_COIL_READ)
        field = self.bus.field
        if self._asked is not None:
            field.coil_set(self.meter_id, self._asked)
            self._asked = None
        hh = field.household(self.meter_id)
        return "closed" if hh is not None and hh.connected else "open"

    def close(self) -> None:
        pass


@dataclass
class _DlmsLink:
    """What ``DlmsMeter`` keeps of a meter between calls, as direct mode keeps it."""

    association: str = ""  # "", _READER or _SETTINGS
    serial: int | None = None
    reads_since_serial: int = 0
    scalers: bool = False  # scaler_units learnt (again after the serial is read)


class _DlmsDirect:
    """A DLMS meter for direct mode, as ``DlmsMeter`` is a ``MeterDriver`` and a
    ``RelayDriver``: readings through the reader's association (``SimBus._dlms_read``),
    the disconnect control through the utility-settings one (opened if the reader's
    is), each exchange moving the clock; the supply follows the ACTION."""

    def __init__(self, bus: SimBus, meter_id: str) -> None:
        self.bus, self.meter_id = bus, meter_id

    def read(self, meter_id: str, now_s: int, *, timeout_s: float | None = None) -> Reading:
        return self.bus._dlms_read(meter_id, self.bus.dlms_link(meter_id))

    def close(self, *, timeout_s: float | None = None) -> None:
        """A simulated meter keeps no association to release."""

    def read_serial(self, *, timeout_s: float | None = None) -> str:
        return str(self.bus.dlms_link(self.meter_id).serial or "")

    def _settings(self) -> None:
        bus = self.bus
        link = bus.dlms_link(self.meter_id)
        if link.association == _SETTINGS:
            return
        if link.association:
            for exchange in _DLMS_RELEASE:
                bus.exchange(self.meter_id, exchange)
            link.association = ""
        bus.exchange(self.meter_id, _DLMS_SNRM)
        bus.exchange(self.meter_id, _DLMS_AARQ_HLS)
        bus.exchange(self.meter_id, _DLMS_HLS_REPLY)
        link.association = _SETTINGS

    def relay_set(self, connected: bool, *, timeout_s: float | None = None) -> None:
        self._settings()
        self.bus.exchange(self.meter_id, _DLMS_ACTION)
        self.bus.field.coil_set(self.meter_id, connected)  # remote_(re|dis)connect

    def relay_state(self, *, timeout_s: float | None = None) -> str:
        self._settings()
        self.bus.exchange(self.meter_id, _DLMS_GET_STATE)
        hh = self.bus.field.household(self.meter_id)
        return "closed" if hh is not None and hh.connected else "open"


class SimBus:
    def __init__(self, bus: BusConfig, meters: list[MeterConfig],
                 post: Callable[[BusEvent], None], *, clock: Clock, field: Field,
                 mode: str, on_switch: Callable[[str, bool], None],
                 relayed: Iterable[MeterConfig] = ()) -> None:
        self.bus = bus
        self.post = post
        self.clock = clock
        self.field = field
        # A DLMS bus is direct in both modes (its codec is not run here: module doc).
        self.mode = "direct" if bus.protocol == "dlms" else mode
        self.on_switch = on_switch  # the simulation records every switch the agent asks for
        self.timing = Timing(bus)
        self._dlms: dict[str, _DlmsLink] = {}
        self._iec = self._iec_plan() if bus.protocol == "iec62056-21" else None
        self._frames = self._frame_plan(_DIRECT_FRAMES)
        self._frames_serial = self._frame_plan((_SERIAL_FRAME, *_DIRECT_FRAMES))
        self.port_error = ""
        self.schedule = BusSchedule(bus, discover=False)
        self._serials: dict[str, _SerialCache] = {}
        self.line: MemLine | IecMemLine | None = None
        self.client: ModbusClient | None = None
        self._devices: dict[str, MeterDriver] = {}
        self.set_meters(meters, relayed)

    # -- the BusScheduler surface ---------------------------------------------------
    @property
    def meters(self) -> dict[str, MeterConfig]:
        return self.schedule.meters

    @property
    def relayed(self) -> dict[str, MeterConfig]:
        return self.schedule.relayed

    @property
    def stats(self) -> dict[str, MeterStats]:
        return self.schedule.stats

    def set_meters(self, meters: list[MeterConfig], relayed: Iterable[MeterConfig] = ()) -> None:
        self.schedule.set_meters(meters, relayed)
        if self.mode == "codec":
            self._build_line()

    def _build_line(self) -> None:
        self._devices = {}
        if self.bus.protocol == "iec62056-21":
            self.line = IecMemLine(self.field, self.bus.baudrate,
                                   {str(m.address): m.id for m in self.meters.values()})
            return
        devices: dict[int, Any] = {}
        modules: dict[int, dict[int, str]] = {}
        for m in self.meters.values():
            devices[m.address] = SdmDevice(self.field, m.id, m.address)
        for m in [*self.meters.values(), *self.relayed.values()]:
            spec = m.relay_spec
            if spec.kind == "modbus-coil" and spec.unit is not None and spec.coil is not None:
                modules.setdefault(spec.unit, {})[spec.coil] = m.id
        for unit, coils in modules.items():
            devices[unit] = CoilModule(self.field, unit, coils)
        self.line = MemLine(self.field, self.timing, devices)
        self.line.unit_meter = {m.address: m.id for m in self.meters.values()}
        self.client = ModbusClient(self.line, clock=self.clock)
        self._devices = {}

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def join(self, timeout: float | None = None) -> None:
        pass

    def switch_relay(self, meter_id: str, connected: bool) -> bool:
        if self.schedule.switching(meter_id) == connected:
            return True  # that very switch is on its way: not asked for again
        self.on_switch(meter_id, connected)
        return self.schedule.switch_relay(meter_id, connected)

    def read_now(self, meter_id: str, ref: str) -> bool:
        return self.schedule.read_now(meter_id, ref)

    def mark_offline(self, meter_ids: Iterable[str]) -> None:
        self.schedule.mark_offline(meter_ids)

    # -- driven by the simulation -----------------------------------------------------
    @property
    def has_jobs(self) -> bool:
        return self.schedule.has_jobs

    def next_due_mono(self) -> float | None:
        return self.schedule.next_due_s(self.clock.monotonic_s())

    def service(self) -> int:
        """Run every job, then every poll that is due; returns actions begun."""
        done = 0
        while (job := self.schedule.next_job()) is not None:
            self._run(job)
            done += 1
        # The meters due now, in the schedule's order. A poll moves only its own meter's
        # due time, so which are due can be decided before the first poll.
        for meter_id in self.schedule.due_meters(self.clock.monotonic_s()):
            self._run(self.schedule.poll(meter_id))
            done += 1
        return done

    def _run(self, first: Action) -> None:
        """``first`` and what the schedule says must follow it (retries, the event log)."""
        action: Action | None = first
        while action is not None:
            result = self._execute(action)
            for event in self.schedule.outcome(action, result, self.clock.monotonic_s()):
                self.post(event)
            action = self.schedule.resume()

    # -- execute: the simulated line ------------------------------------------------------
    def _execute(self, action: Action) -> Any:
        if isinstance(action, Poll):
            return self._read(action.meter)
        if isinstance(action, Read):
            if action.meter is None:
                return NotAttempted(DriverError(
                    f"meter {action.meter_id} is not on bus {self.bus.name}"))
            return self._read(action.meter)
        if isinstance(action, ReadEvents):
            return [MeterEvent(d["kind"], d["code"], d["t"])
                    for d in self.field.tamper_due(action.meter.id)]
        if isinstance(action, Switch):
            try:
                return self._switch(action)
            except DriverError as exc:
                return exc
        raise AssertionError(f"the simulated bus does not {action!r}")

    def _read(self, cfg: MeterConfig) -> Reading | DriverError:
        """One attempt: a reading, or the DriverError the real driver would raise."""
        meter_id = cfg.id
        try:
            if self.mode == "codec":
                dev = self._devices.get(meter_id)
                if dev is None:
                    if self.client is not None:
                        dev = ModbusMeter(self.client, cfg.address, MODEL)
                    else:  # IEC 62056-21: the shipped factory's IecMeter on the line
                        assert self.line is not None
                        dev = protocol_spec(self.bus.protocol).make_driver(self.line, cfg,
                                                                 clock=self.clock)
                    self._devices[meter_id] = dev
                reading = dev.read(meter_id, int(self.clock.time_s()),
                                   timeout_s=self.bus.timeout_s)
            elif self._iec is not None:
                reading = self._iec_read(meter_id, cfg.address)
            elif self.bus.protocol == "dlms":
                reading = self._dlms_read(meter_id, self.dlms_link(meter_id))
            else:
                reading = self._direct_read(
                    meter_id, self._serials.setdefault(meter_id, _SerialCache()))
        except DriverError as exc:
            return exc
        hh = self.field.household(meter_id)
        self.field.served_reading(reading, hh.serial if hh is not None else 0)
        return reading

    def _switch(self, action: Switch) -> tuple[str, str]:
        """As ``bus.BusScheduler._switch``: the relay's backend through
        ``switch_and_confirm``: a DLMS meter's own breaker, or a coil module."""
        return switch_outcome(lambda: self._relay(action), action.connected)

    def _relay(self, action: Switch) -> Relay:
        """As ``bus.BusScheduler._relay``, with the simulated line's backends."""
        if action.meter is not None and action.kind == "meter" and self.bus.protocol == "dlms":
            return meter_relay(_DlmsDirect(self, action.meter_id), action.meter_id,
                               timeout_s=self.bus.timeout_s)
        spec = action.meter.relay_spec if action.meter is not None else None
        if spec is None or spec.kind != "modbus-coil" or spec.unit is None or spec.coil is None:
            raise RelayError(f"relay kind {action.kind!r} is not switchable on this bus")
        if self.mode == "codec":
            assert self.client is not None
            return ModbusCoilRelay(self.client, spec.unit, spec.coil,
                                   timeout_s=self.bus.timeout_s)
        return _DirectCoil(self, action.meter_id)

    def _direct_read(self, meter_id: str, st: _SerialCache) -> Reading:
        """What the codec path does, frame by frame, with the same clock moves; each
        block is read from the meter when its request has arrived, as a device would."""
        field = self.field
        silent, corrupt_pct = field.fault(meter_id)
        t = int(self.clock.time_s())  # as the real scheduler stamps it: before the frames
        frames = self._frames_serial if st.serial is None \
            or st.reads_since_serial >= SERIAL_REFRESH_READS else self._frames
        advance = field.advance_us
        values: dict[str, int] = {"export_wh": 0}
        for what, request_us, answer_us, timeout_us, answer_bytes in frames:
            advance(request_us)
            hh = field.household(meter_id)
            if silent or hh is None:
                advance(timeout_us)
                st.serial = None  # off the bus: it may come back as another meter
                raise TimeoutError_(f"{meter_id}: no answer")
            if what == _INSTANT:
                values.update(instant(hh))
            elif what == _ENERGY:
                values["import_wh"] = register_wh(hh.wh)
            serial = hh.serial
            advance(answer_us)
            if corrupt_pct and field.rng.randrange(100) < corrupt_pct:
                field.rng.randrange(answer_bytes - 5)  # the byte MemLine would flip
                advance(self.timing.gap_us)  # the client waits for silence,
                advance(self.timing.gap_us)  # then drains the line
                raise ChecksumError(f"{meter_id}: CRC mismatch")
            if what == _SERIAL:
                st.serial, st.reads_since_serial = serial, 0
        st.reads_since_serial += 1
        return Reading(meter_id, t, values, serial=None if st.serial is None else str(st.serial))

    def _frame_plan(self, frames: tuple[tuple[int, int], ...]
                    ) -> tuple[tuple[int, int, int, int, int], ...]:
        """(what, request us, answer us, timeout us, answer bytes) of each frame: the line
        times are constants of the bus, worked out once."""
        timing = self.timing
        return tuple((_FRAME_KIND[(request_bytes, answer_bytes)],
                      timing.request_us(request_bytes), timing.answer_us(answer_bytes),
                      timing.timeout_us(answer_bytes), answer_bytes)
                     for request_bytes, answer_bytes in frames)

    # -- IEC 62056-21 and DLMS, direct ----------------------------------------------------
    def _iec_plan(self) -> tuple[int, int]:
        """(identification us, option select us): at 300 baud."""
        ident_s = frame_time_s(IEC_IDENT, IEC_INITIAL_BAUD)
        return (math.ceil((IEC_REACTION_S + ident_s) * 1e6),
                math.ceil(frame_time_s(IEC_ACK, IEC_INITIAL_BAUD) * 1e6))

    def _iec_read(self, meter_id: str, address: int) -> Reading:
        """A mode C readout: the serial and every quantity in each one. A silent meter
        costs its sign-on and the driver's wait after it (the bus timeout)."""
        assert self._iec is not None
        ident_us, ack_us = self._iec
        sign_on_s = frame_time_s(len(encode_request(str(address))), IEC_INITIAL_BAUD)
        sign_on_us = math.ceil(sign_on_s * 1e6)
        silent_us = math.ceil((self.bus.timeout_s + sign_on_s) * 1e6) + 1
        field = self.field
        silent, corrupt_pct = field.fault(meter_id)
        t = int(self.clock.time_s())
        field.advance_us(sign_on_us)
        hh = field.household(meter_id)
        if silent or hh is None:
            field.advance_us(silent_us)
            raise TimeoutError_(f"device '{address}': identification: no answer")  # its text
        field.advance_us(ident_us)
        field.advance_us(ack_us)
        hh = field.household(meter_id)  # the data message is formed now
        assert hh is not None
        values = self._values(hh, IEC_QUANTITIES)
        values["i_ma"] = round(values["i_ma"], -1)  # a readout of A with 2 decimals
        serial = hh.serial
        data_bytes = len(encode_data_message(iec_readout(hh)))  # its fields' widths vary
        field.advance_us(math.ceil((IEC_REACTION_S + frame_time_s(data_bytes, self.bus.baudrate))
                                   * 1e6))
        if corrupt_pct and field.rng.randrange(100) < corrupt_pct:
            # the driver waits for a quiet line after a bad BCC, then gives up
            gap_s = IEC_GAP_S + 4 * character_time_s(self.bus.baudrate)
            field.advance_us(math.ceil(gap_s * 1e6) + 1)
            raise ChecksumError("data message: BCC mismatch (1 candidates)")  # the driver's
        return Reading(meter_id, t, values, serial=str(serial))

    def dlms_link(self, meter_id: str) -> _DlmsLink:
        link = self._dlms.get(meter_id)
        if link is None:
            link = self._dlms[meter_id] = _DlmsLink()
        return link

    def exchange(self, meter_id: str, sizes: tuple[int, int]) -> None:
        """One request and its answer on a DLMS bus; a silent meter times out (and its
        association is gone), a garbled answer fails its FCS."""
        field, timing = self.field, self.timing
        silent, corrupt_pct = field.fault(meter_id)
        request_bytes, answer_bytes = sizes
        field.advance_us(timing.request_us(request_bytes))
        if silent or field.household(meter_id) is None:
            field.advance_us(timing.timeout_us(answer_bytes))
            self._dlms[meter_id] = _DlmsLink()  # the driver forgets the meter
            raise TimeoutError_(f"{meter_id}: no answer")
        field.advance_us(timing.answer_us(answer_bytes))
        if corrupt_pct and field.rng.randrange(100) < corrupt_pct:
            field.advance_us(timing.gap_us)
            raise ChecksumError(f"{meter_id}: FCS mismatch")

    def _dlms_read(self, meter_id: str, link: _DlmsLink) -> Reading:
        """A poll on the reader's association: opened if there is none (or the settings
        one is open: released first), the serial when due, then the registers."""
        t = int(self.clock.time_s())
        if link.association == _SETTINGS:
            for exchange in _DLMS_RELEASE:
                self.exchange(meter_id, exchange)
            link.association = ""
        if not link.association:
            self.exchange(meter_id, _DLMS_SNRM)
            self.exchange(meter_id, _DLMS_AARQ_LLS)
            link.association = _READER
        if link.serial is None or link.reads_since_serial >= SERIAL_REFRESH_READS:
            self.exchange(meter_id, _DLMS_GET_SERIAL)
            hh = self.field.household(meter_id)
            assert hh is not None
            link.serial, link.reads_since_serial, link.scalers = hh.serial, 0, False
        self.exchange(meter_id, _DLMS_GET_VALUES if link.scalers else _DLMS_GET_SCALERS)
        link.scalers = True
        hh = self.field.household(meter_id)
        assert hh is not None
        link.reads_since_serial += 1
        return Reading(meter_id, t, self._values(hh, DLMS_QUANTITIES), serial=str(link.serial))

    @staticmethod
    def _values(hh: Household, quantities: frozenset[str]) -> dict[str, int]:
        """The household's values (as the Modbus direct path forms them), the register in
        exact Wh, only the quantities the protocol's driver reads."""
        values = {"export_wh": 0, **instant(hh), "import_wh": hh.wh}
        return {q: v for q, v in values.items() if q in quantities}
