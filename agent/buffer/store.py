"""The durable store: one SQLite file in ``gateway.data_dir``, one writer.

WAL with ``synchronous=FULL``: a committed transaction survives kill -9 and a
power cut. State that must agree (journal + balance + outbox row + seen
command + relay intent) is changed in ONE ``with store.tx():`` transaction.
Only the runtime thread holds the writable ``Store``; the CLI and the status
page open ``Store.open_readonly``. A write that finds no room (SQLITE_FULL, at a
statement or at the COMMIT) raises ``StoreFullError`` with the transaction undone; the
runtime makes room (buffer/disk.py) and runs the same work again.

Tables
  meta      boot counter, next uplink seq, schema version, drop counters
  pending   items (events, ledger entries) not yet in a message, and readings as
            runs: one row holds up to ``RUN_MAX`` consecutive readings of one meter
            (a CBOR sequence, RFC 8742, of ``forming.reading_item``s), appended to
            in place until the run is sealed; so a long outage costs one row per
            meter and day, not one per reading, and drains at a few bytes per reading.
            Events and entries added in one transaction are written at its commit as
            a few rows (CBOR sequences of up to ``BATCH_MAX_ITEMS`` items, ``n`` of
            them), not a row each: a poll cycle posts hundreds of entries
  outbox    formed messages: seq -> topic + exact bytes; deleted only on PUBACK
  seen      command ids with their stored reply, kept until the command's exp
  tally     per (table, lane): rows, bytes and items, kept by the methods below in
            the transaction of each change (and recounted at every open), so the
            byte cap and the health report cost no table scan
  (and the ledger's tables, journal.py's, in the same database)

Every table and every migration of an older file are schema.py's (one version counter).
``Store`` is one class in three layers, one module each: transaction.py (the file,
opened by connection.py, and its transactions), backlog.py (what is read: pending
rows, messages, the backlog from the tally), and this module (what is written: meta,
pending items and runs, the outbox, seen commands, the tally kept with each change).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agent.buffer import schema
from agent.buffer.backlog import PendingRow as PendingRow
from agent.buffer.backlog import Reads
from agent.buffer.connection import DB_NAME as DB_NAME
from agent.buffer.connection import broken
from agent.buffer.schema import LANE_BACKLOG as LANE_BACKLOG
from agent.buffer.schema import LANE_EVENTS as LANE_EVENTS
from agent.buffer.schema import LANE_LEDGER as LANE_LEDGER
from agent.buffer.schema import LANE_READINGS as LANE_READINGS
from agent.buffer.schema import LANE_REPLY as LANE_REPLY
from agent.buffer.schema import READING_LANES
from agent.buffer.unit import BATCH_MAX_BYTES as BATCH_MAX_BYTES
from agent.buffer.unit import BATCH_MAX_ITEMS as BATCH_MAX_ITEMS
from agent.buffer.unit import insert_items, write_tally
from agent.errors import StoreError, StoreFullError

LANE_TOPICS = {
    LANE_REPLY: "up/reply",
    LANE_EVENTS: "up/events",
    LANE_LEDGER: "up/ledger",
    LANE_READINGS: "up/readings",
    LANE_BACKLOG: "up/readings",
}
COUNTERS = ("stripped_readings", "dropped_readings", "dropped_messages")
RUN_MAX = 96  # readings per run row: a day at 15-minute polls
_CHUNK = 500  # keys per DELETE ... IN (...): under SQLite's parameter limit
WAL_PAGES = 1000  # pages in the WAL before it is checkpointed (SQLite's default)
# While the disk is full: a checkpoint every this many pages keeps the WAL under about
# 256 KiB, so that it is reused from its start instead of grown into space there is not.
WAL_PAGES_FULL = 64


class Store(Reads):
    """The single writer (its file and transactions: transaction.py; its reads:
    backlog.py). Only the runtime thread holds the writable Store."""

    def __init__(self, data_dir: Path, *, readonly: bool = False) -> None:
        super().__init__(data_dir, readonly=readonly)
        # The open runs (see _runs), and ``undone`` when they were read.
        self._open_runs: dict[str, tuple[int, int, int]] | None = None
        self._runs_undone = self.undone
        if not readonly:
            try:
                self._create()
            except StoreFullError:
                self.conn.close()
                raise
            except sqlite3.Error as exc:
                self.conn.close()
                raise broken(self.path, f"cannot be opened ({exc})") from exc

    def _create(self) -> None:
        with self.tx():
            fresh = self.conn.execute(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'meta'").fetchone()[0] == 0
            schema.create(self.conn)
            self._meta_default("schema", schema.VERSION if fresh else 1)
            self._meta_default("boot", 0)
            self._meta_default("next_seq", 1)
            self._meta_default("frozen_bytes", 0)  # bounds.store_cap: 0 = not frozen
            for key in COUNTERS:
                self._meta_default(key, 0)
            try:
                schema.migrate(self.conn, self.meta("schema"),
                               lambda version: self.set_meta("schema", version))
            except ValueError as exc:
                raise StoreError(f"{self.path}: {exc}") from exc
            schema.create_indexes(self.conn)
            self._recount()

    def _recount(self) -> None:
        """The tally from the rows (one scan, at open): whatever happened before, the
        counts are right from here on."""
        self.conn.execute("DELETE FROM tally")
        for tbl in ("pending", "outbox"):
            for lane in LANE_TOPICS:
                self.conn.execute("INSERT INTO tally (tbl, lane) VALUES (?, ?)", (tbl, lane))
        for lane, rows, nbytes, items in self.conn.execute(
                "SELECT lane, COUNT(*), SUM(size), SUM(n) FROM pending GROUP BY lane").fetchall():
            self._tally("pending", lane, rows, nbytes, items)
        for lane, rows, nbytes, items in self.conn.execute(
                "SELECT lane, COUNT(*), SUM(LENGTH(payload)), SUM(items) FROM outbox "
                "GROUP BY lane").fetchall():
            self._tally("outbox", lane, rows, nbytes, items)

    def _tally(self, tbl: str, lane: int, rows: int, nbytes: int, items: int) -> None:
        """A change of the tally: kept by the unit of work inside a transaction (written
        once at its commit instead of an UPDATE per item), written now outside one."""
        if self.unit is None:
            write_tally(self.conn, tbl, lane, rows, nbytes, items)
        else:
            self.unit.count(tbl, lane, rows, nbytes, items)

    def _delete(self, tbl: str, key: str, size: str, items: str, keys: list[int]) -> None:
        """Delete rows by key, keeping the tally; chunks of ``_CHUNK`` keys."""
        for i in range(0, len(keys), _CHUNK):
            chunk = keys[i:i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for lane, rows, nbytes, n in self.conn.execute(
                    f"SELECT lane, COUNT(*), SUM({size}), SUM({items}) FROM {tbl} "
                    f"WHERE {key} IN ({marks}) GROUP BY lane", chunk).fetchall():
                self._tally(tbl, lane, -rows, -nbytes, -n)
            self.conn.execute(f"DELETE FROM {tbl} WHERE {key} IN ({marks})", chunk)

    # -- meta -------------------------------------------------------------
    def _meta_default(self, key: str, value: int) -> None:
        self.conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def meta(self, key: str) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise StoreError(f"meta {key!r} missing")
        return int(row[0])

    def set_meta(self, key: str, value: int) -> None:
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def count(self, key: str, n: int) -> None:
        """Add to a drop counter (``COUNTERS``); inside the transaction of the drop."""
        assert key in COUNTERS, key
        self.conn.execute("UPDATE meta SET value = value + ? WHERE key = ?", (n, key))

    def counters(self) -> dict[str, int]:
        return {key: self.meta(key) for key in COUNTERS}

    def next_boot(self) -> int:
        """Count this start; durable before anything is published with it."""
        with self.tx():
            boot = self.meta("boot") + 1
            self.set_meta("boot", boot)
        return boot

    def start_after(self, seq: int, boot: int) -> None:
        """A new store that takes the place of a lost one continues its numbering: the
        first message gets ``seq + 1`` and the first start ``boot + 1`` (CONTRACT 4: a
        seq never repeats, and a head-end drops what it has seen). Only on a store that
        has never started nor formed a message."""
        if seq < 0 or boot < 0:
            raise StoreError(f"store {self.path}: seq and boot to continue after must be >= 0")
        with self.tx():
            if self.meta("boot") != 0 or self.meta("next_seq") != 1:
                raise StoreError(f"store {self.path} has been used (boot "
                                 f"{self.meta('boot')}, next seq {self.meta('next_seq')}): "
                                 "only a new store continues another's numbering")
            self.set_meta("boot", boot)
            self.set_meta("next_seq", seq + 1)

    def take_seq(self) -> int:
        """The next uplink seq; call inside the transaction that stores the message."""
        assert self.in_tx, "take_seq outside a transaction would lose the seq on a crash"
        seq = self.meta("next_seq")
        self.set_meta("next_seq", seq + 1)
        return seq

    # -- pending items ----------------------------------------------------
    def add_pending(self, lane: int, item: bytes, t: int, meter: str | None = None) -> None:
        """Queue one item (opaque bytes: forming.py's); a reading joins the open run of
        ``meter`` (its run key, given by the caller: the store does not read the item);
        an event or entry joins the transaction's batch (written at its commit)."""
        if lane != LANE_READINGS:
            assert lane in (LANE_EVENTS, LANE_LEDGER), lane
            if self.unit is not None:
                self.unit.add_item(lane, item, t)
            else:
                insert_items(self.conn, lane, [(item, t)], self._tally)
            return
        assert meter is not None, "a reading is queued with its meter"
        runs = self._runs()
        run = runs.get(meter)
        if run is not None and run[1] < RUN_MAX:
            # || makes text; CAST gives the same bytes back as a blob. ``sealed`` is set
            # only by the append that fills the run: a statement that sets it changes
            # the pending_open index too.
            full = run[1] + 1 >= RUN_MAX
            self.conn.execute("UPDATE pending SET item = CAST(item || ? AS BLOB), size = "
                              f"size + ?, n = n + 1{', sealed = 1' if full else ''} WHERE id = ?",
                              (item, len(item), run[0]))
            self._tally("pending", lane, 0, len(item), 1)
            if full:
                del runs[meter]  # sealed
            else:
                runs[meter] = (run[0], run[1] + 1, run[2])
            return
        cur = self.conn.execute("INSERT INTO pending (lane, item, size, t, m, sealed) "
                                "VALUES (?, ?, ?, ?, ?, 0)", (lane, item, len(item), t, meter))
        self._tally("pending", lane, 1, len(item), 1)
        runs[meter] = (int(cur.lastrowid or 0), 1, t)

    def _runs(self) -> dict[str, tuple[int, int, int]]:
        """The open (unsealed) reading runs: meter -> (row id, readings, first t). Read
        once, then kept by every method that seals or deletes runs; read again once
        writes were undone (``undone`` moved). Spares a SELECT a reading."""
        if self._open_runs is None or self._runs_undone != self.undone:
            self._runs_undone = self.undone
            self._open_runs = {m: (int(i), int(n), int(t)) for i, m, n, t in self.conn.execute(
                "SELECT id, m, n, t FROM pending WHERE sealed = 0 AND lane = ? ORDER BY id",
                (LANE_READINGS,))}
        return self._open_runs

    def seal_runs(self, before_t: int) -> None:
        """No more appends to runs that began before ``before_t`` (link up again: what
        piled up is backlog; new readings start new runs, which go out live)."""
        self.conn.execute("UPDATE pending SET sealed = 1 WHERE sealed = 0 AND t < ?",
                          (before_t,))
        runs = self._runs()
        for meter in [m for m, run in runs.items() if run[2] < before_t]:
            del runs[meter]

    def delete_pending(self, ids: list[int]) -> None:
        self._delete("pending", "id", "size", "n", ids)
        if self._open_runs:
            gone = set(ids)
            for meter in [m for m, run in self._open_runs.items() if run[0] in gone]:
                del self._open_runs[meter]

    def replace_item(self, row_id: int, item: bytes) -> None:
        """A run made smaller at the storage bound (never a formed message); sealed, so
        what comes later starts a run of its own."""
        lane, size = self.conn.execute("SELECT lane, size FROM pending WHERE id = ?",
                                       (row_id,)).fetchone()
        self._tally("pending", lane, 0, len(item) - size, 0)
        self.conn.execute("UPDATE pending SET item = ?, size = ?, stripped = 1, sealed = 1 "
                          "WHERE id = ?", (item, len(item), row_id))
        if self._open_runs:
            for meter in [m for m, run in self._open_runs.items() if run[0] == row_id]:
                del self._open_runs[meter]

    # -- outbox -----------------------------------------------------------
    def add_outbox(self, seq: int, lane: int, payload: bytes, created: int, *,
                   items: int = 1, t0: int | None = None) -> None:
        self.conn.execute(
            "INSERT INTO outbox (seq, lane, topic, payload, created, items, t0) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (seq, lane, LANE_TOPICS[lane], payload, created, items,
             created if t0 is None else t0),
        )
        self._tally("outbox", lane, 1, len(payload), items)

    def drop_message(self, seq: int) -> None:
        """Only at the storage bound, for a readings message; its seq becomes a gap that
        the data_dropped event names (docs/mqtt-api.md)."""
        lane = self.conn.execute("SELECT lane FROM outbox WHERE seq = ?", (seq,)).fetchone()
        assert lane is not None and lane[0] in READING_LANES, (seq, lane)
        self._delete("outbox", "seq", "LENGTH(payload)", "items", [seq])

    def ack(self, seq: int) -> None:
        """The broker acknowledged ``seq``: the message has left; forget it."""
        self.ack_many([seq])

    def ack_many(self, seqs: list[int]) -> None:
        """Several PUBACKs in one transaction (one fsync, not one per message)."""
        if seqs:
            with self.tx():
                self._delete("outbox", "seq", "LENGTH(payload)", "items", seqs)

    # -- the WAL ------------------------------------------------------------
    def wal_pages(self, pages: int) -> None:
        """Checkpoint the WAL every ``pages`` (WAL_PAGES, or WAL_PAGES_FULL while the disk
        is full); a smaller bound checkpoints now, so the WAL starts again from its
        beginning at the next write. A checkpoint that finds no room is left for the next
        one (the WAL then keeps its frames: nothing is lost)."""
        self.conn.execute(f"PRAGMA wal_autocheckpoint = {int(pages)}")
        if pages < WAL_PAGES and not self.in_tx:
            try:
                self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except (sqlite3.Error, StoreFullError):
                pass  # the next autocheckpoint tries again

    # -- seen commands ------------------------------------------------------
    def seen_reply(self, command_id: str) -> bytes | None:
        row = self.conn.execute("SELECT reply FROM seen WHERE id = ?", (command_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def remember(self, command_id: str, reply_body: bytes, exp: int) -> None:
        self.conn.execute(
            "INSERT INTO seen (id, reply, exp) VALUES (?, ?, ?)", (command_id, reply_body, exp)
        )

    def forget_expired(self, now_s: int) -> int:
        """Seen ids are kept until their exp; after it a replay is refused as expired anyway."""
        with self.tx():
            cur = self.conn.execute("DELETE FROM seen WHERE exp < ?", (now_s,))
        return cur.rowcount


