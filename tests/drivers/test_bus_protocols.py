"""One scheduler, every protocol: the real BusScheduler polling IEC 62056-21 and DLMS
buses of the simulator over ptys, with the meter's own relay and tamper for DLMS."""

from __future__ import annotations

import contextlib
import importlib.util
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.drivers import schedule as schedule_module
from agent.drivers.bus import BusScheduler
from agent.drivers.events import BusEvent, MeterOffline, ReadingTaken, RelaySwitched, TamperSeen
from sim.faults import apply_control
from sim.meters import serving
from tests.drivers.simbus import board


def wait_for(events: list[BusEvent], lock: threading.Lock,
             predicate: Callable[[list[BusEvent]], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with lock:
            if predicate(events):
                return
        time.sleep(0.05)
    raise AssertionError(f"timed out; events: {[type(e).__name__ for e in events]}")


def start(config: object) -> tuple[BusScheduler, list[BusEvent], threading.Lock]:
    events: list[BusEvent] = []
    lock = threading.Lock()

    def post(event: BusEvent) -> None:
        with lock:
            events.append(event)

    sched = BusScheduler(config.buses[0], list(config.meters), post,  # type: ignore[attr-defined]
                         discover=False)
    sched.start()
    return sched, events, lock


def test_iec_bus_through_the_scheduler(tmp_path: Path) -> None:
    config = board(tmp_path, protocol="iec62056-21", addresses=(1, 2), poll_interval_s=30,
                   timeout_s=0.5)
    with serving(config, speed=0.0, seed=4, turnaround_ms=2) as buses:
        sched, events, lock = start(config)
        try:
            wait_for(events, lock, lambda ev: {e.meter for e in ev if isinstance(e, ReadingTaken)}
                     == {"M1", "M2"}, 10)
        finally:
            sched.stop()
            sched.join(10)
    truth = buses[0].build.meters
    for event in events:
        assert isinstance(event, ReadingTaken) and event.reading is not None
        assert event.reading.values["import_wh"] == truth[event.meter].snapshot()["import_wh"]
        assert event.reading.serial == str(truth[event.meter].serial)  # type: ignore[attr-defined]


@pytest.mark.skipif(importlib.util.find_spec("sim.dlms_line") is None,
                    reason="the DLMS simulator is delivered separately")
def test_dlms_bus_relay_and_tamper_through_the_scheduler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(schedule_module, "EVENTS_EVERY", 2)  # the event log every 2nd poll
    config = board(tmp_path, protocol="dlms", addresses=(1,), poll_interval_s=0.2,
                   timeout_s=0.5, relay="meter")
    with serving(config, speed=0.0, seed=4, turnaround_ms=2) as buses:
        meters = buses[0].build.meters
        sched, events, lock = start(config)
        try:
            wait_for(events, lock, lambda ev: any(isinstance(e, ReadingTaken) for e in ev), 10)
            assert sched.switch_relay("M1", False)
            wait_for(events, lock, lambda ev: any(isinstance(e, RelaySwitched) for e in ev), 10)
            with buses[0].lock:
                reply = apply_control({"meter": "M1", "tamper": "magnet"}, meters,
                                      lambda _m: contextlib.nullcontext())
            assert reply["ok"], reply
            wait_for(events, lock, lambda ev: any(isinstance(e, TamperSeen) for e in ev), 15)
        finally:
            sched.stop()
            sched.join(10)
    result = next(e for e in events if isinstance(e, RelaySwitched))
    assert result.error == "" and result.state == "open" and result.connected is False
    assert meters["M1"].snapshot()["connected"] is False
    tamper = [e for e in events if isinstance(e, TamperSeen)]
    assert len(tamper) == 1 and tamper[0].kind == "magnet"
    reading = next(e for e in events if isinstance(e, ReadingTaken))
    assert reading.reading is not None
    assert reading.reading.values["import_wh"] == meters["M1"].snapshot()["import_wh"]


def test_dlms_password_and_client_come_from_the_board_config(tmp_path: Path) -> None:
    import dataclasses

    def with_password(config: object, secret: bytes, name: str) -> object:
        path = tmp_path / name
        path.write_bytes(secret + b"\n")
        meters = tuple(dataclasses.replace(m, password_file=path, client=0x20)
                       for m in config.meters)  # type: ignore[attr-defined]
        return dataclasses.replace(config, meters=meters)  # type: ignore[type-var]

    base = board(tmp_path, protocol="dlms", addresses=(1,), poll_interval_s=0.2,
                 timeout_s=0.5)
    meter_side = with_password(base, b"s3cret!!", "meter.pw")
    with serving(meter_side, speed=0.0, seed=4, turnaround_ms=2):  # type: ignore[arg-type]
        sched, events, lock = start(meter_side)  # the agent knows the password
        try:
            wait_for(events, lock, lambda ev: any(isinstance(e, ReadingTaken) for e in ev), 10)
        finally:
            sched.stop()
            sched.join(10)
        wrong = with_password(base, b"00000000", "wrong.pw")
        sched, events, lock = start(wrong)  # the factory password is refused
        try:
            wait_for(events, lock, lambda ev: any(isinstance(e, MeterOffline) for e in ev), 15)
            with lock:
                assert not any(isinstance(e, ReadingTaken) for e in events)
                offline = [e for e in events if isinstance(e, MeterOffline)][0]
            assert "refused" in offline.error.lower() or "association" in offline.error.lower()
        finally:
            sched.stop()
            sched.join(10)
