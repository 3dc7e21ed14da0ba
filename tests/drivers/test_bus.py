"""The bus scheduler in simulated time: an in-process bus of simulated Modbus devices
(real codec, client and drivers; the clock is a SimClock), stepped by hand."""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import pytest

from agent.clock import SimClock
from agent.config import BusConfig, MeterConfig
from agent.drivers import bus as bus_module
from agent.drivers.actions import Discover
from agent.drivers.bus import READINGS_HOLD_S, READINGS_HOLD_SHARE, BusScheduler
from agent.drivers.driver import MeterDriver, MeterEvent
from agent.drivers.events import (
    BusEvent,
    MeterDiscovered,
    MeterOffline,
    MeterOnline,
    ReadDone,
    ReadingTaken,
    RelaySwitched,
    ScanDone,
    TamperSeen,
)
from agent.drivers.reading import Reading
from agent.drivers.scan import Found, scan_bus
from agent.drivers.schedule import EVENTS_EVERY, OFFLINE_AFTER, QUARANTINE_MAX_S, QUARANTINE_MIN_S
from agent.errors import TimeoutError_
from agent.relay_spec import parse_relay
from sim.modbus_device import SimCoilModule, SimDevice, SimSDM120
from tests.drivers.simbus import SimBusTransport

BUS = BusConfig(name="b0", port="sim://", baudrate=9600, poll_interval_s=1.0, timeout_s=0.2)


class ClockEvent:
    """Stands in for the scheduler's wake event: waiting moves simulated time."""

    def __init__(self, clock: SimClock) -> None:
        self.clock = clock

    def wait(self, timeout: float | None = None) -> bool:
        self.clock.advance(timeout or 0.0)
        return False

    def set(self) -> None:
        pass

    def clear(self) -> None:
        pass


def meter(meter_id: str, address: int, relay: str = "none") -> MeterConfig:
    return MeterConfig(meter_id, "b0", address, "eastron-sdm120", "ACC", relay,
                       parse_relay(relay))


def make_bus(
    devices: dict[int, SimDevice], meters: list[MeterConfig], *, discover: bool = False,
    bus: BusConfig = BUS, clock: SimClock | None = None,
    post: Callable[[BusEvent], None] | None = None,
) -> tuple[SimClock, BusScheduler, list[BusEvent], SimBusTransport]:
    """The scheduler over the devices; its posts go to the returned list, or to ``post``."""
    clock = clock or SimClock()
    transport = SimBusTransport(clock, devices)
    transport.baudrate = bus.baudrate
    events: list[BusEvent] = []
    sched = BusScheduler(bus, meters, post or events.append, clock=clock,
                         transport_factory=lambda _b: transport, discover=discover)
    sched._wake = ClockEvent(clock)  # type: ignore[assignment]
    assert sched._open()
    return clock, sched, events, transport


def run_for(sched: BusScheduler, clock: SimClock, seconds: float) -> None:
    end = clock.monotonic_s() + seconds
    while clock.monotonic_s() < end:
        sched._step()


def sdm(unit: int, clock: SimClock, serial: int = 0) -> SimSDM120:
    return SimSDM120(unit, clock=clock, serial=serial or 20_000_000 + unit, seed=unit, speed=0.0)


def test_healthy_meters_are_polled_on_their_grid() -> None:
    clock, sched, events, transport = make_bus({}, [meter("A", 1), meter("B", 2)])
    transport.devices.update({1: sdm(1, clock), 2: sdm(2, clock)})
    run_for(sched, clock, 60)
    readings = [e for e in events if isinstance(e, ReadingTaken)]
    assert 118 <= len(readings) <= 122  # two meters, one reading a second each
    assert {e.meter for e in readings} == {"A", "B"}
    assert sched.stats["A"].as_dict()["ok"] == len([e for e in readings if e.meter == "A"])


