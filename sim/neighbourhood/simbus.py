"""A ``BusScheduler`` stand-in with no thread: the simulation calls ``service()``.

The runtime builds one per ``[[bus]]`` through ``bus_factory`` and uses only the
scheduler's public surface (``switch_relay``, ``read_now``, ``set_meters``,
``start``/``stop``/``join``, ``stats``, ``bus``, ``port_error``); results go to its
inbox as typed events (``agent.drivers.events``), as from the real scheduler. The
policy mirrors ``agent.drivers.bus``: relay jobs first, then command reads, then polls on a fixed
grid; ``RETRIES`` extra attempts; ``OFFLINE_AFTER`` failures mark a meter offline,
after which it is tried once per backoff period (doubling, capped).

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
one after another on the one clock (docs/simulation.md).
"""

from __future__ import annotations

import heapq
import importlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from agent.clock import Clock
from agent.config import BusConfig, MeterConfig
from agent.drivers import bus as real_bus
from agent.drivers.bus import BusJob, MeterStats
from agent.drivers.events import (
    BusEvent,
    MeterOffline,
    MeterOnline,
    ReadDone,
    ReadingTaken,
    RelaySwitched,
    TamperSeen,
)
from agent.drivers.modbus.client import ModbusClient
from agent.drivers.modbus.device import ModbusCoilRelay, ModbusMeter
from agent.drivers.reading import Reading
from agent.errors import ChecksumError, DriverError, TimeoutError_
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
# The scheduler's bounds, taken from agent.drivers.bus (and driver.py) when they are
# there, so the stand-in follows the real scheduler; the defaults are its values.
MAX_JOBS: Final[int] = getattr(real_bus, "MAX_JOBS", 256)
RETRIES: Final[int] = getattr(real_bus, "RETRIES", 1)
OFFLINE_AFTER: Final[int] = getattr(real_bus, "OFFLINE_AFTER", 3)
QUARANTINE_MIN_S: Final[float] = getattr(real_bus, "QUARANTINE_MIN_S", 5.0)
QUARANTINE_MAX_S: Final[float] = getattr(real_bus, "QUARANTINE_MAX_S", 300.0)
RELAY_TRIES: Final[int] = getattr(real_bus, "RELAY_TRIES", getattr(
    importlib.import_module("agent.drivers.driver"), "RELAY_TRIES", 3))


