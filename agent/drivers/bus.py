"""One scheduler per physical bus: the only code that talks on that wire.

One thread per bus runs jobs one at a time, so there are never two frames in
flight. Jobs come in three priorities: relay switching (0), on-demand reads
for a command (1), routine polls (2, by due time). A meter that stops
answering is quarantined: it is tried again after a backoff that doubles up to
``QUARANTINE_MAX_S``, so a dead meter costs one timeout per backoff period and
never slows the others. Results go to the runtime's inbox as ``BusEvent``s;
the scheduler never touches the store.

Bounds (and what happens at them):
- ``MAX_JOBS`` queued priority jobs; beyond it a job is refused (the caller
  gets a ``relay_result``/``read_result`` with an error and retries later).
- ``RETRIES`` extra attempts of one poll after a checksum/protocol error or
  a timeout; then the poll counts as failed.
- ``OFFLINE_AFTER`` failed polls in a row mark the meter offline (one event).
- ``RELAY_TRIES`` attempts to switch and read back a relay.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.clock import Clock, SystemClock
from agent.config import BusConfig, MeterConfig
from agent.drivers.modbus.client import ModbusClient
from agent.drivers.modbus.device import ModbusCoilRelay, ModbusMeter
from agent.drivers.reading import Reading
from agent.drivers.transport import SerialTransport, Transport
from agent.errors import ChecksumError, DriverError, ProtocolError, TimeoutError_

log = logging.getLogger("agent.bus")

MAX_JOBS = 256
RETRIES = 1
OFFLINE_AFTER = 3
QUARANTINE_MIN_S = 5.0
QUARANTINE_MAX_S = 300.0
RELAY_TRIES = 3
REOPEN_S = 5.0  # how long to wait before reopening a port that failed


@dataclass(frozen=True, slots=True)
class BusEvent:
    kind: str  # reading | meter_offline | meter_online | relay_result | read_result | bad_frame
    meter: str
    reading: Reading | None = None
    connected: bool | None = None  # relay_result: the read-back state
    error: str = ""
    ref: str = ""  # read_result: the command id that asked


@dataclass
class MeterStats:
    polls: int = 0
    ok: int = 0
    timeouts: int = 0
    crc_errors: int = 0
    protocol_errors: int = 0
    consecutive_failures: int = 0
    offline: bool = False
    backoff_s: float = 0.0
    last_ok_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"polls": self.polls, "ok": self.ok, "timeouts": self.timeouts,
                "crc_errors": self.crc_errors, "protocol_errors": self.protocol_errors,
                "offline": self.offline}


@dataclass(order=True)
class _Job:
    priority: int
    order: int
    kind: str = field(compare=False)
    meter: str = field(compare=False)
    connected: bool = field(compare=False, default=True)
    ref: str = field(compare=False, default="")


class BusScheduler(threading.Thread):
    def __init__(
        self,
        bus: BusConfig,
        meters: list[MeterConfig],
        post: Callable[[BusEvent], None],
        *,
        clock: Clock | None = None,
        transport_factory: Callable[[BusConfig], Transport] | None = None,
    ) -> None:
        super().__init__(name=f"bus-{bus.name}", daemon=True)
        self.bus = bus
        self.post = post
        self.clock = clock or SystemClock()
        self._factory = transport_factory or (
            lambda b: SerialTransport(b.port, baudrate=b.baudrate, parity=b.parity))
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._jobs: list[_Job] = []
        self._order = itertools.count()
        self.meters: dict[str, MeterConfig] = {m.id: m for m in meters}
        self.stats: dict[str, MeterStats] = {m.id: MeterStats() for m in meters}
        self._due: dict[str, float] = {}
        self.transport: Transport | None = None
        self.client: ModbusClient | None = None
        self._devices: dict[str, ModbusMeter] = {}
        self.port_error = ""

    # -- called from other threads ---------------------------------------------
    def set_meters(self, meters: list[MeterConfig]) -> None:
        with self._lock:
            self.meters = {m.id: m for m in meters}
            for m in meters:
                self.stats.setdefault(m.id, MeterStats())
            self._devices = {k: v for k, v in self._devices.items() if k in self.meters}
        self._wake.set()

    def switch_relay(self, meter_id: str, connected: bool) -> bool:
        return self._submit(_Job(0, next(self._order), "relay", meter_id, connected))

    def read_now(self, meter_id: str, ref: str) -> bool:
        return self._submit(_Job(1, next(self._order), "read", meter_id, ref=ref))

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _submit(self, job: _Job) -> bool:
        with self._lock:
            if len(self._jobs) >= MAX_JOBS:
                return False
            heapq.heappush(self._jobs, job)
        self._wake.set()
        return True

    # -- the bus thread ------------------------------------------------------
    def run(self) -> None:
        try:
            while not self._stop.is_set():
                if self.client is None and not self._open():
                    self._stop.wait(REOPEN_S)
                    continue
                job = self._next_job()
                if job is not None:
                    self._run_job(job)
                    continue
                meter_id, wait_s = self._next_poll()
                if meter_id is not None:
                    self._poll(meter_id)
                else:
                    self._wake.wait(min(wait_s, 1.0))
                    self._wake.clear()
        finally:
            if self.transport is not None:
                self.transport.close()

    def _open(self) -> bool:
        try:
            self.transport = self._factory(self.bus)
        except DriverError as exc:
            if str(exc) != self.port_error:
                log.warning("event=bus_open_failed bus=%s error=%s", self.bus.name, exc)
            self.port_error = str(exc)
            return False
        self.port_error = ""
        self.client = ModbusClient(self.transport, clock=self.clock)
        log.info("event=bus_open bus=%s port=%s baud=%d", self.bus.name, self.bus.port,
                 self.bus.baudrate)
        return True

    def _next_job(self) -> _Job | None:
        with self._lock:
            return heapq.heappop(self._jobs) if self._jobs else None

    def _next_poll(self) -> tuple[str | None, float]:
        now = self.clock.monotonic_s()
        with self._lock:
            ids = list(self.meters)
        best: str | None = None
        best_due = float("inf")
        for meter_id in ids:
            due = self._due.setdefault(meter_id, now)
            if due < best_due:
                best, best_due = meter_id, due
        if best is not None and best_due <= now:
            return best, 0.0
        return None, (best_due - now) if best is not None else 1.0

    def _device(self, meter_id: str) -> ModbusMeter | None:
        with self._lock:
            cfg = self.meters.get(meter_id)
        if cfg is None or self.client is None:
            return None
        dev = self._devices.get(meter_id)
        if dev is None:
            dev = ModbusMeter(self.client, cfg.address, cfg.model)
            self._devices[meter_id] = dev
        return dev

    def _read(self, meter_id: str) -> Reading:
        """One reading with bounded retries; raises the last DriverError."""
        dev = self._device(meter_id)
        if dev is None:
            raise DriverError(f"meter {meter_id} is not on bus {self.bus.name}")
        stats = self.stats[meter_id]
        for attempt in range(RETRIES + 1):
            stats.polls += 1
            try:
                reading = dev.read(meter_id, int(self.clock.time_s()),
                                   timeout_s=self.bus.timeout_s)
            except ChecksumError as exc:
                stats.crc_errors += 1
                err: DriverError = exc
            except ProtocolError as exc:
                stats.protocol_errors += 1
                err = exc
            except TimeoutError_ as exc:
                stats.timeouts += 1
                err = exc
            else:
                stats.ok += 1
                return reading
            if attempt == RETRIES:
                raise err
        raise AssertionError("unreachable")

    def _poll(self, meter_id: str) -> None:
        stats = self.stats[meter_id]
        interval = self.bus.poll_interval_s
        try:
            reading = self._read(meter_id)
        except DriverError as exc:
            stats.consecutive_failures += 1
            if stats.consecutive_failures >= OFFLINE_AFTER:
                stats.backoff_s = min(QUARANTINE_MAX_S,
                                      max(QUARANTINE_MIN_S, stats.backoff_s * 2, interval))
                if not stats.offline:
                    stats.offline = True
                    self.post(BusEvent("meter_offline", meter_id, error=str(exc)))
                self._due[meter_id] = self.clock.monotonic_s() + stats.backoff_s
            else:
                self._due[meter_id] = self._due.get(meter_id, 0.0) + interval
            log.info("event=poll_failed meter=%s error=%s", meter_id, exc)
            return
        stats.consecutive_failures = 0
        stats.backoff_s = 0.0
        stats.last_ok_s = self.clock.time_s()
        if stats.offline:
            stats.offline = False
            self.post(BusEvent("meter_online", meter_id))
        self.post(BusEvent("reading", meter_id, reading=reading))
        # Next poll on the fixed grid, not "now + interval", so polls do not drift;
        # if we fell behind by more than an interval, restart the grid from now.
        now = self.clock.monotonic_s()
        due = self._due.get(meter_id, now) + interval
        self._due[meter_id] = due if due > now else now + interval

    def _run_job(self, job: _Job) -> None:
        if job.kind == "read":
            try:
                reading = self._read(job.meter)
            except DriverError as exc:
                self.post(BusEvent("read_result", job.meter, error=str(exc), ref=job.ref))
            else:
                self.post(BusEvent("read_result", job.meter, reading=reading, ref=job.ref))
            return
        self._switch(job.meter, job.connected)

    def _switch(self, meter_id: str, connected: bool) -> None:
        with self._lock:
            cfg = self.meters.get(meter_id)
        spec = cfg.relay_spec if cfg else None
        if spec is None or self.client is None or spec.kind != "modbus-coil":
            kind = spec.kind if spec else "unknown meter"
            self.post(BusEvent("relay_result", meter_id, connected=None,
                               error=f"relay kind {kind!r} is not switchable on this bus"))
            return
        assert spec.unit is not None and spec.coil is not None
        relay = ModbusCoilRelay(self.client, spec.unit, spec.coil)
        error = ""
        for _ in range(RELAY_TRIES):
            try:
                relay.set_connected(connected, timeout_s=self.bus.timeout_s)
                actual = relay.read_connected(timeout_s=self.bus.timeout_s)
            except DriverError as exc:
                error = str(exc)
                continue
            if actual == connected:
                self.post(BusEvent("relay_result", meter_id, connected=actual))
                return
            error = f"read back {'connected' if actual else 'disconnected'}"
        self.post(BusEvent("relay_result", meter_id, connected=None, error=error))


def post_to_queue(inbox: queue.Queue[Any]) -> Callable[[BusEvent], None]:
    """Bus events block the bus thread when the inbox is full: back-pressure, not loss."""
    return lambda event: inbox.put(event)
