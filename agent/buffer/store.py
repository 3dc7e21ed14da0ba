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
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from agent.buffer import schema
from agent.buffer.schema import LANE_BACKLOG as LANE_BACKLOG
from agent.buffer.schema import LANE_EVENTS as LANE_EVENTS
from agent.buffer.schema import LANE_LEDGER as LANE_LEDGER
from agent.buffer.schema import LANE_READINGS as LANE_READINGS
from agent.buffer.schema import LANE_REPLY as LANE_REPLY
from agent.buffer.sequence import meter_of, split_sequence
from agent.buffer.unit import BATCH_MAX_BYTES as BATCH_MAX_BYTES
from agent.buffer.unit import BATCH_MAX_ITEMS as BATCH_MAX_ITEMS
from agent.buffer.unit import UnitOfWork, insert_items, write_tally
from agent.errors import StoreError, StoreFullError

SCHEMA_VERSION = schema.VERSION
DB_NAME = "agent.sqlite3"

LANE_TOPICS = {
    LANE_REPLY: "up/reply",
    LANE_EVENTS: "up/events",
    LANE_LEDGER: "up/ledger",
    LANE_READINGS: "up/readings",
    LANE_BACKLOG: "up/readings",
}
READING_LANES = (LANE_READINGS, LANE_BACKLOG)
COUNTERS = ("stripped_readings", "dropped_readings", "dropped_messages")
RUN_MAX = 96  # readings per run row: a day at 15-minute polls
_CHUNK = 500  # keys per DELETE ... IN (...): under SQLite's parameter limit


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    lane: int
    topic: str
    payload: bytes
    created: int


class PendingRow(NamedTuple):
    id: int
    item: bytes  # a CBOR sequence of ``n`` items (readings: a run)
    size: int
    t: int  # the row's oldest item (readings: the run's first reading)
    n: int = 1  # items in the row


@dataclass(frozen=True, slots=True)
class Backlog:
    """What has not reached the broker yet (from the tally: no table scan)."""

    messages: int  # formed, not acknowledged
    items: int  # readings, events and entries not acknowledged, formed or not
    bytes: int  # payload bytes of both
    oldest_t: int | None  # the oldest item's time (Unix s), formed or not
    pending: int = 0  # items not yet formed into a message (piles up while the link is down)

    @property
    def total(self) -> int:
        """CONTRACT 3's birth ``backlog``: formed messages plus items not yet formed, so
        an outage shows as a backlog before any message is formed."""
        return self.messages + self.pending


class _Tx:
    """``with store.tx():`` (Store.tx)."""

    __slots__ = ("store",)

    def __init__(self, store: Store) -> None:
        self.store = store

    def __enter__(self) -> sqlite3.Connection:
        store = self.store
        if store._depth:
            store._depth += 1  # joins the outer transaction
        else:
            store._begin()
        return store.conn

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        store = self.store
        if store._depth > 1:
            store._depth -= 1
            return
        store._end(exc if kind is not None else None)


RECOVERY = "see docs/technician.md, 'Recovering a broken store'"
FULL_HELP = "see docs/technician.md, 'A full disk'"
# An I/O error (not SQLITE_FULL) counts as a full disk when less than this is free: SQLite
# says SQLITE_IOERR_SHMSIZE when the WAL index cannot grow on a full disk (tmpfs, ext4).
FULL_FREE_BYTES = 64 * 1024
WAL_PAGES = 1000  # pages in the WAL before it is checkpointed (SQLite's default)
# While the disk is full: a checkpoint every this many pages keeps the WAL under about
# 256 KiB, so that it is reused from its start instead of grown into space there is not.
WAL_PAGES_FULL = 64


def is_full(exc: sqlite3.Error, data_dir: Path) -> bool:
    """Whether ``exc`` means that there was no room to write."""
    name = getattr(exc, "sqlite_errorname", "")
    if name == "SQLITE_FULL":
        return True
    if name.startswith("SQLITE_IOERR"):
        try:
            return disk_free_bytes(data_dir) < FULL_FREE_BYTES
        except OSError:
            return False
    return False