@dataclass
class SimMeterStats(MeterStats):
    """The real scheduler's record plus the serial cache that the driver keeps in codec mode."""

    reads_since_serial: int = SERIAL_REFRESH_READS
    serial: int | None = None


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
        self.meters: dict[str, MeterConfig] = {}
        self.stats: dict[str, SimMeterStats] = {}
        self._due: dict[str, float] = {}
        self._jobs: list[BusJob] = []
        self._order = itertools.count()
        self.line: MemLine | None = None
        self.client: ModbusClient | None = None
        self._devices: dict[str, ModbusMeter] = {}
        self.set_meters(meters)

    # -- the BusScheduler surface ---------------------------------------------------
    def set_meters(self, meters: list[MeterConfig], relayed: Any = ()) -> None:
        self.meters = {m.id: m for m in meters}
        for m in meters:
            self.stats.setdefault(m.id, SimMeterStats())
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
        self.on_switch(meter_id, connected)
        return self._submit(BusJob(0, next(self._order), "relay", meter_id, connected))

    def read_now(self, meter_id: str, ref: str) -> bool:
        return self._submit(BusJob(1, next(self._order), "read", meter_id, ref=ref))

    def _submit(self, job: BusJob) -> bool:
        if len(self._jobs) >= MAX_JOBS:
            return False
        heapq.heappush(self._jobs, job)
        return True

    # -- driven by the simulation -----------------------------------------------------
    @property
    def has_jobs(self) -> bool:
        return bool(self._jobs)

    def next_due_mono(self) -> float | None:
        if self._jobs:
            return self.clock.monotonic_s()
        if not self.meters:
            return None
        now = self.clock.monotonic_s()
        return min(map(self._due.get, self.meters, itertools.repeat(now)))

    def service(self) -> int:
        """Run every job, then every poll that is due; returns transactions done."""
        done = 0
        while self._jobs:
            job = heapq.heappop(self._jobs)
            if job.kind == "relay":
                self._switch(job.meter, job.connected)
            else:
                self._read_job(job)
            done += 1
        now = self.clock.monotonic_s()
        # Due meters by (due, id). A poll moves only its own meter's due time, so which
        # are due can be decided before the first poll; a meter never seen is due now.
        due = self._due
        polls = sorted((due.setdefault(m, now), m) for m in self.meters
                       if due.get(m, now) <= now)
        for _due, meter_id in polls:
            self._poll(meter_id)
            done += 1
        return done

    # -- one meter ----------------------------------------------------------------------
    def _attempt(self, meter_id: str) -> Reading:
        """One reading, or the DriverError the real driver would raise."""
        st = self.stats[meter_id]
        st.polls += 1
        if self.mode == "codec":
            dev = self._devices.get(meter_id)
            if dev is None:
                assert self.client is not None
                dev = ModbusMeter(self.client, self.meters[meter_id].address, MODEL)
                self._devices[meter_id] = dev
            return dev.read(meter_id, int(self.clock.time_s()), timeout_s=self.bus.timeout_s)
        return self._direct_read(meter_id, st)

    def _direct_read(self, meter_id: str, st: SimMeterStats) -> Reading:
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

    def _read(self, meter_id: str, attempts: int) -> Reading:
        st = self.stats[meter_id]
        err: DriverError = DriverError("no attempt")
        for _ in range(attempts):
            try:
                reading = self._attempt(meter_id)
            except ChecksumError as exc:
                st.crc_errors += 1
                err = exc
            except TimeoutError_ as exc:
                st.timeouts += 1
                err = exc
            except DriverError as exc:
                st.protocol_errors += 1
                err = exc
            else:
                st.ok += 1
                hh = self.field.household(meter_id)
                self.field.served_reading(reading, hh.serial if hh is not None else 0)
                return reading
        raise err

    def _poll(self, meter_id: str) -> None:
        st = self.stats[meter_id]
        interval = self.bus.poll_interval_s
        attempts = 1 if st.offline else RETRIES + 1
        try:
            reading = self._read(meter_id, attempts)
        except DriverError as exc:
            st.consecutive_failures += 1
            if st.consecutive_failures >= OFFLINE_AFTER:
                st.backoff_s = min(QUARANTINE_MAX_S,
                                   max(QUARANTINE_MIN_S, st.backoff_s * 2))
                if not st.offline:
                    st.offline = True
                    self.post(MeterOffline(meter_id, str(exc)))
                self._due[meter_id] = self.clock.monotonic_s() + st.backoff_s
            else:
                self._due[meter_id] = self._due.get(meter_id, 0.0) + interval
            return
        st.consecutive_failures, st.backoff_s = 0, 0.0
        if st.offline:
            st.offline = False
            self.post(MeterOnline(meter_id))
        self.post(ReadingTaken(meter_id, reading))
        for detail in self.field.tamper_due(meter_id):
            self.post(TamperSeen(meter_id, detail["kind"], detail["code"], detail["t"]))
        now = self.clock.monotonic_s()
        due = self._due.get(meter_id, now) + interval
        self._due[meter_id] = due if due > now else now + interval

    def _read_job(self, job: BusJob) -> None:
        try:
            reading = self._read(job.meter, RETRIES + 1)
        except DriverError as exc:
            self.post(ReadDone(job.meter, job.ref, None, str(exc)))
        else:
            self.post(ReadDone(job.meter, job.ref, reading, ""))

    def _switch(self, meter_id: str, connected: bool) -> None:
        cfg = self.meters.get(meter_id)
        spec = cfg.relay_spec if cfg is not None else None
        if spec is None or spec.kind != "modbus-coil" or spec.unit is None or spec.coil is None:
            self.post(RelaySwitched(meter_id, None, "", "not switchable on this bus"))
            return
        error = ""
        for _ in range(RELAY_TRIES):
            try:
                actual = self._switch_once(meter_id, spec.unit, spec.coil, connected)
            except DriverError as exc:
                error = str(exc)
                continue
            if actual == connected:
                self.post(RelaySwitched(meter_id, actual, "closed" if actual else "open", ""))
                return
            error = "read back the other state"
        self.post(RelaySwitched(meter_id, None, "", error))

    def _switch_once(self, meter_id: str, unit: int, coil: int, connected: bool) -> bool:
        if self.mode == "codec":
            assert self.client is not None
            relay = ModbusCoilRelay(self.client, unit, coil)
            relay.set_connected(connected, timeout_s=self.bus.timeout_s)
            return relay.read_connected(timeout_s=self.bus.timeout_s)
        for request_bytes, answer_bytes in ((8, 8), (8, 6)):  # fn 5 echo, fn 1 read back
            self.field.advance_us(self.timing.request_us(request_bytes))
            self.field.advance_us(self.timing.answer_us(answer_bytes))
        self.field.coil_set(meter_id, connected)
        hh = self.field.household(meter_id)
        return hh is not None and hh.connected