def test_a_silent_meter_costs_one_timeout_per_backoff_and_does_not_slow_the_others() -> None:
    clock, sched, events, transport = make_bus({}, [meter("A", 1), meter("DEAD", 2)])
    transport.devices[1] = sdm(1, clock)
    silent = sdm(2, clock)
    silent.silent = True
    transport.devices[2] = silent
    run_for(sched, clock, 600)
    offline = [e for e in events if isinstance(e, MeterOffline)]
    assert [e.meter for e in offline] == ["DEAD"]  # reported once
    dead = sched.stats["DEAD"]
    # Before quarantine: OFFLINE_AFTER polls of two attempts each. Then one attempt per
    # backoff period: 5, 10, 20, 40, 80, 160, 300 s ... within 600 s.
    periods, t, backoff = 0, 0.0, QUARANTINE_MIN_S
    while t + backoff <= 600 - OFFLINE_AFTER:
        t, periods, backoff = t + backoff, periods + 1, min(QUARANTINE_MAX_S, backoff * 2)
    assert dead.timeouts <= OFFLINE_AFTER * 2 + periods + 1
    assert dead.offline and dead.backoff_s == QUARANTINE_MAX_S
    healthy = [e for e in events if isinstance(e, ReadingTaken) and e.meter == "A"]
    assert len(healthy) >= 0.97 * 600  # one a second, whatever the dead meter does
    silent.silent = False
    run_for(sched, clock, QUARANTINE_MAX_S + 5)
    assert isinstance(events[-1], ReadingTaken) or any(isinstance(e, MeterOnline) for e in events)
    assert [e.meter for e in events if isinstance(e, MeterOnline)] == ["DEAD"]
    assert not sched.stats["DEAD"].offline and sched.stats["DEAD"].backoff_s == 0


def timed_bus(meters: list[MeterConfig], poll_s: float, *, discover: bool = False) -> tuple[
        SimClock, BusScheduler, list[tuple[float, BusEvent]], dict[int, float]]:
    """A bus of SDM120s whose posts are stamped with the clock, and the time each reading
    was taken (by the identity of its Reading)."""
    bus = BusConfig(name="b0", port="sim://", baudrate=115200, poll_interval_s=poll_s,
                    timeout_s=0.2)
    clock = SimClock()
    posted: list[tuple[float, BusEvent]] = []
    _, sched, _, _ = make_bus({m.address: sdm(m.address, clock) for m in meters}, meters,
                              bus=bus, clock=clock, discover=discover,
                              post=lambda e: posted.append((clock.monotonic_s(), e)))
    taken: dict[int, float] = {}
    execute = sched._execute

    def stamped(action: Any) -> Any:
        result = execute(action)
        taken[id(result)] = clock.monotonic_s()
        return result

    sched._execute = stamped  # type: ignore[method-assign]
    return clock, sched, posted, taken


def test_a_poll_cycle_is_posted_a_burst_at_a_time_within_the_hold() -> None:
    """Back to back polls (twenty meters, 30 ms a reading here): the readings
    wait in the thread and go out together, none later than READINGS_HOLD_S after it was
    taken (and one action's time: the post follows the action), in the order taken."""
    meters = [meter(f"M{i}", i) for i in range(1, 21)]
    clock, sched, posted, taken = timed_bus(meters, 5.0)
    run_for(sched, clock, 30)
    readings = [(t, e) for t, e in posted if isinstance(e, ReadingTaken)]
    assert len(readings) >= 100
    bursts = {t for t, _ in readings}
    assert len(bursts) <= len(readings) / 4
    late = max(t - taken[id(e.reading)] for t, e in readings)
    assert late <= sched._hold_s + 0.1 and sched._hold_s == READINGS_HOLD_S  # 1 s of 5 s
    order = sorted(readings, key=lambda te: taken[id(te[1].reading)])
    assert [e for _, e in order] == [e for _, e in readings]


def test_a_lone_reading_is_posted_before_the_bus_waits() -> None:
    """One meter polled every second: after its reading the bus idles longer than the
    hold, so the reading is posted then, not after the wait."""
    clock, sched, posted, taken = timed_bus([meter("A", 1)], 1.0)
    run_for(sched, clock, 10)
    readings = [(t, e) for t, e in posted if isinstance(e, ReadingTaken)]
    assert len(readings) >= 9
    assert all(t - taken[id(e.reading)] < 1e-6 for t, e in readings)


def test_the_hold_is_a_share_of_a_short_poll_interval() -> None:
    """At 1 s polls a reading waits at most a quarter of its cycle, not READINGS_HOLD_S:
    twenty meters back to back (30 ms each) fill more than the cycle's first quarter."""
    meters = [meter(f"M{i}", i) for i in range(1, 21)]
    clock, sched, posted, taken = timed_bus(meters, 1.0)
    assert sched._hold_s == READINGS_HOLD_SHARE * 1.0 < READINGS_HOLD_S
    run_for(sched, clock, 10)
    readings = [(t, e) for t, e in posted if isinstance(e, ReadingTaken)]
    assert len(readings) >= 100
    late = max(t - taken[id(e.reading)] for t, e in readings)
    assert READINGS_HOLD_SHARE * 0.5 < late <= READINGS_HOLD_SHARE + 0.1


