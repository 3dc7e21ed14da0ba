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
timeout, so reading times spread over a poll cycle as on a wire. Buses are served
one after another on the one clock (docs/simulation.md). The simulated meters keep
an event log (the world's tamper entries, ``Field.tamper_due``): reading it costs
no line time; it is read when the schedule asks (``ReadEvents``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from agent.clock import Clock
from agent.config import BusConfig, MeterConfig
from agent.drivers.actions import Action, NotAttempted, Poll, Read, ReadEvents, Switch
from agent.drivers.driver import MeterEvent
from agent.drivers.events import BusEvent
from agent.drivers.modbus.client import ModbusClient
from agent.drivers.modbus.device import ModbusMeter
from agent.drivers.reading import Reading
from agent.drivers.schedule import BusSchedule, MeterStats
from agent.errors import ChecksumError, DriverError, RelayError, TimeoutError_
from agent.relay.base import Relay, switch_and_confirm
from agent.relay.modbus_coil import ModbusCoilRelay
from sim.neighbourhood.simline import CoilModule, Field, MemLine, SdmDevice, Timing, instant
from sim.neighbourhood.world import register_wh

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


class SimBus:
    def __init__(self, bus: BusConfig, meters: list[MeterConfig],
                 post: Callable[[BusEvent], None], *, clock: Clock, field: Field,
                 mode: str, on_switch: Callable[[str, bool], None]) -> None:
        self.bus = bus
        self.post = post
        self.clock = clock
        self.field = field
        self.mode = mode
        self.on_switch = on_switch  # the simulation records every switch the agent asks for
        self.timing = Timing(bus)
        self._frames = self._frame_plan(_DIRECT_FRAMES)
        self._frames_serial = self._frame_plan((_SERIAL_FRAME, *_DIRECT_FRAMES))
        self.port_error = ""
        self.schedule = BusSchedule(bus, discover=False)
        self._serials: dict[str, _SerialCache] = {}
        self.line: MemLine | None = None
        self.client: ModbusClient | None = None
        self._devices: dict[str, ModbusMeter] = {}
        self.set_meters(meters)

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
        devices: dict[int, Any] = {}
        modules: dict[int, dict[int, str]] = {}
        for m in self.meters.values():
            devices[m.address] = SdmDevice(self.field, m.id, m.address)
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
                    assert self.client is not None
                    dev = ModbusMeter(self.client, cfg.address, MODEL)
                    self._devices[meter_id] = dev
                reading = dev.read(meter_id, int(self.clock.time_s()),
                                   timeout_s=self.bus.timeout_s)
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
        ``switch_and_confirm``; the simulated neighbourhood has coil modules only."""
        spec = action.meter.relay_spec if action.meter is not None else None
        if spec is None or spec.kind != "modbus-coil" or spec.unit is None or spec.coil is None:
            return "", f"relay kind {action.kind!r} is not switchable on this bus"
        relay: Relay
        if self.mode == "codec":
            assert self.client is not None
            relay = ModbusCoilRelay(self.client, spec.unit, spec.coil,
                                    timeout_s=self.bus.timeout_s)
        else:
            relay = _DirectCoil(self, action.meter_id)
        try:
            return switch_and_confirm(relay, action.connected), ""
        except RelayError as exc:
            return "", str(exc)

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
