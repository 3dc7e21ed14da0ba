"""The runtime on a full disk, in-process (tests/e2e/test_disk_full.py does it with a
real full filesystem): no exception escapes the loop, every reading is charged, the
oldest buffered readings are dropped and reported, the status says degraded; a start
on a full disk releases the reserve and runs; with no room at all, one line, exit 2."""

from __future__ import annotations

import errno
import json
import time
from pathlib import Path
from typing import Any, cast

import pytest

from agent import runtime as runtime_module
from agent.buffer import bounds, room
from agent.buffer.disk import DEGRADED, RESERVE_NAME, DiskGuard
from agent.buffer.store import LANE_EVENTS, LANE_READINGS, Store
from agent.config import BusConfig, MeterConfig
from agent.drivers.bus import BusScheduler
from agent.drivers.events import ReadingTaken
from agent.drivers.reading import Reading
from agent.errors import StoreFullError
from agent.runtime import Runtime
from agent.uplink import forming
from agent.uplink.cbor import loads
from agent.wiring import start_ledger
from tests.ledger.rig import decode
from tests.test_supervisor import _config, _IdleBus, idle_bus

KIB = 1024
VALUES = {"export_wh": 3, "p_w": 1500, "v_dv": 2301, "i_ma": 6500, "f_chz": 4998,
          "pf_milli": 950}


class _Bus(_IdleBus):
    """An idle bus that takes relay switches (the loop's relay step asks it)."""

    def switch_relay(self, meter_id: str, connected: bool) -> bool:
        return False


def relay_bus(bus: BusConfig, meters: list[MeterConfig], post: Any, **_: Any) -> BusScheduler:
    return cast(BusScheduler, _Bus(bus, meters, post))