def test_the_held_readings_go_before_the_bus_probes_for_new_meters() -> None:
    """After a cycle's polls the bus probes unconfigured addresses instead of idling: the
    cycle's readings are posted before the first probe, not a hold later."""
    meters = [meter(f"M{i}", i) for i in range(1, 6)]
    clock, sched, posted, taken = timed_bus(meters, 5.0, discover=True)
    probed: list[float] = []
    execute = sched._execute

    def watched(action: Any) -> Any:
        if isinstance(action, Discover):
            probed.append(clock.monotonic_s())
        return execute(action)

    sched._execute = watched  # type: ignore[method-assign]
    run_for(sched, clock, 12)
    readings = [(t, e) for t, e in posted if isinstance(e, ReadingTaken)]
    assert probed and len(readings) >= 10
    late = max(t - taken[id(e.reading)] for t, e in readings)
    assert late < 0.3 < sched._hold_s  # the cycle's five polls (30 ms each), not the hold


def test_the_hold_is_bounded_in_number(monkeypatch: Any) -> None:
    monkeypatch.setattr(bus_module, "READINGS_HOLD_MAX", 3)
    monkeypatch.setattr(bus_module, "READINGS_HOLD_S", 1000.0)
    meters = [meter(f"M{i}", i) for i in range(1, 11)]
    clock, sched, posted, _ = timed_bus(meters, 5.0)
    run_for(sched, clock, 0.3)  # the first cycle's ten readings, back to back
    burst_sizes = collections.Counter(t for t, e in posted if isinstance(e, ReadingTaken))
    assert list(burst_sizes.values()) == [3, 3, 3] and len(sched._held) == 1


def test_any_other_event_posts_the_held_readings_first_and_a_stop_posts_them_all() -> None:
    clock, sched, posted, _ = timed_bus([meter("A", 1), meter("B", 2)], 5.0)

    def hold(n: int) -> None:  # step until n readings are held (B's poll follows A's)
        for _ in range(10):
            if len(sched._held) == n:
                return
            sched._step()
        raise AssertionError(f"{len(sched._held)} readings held, not {n}")

    hold(2)
    assert posted == []
    assert sched.read_now("A", "cmd-1")
    for _ in range(5):  # the job comes next (after an event-log read the first poll asks)
        sched._step()
        if posted:
            break
    assert [type(e) for _, e in posted] == [ReadingTaken, ReadingTaken, ReadDone]
    posted.clear()
    run_for(sched, clock, 4.9)  # to the next cycle
    posted.clear()
    hold(2)
    assert posted == []
    sched.stop()
    sched._run()  # the thread's loop ends at once and posts what it held
    assert [type(e) for _, e in posted] == [ReadingTaken, ReadingTaken]


def test_read_and_relay_jobs_preempt_polls() -> None:
    clock, sched, events, transport = make_bus({}, [meter("A", 1, "modbus-coil:10:0")])
    transport.devices[1] = sdm(1, clock)
    coils = SimCoilModule(10)
    coils.attach(0, transport.devices[1])  # type: ignore[arg-type]
    transport.devices[10] = coils
    assert sched.read_now("A", "cmd-1") and sched.switch_relay("A", False)
    sched._step()
    sched._step()
    assert [type(e) for e in events] == [RelaySwitched, ReadDone]  # priority order
    assert events[0] == RelaySwitched("A", False, "open", "")
    read = events[1]
    assert isinstance(read, ReadDone) and read.ref == "cmd-1" and read.reading is not None
    assert read.reading.values["p_w"] == 0  # the coil cut the load


class FakeMeter:
    """A driver with a relay and an event log, as DLMS meters have."""

    def __init__(self) -> None:
        self.state = "closed"
        self.events: list[MeterEvent] = []
        self.fail_reads = False

    def read(self, meter_id: str, now_s: int, *, timeout_s: float | None = None) -> Reading:
        if self.fail_reads:
            raise TimeoutError_("no answer")
        return Reading(meter_id, now_s, {"import_wh": 1})

    def close(self, *, timeout_s: float | None = None) -> None:
        pass

    def read_serial(self, *, timeout_s: float | None = None) -> str:
        return "S1"

    def relay_set(self, connected: bool, *, timeout_s: float | None = None) -> None:
        # Like a DLMS disconnect control in mode 2: a remote reconnect only arms it.
        self.state = "armed" if connected else "open"

    def relay_state(self, *, timeout_s: float | None = None) -> str:
        return self.state

    def read_events(self, *, timeout_s: float | None = None) -> list[MeterEvent]:
        return list(self.events)


