"""The durable store: one SQLite file in ``gateway.data_dir``, one writer.

WAL with ``synchronous=FULL``: a committed transaction survives kill -9 and a
power cut. State that must agree (journal + balance + outbox row + seen
command + relay intent) is changed in ONE ``with store.tx():`` transaction.
Only the runtime thread holds the writable ``Store``; the CLI and the status
page open ``Store.open_readonly``.

Tables
  meta      boot counter, next uplink seq, schema version
  pending   items (readings, events, ledger entries) not yet in a message
  outbox    formed messages: seq -> topic + exact bytes; deleted only on PUBACK
  seen      command ids with their stored reply, kept until the command's exp
  (ledger tables live in journal.py, same database)
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from agent.errors import StoreError

SCHEMA_VERSION = 1
DB_NAME = "agent.sqlite3"

# Outbox lanes, in delivery priority order (lower first).
LANE_REPLY = 0
LANE_EVENTS = 1
LANE_LEDGER = 2
LANE_READINGS = 3
LANE_TOPICS = {
    LANE_REPLY: "up/reply",
    LANE_EVENTS: "up/events",
    LANE_LEDGER: "up/ledger",
    LANE_READINGS: "up/readings",
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
  key   TEXT PRIMARY KEY,
  value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS pending (
  id    INTEGER PRIMARY KEY AUTOINCREMENT,
  lane  INTEGER NOT NULL,
  item  BLOB NOT NULL,
  size  INTEGER NOT NULL,
  t     INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS pending_lane ON pending (lane, id);
CREATE TABLE IF NOT EXISTS outbox (
  seq     INTEGER PRIMARY KEY,
  lane    INTEGER NOT NULL,
  topic   TEXT NOT NULL,
  payload BLOB NOT NULL,
  created INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_lane ON outbox (lane, seq);
CREATE TABLE IF NOT EXISTS seen (
  id    TEXT PRIMARY KEY,
  reply BLOB NOT NULL,
  exp   INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    lane: int
    topic: str
    payload: bytes
    created: int


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    try:
        if readonly:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0,
                                   check_same_thread=False)
        else:
            conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {path}: {exc}") from exc
    conn.execute("PRAGMA busy_timeout = 5000")
    if not readonly:
        # WAL + FULL: every commit is fsynced; see the module docstring.
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreError(f"{path}: cannot enable WAL (got {mode})")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
    return conn


class Store:
    """The single writer. Not thread-safe by design: only the runtime thread uses it."""

    def __init__(self, data_dir: Path, *, readonly: bool = False) -> None:
        self.path = Path(data_dir) / DB_NAME
        self.readonly = readonly
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif not self.path.exists():
            raise StoreError(f"no store at {self.path} (has the agent run with this config?)")
        self.conn = _connect(self.path, readonly)
        self._depth = 0
        if not readonly:
            from agent.buffer import journal  # the ledger tables share this database

            with self.tx():
                for statement in (_SCHEMA + journal.SCHEMA).split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
                self._meta_default("schema", SCHEMA_VERSION)
                self._meta_default("boot", 0)
                self._meta_default("next_seq", 1)
            version = self.meta("schema")
            if version != SCHEMA_VERSION:
                raise StoreError(f"{self.path}: schema {version}, this agent knows "
                                 f"{SCHEMA_VERSION}")

    @classmethod
    def open_readonly(cls, data_dir: Path) -> Store:
        return cls(data_dir, readonly=True)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One atomic transaction; nested use joins the outer one."""
        if self._depth:
            self._depth += 1
            try:
                yield self.conn
            finally:
                self._depth -= 1
            return
        self._depth = 1
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"store transaction failed: {exc}") from exc
        finally:
            self._depth = 0

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

    def next_boot(self) -> int:
        """Count this start; durable before anything is published with it."""
        with self.tx():
            boot = self.meta("boot") + 1
            self.set_meta("boot", boot)
        return boot

    def take_seq(self) -> int:
        """The next uplink seq; call inside the transaction that stores the message."""
        assert self._depth, "take_seq outside a transaction would lose the seq on a crash"
        seq = self.meta("next_seq")
        self.set_meta("next_seq", seq + 1)
        return seq

    # -- pending items ----------------------------------------------------
    def add_pending(self, lane: int, item: bytes, t: int) -> None:
        self.conn.execute(
            "INSERT INTO pending (lane, item, size, t) VALUES (?, ?, ?, ?)",
            (lane, item, len(item), t),
        )

    def pending(self, lane: int, max_bytes: int, max_items: int) -> list[tuple[int, bytes]]:
        """Oldest pending items of a lane, within the byte and item bounds (at least one)."""
        rows = self.conn.execute(
            "SELECT id, item, size FROM pending WHERE lane = ? ORDER BY id LIMIT ?",
            (lane, max_items),
        ).fetchall()
        out: list[tuple[int, bytes]] = []
        total = 0
        for row_id, item, size in rows:
            if out and total + size > max_bytes:
                break
            out.append((row_id, bytes(item)))
            total += size
        return out

    def pending_stats(self, lane: int) -> tuple[int, int | None]:
        """(count, oldest t) of a lane's pending items."""
        row = self.conn.execute(
            "SELECT COUNT(*), MIN(t) FROM pending WHERE lane = ?", (lane,)
        ).fetchone()
        return int(row[0]), (None if row[1] is None else int(row[1]))

    def delete_pending(self, ids: list[int]) -> None:
        self.conn.executemany("DELETE FROM pending WHERE id = ?", [(i,) for i in ids])

    # -- outbox -----------------------------------------------------------
    def add_outbox(self, seq: int, lane: int, payload: bytes, created: int) -> None:
        self.conn.execute(
            "INSERT INTO outbox (seq, lane, topic, payload, created) VALUES (?, ?, ?, ?, ?)",
            (seq, lane, LANE_TOPICS[lane], payload, created),
        )

    def outbox_next(self, exclude: set[int], limit: int) -> list[OutboxRow]:
        """Unsent rows by lane priority then seq, skipping those in flight."""
        if limit <= 0:
            return []
        rows = self.conn.execute(
            "SELECT seq, lane, topic, payload, created FROM outbox ORDER BY lane, seq LIMIT ?",
            (limit + len(exclude),),
        ).fetchall()
        out = [OutboxRow(int(r[0]), int(r[1]), r[2], bytes(r[3]), int(r[4]))
               for r in rows if int(r[0]) not in exclude]
        return out[:limit]

    def ack(self, seq: int) -> None:
        """The broker acknowledged ``seq``: the message has left; forget it."""
        with self.tx():
            self.conn.execute("DELETE FROM outbox WHERE seq = ?", (seq,))

    def backlog(self) -> tuple[int, int | None]:
        """(messages not yet acknowledged, creation time of the oldest)."""
        row = self.conn.execute("SELECT COUNT(*), MIN(created) FROM outbox").fetchone()
        return int(row[0]), (None if row[1] is None else int(row[1]))

    def size_bytes(self) -> int:
        row = self.conn.execute(
            "SELECT (SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM outbox) + "
            "(SELECT COALESCE(SUM(size), 0) FROM pending)"
        ).fetchone()
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