class _Free:
    """The disk's free bytes, as the test says (the real disk has room)."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __call__(self, _path: Path) -> int:
        return self.value


def small_reserve(rt: Runtime, free: _Free | None = None) -> DiskGuard:
    """A reserve of 64 KiB; the mode as the runtime has it."""
    rt.disk = DiskGuard(rt.cfg.gateway.data_dir, reserve_bytes=64 * KIB, keep_bytes=16 * KIB,
                        resume_free_bytes=0, free_bytes=free or _Free(1 << 30))
    rt.room.guard = rt.status.disk = rt.disk
    return rt.disk


def events(rt: Runtime, type_: str) -> list[dict[str, Any]]:
    return [e for e in map(decode, rt.store.pending_items(LANE_EVENTS)) if e["type"] == type_]


def cap_pages(store: Store, extra: int) -> None:
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count = {pages + extra}")


def test_a_store_that_fills_while_the_agent_runs_drops_readings_and_charges_on(
        tmp_path: Path) -> None:
    rt = Runtime(_config(tmp_path), bus_factory=relay_bus, control=False)
    free = _Free(1 << 30)
    guard = small_reserve(rt, free)
    t0 = int(time.time()) - 86_400
    start_ledger(rt.ledger, rt.cfg, rt.store, rt.journal, t0)
    guard.start(t0)
    free.value = 0  # what the store finds below: no room (the reserve check sees it too)
    meters = ("M1", "M2", "M3")
    wh = 1000
    # The link is down: a backlog of readings piles up (no energy drawn: no entries)...
    for i in range(0, 1200, 10):
        for m in meters:
            for k in range(10):
                rt.inbox.put(ReadingTaken(m, Reading(
                    m, t0 + 60 * (i + k), {"import_wh": wh, **VALUES}, "S")))
        rt.step(status_file=False)
    # ...then the store can grow no more, and every reading draws energy (an entry each).
    cap_pages(rt.store, extra=2)
    for i in range(1200, 1300):
        wh += 7
        for m in meters:
            rt.inbox.put(ReadingTaken(m, Reading(m, t0 + 60 * i,
                                                 {"import_wh": wh, **VALUES}, "S")))
        rt.step(status_file=False)  # nothing may escape it
    assert guard.state == DEGRADED and rt.status.report()["disk"]["mode"] == "degraded"
    assert rt.room.lost == 0
    dropped = [e["detail"] for e in events(rt, "data_dropped")]
    assert dropped and all(d["what"] == "readings" and d["reason"] == "disk_full"
                           and d["count"] > 0 for d in dropped)
    kept = [cast(list[Any], loads(item)) for item in rt.store.pending_items(LANE_READINGS)]
    assert kept[-1][1] == t0 + 60 * 1299, "the newest reading is kept"
    assert max(d["to"] for d in dropped) <= min(r[1] for r in kept), "oldest dropped first"
    # Every reading was charged: each meter's baseline is its last reading, and each
    # account's journal is gapless and sums to its balance.
    for m in meters:
        assert rt.journal.meter(m).base_wh == wh
    for acct in rt.journal.accounts():
        entries = rt.journal.entries(acct.id, limit=100_000)
        assert [e.n for e in entries] == list(range(1, len(entries) + 1))
        assert sum(e.amt for e in entries) == acct.balance
        assert [e for e in entries if e.kind == "energy"]
    rt.store.close()


def test_a_status_file_that_finds_the_disk_full_releases_the_reserve(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rt = Runtime(_config(tmp_path, meters=1), bus_factory=idle_bus, control=False)
    guard = small_reserve(rt)
    guard.start(int(time.time()))

    def no_space(self: Path, *args: Any, **kwargs: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    t = int(time.time())
    with rt.store.tx():
        for i in range(100):
            rt.store.add_pending(LANE_READINGS, forming.reading_item(
                Reading("M1", t + i, {"import_wh": 1000 + i, **VALUES})), t + i, "M1")
    monkeypatch.setattr(Path, "write_text", no_space)
    rt.status.write()
    assert guard.state == DEGRADED and guard.held_bytes() == 16 * KIB
    assert rt.status.snapshot["disk"]["mode"] == "normal"  # the snapshot taken before
    # the same as when the store finds it full: the oldest readings make room
    [dropped] = [e["detail"] for e in events(rt, "data_dropped")]
    assert dropped["reason"] == "disk_full" and dropped["from"] == t
    for _ in range(3):  # failing again (every second): nothing more is dropped
        rt.status.write()
    assert rt.status.snapshot["disk"]["mode"] == "degraded"
    assert len(events(rt, "data_dropped")) == 1 and guard.fulls == 1
    rt.store.close()


class _FullUntilReserveGoes:
    """Store(), as on a disk with no free byte: it opens only once the reserve is gone
    (the WAL index needs room)."""

    def __init__(self, data_dir: Path, **kwargs: Any) -> None:
        self.__dict__["_store"] = None
        if (Path(data_dir) / RESERVE_NAME).exists():
            raise StoreFullError("store: no room to write, the disk is full (test)")
        self.__dict__["_store"] = Store(data_dir, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_store"], name)


def test_a_start_on_a_full_disk_releases_the_reserve_and_runs_degraded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config(tmp_path, meters=1)
    Store(cfg.gateway.data_dir).close()
    (Path(cfg.gateway.data_dir) / RESERVE_NAME).write_bytes(b"\0" * 4096)
    monkeypatch.setattr(runtime_module, "Store", _FullUntilReserveGoes)
    rt = Runtime(cfg, bus_factory=idle_bus, control=False)
    assert rt.disk.state == DEGRADED and rt.disk.reason == "start-up: the store"
    assert not (Path(cfg.gateway.data_dir) / RESERVE_NAME).exists()
    assert rt.boot == 1
    rt.store.close()


def test_a_start_with_no_room_at_all_is_one_line_and_exit_2(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from agent import cli
    from tests.e2e.harness import make_config

    config = make_config(tmp_path, 1, meters=1)

    class _NoRoom:
        def __init__(self, data_dir: Path, **kwargs: Any) -> None:
            raise StoreFullError(f"store {data_dir}/agent.sqlite3: no room to write, the disk "
                                 "is full (disk I/O error): see docs/technician.md, "
                                 "'A full disk'")

    monkeypatch.setattr(runtime_module, "Store", _NoRoom)
    assert cli.main(["run", "-c", str(config)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines()
           if line.startswith("meter-agent:")]  # the rest is the log
    assert len(err) == 1 and "disk is full" in err[0] and "A full disk" in err[0]


def test_work_that_never_finds_room_is_logged_not_raised(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rt = Runtime(_config(tmp_path, meters=1), bus_factory=idle_bus, control=False)
    small_reserve(rt)
    calls = []

    def full() -> None:
        calls.append(1)
        raise StoreFullError("no room (test)")

    done, _ = rt._with_room(full, "test work")
    assert not done and len(calls) == room.FULL_RETRIES + 1
    assert rt.room.lost == 1
    for _ in range(5):  # logged once per LOST_LOG_EVERY_S, counted every time
        rt._with_room(full, "test work")
    assert rt.room.lost == 6
    assert len([r for r in caplog.records if "event=store_full_lost" in r.getMessage()]) == 1
    assert bounds.FULL_KEEP_SHARE == 2
    rt.store.close()


def test_status_the_page_and_the_health_report_say_degraded(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent import cli
    from agent.config import load_config
    from agent.web.page import render_page
    from sim.keys import write_key
    from tests.e2e.harness import make_config

    path = make_config(tmp_path, 1, meters=1)
    cfg = load_config(path)
    write_key(cfg.security.command_key_file)
    write_key(cfg.security.token_key_file)
    rt = Runtime(cfg, bus_factory=idle_bus, control=False)
    guard = small_reserve(rt, _Free(1 << 30))
    guard.start(int(time.time()))
    rt.status.write()
    assert cli.main(["status", "-c", str(path)]) == 0
    assert "disk    ok" in capsys.readouterr().out
    guard.full(1_767_225_600, "readings")
    rt.status.write()
    assert cli.main(["status", "-c", str(path)]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("disk")][0]
    assert "FULL: degraded" in line and "2026-01-01 05:30:00 (readings)" in line
    assert "A full disk" in line
    assert "FULL: degraded" in render_page(rt.status.snapshot)
    assert rt.status.health()["disk_mode"] == "degraded"
    assert json.loads(rt.delivery.state_payload(rt.status.health()))["disk"] == "degraded"
    rt.store.close()