def with_fake(sched: BusScheduler, fake: MeterDriver) -> None:
    sched._driver = lambda _meter_id: fake  # type: ignore[method-assign,assignment]


def test_relay_kind_meter_goes_through_the_driver() -> None:
    clock, sched, events, _ = make_bus({}, [meter("A", 1, "meter")])
    fake = FakeMeter()
    with_fake(sched, fake)
    sched.switch_relay("A", False)
    sched._step()
    assert events[-1] == RelaySwitched("A", False, "open", "")
    sched.switch_relay("A", True)
    sched._step()
    assert events[-1] == RelaySwitched("A", False, "armed", "")


def test_relay_kind_meter_without_a_relay_driver_fails_cleanly() -> None:
    clock, sched, events, transport = make_bus({}, [meter("A", 1, "meter")])
    transport.devices[1] = sdm(1, clock)
    sched.switch_relay("A", False)
    sched._step()
    assert isinstance(events[-1], RelaySwitched) and events[-1].connected is None
    assert "has no relay" in events[-1].error


def test_tamper_events_are_read_every_tenth_poll_and_posted_once() -> None:
    clock, sched, events, _ = make_bus({}, [meter("A", 1)])
    fake = FakeMeter()
    fake.events = [MeterEvent("magnet", 201, 1_767_225_000)]
    with_fake(sched, fake)
    run_for(sched, clock, 0.5)
    assert [e for e in events if isinstance(e, TamperSeen)] == [
        TamperSeen("A", "magnet", 201, 1_767_225_000)]
    fake.events.append(MeterEvent("cover_open", 251, 1_767_225_100))
    run_for(sched, clock, EVENTS_EVERY + 0.5)
    tamper = [e for e in events if isinstance(e, TamperSeen)]
    assert [e.code for e in tamper] == [201, 251]


def test_discovery_reports_an_unconfigured_meter_once() -> None:
    clock, sched, events, transport = make_bus({}, [meter("A", 1)], discover=True)
    transport.devices.update({1: sdm(1, clock), 7: sdm(7, clock, serial=31_415_926)})
    run_for(sched, clock, 700)  # more than two sweeps (SWEEP_PAUSE_S between them)
    found = [e for e in events if isinstance(e, MeterDiscovered)]
    assert found == [MeterDiscovered("b0", 7, "31415926", "modbus")]
    readings = [e for e in events if isinstance(e, ReadingTaken)]
    assert len(readings) >= 0.97 * 700  # discovery only used idle time
    probed = {r.unit for r in transport.requests}
    assert probed == set(range(1, 248))  # every address was asked, one at a time


def test_scan_job_runs_between_polls_and_reports_once() -> None:
    clock, sched, events, transport = make_bus({}, [meter("A", 1)])
    transport.devices.update({1: sdm(1, clock), 3: sdm(3, clock, serial=12_345_678)})
    assert sched.scan(range(1, 6), "scan-1")
    assert not sched.scan([1], "scan-2")  # one at a time
    with pytest.raises(ValueError):
        sched.scan([0, 248], "bad")
    run_for(sched, clock, 3)
    results = [e for e in events if isinstance(e, ScanDone)]
    assert len(results) == 1 and results[0].ref == "scan-1"
    detail = results[0].reply()
    assert detail["addresses"] == 5 and detail["errors"] == []
    assert detail["found"] == [
        {"address": 1, "protocol": "modbus", "serial": "20000001", "meter": "A"},
        {"address": 3, "protocol": "modbus", "serial": "12345678", "meter": None}]
    assert any(isinstance(e, ReadingTaken) for e in events)


def test_scan_bus_without_the_agent() -> None:
    clock = SimClock()
    transport = SimBusTransport(clock, {2: sdm(2, clock), 9: sdm(9, clock)})
    seen: list[int] = []
    found = scan_bus(transport, "modbus", range(1, 11), timeout_s=0.05,
                     progress=lambda a, _f: seen.append(a), clock=clock)
    assert found == [Found(2, "modbus", "20000002"), Found(9, "modbus", "20000009")]
    assert seen == list(range(1, 11))


def test_the_wire_limit_arithmetic() -> None:
    from bench.wire_limit import poll_wire_s

    wire_s, n_bytes = poll_wire_s(9600, 0.005)
    # two requests: (8 + 69) and (8 + 17) bytes, each after t3.5 and a 5 ms turnaround
    assert n_bytes == 102
    assert wire_s == pytest.approx(2 * (3.5 * 11 / 9600 + 0.005) + 102 * 11 / 9600)
