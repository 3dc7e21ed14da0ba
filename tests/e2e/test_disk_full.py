"""A full disk, for real: the agent's data_dir is a small tmpfs, filled by a file while
the agent runs (real mosquitto, the simulator on ptys, the agent as a process).
Metering, billing and relay control go on; readings that must go to make room are
reported (data_dropped); the ledger loses nothing; a start on a full disk runs
degraded; freed space brings the reserve and the normal mode back
(docs/technician.md, 'A full disk')."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.buffer.disk import RESERVE_BYTES, RESERVE_NAME
from sim.broker import find_mosquitto
from tests.e2e.harness import ROOT, Gateway, wait_until

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed")

DISK = "16m"  # the tmpfs: room for the store, the reserve (4 MiB) and its margin
ACCOUNTS = ("ACC-0001", "ACC-0002")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of DISK at tmp_path/gw/data, unmounted whatever happens."""
    data = tmp_path / "gw" / "data"
    data.mkdir(parents=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs",
                               str(data)], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs for the data dir: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the data dir (root needed): "
                    f"{done.stderr.strip()}")
    try:
        yield data
    finally:
        for _ in range(20):
            if subprocess.run(["umount", str(data)], capture_output=True).returncode == 0:
                break
            time.sleep(0.25)
        else:
            subprocess.run(["umount", "-l", str(data)], capture_output=True)


@pytest.fixture
def gateway(small_disk: Path) -> Iterator[Gateway]:
    g = Gateway(small_disk.parent, meters=2)
    try:
        yield g
    finally:
        if g.agent is not None:
            print(g.agent.tail(60))
        g.close()