def raise_if_full(exc: sqlite3.Error, data_dir: Path) -> None:
    """The one translation of a full disk: StoreFullError (from ``exc``) when ``exc``
    means that there was no room to write in ``data_dir``; the caller re-raises ``exc``
    otherwise."""
    if is_full(exc, data_dir):
        raise StoreFullError(f"store {data_dir / DB_NAME}: no room to write, the disk is "
                             f"full ({exc}): {FULL_HELP}") from exc


class _Connection(sqlite3.Connection):
    """The writer's connection: a statement that finds no room raises StoreFullError, so that
    no layer above (a contained command, a reading's charge) takes a full disk for a bug
    of its own, and the runtime can make room and run the same work again."""

    data_dir = Path(".")  # set by _configure

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        try:
            return super().execute(sql, parameters)
        except sqlite3.OperationalError as exc:
            raise_if_full(exc, self.data_dir)
            raise

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
        try:
            return super().executemany(sql, parameters)
        except sqlite3.OperationalError as exc:
            raise_if_full(exc, self.data_dir)
            raise


def _broken(path: Path, fault: str) -> StoreError:
    return StoreError(f"store {path} {fault}: {RECOVERY}")


def _check(path: Path) -> None:
    """An existing file is read (read-only, nothing written) before the writer opens it:
    a truncated or garbled file must stay byte for byte as it was, for recovery."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise _broken(path, f"cannot be read ({exc.strerror})") from exc
    if size == 0:  # SQLite would take an empty file for a new database and write it
        raise _broken(path, "is empty (truncated)")
    if not os.access(path, os.R_OK):
        raise _broken(path, "cannot be read (permission denied)")
    try:
        # immutable: no lock, and no -wal/-shm files created beside a broken file
        conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, timeout=5.0)
        try:
            result = conn.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise _broken(path, f"is not a readable database ({exc})") from exc
    if result != "ok":
        raise _broken(path, f"is damaged (quick_check: {result})")


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    if path.exists():
        _check(path)
    if not readonly and (not os.access(path.parent, os.W_OK)
                         or not path.parent.stat().st_mode & 0o222):  # root ignores modes
        raise _broken(path, f"cannot be written (directory {path.parent} is read-only)")
    try:
        return _configure(path, readonly)
    except sqlite3.Error as exc:
        if not readonly:
            raise_if_full(exc, path.parent)
        raise _broken(path, f"cannot be opened ({exc})") from exc


def _configure(path: Path, readonly: bool) -> sqlite3.Connection:
    try:
        if readonly:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0,
                                   check_same_thread=False)
        else:
            conn = sqlite3.connect(path, timeout=5.0, isolation_level=None,
                                   factory=_Connection)
            conn.data_dir = path.parent
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {path}: {exc}") from exc
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        if not readonly:
            # WAL + FULL: every commit is fsynced; see the module docstring.
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"{path}: cannot enable WAL (got {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
    except (sqlite3.Error, StoreError):
        conn.close()
        raise
    return conn


class Store:
    """The single writer. Not thread-safe by design: only the runtime thread uses it."""

    def __init__(self, data_dir: Path, *, readonly: bool = False) -> None:
        self.path = Path(data_dir) / DB_NAME
        self.readonly = readonly
        if not readonly:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _broken(self.path, f"cannot be created ({exc.strerror})") from exc
        elif not self.path.exists():
            raise StoreError(f"no store at {self.path} (has the agent run with this config?)")
        self.conn = _connect(self.path, readonly)
        self._depth = 0
        # The writes the transaction holds in memory until its commit (unit.py): made by
        # tx() for the outermost transaction, None outside one.
        self.unit: UnitOfWork | None = None
        # Transactions (or savepoints) undone so far: a cache read from the database
        # before the last of them (the open runs here, the journal's rows) is stale.
        self.undone = 0
        self._open_runs: dict[str, tuple[int, int, int]] | None = None  # see _runs
        if not readonly:
            try:
                self._create()
            except StoreFullError:
                self.conn.close()
                raise
            except sqlite3.Error as exc:
                self.conn.close()
                raise _broken(self.path, f"cannot be opened ({exc})") from exc

    def _create(self) -> None:
        with self.tx():
            fresh = self.conn.execute(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'meta'").fetchone()[0] == 0
            schema.create(self.conn)
            self._meta_default("schema", SCHEMA_VERSION if fresh else 1)
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

    def _flush_tally(self) -> None:
        """The tally's changes of this transaction into its table: before every read of
        the tally (and before a commit or a savepoint, with the rest of the unit)."""
        if self.unit is not None:
            self.unit.flush_tally()

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

    @classmethod
    def open_readonly(cls, data_dir: Path) -> Store:
        return cls(data_dir, readonly=True)

    def close(self) -> None:
        self.conn.close()

    @property
    def in_tx(self) -> bool:
        """Inside ``tx()`` (an outer transaction or one joined)."""
        return self._depth > 0

    def tx(self) -> _Tx:
        """One atomic transaction; nested use joins the outer one. A class, not a
        generator: it is entered a few times a reading."""
        return _Tx(self)

    def _begin(self) -> None:
        self._depth = 1
        self.unit = UnitOfWork(self.conn)
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._depth = 0
            self.unit = None
            raise StoreError(f"store transaction failed: {exc}") from exc
        except StoreFullError:
            self._depth = 0
            self.unit = None
            raise

    def _end(self, failed: BaseException | None) -> None:
        """Leave the outermost transaction: COMMIT, or ROLLBACK when ``failed``. A full
        disk (at a statement or at the COMMIT) is StoreFullError, with everything undone."""
        try:
            if failed is None:
                try:
                    self._flush()
                except BaseException as exc:
                    self._undo()
                    if isinstance(exc, sqlite3.Error):
                        raise StoreError(f"store transaction failed: {exc}") from exc
                    raise
                try:
                    self.conn.execute("COMMIT")
                except (sqlite3.Error, StoreFullError) as exc:
                    # A failed COMMIT (disk full, I/O error, busy): undo it all, so that
                    # what memory holds and what the database holds agree again.
                    self._undo()
                    if isinstance(exc, StoreFullError):
                        raise
                    raise StoreError(f"store transaction failed: {exc}") from exc
                return
            self._undo()
            if isinstance(failed, sqlite3.Error):
                raise StoreError(f"store transaction failed: {failed}") from failed
        finally:
            self._depth = 0
            self.unit = None

    def _undo(self) -> None:
        self._rolled_back()
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except (sqlite3.Error, StoreError):
                pass  # the error being raised is the one to report

    def _flush(self) -> None:
        """Everything the unit of work holds, written: before COMMIT and SAVEPOINT."""
        assert self.unit is not None
        self.unit.flush()

    def _rolled_back(self) -> None:
        """Writes were undone: the unit of work forgets its own, and every cache read
        from the database before now is stale (``undone``)."""
        if self.unit is not None:
            self.unit.forget()
        self._open_runs = None
        self.undone += 1

    @contextmanager
    def savepoint(self, name: str = "sp") -> Iterator[None]:
        """Inside ``tx()``: undo only this block's writes if it raises (the outer
        transaction goes on), e.g. a command refused half-way keeps its reply."""
        assert self._depth, "a savepoint lives inside a transaction"
        self._flush()  # a rollback to here must undo only what comes after it
        self.conn.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self._rolled_back()
            if self.conn.in_transaction:  # a failed statement may have ended it already
                self.conn.execute(f"ROLLBACK TO {name}")
                self.conn.execute(f"RELEASE {name}")
            raise
        self.conn.execute(f"RELEASE {name}")

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
        assert self._depth, "take_seq outside a transaction would lose the seq on a crash"
        seq = self.meta("next_seq")
        self.set_meta("next_seq", seq + 1)
        return seq

    # -- pending items ----------------------------------------------------
    def add_pending(self, lane: int, item: bytes, t: int, meter: str | None = None) -> None:
        """Queue one item; a reading (``forming.reading_item``; ``meter``: its meter, when
        the caller knows it) joins its meter's open run; an event or entry joins the
        transaction's batch (written at its commit)."""
        if lane != LANE_READINGS:
            assert lane in (LANE_EVENTS, LANE_LEDGER), lane
            if self.unit is not None:
                self.unit.add_item(lane, item, t)
            else:
                insert_items(self.conn, lane, [(item, t)], self._tally)
            return
        meter = meter_of(item) if meter is None else meter
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

    def _flush_batch(self) -> None:
        """The transaction's events and entries into ``pending``: before a read of it."""
        if self.unit is not None:
            self.unit.flush_items()

    def _runs(self) -> dict[str, tuple[int, int, int]]:
        """The open (unsealed) reading runs: meter -> (row id, readings, first t). Read
        once, then kept by every method that seals or deletes runs; forgotten on a
        rollback. Spares a SELECT a reading."""
        if self._open_runs is None:
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

    def pending(self, lane: int, max_bytes: int, max_items: int) -> list[PendingRow]:
        """Oldest pending rows of a lane, within the byte and item bounds (at least one
        row): each a CBOR sequence of ``n`` events or entries."""
        self._flush_batch()
        out: list[PendingRow] = []
        total = items = 0
        for r in self.conn.execute("SELECT id, item, size, t, n FROM pending WHERE lane = ? "
                                   "ORDER BY id LIMIT ?", (lane, max_items)):
            if out and (total + r[2] > max_bytes or items + r[4] > max_items):
                break
            out.append(PendingRow(r[0], bytes(r[1]), r[2], r[3], r[4]))
            total += r[2]
            items += r[4]
        return out

    def pending_items(self, lane: int) -> list[bytes]:
        """Every pending event or entry of a lane, oldest first, one CBOR item each (for
        tools and tests: forming reads whole rows)."""
        return [item for row in self.pending(lane, 1 << 62, 1 << 62)
                for item in split_sequence(row.item)]

    def _rows(self, where: str, args: tuple[object, ...],
              max_bytes: int | None = None) -> list[PendingRow]:
        """Rows in order; with ``max_bytes``, only as many as fit (at least one), read
        lazily so a long backlog is not loaded to find the first few runs."""
        out: list[PendingRow] = []
        total = 0
        for r in self.conn.execute(f"SELECT id, item, size, t, n FROM pending WHERE {where}",
                                   args):
            if max_bytes is not None and out and total + r[2] > max_bytes:
                break
            out.append(PendingRow(r[0], bytes(r[1]), r[2], r[3], r[4]))
            total += r[2]
        return out

    def pending_since(self, lane: int, since_t: int, max_rows: int,
                      max_bytes: int | None = None) -> list[PendingRow]:
        """A lane's rows with ``t >= since_t`` (the live ones), oldest first."""
        return self._rows("lane = ? AND t >= ? ORDER BY id LIMIT ?", (lane, since_t, max_rows),
                          max_bytes)

    def oldest_readings(self, limit: int, *, unstripped: bool = False,
                        max_bytes: int | None = None) -> list[PendingRow]:
        """The oldest pending reading runs, by arrival."""
        where = " AND stripped = 0" if unstripped else ""
        return self._rows(f"lane = ?{where} ORDER BY id LIMIT ?", (LANE_READINGS, limit),
                          max_bytes)

    def pending_stats(self, lane: int) -> tuple[int, int | None]:
        """(items, oldest t) of a lane's pending items."""
        self._flush_batch()
        self._flush_tally()
        count = self.conn.execute("SELECT items FROM tally WHERE tbl = 'pending' AND lane = ?",
                                  (lane,)).fetchone()[0]
        row = self.conn.execute("SELECT MIN(t) FROM pending WHERE lane = ?", (lane,)).fetchone()
        return int(count), (None if row[0] is None else int(row[0]))

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

    def outbox_next(self, exclude: set[int], limit: int) -> list[OutboxRow]:
        """Unsent rows by lane priority then seq, skipping those in flight (whose
        payloads are not read again: the (lane, seq) index answers first)."""
        if limit <= 0:
            return []
        keys = [r[0] for r in self.conn.execute(
            "SELECT seq FROM outbox ORDER BY lane, seq LIMIT ?", (limit + len(exclude),))
            if r[0] not in exclude][:limit]
        if not keys:
            return []
        marks = ",".join("?" * len(keys))
        rows = self.conn.execute(
            f"SELECT seq, lane, topic, payload, created FROM outbox WHERE seq IN ({marks}) "
            "ORDER BY lane, seq", keys).fetchall()
        return [OutboxRow(int(r[0]), int(r[1]), r[2], bytes(r[3]), int(r[4])) for r in rows]

    def outbox_rows(self, lane: int) -> int:
        self._flush_tally()
        return int(self.conn.execute("SELECT rows FROM tally WHERE tbl = 'outbox' AND lane = ?",
                                     (lane,)).fetchone()[0])

    def oldest_reading_message(self) -> tuple[int, int, int] | None:
        """(seq, items, t0) of the formed readings message with the oldest data."""
        row = self.conn.execute(
            "SELECT seq, items, t0 FROM outbox WHERE lane IN (?, ?) ORDER BY t0, seq LIMIT 1",
            READING_LANES).fetchone()
        return None if row is None else (int(row[0]), int(row[1]), int(row[2]))

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

    def backlog(self) -> tuple[int, int | None]:
        """(messages not yet acknowledged, creation time of the oldest)."""
        row = self.conn.execute("SELECT COUNT(*), MIN(created) FROM outbox").fetchone()
        return int(row[0]), (None if row[1] is None else int(row[1]))

    def backlog_summary(self) -> Backlog:
        self._flush_batch()
        self._flush_tally()
        tally = self.conn.execute(
            "SELECT tbl, SUM(rows), SUM(bytes), SUM(items) FROM tally GROUP BY tbl").fetchall()
        by = {r[0]: (int(r[1] or 0), int(r[2] or 0), int(r[3] or 0)) for r in tally}
        pend = by.get("pending", (0, 0, 0))
        out = by.get("outbox", (0, 0, 0))
        firsts = [self.conn.execute("SELECT MIN(t) FROM pending WHERE lane = ?",  # (lane, t)
                                    (lane,)).fetchone()[0]
                  for lane in (LANE_EVENTS, LANE_LEDGER, LANE_READINGS)]
        firsts.append(self.conn.execute("SELECT MIN(t0) FROM outbox").fetchone()[0])
        oldest = [int(v) for v in firsts if v is not None]
        return Backlog(messages=out[0], items=pend[2] + out[2], bytes=pend[1] + out[1],
                       oldest_t=min(oldest) if oldest else None, pending=pend[2])

    def wal_pages(self, pages: int) -> None:
        """Checkpoint the WAL every ``pages`` (WAL_PAGES, or WAL_PAGES_FULL while the disk
        is full); a smaller bound checkpoints now, so the WAL starts again from its
        beginning at the next write. A checkpoint that finds no room is left for the next
        one (the WAL then keeps its frames: nothing is lost)."""
        self.conn.execute(f"PRAGMA wal_autocheckpoint = {int(pages)}")
        if pages < WAL_PAGES and not self._depth:
            try:
                self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except (sqlite3.Error, StoreFullError):
                pass  # the next autocheckpoint tries again

    def reading_bytes(self) -> int:
        """Payload bytes of the readings held (pending runs and formed messages)."""
        self._flush_tally()
        row = self.conn.execute("SELECT COALESCE(SUM(bytes), 0) FROM tally WHERE lane IN "
                                "(?, ?)", READING_LANES).fetchone()
        return int(row[0])

    def size_bytes(self) -> int:
        """Payload bytes held for the uplink (pending items + formed messages)."""
        self._flush_batch()
        self._flush_tally()
        row = self.conn.execute("SELECT COALESCE(SUM(bytes), 0) FROM tally").fetchone()
        return int(row[0])

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


def disk_free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
