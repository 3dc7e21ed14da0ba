"""One scheduler per physical bus: the only code that talks on that wire.

One thread per bus runs jobs one at a time, so there are never two frames in
flight, whatever the protocol: Modbus devices share one ``ModbusClient``,
IEC 62056-21 and DLMS drivers share the bus's transport (``driver.py``).
What runs next, in order:
  0. relay switching (``switch_relay``),
  1. on-demand reads for a command (``read_now``),
  2. routine polls by due time, alternating with the steps of a ``scan``
     (one address per step) so a scan neither starves nor stalls the polls,
  3. background discovery: one unconfigured address at a time, only when the
     next poll is further away than a probe takes (``scan.Discovery``).
A meter that stops answering is quarantined: after ``OFFLINE_AFTER`` failed
polls it is tried once (no retry) per backoff period, the period doubling
from ``QUARANTINE_MIN_S`` up to ``QUARANTINE_MAX_S``, so a dead meter costs
one timeout per period and never slows the others. Results go to the
runtime's inbox as typed records (``events.py``); the scheduler never touches the
store.

Bounds (and what happens at them):
- ``MAX_JOBS`` queued priority jobs; beyond it a job is refused (the caller
  gets False and retries later).
- ``RETRIES`` extra attempts of one poll after a checksum/protocol error or
  a timeout; then the poll counts as failed (never a reading from a bad frame:
  drivers raise on a failed checksum, and only a returned Reading is posted).
- ``OFFLINE_AFTER`` failed polls in a row mark the meter offline (one event).
- ``RELAY_TRIES`` (driver.py) attempts to switch and read back a relay.
- ``EVENTS_EVERY`` polls between two event-log reads; ``MAX_SEEN_EVENTS``
  event keys remembered per meter so each tamper event is posted once.
- One scan at a time (a second is refused).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.clock import Clock, SystemClock
from agent.config import BusConfig, MeterConfig, relay_bus
from agent.drivers.driver import (
    EventDriver,
    MeterDriver,
    available,
    make_driver,
    switch_coil,
    switch_meter_relay,
)
from agent.drivers.events import (
    BusEvent,
    MeterDiscovered,
    MeterOffline,
    MeterOnline,
    MeterSecurity,
    ReadDone,
    ReadingTaken,
    RelaySwitched,
    ScanDone,
    TamperSeen,
)
from agent.drivers.modbus.client import ModbusClient
from agent.drivers.modbus.device import ModbusCoilRelay
from agent.drivers.reading import Reading
from agent.drivers.scan import Discovery, ScanJob, check_addresses, probe_once
from agent.drivers.transport import SerialTransport, Transport, frame_time_s
from agent.errors import (
    ChecksumError,
    DriverError,
    PortError,
    ProtocolError,
    SecurityError,
    TimeoutError_,
)
from agent.supervisor import guarded

log = logging.getLogger("agent.bus")

MAX_JOBS = 256
RETRIES = 1
OFFLINE_AFTER = 3
QUARANTINE_MIN_S = 5.0
QUARANTINE_MAX_S = 300.0
REOPEN_MIN_S = 1.0  # a port that failed is opened again after this, doubling up to
REOPEN_MAX_S = 30.0  # this; back to the minimum once it opens
EVENTS_EVERY = 10
MAX_SEEN_EVENTS = 256
DISCOVERY_TIMEOUT_S = 0.1  # discovery's answer allowance; a scan may give more


@dataclass
class MeterStats:
    """Per-meter counters; ``as_dict`` is what the runtime reports. The simulated bus
    (sim/neighbourhood/simbus.py) subclasses it, so both keep the same record."""

    polls: int = 0
    ok: int = 0
    timeouts: int = 0
    crc_errors: int = 0
    protocol_errors: int = 0
    consecutive_failures: int = 0
    offline: bool = False
    backoff_s: float = 0.0
    last_ok_s: float | None = None
    polls_since_events: int = EVENTS_EVERY  # read the event log at the first good poll

    def as_dict(self) -> dict[str, Any]:
        return {"polls": self.polls, "ok": self.ok, "timeouts": self.timeouts,
                "crc_errors": self.crc_errors, "protocol_errors": self.protocol_errors,
                "offline": self.offline}


@dataclass(order=True)
class BusJob:
    """A queued relay or read job, in (priority, submission order); shared with the
    simulated bus so both queue the same way."""

    priority: int
    order: int
    kind: str = field(compare=False)
    meter: str = field(compare=False)
    connected: bool = field(compare=False, default=True)
    ref: str = field(compare=False, default="")


def default_transport(bus: BusConfig) -> Transport:
    # IEC 62056-21 lines are 7E1 (6.2 of the standard); the config's parity is kept.
    bytesize = 7 if bus.protocol == "iec62056-21" else 8
    return SerialTransport(bus.port, baudrate=bus.baudrate, parity=bus.parity,
                           bytesize=bytesize)


class BusScheduler(threading.Thread):
    def __init__(
        self,
        bus: BusConfig,
        meters: list[MeterConfig],
        post: Callable[[BusEvent], None],
        *,
        clock: Clock | None = None,
        transport_factory: Callable[[BusConfig], Transport] | None = None,
        discover: bool = True,
        relayed: Iterable[MeterConfig] = (),
        data_dir: Path | None = None,
        system_title: bytes | None = None,
    ) -> None:
        """``relayed``: meters of other buses whose relay module is on this one
        (``modbus-coil:<bus>:<unit>:<coil>``): this bus switches them, never reads them."""
        super().__init__(name=f"bus-{bus.name}", daemon=True)
        self.bus = bus
        # DLMS HLS: invocation counters under data_dir/dlms (None: in memory, a warning),
        # and the gateway's system title ([gateway] system_title).
        self.data_dir = data_dir
        self.system_title = system_title
        self.post = post
        self.clock = clock or SystemClock()
        self._factory = transport_factory or default_transport
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._jobs: list[BusJob] = []
        self._order = itertools.count()
        self.meters: dict[str, MeterConfig] = {m.id: m for m in meters}
        self.relayed: dict[str, MeterConfig] = {m.id: m for m in relayed}
        self.stats: dict[str, MeterStats] = {m.id: MeterStats() for m in meters}
        self._due: dict[str, float] = {}
        self.transport: Transport | None = None
        self.client: ModbusClient | None = None
        self._drivers: dict[str, tuple[MeterConfig, MeterDriver]] = {}
        self._seen_events: dict[str, OrderedDict[tuple[int, int], None]] = {}
        self._security_reported: dict[tuple[str, str], str] = {}  # (meter, op) -> why
        self._scan: ScanJob | None = None
        self._scan_turn = False
        self.discovery = Discovery()
        self.discovery.enabled = discover
        self.port_error = ""
        self._reopen_s = REOPEN_MIN_S
        self.beat_s: float | None = None  # monotonic s of the thread's last loop turn

    # -- called from other threads ---------------------------------------------
    def set_meters(self, meters: list[MeterConfig], relayed: Iterable[MeterConfig] = ()) -> None:
        with self._lock:
            self.meters = {m.id: m for m in meters}
            self.relayed = {m.id: m for m in relayed}
            for m in meters:
                self.stats.setdefault(m.id, MeterStats())
        self._wake.set()

    def switch_relay(self, meter_id: str, connected: bool) -> bool:
        return self._submit(BusJob(0, next(self._order), "relay", meter_id, connected))

    def read_now(self, meter_id: str, ref: str) -> bool:
        return self._submit(BusJob(1, next(self._order), "read", meter_id, ref=ref))

    def scan(self, addresses: Iterable[int], ref: str, *, timeout_s: float = 0.2) -> bool:
        """Probe ``addresses`` between polls; one ``scan_result`` event when done.

        False if a scan is already running. ValueError for addresses outside 1..247.
        """
        job = ScanJob(ref, check_addresses(addresses), timeout_s)
        with self._lock:
            if self._scan is not None:
                return False
            self._scan = job
        self._wake.set()
        return True

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def _submit(self, job: BusJob) -> bool:
        with self._lock:
            if len(self._jobs) >= MAX_JOBS:
                return False
            heapq.heappush(self._jobs, job)
        self._wake.set()
        return True

    def mark_offline(self, meter_ids: Iterable[str]) -> None:
        """These meters were reported offline (a bus thread before this one died): the
        first good reading of each reports it online again."""
        with self._lock:
            for meter_id in meter_ids:
                self.stats.setdefault(meter_id, MeterStats()).offline = True

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # -- the bus thread ------------------------------------------------------
    def run(self) -> None:
        guarded(self.name, self._run)()

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                self.beat_s = self.clock.monotonic_s()
                if self.transport is None and not self._open():
                    self._stopping.wait(self._reopen_s)
                    self._reopen_s = min(REOPEN_MAX_S, self._reopen_s * 2)
                    continue
                try:
                    self._step()
                except PortError as exc:  # the port, not a meter: close it, open it again
                    self._port_lost(exc)
        finally:
            self._close_port(release=True)

    def _close_port(self, *, release: bool = False) -> None:
        """Forget the drivers and close the transport; ``release``: DLMS associations are
        released first (a clean stop; a lost port cannot carry it)."""
        drivers, self._drivers = self._drivers, {}
        for _cfg, driver in drivers.values() if release else ():
            close = getattr(driver, "close", None)  # DLMS: release the association
            if close is not None:
                try:
                    close(timeout_s=self.bus.timeout_s)
                except DriverError as exc:
                    log.info("event=driver_close_failed bus=%s error=%s", self.bus.name, exc)
        transport, self.transport, self.client = self.transport, None, None
        if transport is not None:
            try:
                transport.close()
            except DriverError as exc:
                log.info("event=port_close_failed bus=%s error=%s", self.bus.name, exc)

    def _port_lost(self, exc: PortError) -> None:
        log.warning("event=port_lost bus=%s error=%s", self.bus.name, exc)
        self.port_error = str(exc)
        self._close_port()
        self._all_offline(str(exc))

    def _all_offline(self, error: str) -> None:
        """Every meter of the bus is unreachable (its port is gone): reported once each;
        each one's first good reading reports it online again."""
        with self._lock:
            ids = list(self.meters)
        for meter_id in ids:
            stats = self.stats.setdefault(meter_id, MeterStats())
            if not stats.offline:
                stats.offline = True
                stats.consecutive_failures = OFFLINE_AFTER
                self.post(MeterOffline(meter_id, error))

    def _step(self) -> None:
        job = self._next_job()
        if job is not None:
            self._run_job(job)
            return
        meter_id, wait_s = self._next_poll()
        with self._lock:
            scanning = self._scan is not None
        if meter_id is not None and not (scanning and self._scan_turn):
            self._scan_turn = True
            self._poll(meter_id)
            return
        if scanning:
            self._scan_turn = False
            self._scan_step()
            return
        if wait_s > self._probe_cost_s() and self._discover_step():
            return
        self._wake.wait(min(wait_s, 1.0))
        self._wake.clear()

    def _open(self) -> bool:
        try:
            self.transport = self._factory(self.bus)
        except DriverError as exc:
            if str(exc) != self.port_error:
                log.warning("event=bus_open_failed bus=%s error=%s retry_s=%.0f",
                            self.bus.name, exc, self._reopen_s)
            self.port_error = str(exc)
            self._all_offline(str(exc))
            return False
        self.port_error = ""
        self._reopen_s = REOPEN_MIN_S
        if self.bus.protocol == "modbus":
            self.client = ModbusClient(self.transport, clock=self.clock)
        if self.discovery.enabled and not available(self.bus.protocol):
            self.discovery.enabled = False
            log.warning("event=discovery_off bus=%s reason=no %s driver", self.bus.name,
                        self.bus.protocol)
        log.info("event=bus_open bus=%s port=%s baud=%d protocol=%s", self.bus.name,
                 self.bus.port, self.bus.baudrate, self.bus.protocol)
        return True

    def _next_job(self) -> BusJob | None:
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

    def _driver(self, meter_id: str) -> MeterDriver:
        with self._lock:
            cfg = self.meters.get(meter_id)
        if cfg is None or self.transport is None:
            raise DriverError(f"meter {meter_id} is not on bus {self.bus.name}")
        known = self._drivers.get(meter_id)
        if known is not None and known[0] == cfg:
            return known[1]
        driver = make_driver(self.bus.protocol, self.transport, cfg, client=self.client,
                             clock=self.clock, data_dir=self.data_dir,
                             system_title=self.system_title)
        self._drivers[meter_id] = (cfg, driver)
        return driver

    def _read(self, meter_id: str, attempts: int = RETRIES + 1) -> Reading:
        """One reading with bounded retries; raises the last DriverError."""
        driver = self._driver(meter_id)
        stats = self.stats[meter_id]
        for attempt in range(attempts):
            stats.polls += 1
            try:
                reading = driver.read(meter_id, int(self.clock.time_s()),
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
            if attempt == attempts - 1:
                raise err
        raise AssertionError("unreachable")

    def _poll(self, meter_id: str) -> None:
        stats = self.stats[meter_id]
        interval = self.bus.poll_interval_s
        try:
            # A quarantined meter gets one attempt per backoff period, no retry.
            reading = self._read(meter_id, 1 if stats.offline else RETRIES + 1)
        except PortError:
            raise  # not this meter's failure: the bus reopens the port
        except DriverError as exc:
            if isinstance(exc, SecurityError):
                self._security_failed(meter_id, "poll", exc)
            stats.consecutive_failures += 1
            if stats.consecutive_failures >= OFFLINE_AFTER:
                stats.backoff_s = min(QUARANTINE_MAX_S,
                                      max(QUARANTINE_MIN_S, stats.backoff_s * 2, interval))
                if not stats.offline:
                    stats.offline = True
                    self.post(MeterOffline(meter_id, str(exc)))
                self._due[meter_id] = self.clock.monotonic_s() + stats.backoff_s
            else:
                self._due[meter_id] = self._due.get(meter_id, 0.0) + interval
            log.info("event=poll_failed meter=%s error=%s", meter_id, exc)
            return
        stats.consecutive_failures = 0
        stats.backoff_s = 0.0
        self._security_reported.pop((meter_id, "poll"), None)  # a new failure is news
        stats.last_ok_s = self.clock.time_s()
        if stats.offline:
            stats.offline = False
            self.post(MeterOnline(meter_id))
        self.post(ReadingTaken(meter_id, reading))
        # Next poll on the fixed grid, not "now + interval", so polls do not drift;
        # if we fell behind by more than an interval, restart the grid from now.
        now = self.clock.monotonic_s()
        due = self._due.get(meter_id, now) + interval
        self._due[meter_id] = due if due > now else now + interval
        stats.polls_since_events += 1
        if stats.polls_since_events >= EVENTS_EVERY:
            stats.polls_since_events = 0
            self._read_events(meter_id)

    def _read_events(self, meter_id: str) -> None:
        driver = self._driver(meter_id)
        if not isinstance(driver, EventDriver):
            return
        try:
            events = driver.read_events(timeout_s=self.bus.timeout_s)
        except PortError:
            raise
        except DriverError as exc:
            log.info("event=events_failed meter=%s error=%s", meter_id, exc)
            return
        seen = self._seen_events.setdefault(meter_id, OrderedDict())
        for event in events:
            key = (event.code, event.t)
            if key in seen:
                continue
            seen[key] = None
            if len(seen) > MAX_SEEN_EVENTS:
                seen.popitem(last=False)  # forget the oldest; the log moved past it
            self.post(TamperSeen(meter_id, event.kind, event.code, event.t))

    def _security_failed(self, meter_id: str, op: str, exc: SecurityError) -> None:
        """A ``meter_security`` event, once for each kind of failure of ``op`` (poll |
        switch) until that op works again (a wrong key fails every try: one event, not
        one a try; a DLMS meter may be read as 0x20 while its 0x30 keys are wrong)."""
        if self._security_reported.get((meter_id, op)) == exc.why:
            return
        self._security_reported[(meter_id, op)] = exc.why
        log.warning("event=meter_security meter=%s why=%s error=%s", meter_id, exc.why, exc)
        self.post(MeterSecurity(meter_id, exc.why, str(exc)))

    def _run_job(self, job: BusJob) -> None:
        if job.kind == "read":
            try:
                reading = self._read(job.meter)
            except DriverError as exc:
                self.post(ReadDone(job.meter, job.ref, None, str(exc)))
                if isinstance(exc, PortError):
                    raise
            else:
                self.post(ReadDone(job.meter, job.ref, reading, ""))
            return
        try:
            self._switch(job.meter, job.connected)
        except PortError as exc:  # answered as a failed switch: actuation backs off
            self.post(RelaySwitched(job.meter, None, "", str(exc)))
            raise

    def _switch(self, meter_id: str, connected: bool) -> None:
        with self._lock:
            cfg = self.meters.get(meter_id) or self.relayed.get(meter_id)
        kind = cfg.relay_spec.kind if cfg else "unknown meter"
        if cfg is not None and kind == "meter":
            try:
                state, error = switch_meter_relay(self._driver(meter_id), connected,
                                                  self.bus.timeout_s)
            except SecurityError as exc:  # nothing was switched: a clear event says why
                self._security_failed(meter_id, "switch", exc)
                state, error = "", str(exc)
            except PortError:
                raise
            except DriverError as exc:  # no driver for it (its keys cannot be read, say)
                state, error = "", str(exc)
            if state:
                self._security_reported.pop((meter_id, "switch"), None)
        elif cfg is not None and kind == "modbus-coil" and self.client is not None:
            assert cfg.relay_spec.unit is not None and cfg.relay_spec.coil is not None
            relay = ModbusCoilRelay(self.client, cfg.relay_spec.unit, cfg.relay_spec.coil)
            state, error = switch_coil(relay, connected, self.bus.timeout_s)
        else:
            state, error = "", f"relay kind {kind!r} is not switchable on this bus"
        self.post(RelaySwitched(meter_id, state == "closed" if state else None, state, error))

    # -- scan and discovery ----------------------------------------------------
    def _busy_addresses(self) -> dict[int, str]:
        with self._lock:
            meters = list(self.meters.values())
            relayed = list(self.relayed.values())
        busy = {m.address: m.id for m in meters}
        for m in meters + relayed:
            if m.relay_spec.kind == "modbus-coil" and m.relay_spec.unit is not None \
                    and relay_bus(m) == self.bus.name:
                busy.setdefault(m.relay_spec.unit, f"relay of {m.id}")
        return busy

    def _scan_step(self) -> None:
        job = self._scan
        assert job is not None and self.transport is not None
        if not job.done:
            address = job.next_address()
            found, error = probe_once(self.transport, self.bus.protocol, address,
                                      timeout_s=job.timeout_s, clock=self.clock)
            if found is not None:
                job.found.append(found)
            elif error:
                job.errors.append((address, error))
        if job.done:
            with self._lock:
                self._scan = None
            configured = self._busy_addresses()
            self.post(ScanDone(job.ref, self.bus.name, self.bus.protocol, len(job.addresses),
                               tuple((f, configured.get(f.address)) for f in job.found),
                               tuple(job.errors)))

    def _probe_cost_s(self) -> float:
        """About what one discovery probe holds the bus (an absent address: a timeout)."""
        if self.bus.protocol == "iec62056-21":
            return DISCOVERY_TIMEOUT_S + frame_time_s(8, 300)  # the sign-on at 300 baud
        return DISCOVERY_TIMEOUT_S + frame_time_s(8 + 9, self.bus.baudrate) + 0.01

    def _discover_step(self) -> bool:
        """Probe one unconfigured address; False when there is nothing to do now."""
        assert self.transport is not None
        address = self.discovery.next_address(set(self._busy_addresses()),
                                              self.clock.monotonic_s())
        if address is None:
            return False
        found, _ = probe_once(self.transport, self.bus.protocol, address,
                              timeout_s=DISCOVERY_TIMEOUT_S, clock=self.clock)
        if found is not None and self.discovery.is_new(found):
            log.info("event=meter_discovered bus=%s address=%d serial=%s", self.bus.name,
                     address, found.serial)
            self.post(MeterDiscovered(self.bus.name, address, found.serial,
                                      self.bus.protocol))
        return True


def post_to_queue(inbox: queue.Queue[Any]) -> Callable[[BusEvent], None]:
    """Bus events block the bus thread when the inbox is full: back-pressure, not loss."""
    return lambda event: inbox.put(event)