def fill(path: Path) -> int:
    """Write ``path`` until the disk is full; its size."""
    with open(path, "ab", buffering=0) as f:
        try:
            while True:
                f.write(b"\xa5" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        try:
            while True:  # the last few blocks
                f.write(b"\xa5" * 512)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return path.stat().st_size


def status(g: Gateway) -> dict[str, Any]:
    try:
        return g.status()
    except (OSError, ValueError):
        return {}


def mode(g: Gateway) -> str | None:
    disk = status(g).get("disk") or {}
    value = disk.get("mode")
    return value if isinstance(value, str) else None


def log_has(g: Gateway, text: str) -> bool:
    assert g.agent is not None
    return text in g.agent.log.read_text(errors="replace")


def readings_since(g: Gateway, t: int) -> set[str]:
    return {r.meter for r in g.headend.readings(g.gw) if r.t >= t}


def ledger_cli(g: Gateway, acct: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "agent.cli", "ledger", acct, "-c",
                          str(g.config), "--json", "--limit", "100000"], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def assert_journal_consistent(g: Gateway) -> None:
    """The store's journal: gapless, sums to the balance, each top-up once; and every
    entry the head-end got is the store's entry."""
    for acct in ACCOUNTS:
        book = ledger_cli(g, acct)
        entries = book["entries"]
        assert [e["n"] for e in entries] == list(range(1, len(entries) + 1))
        assert sum(e["amt"] for e in entries) == book["balance"] == entries[-1]["bal"]
        topups = [e["ref"] for e in entries if e["kind"] == "topup"]
        assert len(topups) == len(set(topups)), "a top-up applied twice"
        by_n = {e["n"]: e for e in entries}
        for e in g.headend.ledger_entries(g.gw, acct):
            assert by_n[e["n"]] == e, "the head-end's entry differs from the store's"


def topup(g: Gateway, acct: str, txn: str) -> None:
    reply = g.command("topup", {"account": acct, "amount": 5000, "txn": txn})
    assert reply["ok"], reply


def test_the_disk_fills_while_the_agent_runs_and_it_starts_again_on_a_full_disk(
        gateway: Gateway, small_disk: Path) -> None:
    g = gateway
    g.start_agent()
    wait_until(lambda: readings_since(g, 0) == {"SDM-0001", "SDM-0002"}, 30,
               "first readings")
    reserve = small_disk / RESERVE_NAME
    assert reserve.stat().st_size == RESERVE_BYTES and mode(g) == "normal"
    topup(g, "ACC-0001", "before-full")
    # The broker goes away: readings pile up in the store; then the disk fills.
    g.broker.stop()
    time.sleep(3)
    filled_at = int(time.time())
    fill(small_disk / "filler")
    wait_until(lambda: log_has(g, "event=disk_full"), 15, "the agent to find the disk full")
    assert reserve.stat().st_size < RESERVE_BYTES  # the reserve made room for the store
    time.sleep(2)  # metering and billing go on, with the disk full
    g.broker.start()
    wait_until(lambda: [e for e in g.headend.events(g.gw, "data_dropped")
                        if e["detail"].get("reason") == "disk_full"], 30,
               "data_dropped (reason disk_full) from the full disk")
    wait_until(lambda: readings_since(g, filled_at) == {"SDM-0001", "SDM-0002"}, 20,
               "readings taken after the disk filled")
    topup(g, "ACC-0002", "while-full")  # a ledger write on the full disk
    wait_until(lambda: [e for e in g.headend.ledger_entries(g.gw, "ACC-0002")
                        if e["ref"] == "while-full"], 15, "the top-up's ledger entry")
    # Relay control on the full disk: a disconnection and a reconnection (intent is
    # durable: each one a store write).
    assert g.command("relay", {"meter": "SDM-0001", "action": "disconnect"})["ok"]
    wait_until(lambda: g.sim_state()["meters"]["SDM-0001"]["connected"] is False, 15,
               "the relay opened on a full disk")
    assert g.command("relay", {"meter": "SDM-0001", "action": "connect"})["ok"]
    wait_until(lambda: g.sim_state()["meters"]["SDM-0001"]["connected"] is True, 15,
               "the relay closed again")
    wait_until(lambda: mode(g) == "degraded", 10, "status: degraded")
    assert g.agent is not None and g.agent.alive()
    dropped = [e["detail"] for e in g.headend.events(g.gw, "data_dropped")]
    assert all(d["what"] in ("instantaneous", "readings") and d["count"] > 0
               for d in dropped), dropped
    assert not g.headend.gaps(g.gw) or wait_until(lambda: not g.headend.gaps(g.gw), 15,
                                                   "no seq lost in transit")
    assert_journal_consistent(g)

    # Stopped, the disk filled to the last byte again, started: it runs degraded.
    g.agent.stop()
    fill(small_disk / "filler-2")
    boot = g.headend.state(g.gw)
    agent = g.start_agent()
    restarted = int(time.time())
    wait_until(lambda: readings_since(g, restarted) == {"SDM-0001", "SDM-0002"}, 30,
               "readings after a start on a full disk")
    assert agent.alive() and log_has(g, "event=disk_full")
    assert "Traceback" not in agent.log.read_text(errors="replace")
    topup(g, "ACC-0001", "after-full-start")
    wait_until(lambda: [e for e in g.headend.ledger_entries(g.gw, "ACC-0001")
                        if e["ref"] == "after-full-start"], 15, "a top-up after the start")
    state = g.headend.state(g.gw)
    assert state is not None and boot is not None and state["boot"] == boot["boot"] + 1
    # It goes on in the room it has (the WAL is reused, not grown): nothing is lost.
    time.sleep(8)
    later = int(time.time()) - 2
    wait_until(lambda: readings_since(g, later) == {"SDM-0001", "SDM-0002"}, 10,
               "readings still coming, the disk still full")
    assert not log_has(g, "event=store_full_lost"), agent.tail()
    assert_journal_consistent(g)


def test_a_start_on_a_full_disk_runs_degraded_and_recovers_when_space_returns(
        gateway: Gateway, small_disk: Path) -> None:
    g = gateway
    g.start_agent()
    wait_until(lambda: readings_since(g, 0) == {"SDM-0001", "SDM-0002"}, 30,
               "first readings")
    assert g.agent is not None
    g.agent.stop()
    filler = small_disk / "filler"
    fill(filler)
    agent = g.start_agent()
    started = int(time.time())
    wait_until(lambda: mode(g) == "degraded", 20, "status: degraded")
    wait_until(lambda: readings_since(g, started) == {"SDM-0001", "SDM-0002"}, 20,
               "readings from the degraded start")
    assert not (small_disk / RESERVE_NAME).exists()  # given to the store to start
    topup(g, "ACC-0001", "degraded")
    filler.unlink()  # a technician frees space
    wait_until(lambda: mode(g) == "normal", 25, "status: normal again")
    assert (small_disk / RESERVE_NAME).stat().st_size == RESERVE_BYTES
    assert log_has(g, "event=disk_ok mode=normal")
    assert agent.alive()
    assert_journal_consistent(g)
