"""The unit of work: the writes one transaction keeps in memory until its commit.

A poll cycle's transaction posts hundreds of events and ledger entries, moves the
tally once an item and an account's balance several times a reading. Written as they
happen that is thousands of statements; kept here and written once, before the COMMIT,
it is a few rows. ``Store.tx()`` creates one ``UnitOfWork`` for its outermost
transaction (a nested ``tx()`` joins it) and drops it when the transaction ends:

  batch     lane -> [(item, t)]: the events and entries, written as rows of up to
            ``BATCH_MAX_ITEMS`` items and ``BATCH_MAX_BYTES`` (``insert_items``)
  tally     (table, lane) -> [rows, bytes, items]: the tally table's changes
  accounts  account id -> its row as changed (journal.py keeps the row in memory too)

``flush`` writes all three, in that order (the batch's rows move the tally): before
the COMMIT, before a SAVEPOINT (a rollback to it must undo only what comes after it),
and the part a read needs before that read (the pending items, the tally, the
accounts). ``forget`` drops all three when the writes are undone: a rollback, a
savepoint rolled back, a failed COMMIT. Those are the only two ways out; nothing is
hooked in from outside. What a reader keeps from the database beyond one transaction
(the store's open runs, the journal's accounts and meters) is made stale by the same
undo: ``Store.undone`` counts them, and a cache older than the count reads again.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING

from agent.buffer.schema import LANE_EVENTS, LANE_LEDGER

if TYPE_CHECKING:
    from agent.buffer.journal import Account

BATCH_MAX_ITEMS = 256  # events or entries per pending row
BATCH_MAX_BYTES = 16 * 1024  # and their bytes (a row always fits one message: forming.py)

Tally = Callable[[str, int, int, int, int], None]  # (table, lane, rows, bytes, items)

_TALLY_UPDATE = ("UPDATE tally SET rows = rows + ?, bytes = bytes + ?, "
                 "items = items + ? WHERE tbl = ? AND lane = ?")
_ACCOUNT_UPDATE = ("UPDATE accounts SET balance = ?, n = ?, reference = ?, alerts = ?, "
                   "zero_alert_at = ?, fixed_last = ?, month = ?, consumed_wh = ?, "
                   "energy_mp = ?, energy_posted = ?, duty_posted = ?, duty_mp_bp = ?, "
                   "deferred = ? WHERE id = ?")


def write_tally(conn: sqlite3.Connection, tbl: str, lane: int, rows: int, nbytes: int,
                items: int) -> None:
    """One change of the tally, written now (outside a transaction, and at the flush)."""
    conn.execute(_TALLY_UPDATE, (rows, nbytes, items, tbl, lane))


def insert_items(conn: sqlite3.Connection, lane: int, items: list[tuple[bytes, int]],
                 tally: Tally) -> None:
    """Events or entries, in order, as rows of up to BATCH_MAX_ITEMS items and
    BATCH_MAX_BYTES (at least one item a row); ``tally`` counts each row."""
    rows: list[tuple[int, bytes, int, int, int]] = []
    chunk: list[bytes] = []
    size = 0
    first_t = 0
    for item, t in items:
        if chunk and (len(chunk) >= BATCH_MAX_ITEMS or size + len(item) > BATCH_MAX_BYTES):
            rows.append((lane, b"".join(chunk), size, first_t, len(chunk)))
            chunk, size = [], 0
        if not chunk or t < first_t:
            first_t = t
        chunk.append(item)
        size += len(item)
    if chunk:
        rows.append((lane, b"".join(chunk), size, first_t, len(chunk)))
    conn.executemany("INSERT INTO pending (lane, item, size, t, n) "
                     "VALUES (?, ?, ?, ?, ?)", rows)
    for _lane, _item, nbytes, _t, n in rows:
        tally("pending", lane, 1, nbytes, n)


class UnitOfWork:
    """One transaction's writes held in memory (see the module docstring)."""

    __slots__ = ("conn", "batch", "tally", "accounts")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.batch: dict[int, list[tuple[bytes, int]]] = {}
        self.tally: dict[tuple[str, int], list[int]] = {}
        self.accounts: dict[str, Account] = {}

    # -- what the transaction does ------------------------------------------------------
    def add_item(self, lane: int, item: bytes, t: int) -> None:
        """An event or entry, written at the flush."""
        self.batch.setdefault(lane, []).append((item, t))

    def count(self, tbl: str, lane: int, rows: int, nbytes: int, items: int) -> None:
        """A change of the tally (a ``Tally``), written at the flush."""
        delta = self.tally.setdefault((tbl, lane), [0, 0, 0])
        delta[0] += rows
        delta[1] += nbytes
        delta[2] += items

    def account_changed(self, row: Account) -> None:
        """An account's row as it now is, written at the flush."""
        self.accounts[row.id] = row

    # -- the one way in ------------------------------------------------------------------
    def flush(self) -> None:
        self.flush_items()
        self.flush_tally()
        self.flush_accounts()

    def flush_items(self) -> None:
        batch, self.batch = self.batch, {}
        # Entries first, then events: forming reads each lane on its own, so the order
        # only keeps the table in a fixed commit order for whoever reads it (tools, the
        # simulation's observer).
        for lane in (LANE_LEDGER, LANE_EVENTS):
            items = batch.get(lane)
            if items:
                insert_items(self.conn, lane, items, self.count)

    def flush_tally(self) -> None:
        deltas, self.tally = self.tally, {}
        for (tbl, lane), (rows, nbytes, items) in deltas.items():
            write_tally(self.conn, tbl, lane, rows, nbytes, items)

    def flush_accounts(self) -> None:
        if not self.accounts:
            return
        changed, self.accounts = self.accounts, {}
        for acct_id in sorted(changed):
            a = changed[acct_id]
            self.conn.execute(_ACCOUNT_UPDATE, (
                a.balance, a.n, a.reference, ",".join(str(x) for x in sorted(a.alerts)),
                a.zero_alert_at, a.fixed_last, a.month, a.consumed_wh, a.energy_mp,
                a.energy_posted, a.duty_posted, a.duty_mp_bp, a.deferred, acct_id))

    # -- the one way out -----------------------------------------------------------------
    def forget(self) -> None:
        self.batch = {}
        self.tally = {}
        self.accounts = {}
