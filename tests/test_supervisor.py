"""The supervisor (agent/supervisor.py) and what the runtime does with it: a reading whose
charge raises is a bad_reading and the agent goes on; a bus thread that dies is reported
(meter_offline), started again with back-off, and the watchdog stops being fed when a
subsystem stays dead."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest

from agent import supervisor
from agent.buffer.store import LANE_EVENTS, LANE_READINGS
from agent.config import BusConfig, Config, MeterConfig
from agent.drivers.bus import BusScheduler
from agent.drivers.events import ReadingTaken
from agent.drivers.reading import Reading
from agent.errors import StoreError
from agent.runtime import Runtime
from agent.supervisor import DEAD_LIMIT_S, RESTART_MIN_S, Subsystem, Supervisor, contain, guarded
from agent.wiring import start_ledger
from sim.keys import write_key
from tests.ledger.rig import decode, make_config


# -- the parts ---------------------------------------------------------------------------
def test_guarded_keeps_and_logs_what_escapes_a_thread(caplog: pytest.LogCaptureFixture) -> None:
    def boom() -> None:
        raise RuntimeError("the bug")

    with caplog.at_level(logging.ERROR, "agent.supervisor"):
        thread = threading.Thread(target=guarded("t-test", boom))
        thread.start()
        thread.join()
    assert supervisor.crashes[-1] == ("t-test", "RuntimeError: the bug")
    assert "event=thread_crashed thread=t-test" in caplog.text and "Traceback" in caplog.text


def test_contain_returns_the_error_and_lets_the_passthrough_types_go() -> None:
    assert contain(lambda: 5, "five") == (5, None)
    result, failed = contain(lambda: 1 // 0, "division")
    assert result is None and isinstance(failed, ZeroDivisionError)
    with pytest.raises(StoreError):
        contain(lambda: (_ for _ in ()).throw(StoreError("disk")), "store",
                passthrough=(StoreError,))


class _Thing:
    """A subsystem whose thread can die, and whose restart may fail."""

    def __init__(self) -> None:
        self.up = True
        self.fail_restarts = 0
        self.restarted: list[float] = []
        self.deaths = 0

    def restart(self, now: float) -> None:
        self.restarted.append(now)
        if self.fail_restarts:
            self.fail_restarts -= 1
            raise OSError("port gone")
        self.up = True


def _watched(thing: _Thing, clock: list[float]) -> Subsystem:
    return Subsystem("thing", alive=lambda: thing.up, restart=lambda: thing.restart(clock[0]),
                     on_dead=lambda: setattr(thing, "deaths", thing.deaths + 1))


def test_a_dead_subsystem_is_reported_once_and_restarted_with_backoff() -> None:
    clock = [1000.0]
    thing = _Thing()
    sup = Supervisor()
    sup.add(_watched(thing, clock), clock[0])
    sup.check(clock[0])
    assert thing.deaths == 0 and sup.healthy(clock[0])
    thing.up, thing.fail_restarts = False, 2
    for _ in range(40):  # 40 s of checks, one a second
        clock[0] += 1
        sup.check(clock[0])
    assert thing.deaths == 1 and thing.up
    # found dead at 1001: tried at +1 s, then +2 s, then +4 s (two failures, then up)
    assert [t - 1001 for t in thing.restarted] == [RESTART_MIN_S, 3 * RESTART_MIN_S,
                                                   7 * RESTART_MIN_S]
    assert sup.status(clock[0])["subsystems"] == {"thing": {"state": "up", "restarts": 3}}


def test_a_subsystem_dead_for_longer_than_the_limit_stops_the_watchdog() -> None:
    clock = [0.0]
    thing = _Thing()
    sup = Supervisor()
    sup.add(_watched(thing, clock), 0.0)
    thing.up, thing.fail_restarts = False, 10**6
    while clock[0] < DEAD_LIMIT_S:
        clock[0] += 1
        sup.check(clock[0])
        assert sup.healthy(clock[0])
    clock[0] += 2
    sup.check(clock[0])
    assert not sup.healthy(clock[0])
    assert sup.unhealthy(clock[0])[0].startswith("thing: down")
    thing.fail_restarts = 0  # it comes back: fed again
    clock[0] += supervisor.RESTART_MAX_S + 1
    sup.check(clock[0])
    assert sup.healthy(clock[0])


def test_a_silent_subsystem_stops_the_watchdog() -> None:
    beat = [0.0]
    sup = Supervisor()
    sup.add(Subsystem("bus x", alive=lambda: True, restart=lambda: None,
                      heartbeat_s=lambda: beat[0]), 0.0)
    assert sup.healthy(DEAD_LIMIT_S)
    assert sup.unhealthy(DEAD_LIMIT_S + 1) == [f"bus x: silent {DEAD_LIMIT_S + 1:.0f} s"]
    beat[0] = DEAD_LIMIT_S
    assert sup.healthy(DEAD_LIMIT_S + 1)


# -- the runtime -------------------------------------------------------------------------
def _config(tmp: Path, meters: int = 3) -> Config:
    cfg = make_config(tmp, meters=meters)
    write_key(cfg.security.command_key_file)
    write_key(cfg.security.token_key_file)
    return cfg


class _IdleBus:
    """A bus that never talks (the charge tests drive readings themselves)."""

    def __init__(self, bus: BusConfig, meters: list[MeterConfig], post: Any, **_: Any) -> None:
        self.bus = bus
        self.meters = {m.id: m for m in meters}
        self.stats: dict[str, Any] = {}
        self.port_error = ""
        self.beat_s = None

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def join(self, timeout: float | None = None) -> None: ...


def idle_bus(bus: BusConfig, meters: list[MeterConfig], post: Any, **_: Any) -> BusScheduler:
    """The runtime's bus factory with an _IdleBus: it has only the attributes the runtime
    uses of a bus, so it is cast to the scheduler it stands in for."""
    return cast(BusScheduler, _IdleBus(bus, meters, post))


def _events(rt: Runtime, type_: str) -> list[dict[str, Any]]:
    return [e for e in map(decode, rt.store.pending_items(LANE_EVENTS)) if e["type"] == type_]


def test_a_reading_whose_charge_raises_is_a_bad_reading_and_the_others_are_charged(
        tmp_path: Path) -> None:
    rt = Runtime(_config(tmp_path), bus_factory=idle_bus, control=False)
    real = rt.ledger.charging._post_energy

    def post_energy(meter: MeterConfig, delta_wh: int, t0: int, t1: int) -> None:
        if meter.id == "M2":
            raise KeyError("a bug in the charge path")
        real(meter, delta_wh, t0, t1)

    rt.ledger.charging._post_energy = post_energy  # type: ignore[method-assign]
    t = int(time.time())
    start_ledger(rt.ledger, rt.cfg, rt.store, rt.journal, t)
    for i, wh in enumerate((1000, 1400)):
        for m in ("M1", "M2", "M3"):
            rt.inbox.put(ReadingTaken(m, Reading(m, t + 600 * i, {"import_wh": wh}, "S")))
        rt._drain_inbox()
    bad = _events(rt, "bad_reading")
    assert [(e["m"], e["detail"]["why"]) for e in bad] == [("M2", "charge_error")]
    assert "KeyError" in bad[0]["detail"]["error"]
    assert [e.kind for e in rt.journal.entries("A1") + rt.journal.entries("A3")
            if e.kind == "energy"] == ["energy", "energy"]
    assert not [e for e in rt.journal.entries("A2") if e.kind == "energy"]
    assert rt.journal.meter("M2").base_wh == 1000  # the baseline stays: charged from it next
    assert len(rt.store.pending_items(LANE_READINGS)) == 6  # every reading still reported
    errors = {m["id"]: m["errors"]["charge_errors"] for m in rt.status.report()["meters"]}
    assert errors == {"M1": 0, "M2": 1, "M3": 0}
    rt.ledger.charging._post_energy = real  # type: ignore[method-assign]
    rt.inbox.put(ReadingTaken("M2", Reading("M2", t + 1800, {"import_wh": 1500}, "S")))
    rt._drain_inbox()
    assert [e.kind for e in rt.journal.entries("A2")].count("energy") == 1  # 1000 -> 1500
    rt.store.close()


class _DyingBus(BusScheduler):
    """A real bus scheduler whose first thread dies of a bug at its first loop turn."""

    made = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _DyingBus.made += 1
        self.dies = _DyingBus.made == 1
        super().__init__(*args, transport_factory=self._transport, discover=False, **kwargs)

    def _transport(self, bus: BusConfig) -> Any:
        if self.dies:
            raise RuntimeError("a bug in the bus thread")
        from agent.errors import DriverError

        raise DriverError("no port here")  # the second one just waits for its port


def test_a_bus_thread_that_dies_is_reported_and_started_again(tmp_path: Path) -> None:
    cfg = _config(tmp_path, meters=2)
    _DyingBus.made = 0
    made: list[Runtime] = []

    def run() -> None:  # the store is the runtime thread's: made there
        made.append(Runtime(cfg, bus_factory=_DyingBus, control=False))
        made[0].run()

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    while not made:
        time.sleep(0.01)
    rt = made[0]
    first = rt.buses["rs485-0"]
    try:
        deadline = time.monotonic() + 10
        while rt.buses["rs485-0"] is first or not rt.buses["rs485-0"].is_alive():
            assert time.monotonic() < deadline, "the bus was not started again"
            time.sleep(0.05)
        assert not first.is_alive()
        status = rt.supervisor.status(time.monotonic())
        assert status["subsystems"]["bus rs485-0"] == {"state": "up",  # type: ignore[index]
                                                        "restarts": 1}
        assert rt.buses["rs485-0"].stats["M1"].offline  # online again at its first reading
    finally:
        rt.stop()
        runner.join(timeout=10)
    offline = [e for e in map(decode, _pending_events(cfg)) if e["type"] == "meter_offline"]
    assert sorted(e["m"] for e in offline) == ["M1", "M2"]
    assert all("its thread ended" in e["detail"]["error"] for e in offline)


def _pending_events(cfg: Config) -> list[bytes]:
    from agent.buffer.store import Store

    store = Store.open_readonly(cfg.gateway.data_dir)
    try:
        return store.pending_items(LANE_EVENTS)
    finally:
        store.close()
