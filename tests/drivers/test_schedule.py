"""BusSchedule, the bus's policy with no thread, clock or transport: actions asked for,
outcomes fed back by hand, time as a plain number (the fake clock), state by state."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import BusConfig, MeterConfig
from agent.drivers.actions import (
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
from agent.drivers.scan import Found
from agent.drivers.schedule import (
    EVENTS_EVERY,
    MAX_JOBS,
    MAX_SEEN_EVENTS,
    OFFLINE_AFTER,
    QUARANTINE_MAX_S,
    QUARANTINE_MIN_S,
    RETRIES,
    BusSchedule,
)
from agent.errors import (
    ChecksumError,
    DeviceException,
    DriverError,
    PortError,
    ProtocolError,
    SecurityError,
    TimeoutError_,
)
from agent.relay_spec import parse_relay

BUS = BusConfig(name="b0", port="sim://", baudrate=9600, poll_interval_s=15.0, timeout_s=0.2)


def meter(meter_id: str, address: int, relay: str = "none") -> MeterConfig:
    return MeterConfig(meter_id, "b0", address, "eastron-sdm120", "ACC", relay,
                       parse_relay(relay))


def reading(meter_id: str, t: int = 1_767_225_600) -> Reading:
    return Reading(meter_id, t, {"import_wh": 1}, serial="S")


def schedule(*meters: MeterConfig, interval_s: float = 15.0, **options: object) -> BusSchedule:
    options.setdefault("discover", False)
    return BusSchedule(replace(BUS, poll_interval_s=interval_s), meters, **options)  # type: ignore[arg-type]


def poll_once(sched: BusSchedule, now: float, result: object) -> list[object]:
    """Take the next action (it must be a poll) and feed ``result`` to every attempt."""
    action = sched.next_action(now)
    assert isinstance(action, Poll), action
    events: list[object] = []
    while True:
        events += sched.outcome(action, result if not isinstance(result, Reading)
                                else reading(action.meter.id), now)
        follow = sched.resume()
        if not isinstance(follow, Poll):
            if isinstance(follow, ReadEvents):
                events += sched.outcome(follow, [], now)
            return events
        action = follow


# -- polls and the grid -------------------------------------------------------------------
def test_a_new_meter_is_due_at_once_and_then_on_its_grid() -> None:
    sched = schedule(meter("A", 1), meter("B", 2))
    first = sched.next_action(100.0)
    assert first == Poll(meter("A", 1), 1, RETRIES + 1)  # ties: configuration order
    assert sched.outcome(first, reading("A"), 100.2) == [ReadingTaken("A", reading("A"))]
    assert sched.resume() == ReadEvents(meter("A", 1))  # the first good poll reads the log
    assert isinstance(sched.next_action(100.3), Poll)  # B: due at 100 as well
    assert sched.next_due_s(100.3) == 100.0  # B: due since 100, not yet answered


def test_the_grid_does_not_drift_and_restarts_when_far_behind() -> None:
    sched = schedule(meter("A", 1))
    poll_once(sched, 0.0, reading("A"))
    assert sched.next_action(1.0) == Idle(14.0)
    poll_once(sched, 15.4, reading("A"))  # answered late: the next is still at 30
    assert sched.next_due_s(16.0) == 30.0
    poll_once(sched, 100.0, reading("A"))  # fell behind by more than an interval
    assert sched.next_due_s(100.0) == 115.0


def test_a_timeout_is_retried_once_then_the_poll_fails() -> None:
    sched = schedule(meter("A", 1))
    action = sched.next_action(0.0)
    assert sched.outcome(action, TimeoutError_("silent"), 0.5) == []
    retry = sched.next_action(0.5)
    assert retry == Poll(meter("A", 1), 2, 2)
    assert sched.outcome(retry, TimeoutError_("silent"), 1.0) == []
    stats = sched.stats["A"]
    assert (stats.polls, stats.timeouts, stats.consecutive_failures) == (2, 2, 1)
    assert sched.next_due_s(1.0) == 15.0  # on the grid: not yet quarantined


def test_error_kinds_are_counted_apart_and_only_frame_errors_retried() -> None:
    for error, counter, attempts in ((ChecksumError("crc"), "crc_errors", 2),
                                     (ProtocolError("bad"), "protocol_errors", 2),
                                     (TimeoutError_("late"), "timeouts", 2),
                                     (DeviceException("code 2", 2), None, 1),
                                     (DriverError("other"), None, 1)):
        sched = schedule(meter("A", 1))
        poll_once(sched, 0.0, error)
        stats = sched.stats["A"]
        assert stats.polls == attempts, error
        counted = {k: v for k, v in stats.as_dict().items()
                   if k in ("timeouts", "crc_errors", "protocol_errors") and v}
        assert counted == ({counter: attempts} if counter else {}), error
        assert stats.consecutive_failures == 1


def test_a_poll_that_cannot_start_fails_uncounted() -> None:
    sched = schedule(meter("A", 1))
    action = sched.next_action(0.0)
    assert sched.outcome(action, NotAttempted(ProtocolError("no key file")), 0.0) == []
    assert sched.resume() is None  # not retried, even for a protocol error
    assert sched.stats["A"].polls == 0 and sched.stats["A"].consecutive_failures == 1


# -- quarantine ----------------------------------------------------------------------------
def test_offline_after_n_failures_once_with_the_interval_as_backoff_floor() -> None:
    sched = schedule(meter("A", 1), interval_s=15.0)
    now, events = 0.0, []
    for _ in range(OFFLINE_AFTER):
        now = sched.next_due_s(now) or now
        events += poll_once(sched, now, TimeoutError_("silent"))
    assert events == [MeterOffline("A", "silent")]
    stats = sched.stats["A"]
    assert stats.offline and stats.backoff_s == 15.0  # max(QUARANTINE_MIN_S, interval)
    backoffs = []
    for _ in range(8):
        now = sched.next_due_s(now) or now
        action = sched.next_action(now)
        assert action == Poll(meter("A", 1), 1, 1)  # one attempt, no retry
        assert sched.outcome(action, TimeoutError_("silent"), now + 0.2) == []  # not again
        backoffs.append(stats.backoff_s)
        assert sched.next_due_s(now) == now + 0.2 + stats.backoff_s
    assert backoffs == [30.0, 60.0, 120.0, 240.0] + [QUARANTINE_MAX_S] * 4


def test_the_backoff_starts_at_its_minimum_when_polls_are_frequent() -> None:
    sched = schedule(meter("A", 1), interval_s=1.0)
    now = 0.0
    for _ in range(OFFLINE_AFTER):
        now = sched.next_due_s(now) or now
        poll_once(sched, now, TimeoutError_("silent"))
    assert sched.stats["A"].backoff_s == QUARANTINE_MIN_S


def test_the_first_good_poll_brings_a_meter_back() -> None:
    sched = schedule(meter("A", 1))
    now = 0.0
    for _ in range(OFFLINE_AFTER + 2):
        now = sched.next_due_s(now) or now
        poll_once(sched, now, TimeoutError_("silent"))
    now = sched.next_due_s(now) or now
    events = poll_once(sched, now, reading("A"))
    assert events == [MeterOnline("A"), ReadingTaken("A", reading("A"))]
    stats = sched.stats["A"]
    assert not stats.offline and stats.backoff_s == 0 and stats.consecutive_failures == 0
    assert sched.poll("A").attempts == RETRIES + 1


def test_a_lost_port_takes_every_meter_offline_once_and_keeps_their_grid() -> None:
    sched = schedule(meter("A", 1), meter("B", 2))
    action = sched.next_action(0.0)
    events = sched.outcome(action, PortError("gone"), 0.1)
    assert events == [MeterOffline("A", "gone"), MeterOffline("B", "gone")]
    assert sched.resume() is None  # no retry on a lost port
    assert sched.stats["A"].consecutive_failures == OFFLINE_AFTER
    assert sched.port_lost("still gone") == []  # reported once
    assert sched.next_due_s(0.1) == 0.0  # the poll that hit the port is still due
    sched.mark_offline(["C"])
    assert sched.stats["C"].offline


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["ok", "timeout", "crc", "device", "port"]), max_size=60))
def test_health_events_alternate_and_the_backoff_stays_in_bounds(outcomes: list[str]) -> None:
    results = {"ok": reading("A"), "timeout": TimeoutError_("t"), "crc": ChecksumError("c"),
               "device": DeviceException("d", 2), "port": PortError("p")}
    sched = schedule(meter("A", 1))
    now, health, readings = 0.0, [], 0
    for outcome in outcomes:
        now = max(now, sched.next_due_s(now) or now) + 0.1
        for event in poll_once(sched, now, results[outcome]):
            if isinstance(event, (MeterOffline, MeterOnline)):
                health.append(type(event))
            readings += isinstance(event, ReadingTaken)
        stats = sched.stats["A"]
        assert stats.offline == (stats.consecutive_failures >= OFFLINE_AFTER)
        if stats.backoff_s:
            assert max(QUARANTINE_MIN_S, 15.0) <= stats.backoff_s <= QUARANTINE_MAX_S
        assert (sched.next_due_s(now) or 0) <= now + QUARANTINE_MAX_S + 15.0
    assert health == [MeterOffline, MeterOnline] * (len(health) // 2) + \
        [MeterOffline] * (len(health) % 2)
    assert readings == outcomes.count("ok") == sched.stats["A"].ok


# -- jobs ------------------------------------------------------------------------------------
def test_relay_jobs_then_reads_in_submission_order_before_polls() -> None:
    sched = schedule(meter("A", 1, "modbus-coil:10:0"), meter("B", 2))
    assert sched.read_now("A", "r1") and sched.switch_relay("B", True)
    assert sched.switch_relay("A", False) and sched.read_now("B", "r2")
    taken = [sched.next_action(0.0) for _ in range(5)]
    assert taken[:4] == [Switch("B", meter("B", 2), True),
                         Switch("A", meter("A", 1, "modbus-coil:10:0"), False),
                         Read("A", meter("A", 1, "modbus-coil:10:0"), "r1", 1),
                         Read("B", meter("B", 2), "r2", 1)]
    assert isinstance(taken[4], Poll)
    assert taken[1].kind == "modbus-coil"  # type: ignore[union-attr]


def test_max_jobs_bounds_the_queue_and_a_taken_job_frees_a_place() -> None:
    sched = schedule(meter("A", 1))
    assert all(sched.switch_relay("A", i % 2 == 0) for i in range(MAX_JOBS))
    assert not sched.switch_relay("A", True) and not sched.read_now("A", "late")
    assert isinstance(sched.next_job(), Switch)
    assert sched.read_now("A", "now")
    assert not sched.read_now("A", "again")


def test_a_switch_asked_again_before_its_outcome_is_not_queued_twice() -> None:
    sched = schedule(meter("A", 1, "modbus-coil:10:0"))
    assert sched.switching("A") is None
    assert sched.switch_relay("A", False) and sched.switch_relay("A", False)
    assert sched.switching("A") is False
    first = sched.next_job()
    assert isinstance(first, Switch) and sched.next_job() is None  # one job, not two
    assert sched.switch_relay("A", False) and sched.next_job() is None  # running: the same
    assert sched.switch_relay("A", True)  # a changed intent is queued at once, behind it
    assert sched.switching("A") is True
    sched.outcome(first, ("open", ""), 0.0)  # the first one's outcome: the second stays
    assert sched.switching("A") is True
    second = sched.next_job()
    assert isinstance(second, Switch) and second.connected is True
    sched.outcome(second, ("", "read back open"), 0.0)
    assert sched.switching("A") is None
    assert sched.switch_relay("A", True)  # answered (a failure): asked again, queued again
    assert isinstance(sched.next_job(), Switch)


def test_a_refused_switch_is_not_taken_for_one_on_its_way() -> None:
    sched = schedule(meter("A", 1), meter("B", 2))
    assert all(sched.read_now("A", f"r{i}") for i in range(MAX_JOBS))
    assert not sched.switch_relay("B", False) and sched.switching("B") is None
    assert not sched.switch_relay("B", False)  # still full: still refused


def test_a_read_job_is_retried_and_answers_once() -> None:
    sched = schedule(meter("A", 1))
    sched.read_now("A", "cmd")
    first = sched.next_action(0.0)
    assert sched.outcome(first, ChecksumError("crc"), 0.1) == []
    second = sched.next_action(0.1)
    assert second == Read("A", meter("A", 1), "cmd", 2)
    assert sched.outcome(second, ChecksumError("crc"), 0.2) == [
        ReadDone("A", "cmd", None, "crc")]
    sched.read_now("A", "cmd2")
    ok = sched.next_action(0.3)
    assert sched.outcome(ok, reading("A"), 0.4) == [ReadDone("A", "cmd2", reading("A"), "")]
    assert not sched.stats["A"].offline and sched.stats["A"].consecutive_failures == 0


def test_a_read_for_a_meter_not_on_the_bus() -> None:
    sched = schedule(meter("A", 1))
    sched.read_now("X", "cmd")
    action = sched.next_action(0.0)
    assert action == Read("X", None, "cmd", 1)
    assert sched.outcome(action, NotAttempted(DriverError("not on bus b0")), 0.0) == [
        ReadDone("X", "cmd", None, "not on bus b0")]


def test_switch_outcomes() -> None:
    sched = schedule(meter("A", 1, "meter"))
    for result, expected in (
            (("open", ""), RelaySwitched("A", False, "open", "")),
            (("closed", ""), RelaySwitched("A", True, "closed", "")),
            (("armed", ""), RelaySwitched("A", False, "armed", "")),
            (("", "read back open"), RelaySwitched("A", None, "", "read back open")),
            (DriverError("no driver"), RelaySwitched("A", None, "", "no driver"))):
        sched.switch_relay("A", False)
        assert sched.outcome(sched.next_action(0.0), result, 0.0) == [expected]
    sched.switch_relay("A", False)
    lost = sched.outcome(sched.next_action(0.0), PortError("gone"), 0.0)
    assert lost == [RelaySwitched("A", None, "", "gone"), MeterOffline("A", "gone")]
    sched.switch_relay("NOPE", True)
    assert sched.next_action(0.0).kind == "unknown meter"  # type: ignore[union-attr]


def test_a_security_failure_is_reported_once_per_kind_until_it_works() -> None:
    sched = schedule(meter("A", 1, "meter"))
    bad = SecurityError("bad tag", why="authentication")
    now = 0.0
    seen = []
    for _ in range(3):
        now = sched.next_due_s(now) or now
        seen += [e for e in poll_once(sched, now, bad) if isinstance(e, MeterSecurity)]
    assert seen == [MeterSecurity("A", "authentication", "bad tag")]
    sched.switch_relay("A", False)
    events = sched.outcome(sched.next_action(now), bad, now)
    assert events == [MeterSecurity("A", "authentication", "bad tag"),
                      RelaySwitched("A", None, "", "bad tag")]
    now = sched.next_due_s(now) or now
    poll_once(sched, now, reading("A"))  # the poll works again: a new failure is news
    now = sched.next_due_s(now) or now
    assert MeterSecurity("A", "authentication", "bad tag") in poll_once(sched, now, bad)


# -- the event log -----------------------------------------------------------------------------
def test_the_event_log_is_read_every_tenth_good_poll_and_each_entry_posted_once() -> None:
    sched = schedule(meter("A", 1), interval_s=1.0)
    log = [MeterEvent("magnet", 201, 100)]
    tamper: list[object] = []
    reads = 0
    now = 0.0
    for _ in range(2 * EVENTS_EVERY + 1):
        now = sched.next_due_s(now) or now
        action = sched.next_action(now)
        sched.outcome(action, reading("A"), now)
        follow = sched.resume()
        if follow is not None:
            assert follow == ReadEvents(meter("A", 1))
            reads += 1
            tamper += sched.outcome(follow, log, now)
            log.append(MeterEvent("cover_open", 251, 200 + reads))
    assert reads == 3  # the first good poll, then every EVENTS_EVERY
    assert tamper == [TamperSeen("A", "magnet", 201, 100),
                      TamperSeen("A", "cover_open", 251, 201),
                      TamperSeen("A", "cover_open", 251, 202)]
    assert sched.outcome(ReadEvents(meter("A", 1)), DriverError("garbled"), now) == []


def test_seen_event_keys_are_bounded() -> None:
    sched = schedule(meter("A", 1))
    many = [MeterEvent("magnet", 201, t) for t in range(MAX_SEEN_EVENTS + 1)]
    assert len(sched.outcome(ReadEvents(meter("A", 1)), many, 0.0)) == MAX_SEEN_EVENTS + 1
    assert len(sched._seen_events["A"]) == MAX_SEEN_EVENTS
    again = sched.outcome(ReadEvents(meter("A", 1)), many[:1], 0.0)
    assert again == [TamperSeen("A", "magnet", 201, 0)]  # forgotten: the oldest


# -- scans and discovery ------------------------------------------------------------------------
def test_a_scan_alternates_with_polls_and_reports_once() -> None:
    sched = schedule(meter("A", 1, "modbus-coil:10:0"), interval_s=1.0)
    assert sched.scan([1, 3, 10], "s1") and not sched.scan([2], "s2")
    taken = []
    now = 0.0
    events: list[object] = []
    for _ in range(8):
        action = sched.next_action(now)
        taken.append(type(action).__name__)
        if isinstance(action, ScanStep):
            found = Found(action.address, "modbus", "S") if action.address in (1, 3) else None
            events += sched.outcome(action, (found, "" if found else "garbled"), now)
        elif isinstance(action, Poll):
            events += sched.outcome(action, reading("A"), now)
            sched.resume()
        now += 0.5
    assert taken[:6] == ["Poll", "ScanStep", "Poll", "ScanStep", "Poll", "ScanStep"]
    done = [e for e in events if isinstance(e, ScanDone)]
    assert len(done) == 1 and done[0].reply() == {
        "bus": "b0", "protocol": "modbus", "addresses": 3,
        "found": [{"address": 1, "protocol": "modbus", "serial": "S", "meter": "A"},
                  {"address": 3, "protocol": "modbus", "serial": "S", "meter": None}],
        "errors": [{"address": 10, "error": "garbled"}]}
    assert sched.scan([2], "s2")  # the next one may start


def test_discovery_only_in_idle_time_longer_than_a_probe() -> None:
    sched = schedule(meter("A", 1), discover=True, probe_cost_s=0.5, interval_s=1.0)
    poll_once(sched, 0.0, reading("A"))
    assert sched.next_action(0.6) == Idle(0.4)  # not worth a probe
    first = sched.next_action(0.2)
    assert first == Discover(2)  # address 1 is busy
    assert sched.outcome(first, (Found(2, "modbus", "9"), ""), 0.3) == [
        MeterDiscovered("b0", 2, "9", "modbus")]
    again = sched.next_action(0.3)
    assert again == Discover(3)
    assert sched.outcome(again, (None, ""), 0.4) == []
    sched.outcome(Discover(2), (Found(2, "modbus", "9"), ""), 0.5)
    assert not sched.outcome(Discover(2), (Found(2, "modbus", "9"), ""), 0.5)  # not new


def test_the_schedule_has_no_clock_transport_or_thread_of_its_own() -> None:
    from tests.drivers.test_codec_purity import ROOT, imported_modules

    names = imported_modules(ROOT / "agent" / "drivers" / "schedule.py")
    assert not {n for n in names if n.startswith(("agent.clock", "agent.drivers.transport",
                                                  "agent.drivers.modbus", "agent.drivers.bus",
                                                  "threading", "time", "queue"))}
