"""The store: WAL + FULL, boot and seq durable, outbox rows leave only on ack, seen commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agent.buffer import outbox
from agent.buffer.journal import Journal
from agent.buffer.store import LANE_EVENTS, LANE_READINGS, Store
from agent.drivers.reading import Reading
from agent.uplink import cbor


def test_pragmas(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_boot_counts_and_survives_reopen(tmp_path: Path) -> None:
    assert Store(tmp_path).next_boot() == 1
    assert Store(tmp_path).next_boot() == 2


def test_seq_gapless_and_rolled_back_with_its_transaction(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with store.tx():
        assert store.take_seq() == 1
    try:
        with store.tx():
            assert store.take_seq() == 2
            raise RuntimeError("crash before commit")
    except RuntimeError:
        pass
    with store.tx():
        assert store.take_seq() == 2


def test_outbox_row_leaves_only_on_ack(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with store.tx():
        for i in range(3):
            store.add_pending(LANE_READINGS, outbox.reading_item(
                Reading("M1", 100 + i, {"import_wh": 1000 + i})), 100 + i)
        store.add_pending(LANE_EVENTS, outbox.event_item(100, "meter_online", m="M1"), 100)
    assert outbox.form_messages(store, "gw1", 1, 200, link_up=True) == 2
    rows = store.outbox_next(set(), 10)
    assert [r.topic for r in rows] == ["up/events", "up/readings"]  # events first
    assert [r.seq for r in rows] == [1, 2]
    readings = cbor.loads(rows[1].payload)
    assert readings["v"] == 1 and readings["gw"] == "gw1" and readings["seq"] == 2
    assert readings["readings"][0]["import_wh"] == [1000, 1, 1]
    assert store.outbox_next({1}, 10)[0].seq == 2  # in flight rows are skipped
    store.ack(1)
    assert store.backlog()[0] == 1
    reopened = Store(tmp_path)
    assert reopened.outbox_next(set(), 10)[0].payload == rows[1].payload  # same bytes


def test_offline_readings_wait_for_a_full_batch(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with store.tx():
        store.add_pending(LANE_READINGS, outbox.reading_item(Reading("M1", 1, {"p_w": 5})), 1)
    assert outbox.form_messages(store, "gw1", 1, 2, link_up=False) == 0
    assert outbox.form_messages(store, "gw1", 1, 2, link_up=True) == 1


def test_seen_commands_kept_until_exp(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with store.tx():
        store.remember("c1", b"\xa0", exp=100)
        store.remember("c2", b"\xa0", exp=300)
    assert store.forget_expired(200) == 1
    assert store.seen_reply("c1") is None and store.seen_reply("c2") == b"\xa0"


def test_topup_once_per_txn_and_journal_sums(tmp_path: Path) -> None:
    store = Store(tmp_path)
    journal = Journal(store)
    with store.tx():
        journal.ensure_account("A", "domestic")
        assert journal.topup("A", 500, "txn-1", 10) is not None
        assert journal.topup("A", 500, "txn-1", 11) is None
        journal.post("A", 12, "energy", -120, "M1")
    entries = journal.entries("A")
    assert [e.n for e in entries] == [1, 2]
    assert sum(e.amt for e in entries) == entries[-1].bal == journal.account("A").balance == 380


def test_committed_state_survives_kill_9(tmp_path: Path) -> None:
    """A child commits, then is SIGKILLed mid-way through an uncommitted transaction."""
    code = f"""
import os, signal
from pathlib import Path
from agent.buffer.store import Store
from agent.buffer.journal import Journal
s = Store(Path({str(tmp_path)!r})); j = Journal(s)
with s.tx():
    j.ensure_account("A", "t"); j.topup("A", 700, "x1", 1)
with s.tx():
    j.topup("A", 900, "x2", 2)
    os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2])
    assert proc.returncode == -9
    store = Store(tmp_path)
    journal = Journal(store)
    assert journal.account("A").balance == 700
    assert [e.ref for e in journal.entries("A")] == ["x1"]
