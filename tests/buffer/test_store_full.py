"""A store that finds no room (SQLite's SQLITE_FULL, made deterministic with PRAGMA
max_page_count on the writer's connection): the transaction raises StoreFullError and
leaves nothing behind; bounds.make_room drops the oldest readings, reports them, and
the ledger write that failed then succeeds."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from unittest.mock import patch

import pytest

from agent.buffer import bounds, connection
from agent.buffer.connection import FULL_FREE_BYTES, is_full
from agent.buffer.journal import Journal
from agent.buffer.store import LANE_READINGS, WAL_PAGES, WAL_PAGES_FULL, Store
from agent.drivers.reading import Reading
from agent.errors import StoreError, StoreFullError
from agent.uplink import forming
from tests.buffer.test_bounds import FULL, T0, dropped_events, fill, pending_readings


def cap_pages(store: Store, extra: int = 0) -> None:
    """No page more than the store has now (plus ``extra``): the next growth is full."""
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count = {pages + extra}")


def readings_until_full(store: Store, start: int) -> int:
    """Readings added an hour (4 meters) a transaction until one finds no room; the
    time of the first reading that did not fit."""
    t = start
    with pytest.raises(StoreFullError):
        while True:
            with store.tx():
                for i in range(4):
                    for m in range(4):
                        r = Reading(f"M{m}", t + 900 * i, {**FULL, "import_wh": t + i})
                        store.add_pending(LANE_READINGS, forming.reading_item(r), r.t, r.meter)
            t += 3600
    return t


def account(store: Store) -> Journal:
    journal = Journal(store, forming.entry_item)
    with store.tx():
        journal.ensure_account("A", "domestic")
        journal.topup("A", 10_000, "first", T0)
    return journal


def test_a_transaction_that_finds_no_room_raises_and_leaves_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path)
    journal = account(store)
    fill(store, 48)
    cap_pages(store, extra=4)
    readings_until_full(store, T0 + 48 * 3600)
    size, backlog = store.size_bytes(), store.backlog_summary()
    with pytest.raises(StoreFullError) as raised:  # a top-up and more readings, together
        with store.tx():
            journal.topup("A", 500, "lost-with-the-tx", T0 + 1)
            fill(store, 24, start=T0 + 10_000 * 3600)
    assert isinstance(raised.value, StoreError) and "disk is full" in str(raised.value)
    assert "A full disk" in str(raised.value)  # where the docs say what to do
    assert store.size_bytes() == size and store.backlog_summary() == backlog
    assert journal.account("A").balance == 10_000 and journal.account("A").n == 1
    assert journal.topup_applied("lost-with-the-tx") is None
    store.close()
    reopened = Store(tmp_path)  # what is on disk agrees with what memory held
    assert Journal(reopened).account("A").balance == 10_000
    assert reopened.size_bytes() == size
    reopened.close()


def test_make_room_drops_the_oldest_readings_and_the_ledger_write_then_fits(
        tmp_path: Path) -> None:
    store = Store(tmp_path)
    journal = account(store)
    fill(store, 48)
    cap_pages(store, extra=4)
    readings_until_full(store, T0 + 48 * 3600)
    before = pending_readings(store)
    held = store.reading_bytes()
    with pytest.raises(StoreFullError):
        with store.tx():
            journal.topup("A", 500, "second", T0 + 1)
            fill(store, 24, start=T0 + 10_000 * 3600)
    drops = bounds.make_room(store, T0 + 2, forming.ITEMS)
    assert drops.readings > 0 and store.reading_bytes() <= held // bounds.FULL_KEEP_SHARE
    after = pending_readings(store)
    assert after == before[len(before) - len(after):], "the oldest went, the newest stayed"
    assert len(before) - len(after) == drops.readings
    (event,) = dropped_events(store)
    assert event == {"what": "readings", "count": drops.readings, "from": before[0][1],
                     "to": event["to"], "reason": "disk_full"}
    assert event["to"] <= after[0][1]
    assert store.counters()["dropped_readings"] == drops.readings
    with store.tx():  # the ledger write that found no room fits now
        journal.topup("A", 500, "second", T0 + 1)
    assert journal.account("A").balance == 10_500 and journal.account("A").n == 2
    entries = journal.entries("A")
    assert [e.n for e in entries] == [1, 2] and entries[-1].bal == sum(e.amt for e in entries)
    store.close()


def test_make_room_holds_a_frozen_store_at_its_new_size(tmp_path: Path) -> None:
    store = Store(tmp_path)
    fill(store, 48)
    with store.tx():
        store.set_meta("frozen_bytes", store.size_bytes())  # under the free-disk floor
    bounds.make_room(store, T0, forming.ITEMS)
    assert store.meta("frozen_bytes") == store.size_bytes()
    store.close()


def test_make_room_with_no_readings_drops_nothing_and_reports_nothing(tmp_path: Path
                                                                      ) -> None:
    store = Store(tmp_path)
    account(store)
    assert bounds.make_room(store, T0, forming.ITEMS) == bounds.Drops()
    assert not dropped_events(store)
    store.close()


@pytest.mark.parametrize("pages", [WAL_PAGES_FULL, WAL_PAGES])
def test_while_the_disk_is_full_the_wal_is_reused_not_grown(tmp_path: Path,
                                                             pages: int) -> None:
    """WAL_PAGES_FULL keeps the WAL file small (a full disk has no room for it to grow
    into); WAL_PAGES is SQLite's default, a WAL of about 4 MiB."""
    store = Store(tmp_path)
    store.wal_pages(pages)
    assert store.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == pages
    page = store.conn.execute("PRAGMA page_size").fetchone()[0]
    journal = account(store)
    for i in range(600):  # a transaction a reading: each writes a few pages
        with store.tx():
            journal.topup("A", 1, f"t{i}", T0 + i)
            fill(store, 1, meters=1, start=T0 + 3600 * i)
    wal = (tmp_path / "agent.sqlite3-wal").stat().st_size
    if pages == WAL_PAGES_FULL:
        assert wal <= 2 * WAL_PAGES_FULL * (page + 24)
    else:
        assert wal > 2 * WAL_PAGES_FULL * (page + 24)
    store.close()


def test_an_io_error_is_a_full_disk_only_when_the_disk_has_no_room(tmp_path: Path) -> None:
    """SQLite says SQLITE_IOERR_SHMSIZE when its WAL index cannot grow on a full disk;
    the same error with room to spare is a broken disk, not a full one."""
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorname = "SQLITE_FULL"
    shm = sqlite3.OperationalError("disk I/O error")
    shm.sqlite_errorname = "SQLITE_IOERR_SHMSIZE"
    other = sqlite3.OperationalError("no such table: x")
    other.sqlite_errorname = "SQLITE_ERROR"
    with patch.object(connection, "disk_free_bytes", lambda _p: FULL_FREE_BYTES - 1):
        assert is_full(full, tmp_path) and is_full(shm, tmp_path)
        assert not is_full(other, tmp_path)
    with patch.object(connection, "disk_free_bytes", lambda _p: FULL_FREE_BYTES):
        assert is_full(full, tmp_path) and not is_full(shm, tmp_path)
