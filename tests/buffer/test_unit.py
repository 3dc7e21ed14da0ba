"""buffer/unit.py on its own: the writes a transaction keeps in memory reach SQLite at
the commit, before a savepoint and before a read that needs them, and nowhere else;
they are forgotten, with every cache read before, on a rollback, a savepoint rolled
back and a failed COMMIT."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.buffer import unit
from agent.buffer.journal import Journal
from agent.buffer.store import LANE_EVENTS, LANE_LEDGER, Store
from agent.errors import StoreError
from agent.events import MeterOnline
from agent.uplink import forming

T0 = 1_767_225_600


class Boom(Exception):
    pass


def open_store(tmp_path: Path) -> tuple[Store, Journal]:
    store = Store(tmp_path)
    journal = Journal(store, forming.entry_item)
    with store.tx():
        journal.ensure_account("A", "flat")
    return store, journal


def seen(tmp_path: Path) -> tuple[int, int, int]:
    """(pending rows, pending items in the tally, A's balance) as another connection
    sees them: only what was committed."""
    conn = sqlite3.connect(tmp_path / "agent.sqlite3")
    try:
        rows = conn.execute("SELECT COUNT(*) FROM pending").fetchone()[0]
        items = conn.execute("SELECT SUM(items) FROM tally WHERE tbl = 'pending'").fetchone()[0]
        balance = conn.execute("SELECT balance FROM accounts WHERE id = 'A'").fetchone()[0]
    finally:
        conn.close()
    return int(rows), int(items), int(balance)


def outside(store: Store) -> bool:
    """No transaction and no unit of work (a function: mypy keeps what it narrowed)."""
    return store.unit is None and not store.in_tx


def event(i: int) -> bytes:
    return forming.event_item(T0 + i, MeterOnline(f"M{i}", None))


def test_the_writes_reach_sqlite_at_the_commit_as_a_few_rows(tmp_path: Path) -> None:
    store, journal = open_store(tmp_path)
    with store.tx():
        work = store.unit
        assert work is not None and store.in_tx
        for i in range(300):
            store.add_pending(LANE_EVENTS, event(i), T0 + i)
        journal.topup("A", 500, "t1", T0)
        assert len(work.batch[LANE_EVENTS]) == 300 and set(work.accounts) == {"A"}
        assert work.tally == {} and seen(tmp_path) == (0, 0, 0)  # nothing written yet
        with store.tx():  # a nested tx joins: the same unit
            assert store.unit is work
    assert outside(store)
    # 300 events in rows of BATCH_MAX_ITEMS, one entry in one row: 3 rows, 301 items
    assert seen(tmp_path) == (3, 301, 500)
    assert -(-300 // unit.BATCH_MAX_ITEMS) == 2
    assert journal.account("A").balance == 500


def test_a_rollback_forgets_every_write_and_what_memory_read(tmp_path: Path) -> None:
    store, journal = open_store(tmp_path)
    undone = store.undone
    with pytest.raises(Boom), store.tx():
        store.add_pending(LANE_EVENTS, event(1), T0)
        journal.topup("A", 500, "t1", T0)
        assert journal.account("A").balance == 500  # in memory
        raise Boom
    assert store.undone == undone + 1 and outside(store)
    assert seen(tmp_path) == (0, 0, 0)
    assert journal.account("A").balance == 0  # read again from SQLite
    with store.tx():  # and the next transaction starts clean
        store.add_pending(LANE_LEDGER, b"\x01", T0)
    assert seen(tmp_path) == (1, 1, 0)


def test_the_moratoria_and_disconnections_memory_holds_follow_the_tables(
        tmp_path: Path) -> None:
    store, journal = open_store(tmp_path)
    assert journal.moratorium_until("A") is None and journal.count_disconnects(0) == 0
    with store.tx():
        journal.set_moratorium("A", T0 + 100, "works")
        journal.set_moratorium("*", T0 + 50, "upgrade")
        journal.record_disconnect(T0)
        journal.record_disconnect(T0 + 10)
    assert journal.moratorium_until("A") == T0 + 100 and journal.moratorium_until("B") == T0 + 50
    assert journal.count_disconnects(T0 + 5) == 1 and journal.count_disconnects(T0) == 2
    with pytest.raises(Boom), store.tx():
        journal.set_moratorium("*", T0 + 900, "longer")
        journal.record_disconnect(T0 + 20)
        assert journal.moratorium_until("A") == T0 + 900 and journal.count_disconnects(0) == 3
        raise Boom
    # undone: read again, as committed
    assert journal.moratorium_until("A") == T0 + 100 and journal.count_disconnects(0) == 2
    with store.tx():  # a day on, the old ones are pruned, in the table and in memory
        journal.record_disconnect(T0 + 86_405)
    fresh = Journal(store, forming.entry_item)
    for j in (journal, fresh):
        assert j.count_disconnects(0) == 2 and j.count_disconnects(T0 + 86_400) == 1
        assert j.moratorium_until("A") == T0 + 100


def test_a_savepoint_rolled_back_undoes_only_what_came_after_it(tmp_path: Path) -> None:
    store, journal = open_store(tmp_path)
    with store.tx():
        store.add_pending(LANE_EVENTS, event(1), T0)
        journal.topup("A", 100, "t1", T0)
        with pytest.raises(Boom), store.savepoint():
            work = store.unit
            assert work is not None and work.batch == {} and work.accounts == {}  # flushed
            store.add_pending(LANE_EVENTS, event(2), T0)
            journal.topup("A", 900, "t2", T0)
            raise Boom
        assert work is not None and store.unit is work
        assert work.batch == {} and work.accounts == {}
        assert journal.account("A").balance == 100  # read again: the savepoint's undone
        store.add_pending(LANE_EVENTS, event(3), T0)
    # events 1 and 3 and the first entry; the second top-up is gone
    assert seen(tmp_path) == (3, 3, 100)
    assert journal.topup_applied("t2") is None and journal.topup_applied("t1") == ("A", 100)


def test_a_failed_commit_forgets_like_a_rollback(tmp_path: Path) -> None:
    store, journal = open_store(tmp_path)
    # A deferred foreign key fails at the COMMIT itself, after the flush.
    with store.tx():
        store.conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        store.conn.execute("CREATE TABLE child (p INTEGER REFERENCES parent (id) "
                           "DEFERRABLE INITIALLY DEFERRED)")
    undone = store.undone
    with pytest.raises(StoreError, match="store transaction failed"), store.tx():
        store.add_pending(LANE_EVENTS, event(1), T0)
        journal.topup("A", 500, "t1", T0)
        store.conn.execute("INSERT INTO child (p) VALUES (7)")
    assert store.undone == undone + 1 and outside(store)
    assert seen(tmp_path) == (0, 0, 0)
    assert journal.account("A").balance == 0 and store.pending_items(LANE_EVENTS) == []
    assert store.backlog_summary().items == 0  # the tally agrees with the table


def test_a_read_of_the_pending_items_or_the_tally_flushes_only_what_it_needs(
        tmp_path: Path) -> None:
    store, journal = open_store(tmp_path)
    with store.tx():
        store.add_pending(LANE_EVENTS, event(1), T0)
        journal.topup("A", 500, "t1", T0)
        work = store.unit
        assert work is not None
        assert store.pending_items(LANE_EVENTS) == [event(1)]  # the batch was written
        assert work.batch == {} and work.tally != {} and set(work.accounts) == {"A"}
        assert store.pending_stats(LANE_EVENTS) == (1, T0)  # and now the tally
        assert work.tally == {} and set(work.accounts) == {"A"}  # accounts wait
    assert seen(tmp_path) == (2, 2, 500)
