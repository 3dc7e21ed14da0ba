"""The real BusScheduler against the simulator over a pty: line faults, a dead meter,
discovery. Readings are checked at the BusEvent level against the simulator's true
registers (time frozen: ``speed=0``, so the truth does not move)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

from agent.config import Config
from agent.drivers.bus import BusScheduler
from agent.drivers.events import BusEvent, MeterDiscovered, MeterOffline, ReadingTaken
from sim.faults import FaultRates
from sim.meters import BusSim, serving
from tests.drivers.simbus import board

RUN_S = 5.0


def run_scheduler(config: Config, seconds: float, *, discover: bool = False,
                  until: threading.Event | None = None) -> tuple[list[BusEvent], BusScheduler]:
    events: list[BusEvent] = []
    lock = threading.Lock()

    def post(event: BusEvent) -> None:
        with lock:
            events.append(event)
        if until is not None and isinstance(event, MeterDiscovered):
            until.set()

    sched = BusScheduler(config.buses[0], list(config.meters), post, discover=discover)
    sched.start()
    try:
        if until is not None:
            until.wait(seconds)
        else:
            time.sleep(seconds)
    finally:
        sched.stop()
        sched.join(10)
    assert not sched.is_alive()
    return events, sched


def check_against_truth(events: list[BusEvent], buses: list[BusSim]) -> int:
    """Every posted reading is exactly the simulator's register; returns how many."""
    truth = buses[0].build.meters
    n = 0
    for event in events:
        if not isinstance(event, ReadingTaken):
            continue
        assert event.reading is not None
        meter = truth[event.meter]
        values = event.reading.values
        snapshot = meter.snapshot()
        assert values["import_wh"] == snapshot["import_wh"], (event, snapshot)
        assert values["export_wh"] == snapshot["export_wh"], (event, snapshot)
        assert values["p_w"] == snapshot["p_w"], (event, snapshot)
        n += 1
    return n


def test_corrupt_and_silent_replies_never_make_a_reading_and_healthy_rates_hold(
    tmp_path: Path,
) -> None:
    config = board(tmp_path, baudrate=19200, addresses=(1, 2, 3, 4), poll_interval_s=0.5,
                   timeout_s=0.1)
    healthy = ("M1", "M2", "M3")
    with serving(config, speed=0.0, seed=11, turnaround_ms=2) as buses:
        baseline, _ = run_scheduler(config, RUN_S)
    assert check_against_truth(baseline, buses) > 0
    base = Counter(e.meter for e in baseline if isinstance(e, ReadingTaken))

    faults = FaultRates(corrupt=0.10, silent=0.05)
    with serving(config, speed=0.0, seed=11, turnaround_ms=2, faults=faults) as buses:
        buses[0].build.meters["M4"].silent = True  # type: ignore[attr-defined]
        faulty, sched = run_scheduler(config, RUN_S)
    check_against_truth(faulty, buses)  # no reading from a corrupt frame, ever
    stats = sched.stats
    assert sum(stats[m].crc_errors for m in healthy) > 0  # corruption did happen
    assert sum(stats[m].timeouts for m in healthy) > 0  # and silence
    assert [e.meter for e in faulty if isinstance(e, MeterOffline)] == ["M4"]
    got = Counter(e.meter for e in faulty if isinstance(e, ReadingTaken))
    assert got["M4"] == 0
    # A corrupt or silent answer costs its meter a retry or a failed poll: the healthy
    # meters together keep 80 % of their rate, and none loses more than 40 % (a few
    # readings each: counted together, the timing noise of a busy machine averages out).
    assert sum(got[m] for m in healthy) >= 0.8 * sum(base[m] for m in healthy), (got, base)
    for m in healthy:
        assert got[m] >= 0.6 * base[m], (m, got, base)


def test_an_unconfigured_meter_is_discovered_once(tmp_path: Path) -> None:
    config = board(tmp_path, baudrate=9600, addresses=(1, 2), poll_interval_s=1.0,
                   timeout_s=0.2)
    found = threading.Event()
    with serving(config, speed=0.0, seed=2, turnaround_ms=2, extra=["5"]) as buses:
        events, _ = run_scheduler(config, 15.0, discover=True, until=found)
        assert found.is_set(), "no meter_discovered within 15 s"
        more, _ = run_scheduler(config, 1.0, discover=True)  # a fresh scheduler: reports again
    discovered = [e for e in events if isinstance(e, MeterDiscovered)]
    extra = buses[0].build.meters["extra-bus-0-5"]
    assert discovered == [MeterDiscovered(
        "bus-0", 5, str(extra.serial), "modbus")]  # type: ignore[attr-defined]
    assert check_against_truth(events + more, buses) > 0
