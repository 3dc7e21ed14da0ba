"""The policy of one bus, sans-IO: which job runs next, and what its outcome means.

``BusSchedule`` has no thread, no clock of its own and no transport (the h11 split:
``dlms/connection.py`` is the house's other example). Its driver, the bus thread
(``bus.BusScheduler``) or the simulation's bus (``sim/neighbourhood/simbus.py``),
loops:

    action = schedule.next_action(now_s)      # what to do on the wire, or Idle (actions.py)
    result = execute(action)                  # the only I/O: a Reading, a DriverError ...
    for event in schedule.outcome(action, result, now_s):   # now_s: after the I/O
        post(event)                           # typed records (events.py)

What runs next, in order:
  0. the continuation of the last action: a retry of a poll or read, or the read of
     a meter's event log after its poll (``resume``), so nothing comes between;
  1. relay switching (``switch_relay``), then on-demand reads (``read_now``), in
     submission order within each; a switch asked again while the meter's last one
     (asking the same) is queued or running is that one, not a second job;
  2. routine polls by due time (ties in the order the meters were configured),
     alternating with the steps of a ``scan`` (one address per step) so a scan
     neither starves nor stalls the polls;
  3. background discovery: one unconfigured address at a time, only when the next
     poll is further away than a probe takes (``probe_cost_s``, the thread's);
  4. otherwise ``Idle(wait_s)``: nothing is due for ``wait_s`` seconds.

A meter's health, per failed or good poll (the only place it changes):

    state         poll fails                               poll reads
    healthy       failing (1 failure); next poll on grid   healthy
    failing (n)   n+1 < OFFLINE_AFTER: failing, on grid    healthy
                  n+1 = OFFLINE_AFTER: quarantined,        healthy
                  MeterOffline (once), due now + backoff
    quarantined   quarantined, backoff doubled, due        healthy, MeterOnline,
                  now + backoff                            backoff 0

The back-off is ``min(QUARANTINE_MAX_S, max(QUARANTINE_MIN_S, 2 * backoff,
poll_interval_s))``: never more often than the meter's own poll interval, so a dead
meter costs one timeout per period and never slows the others; a quarantined meter
is tried once (no retry) per period. A lost port (``port_lost``) quarantines every
meter at once (one ``MeterOffline`` each); the first good poll brings each back.

How an attempt's error counts: ``ChecksumError`` (crc_errors), ``ProtocolError``
(protocol_errors) and ``TimeoutError_`` (timeouts) are retried up to ``RETRIES``
more times; any other ``DriverError`` (a ``DeviceException``, a ``SecurityError``, no
driver for the meter) ends the poll at once, uncounted but as a failure. A
``PortError`` is not the meter's: the action ends, and ``port_lost`` follows.

Bounds (and what happens at them):
- ``MAX_JOBS`` queued relay and read jobs; beyond it a job is refused (the caller
  gets False and asks again later: relay intent is durable, so nothing is lost).
- ``RETRIES`` extra attempts of one poll or read after a checksum/protocol error or
  a timeout; then it counts as failed (never a reading from a bad frame: drivers
  raise on a failed checksum, and only a returned Reading is posted).
- ``OFFLINE_AFTER`` failed polls in a row mark the meter offline (one event).
- ``QUARANTINE_MIN_S`` .. ``QUARANTINE_MAX_S``: a quarantined meter's back-off.
- ``EVENTS_EVERY`` good polls between two event-log reads; ``MAX_SEEN_EVENTS`` event
  keys remembered per meter so each tamper event is posted once.
- One scan at a time (a second is refused).
Log lines are its only side effect.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from agent.config import BusConfig, MeterConfig, relay_bus
from agent.drivers.actions import (
    Action,
    Discover,
    Idle,
    NotAttempted,
    Poll,
    Read,
    ReadEvents,
    ScanStep,
    Switch,
)
from agent.drivers.driver import MeterEvent
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
from agent.drivers.reading import Reading
from agent.drivers.scan import SCAN_TIMEOUT_S, Discovery, Found, ScanJob, check_addresses
from agent.errors import (
    ChecksumError,
    DriverError,
    PortError,
    ProtocolError,
    SecurityError,
    TimeoutError_,
)

log = logging.getLogger("agent.bus")

MAX_JOBS: Final = 256
RETRIES: Final = 1
OFFLINE_AFTER: Final = 3
QUARANTINE_MIN_S: Final = 5.0
QUARANTINE_MAX_S: Final = 300.0
EVENTS_EVERY: Final = 10
MAX_SEEN_EVENTS: Final = 256

_RELAY, _READ = 0, 1  # job priorities: relays first


# -- state ----------------------------------------------------------------------------
@dataclass
class MeterStats:
    """Per-meter counters; ``as_dict`` is what the runtime reports."""

    polls: int = 0
    ok: int = 0
    timeouts: int = 0
    crc_errors: int = 0
    protocol_errors: int = 0
    consecutive_failures: int = 0
    offline: bool = False
    backoff_s: float = 0.0
    polls_since_events: int = EVENTS_EVERY  # read the event log at the first good poll

    def as_dict(self) -> dict[str, Any]:
        return {"polls": self.polls, "ok": self.ok, "timeouts": self.timeouts,
                "crc_errors": self.crc_errors, "protocol_errors": self.protocol_errors,
                "offline": self.offline}


@dataclass(order=True)
class BusJob:
    """A queued relay or read job, in (priority, submission order)."""

    priority: int
    order: int
    meter: str = field(compare=False)
    connected: bool = field(compare=False, default=True)  # relay jobs
    ref: str = field(compare=False, default="")  # read jobs


class BusSchedule:
    def __init__(self, bus: BusConfig, meters: Iterable[MeterConfig] = (), *,
                 relayed: Iterable[MeterConfig] = (), discover: bool = True,
                 probe_cost_s: float = 0.0) -> None:
        """``relayed``: meters of other buses whose relay module is on this one: switched
        here, never read. ``probe_cost_s``: about what one discovery probe holds the bus."""
        self.bus = bus
        self.meters: dict[str, MeterConfig] = {}
        self.relayed: dict[str, MeterConfig] = {}
        self.stats: dict[str, MeterStats] = {}
        self._due: dict[str, float] = {}
        self._jobs: list[BusJob] = []
        # meter -> (job number, connect?) of its last switch job, from submission until
        # its outcome: asked again, the same switch is not queued twice
        self._switching: dict[str, tuple[int, bool]] = {}
        self._order = itertools.count()
        self._resume: Action | None = None
        self._seen_events: dict[str, OrderedDict[tuple[int, int], None]] = {}
        self._security_reported: dict[tuple[str, str], str] = {}  # (meter, op) -> why
        self._scan: ScanJob | None = None
        self._scan_turn = False
        self.discovery = Discovery()
        self.discovery.enabled = discover
        self.probe_cost_s = probe_cost_s
        self.set_meters(meters, relayed)

    # -- asked of it ------------------------------------------------------------------
    def set_meters(self, meters: Iterable[MeterConfig],
                   relayed: Iterable[MeterConfig] = ()) -> None:
        meters = list(meters)
        self.meters = {m.id: m for m in meters}
        self.relayed = {m.id: m for m in relayed}
        # meters without a due time yet: given one (now) by the next _next_poll
        self._unseen = [m.id for m in meters if m.id not in self._due]
        for m in meters:
            self.stats.setdefault(m.id, MeterStats())

    def switch_relay(self, meter_id: str, connected: bool) -> bool:
        """Queue a switch; False at ``MAX_JOBS`` (the caller asks again later). True with
        no new job while the meter's last switch asks the same and has no outcome yet
        (the runtime asks at every turn until the relay reads back its intent); a
        changed intent is queued at once, behind it."""
        if self.switching(meter_id) == connected:
            return True
        job = BusJob(_RELAY, next(self._order), meter_id, connected)
        if not self._submit(job):
            return False
        self._switching[meter_id] = (job.order, connected)
        return True

    def switching(self, meter_id: str) -> bool | None:
        """What the meter's last switch job asks (connect?) while it is queued or running;
        None when it has none."""
        last = self._switching.get(meter_id)
        return None if last is None else last[1]

    def read_now(self, meter_id: str, ref: str) -> bool:
        """Queue a read for a command; False at ``MAX_JOBS``."""
        return self._submit(BusJob(_READ, next(self._order), meter_id, ref=ref))

    def _submit(self, job: BusJob) -> bool:
        if len(self._jobs) >= MAX_JOBS:
            return False
        heapq.heappush(self._jobs, job)
        return True

    def scan(self, addresses: Iterable[int], ref: str, *,
             timeout_s: float = SCAN_TIMEOUT_S) -> bool:
        """Probe ``addresses`` between polls; one ``ScanDone`` when done. False if a scan
        is already running; ValueError for addresses outside 1..247."""
        job = ScanJob(ref, check_addresses(addresses), timeout_s)
        if self._scan is not None:
            return False
        self._scan = job
        return True

    def mark_offline(self, meter_ids: Iterable[str]) -> None:
        """These meters were reported offline (by a bus thread before this one): the
        first good poll of each reports it online again."""
        for meter_id in meter_ids:
            self.stats.setdefault(meter_id, MeterStats()).offline = True

    def port_lost(self, error: str) -> list[BusEvent]:
        """The bus's port is gone (or will not open): every meter is unreachable,
        reported once each; each one's first good poll reports it online again."""
        self._resume = None
        events: list[BusEvent] = []
        for meter_id in self.meters:
            stats = self.stats.setdefault(meter_id, MeterStats())
            if not stats.offline:
                stats.offline = True
                stats.consecutive_failures = OFFLINE_AFTER
                events.append(MeterOffline(meter_id, error))
        return events

    # -- what next ----------------------------------------------------------------------
    @property
    def has_jobs(self) -> bool:
        return bool(self._jobs)

    def next_action(self, now_s: float) -> Action:
        """What to do at ``now_s`` (monotonic seconds), in the order of the module's
        docstring. A scan address or discovery address it returns counts as taken."""
        action = self.resume() or self.next_job()
        if action is not None:
            return action
        meter_id, wait_s = self._next_poll(now_s)
        scanning = self._scan is not None
        if meter_id is not None and not (scanning and self._scan_turn):
            self._scan_turn = True
            return self.poll(meter_id)
        if self._scan is not None:
            self._scan_turn = False
            job = self._scan
            return ScanStep(None if job.done else job.next_address(), job.timeout_s)
        if wait_s > self.probe_cost_s:
            address = self.discovery.next_address(set(self.busy_addresses()), now_s)
            if address is not None:
                return Discover(address)
        return Idle(wait_s)

    def resume(self) -> Action | None:
        """The action that must follow the last one at once (a retry, the event-log
        read after a poll), or None; taken when returned."""
        action, self._resume = self._resume, None
        return action

    def next_job(self) -> Switch | Read | None:
        """The next queued relay or read job, taken; None when there is none."""
        if not self._jobs:
            return None
        job = heapq.heappop(self._jobs)
        if job.priority == _RELAY:
            cfg = self.meters.get(job.meter) or self.relayed.get(job.meter)
            return Switch(job.meter, cfg, job.connected, job.order)
        return Read(job.meter, self.meters.get(job.meter), job.ref, 1)

    def poll(self, meter_id: str) -> Poll:
        """The first attempt of a poll of ``meter_id`` (a quarantined meter gets one)."""
        stats = self.stats[meter_id]
        return Poll(self.meters[meter_id], 1, 1 if stats.offline else RETRIES + 1)

    def _next_poll(self, now_s: float) -> tuple[str | None, float]:
        """(the meter due first, 0) or (None, seconds until one is due; 1 with none)."""
        if not self.meters:
            return None, 1.0
        due = self._due
        if self._unseen:
            for meter_id in self._unseen:  # a meter never seen is due now
                due.setdefault(meter_id, now_s)
            self._unseen = []
        best = min(self.meters, key=due.__getitem__)  # the first of the earliest: in C
        best_due = due[best]
        if best_due <= now_s:
            return best, 0.0
        return None, best_due - now_s

    def due_meters(self, now_s: float) -> list[str]:
        """Every meter due at ``now_s``, in the order ``next_action`` takes them (due
        time, then configuration order)."""
        due = self._due
        ready = [(due.setdefault(m, now_s), i, m) for i, m in enumerate(self.meters)
                 if due.get(m, now_s) <= now_s]
        return [m for _due, _i, m in sorted(ready)]

    def next_due_s(self, now_s: float) -> float | None:
        """When the next job or poll is due (``now_s`` if a job is queued); None with
        neither jobs nor meters."""
        if self._jobs or self._resume is not None:
            return now_s
        if not self.meters:
            return None
        return min(map(self._due.get, self.meters, itertools.repeat(now_s)))

    def busy_addresses(self) -> dict[int, str]:
        """Addresses in use on this bus: its meters, and the relay modules it drives."""
        meters = list(self.meters.values())
        busy = {m.address: m.id for m in meters}
        for m in meters + list(self.relayed.values()):
            if m.relay_spec.kind == "modbus-coil" and m.relay_spec.unit is not None \
                    and relay_bus(m) == self.bus.name:
                busy.setdefault(m.relay_spec.unit, f"relay of {m.id}")
        return busy

    # -- what an outcome means ---------------------------------------------------------------
    def outcome(self, action: Action, result: Any, now_s: float) -> list[BusEvent]:
        """The events of ``action``'s ``result`` (what its driver got, or the
        ``DriverError`` it raised, or ``NotAttempted``), at ``now_s`` (monotonic, after
        the I/O). After a ``PortError`` the events end with ``port_lost``'s."""
        events: list[BusEvent] = []
        if isinstance(action, Poll):
            self._polled(action, result, now_s, events)
        elif isinstance(action, Read):
            self._read(action, result, events)
        elif isinstance(action, ReadEvents):
            self._events_read(action.meter.id, result, events)
        elif isinstance(action, Switch):
            self._switched(action, result, events)
        elif isinstance(action, ScanStep):
            self._scanned(action, result, events)
        elif isinstance(action, Discover):
            self._discovered(action, result, events)
        if isinstance(result, PortError):
            events += self.port_lost(str(result))
        return events

    def _attempt(self, meter_id: str, result: Any) -> DriverError | None:
        """Count one attempt's result; its error (None: a reading)."""
        if isinstance(result, NotAttempted):
            return result.error
        stats = self.stats[meter_id]
        stats.polls += 1
        if not isinstance(result, DriverError):
            stats.ok += 1
            return None
        if isinstance(result, ChecksumError):
            stats.crc_errors += 1
        elif isinstance(result, ProtocolError):
            stats.protocol_errors += 1
        elif isinstance(result, TimeoutError_):
            stats.timeouts += 1
        return result  # any other DriverError: uncounted, and not retried

    @staticmethod
    def _retried(result: Any) -> bool:
        """Is this attempt's result one that earns another try (if any is left)?"""
        return isinstance(result, (ProtocolError, TimeoutError_))

    def _polled(self, action: Poll, result: Any, now_s: float,
                events: list[BusEvent]) -> None:
        meter_id = action.meter.id
        error = self._attempt(meter_id, result)
        if self._retried(result) and action.attempt < action.attempts:
            self._resume = Poll(action.meter, action.attempt + 1, action.attempts)
            return
        if isinstance(error, PortError):
            return  # not this meter's failure: port_lost follows
        stats = self.stats[meter_id]
        interval = self.bus.poll_interval_s
        if error is not None:
            if isinstance(error, SecurityError):
                events += self._security_failed(meter_id, "poll", error)
            stats.consecutive_failures += 1
            if stats.consecutive_failures >= OFFLINE_AFTER:
                stats.backoff_s = min(QUARANTINE_MAX_S,
                                      max(QUARANTINE_MIN_S, stats.backoff_s * 2, interval))
                if not stats.offline:
                    stats.offline = True
                    events.append(MeterOffline(meter_id, str(error)))
                self._due[meter_id] = now_s + stats.backoff_s
            else:
                self._due[meter_id] = self._due.get(meter_id, 0.0) + interval
            log.info("event=poll_failed meter=%s error=%s", meter_id, error)
            return
        assert isinstance(result, Reading)
        stats.consecutive_failures = 0
        stats.backoff_s = 0.0
        self._security_reported.pop((meter_id, "poll"), None)  # a new failure is news
        if stats.offline:
            stats.offline = False
            events.append(MeterOnline(meter_id))
        events.append(ReadingTaken(meter_id, result))
        # Next poll on the fixed grid, not "now + interval", so polls do not drift;
        # if we fell behind by more than an interval, restart the grid from now.
        due = self._due.get(meter_id, now_s) + interval
        self._due[meter_id] = due if due > now_s else now_s + interval
        stats.polls_since_events += 1
        if stats.polls_since_events >= EVENTS_EVERY:
            stats.polls_since_events = 0
            self._resume = ReadEvents(action.meter)

    def _read(self, action: Read, result: Any, events: list[BusEvent]) -> None:
        error = self._attempt(action.meter_id, result)
        if self._retried(result) and action.attempt < RETRIES + 1:
            self._resume = Read(action.meter_id, action.meter, action.ref, action.attempt + 1)
            return
        if error is not None:
            events.append(ReadDone(action.meter_id, action.ref, None, str(error)))
        else:
            events.append(ReadDone(action.meter_id, action.ref, result, ""))

    def _events_read(self, meter_id: str, result: Any, events: list[BusEvent]) -> None:
        if isinstance(result, DriverError):
            if not isinstance(result, PortError):
                log.info("event=events_failed meter=%s error=%s", meter_id, result)
            return
        seen = self._seen_events.setdefault(meter_id, OrderedDict())
        event: MeterEvent
        for event in result:
            key = (event.code, event.t)
            if key in seen:
                continue
            seen[key] = None
            if len(seen) > MAX_SEEN_EVENTS:
                seen.popitem(last=False)  # forget the oldest; the log moved past it
            events.append(TamperSeen(meter_id, event.kind, event.code, event.t))

    def _switched(self, action: Switch, result: Any, events: list[BusEvent]) -> None:
        meter_id = action.meter_id
        if self._switching.get(meter_id, (None,))[0] == action.job:
            del self._switching[meter_id]  # its last switch is answered: a new ask is new
        if isinstance(result, PortError):  # answered as a failed switch: actuation backs off
            events.append(RelaySwitched(meter_id, None, "", str(result)))
            return
        if isinstance(result, SecurityError):  # nothing was switched: a clear event says why
            events += self._security_failed(meter_id, "switch", result)
            state, error = "", str(result)
        elif isinstance(result, DriverError):  # no driver for it (its keys cannot be read)
            state, error = "", str(result)
        else:
            state, error = result
        if state and action.kind == "meter":
            self._security_reported.pop((meter_id, "switch"), None)
        events.append(RelaySwitched(meter_id, state == "closed" if state else None, state,
                                    error))

    def _security_failed(self, meter_id: str, op: str,
                         exc: SecurityError) -> list[BusEvent]:
        """A ``MeterSecurity``, once for each kind of failure of ``op`` (poll | switch)
        until that op works again (a wrong key fails every try: one event, not one a
        try; a DLMS meter may be read as 0x20 while its 0x30 keys are wrong)."""
        if self._security_reported.get((meter_id, op)) == exc.why:
            return []
        self._security_reported[(meter_id, op)] = exc.why
        log.warning("event=meter_security meter=%s why=%s error=%s", meter_id, exc.why, exc)
        return [MeterSecurity(meter_id, exc.why, str(exc))]

    def _scanned(self, action: ScanStep, result: Any, events: list[BusEvent]) -> None:
        job = self._scan
        assert job is not None
        if isinstance(result, DriverError):
            return  # the port: the address counts as probed, the scan goes on
        if action.address is not None:
            found, error = result
            if found is not None:
                job.found.append(found)
            elif error:
                job.errors.append((action.address, error))
        if job.done:
            self._scan = None
            configured = self.busy_addresses()
            events.append(ScanDone(job.ref, self.bus.name, self.bus.protocol,
                                   len(job.addresses),
                                   tuple((f, configured.get(f.address)) for f in job.found),
                                   tuple(job.errors)))

    def _discovered(self, action: Discover, result: Any, events: list[BusEvent]) -> None:
        if isinstance(result, DriverError):
            return
        found: Found | None = result[0]
        if found is not None and self.discovery.is_new(found):
            log.info("event=meter_discovered bus=%s address=%d serial=%s", self.bus.name,
                     action.address, found.serial)
            events.append(MeterDiscovered(self.bus.name, action.address, found.serial,
                                          self.bus.protocol))
