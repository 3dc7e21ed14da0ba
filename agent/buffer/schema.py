"""Every table of the store's one database file, and how an older file is brought up to
date: the uplink's (meta, pending, outbox, seen, tally: store.py) and the ledger's
(accounts, journal, topups, meters, ...: journal.py) are created here, once, at open.

One version counter, ``meta.schema`` (``VERSION``), and one ordered list of migrations
(``MIGRATIONS``): a file at version ``v`` gets every migration above ``v``, in order,
each in the open's transaction and followed by the counter set to its version. A file
newer than ``VERSION`` is refused. A migration adds columns where they are missing
(``add_columns``: ALTER TABLE ... ADD COLUMN, with a default, so old rows keep their
meaning) and may then rewrite rows.

  1 -> 2  pending.m/n/sealed/stripped, outbox.items/t0, tally: schema-1 readings become
          sealed runs of one (their meter read from the item), t0 is the creation time
  2 -> 3  meters.tamper_hold, relay back-off (relay_attempts, relay_next_s) and the
          register-reset watch (reset_*). These came before the counter covered the
          ledger tables (a writing Journal added them by name at every open), so a
          file at 2 may have none, some or all of them: ``add_columns`` adds only
          those missing, as for every migration.

A column added from now on is a migration of its own, at the end of the list.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from typing import NamedTuple

from agent.buffer.sequence import meter_of

VERSION = 3

# The values of the lane columns (pending.lane, outbox.lane, tally.lane), in delivery
# priority order (lower first). Pending items use 0-3; the outbox splits readings into
# live (3: formed as they come) and backlog (4: formed on demand from what piled up
# while the link was down), so live data never waits behind a drain.
LANE_REPLY = 0
LANE_EVENTS = 1
LANE_LEDGER = 2
LANE_READINGS = 3
LANE_BACKLOG = 4
READING_LANES = (LANE_READINGS, LANE_BACKLOG)

STORE_TABLES = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS pending (
         id INTEGER PRIMARY KEY AUTOINCREMENT, lane INTEGER NOT NULL, item BLOB NOT NULL,
         size INTEGER NOT NULL, t INTEGER NOT NULL, m TEXT,
         n INTEGER NOT NULL DEFAULT 1, sealed INTEGER NOT NULL DEFAULT 1,
         stripped INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS outbox (
         seq INTEGER PRIMARY KEY, lane INTEGER NOT NULL, topic TEXT NOT NULL,
         payload BLOB NOT NULL, created INTEGER NOT NULL,
         items INTEGER NOT NULL DEFAULT 1, t0 INTEGER)""",
    """CREATE TABLE IF NOT EXISTS seen (
         id TEXT PRIMARY KEY, reply BLOB NOT NULL, exp INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS tally (
         tbl TEXT NOT NULL, lane INTEGER NOT NULL, rows INTEGER NOT NULL DEFAULT 0,
         bytes INTEGER NOT NULL DEFAULT 0, items INTEGER NOT NULL DEFAULT 0,
         PRIMARY KEY (tbl, lane))""",
]

LEDGER_TABLES = """
CREATE TABLE IF NOT EXISTS accounts (
  id            TEXT PRIMARY KEY,
  tariff        TEXT NOT NULL,
  balance       INTEGER NOT NULL DEFAULT 0,
  n             INTEGER NOT NULL DEFAULT 0,
  reference     INTEGER NOT NULL DEFAULT 0,
  alerts        TEXT NOT NULL DEFAULT '',
  zero_alert_at INTEGER,
  fixed_last    TEXT,
  month         TEXT NOT NULL DEFAULT '',
  consumed_wh   INTEGER NOT NULL DEFAULT 0,
  energy_mp     INTEGER NOT NULL DEFAULT 0,
  energy_posted INTEGER NOT NULL DEFAULT 0,
  duty_posted   INTEGER NOT NULL DEFAULT 0,
  duty_mp_bp    INTEGER NOT NULL DEFAULT 0,
  deferred      TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS journal (
  acct TEXT NOT NULL,
  n    INTEGER NOT NULL,
  t    INTEGER NOT NULL,
  kind TEXT NOT NULL,
  amt  INTEGER NOT NULL,
  bal  INTEGER NOT NULL,
  ref  TEXT NOT NULL,
  PRIMARY KEY (acct, n)
);
CREATE TABLE IF NOT EXISTS topups (
  txn    TEXT PRIMARY KEY,
  acct   TEXT NOT NULL,
  amount INTEGER NOT NULL,
  n      INTEGER NOT NULL,
  t      INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meters (
  id            TEXT PRIMARY KEY,
  serial        TEXT,
  base_wh       INTEGER,
  base_t        INTEGER,
  relay_intent  TEXT NOT NULL DEFAULT 'closed',
  relay_reason  TEXT NOT NULL DEFAULT '',
  relay_actual  TEXT NOT NULL DEFAULT '',
  override      TEXT NOT NULL DEFAULT '',
  override_until INTEGER,
  tamper_hold   INTEGER NOT NULL DEFAULT 0,
  relay_attempts INTEGER NOT NULL DEFAULT 0,
  relay_next_s  INTEGER NOT NULL DEFAULT 0,
  reset_count   INTEGER NOT NULL DEFAULT 0,
  reset_first_wh INTEGER NOT NULL DEFAULT 0,
  reset_first_t INTEGER NOT NULL DEFAULT 0,
  reset_last_wh INTEGER NOT NULL DEFAULT 0,
  reset_last_t  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS disconnects (
  t INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS moratoria (
  acct   TEXT PRIMARY KEY,
  until  INTEGER NOT NULL,
  reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tariffs (
  name        TEXT NOT NULL,
  version     INTEGER NOT NULL,
  body        TEXT NOT NULL,
  effective_s INTEGER NOT NULL,
  source      TEXT NOT NULL,
  PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS policy (
  key   TEXT PRIMARY KEY,
  value TEXT NOT NULL,
  t     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
  acct           TEXT PRIMARY KEY,
  max_counter    INTEGER NOT NULL,
  used           TEXT NOT NULL,
  wrong_in_row   INTEGER NOT NULL,
  lockouts       INTEGER NOT NULL,
  locked_from_s  INTEGER NOT NULL,
  locked_until_s INTEGER NOT NULL,
  last_wrong_s   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tamper (
  id      INTEGER PRIMARY KEY AUTOINCREMENT,
  meter   TEXT NOT NULL,
  acct    TEXT,
  t       INTEGER NOT NULL,
  kind    TEXT NOT NULL,
  code    INTEGER NOT NULL,
  balance INTEGER,
  relay   TEXT NOT NULL,
  action  TEXT NOT NULL
);
"""


INDEXES = [
    "CREATE INDEX IF NOT EXISTS pending_lane ON pending (lane, id)",
    "CREATE INDEX IF NOT EXISTS pending_lane_t ON pending (lane, t)",
    "CREATE INDEX IF NOT EXISTS pending_unstripped ON pending (lane, id) WHERE stripped = 0",
    "CREATE INDEX IF NOT EXISTS pending_open ON pending (m) WHERE sealed = 0",
    "CREATE INDEX IF NOT EXISTS outbox_lane ON outbox (lane, seq)",
]


def create(conn: sqlite3.Connection) -> None:
    """Every table, where missing (inside the caller's transaction; indexes come after
    the migrations, which may add the columns they cover)."""
    for statement in STORE_TABLES:
        conn.execute(statement)
    for statement in LEDGER_TABLES.split(";"):
        if statement.strip():
            conn.execute(statement)


def create_indexes(conn: sqlite3.Connection) -> None:
    for statement in INDEXES:
        conn.execute(statement)


def add_columns(conn: sqlite3.Connection,
                columns: Mapping[str, tuple[tuple[str, str], ...]]) -> None:
    """``table -> ((name, definition), ...)``: each column its table lacks, added."""
    for table, wanted in columns.items():
        have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        for name, definition in wanted:
            if name not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {definition}")


def _runs_of_one(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE outbox SET t0 = created WHERE t0 IS NULL")
    rows = conn.execute("SELECT id, item FROM pending WHERE lane = ?",
                        (LANE_READINGS,)).fetchall()
    conn.executemany("UPDATE pending SET m = ? WHERE id = ?",
                     [(meter_of(bytes(item)), i) for i, item in rows])


class Migration(NamedTuple):
    version: int  # the version a file is at after it
    columns: Mapping[str, tuple[tuple[str, str], ...]]  # added where missing, first
    rewrite: Callable[[sqlite3.Connection], None] | None  # then rows brought up to date


MIGRATIONS: tuple[Migration, ...] = (
    Migration(2, {"pending": (("m", "TEXT"), ("n", "INTEGER NOT NULL DEFAULT 1"),
                              ("sealed", "INTEGER NOT NULL DEFAULT 1"),
                              ("stripped", "INTEGER NOT NULL DEFAULT 0")),
                  "outbox": (("items", "INTEGER NOT NULL DEFAULT 1"), ("t0", "INTEGER"))},
              _runs_of_one),
    Migration(3, {"meters": (("tamper_hold", "INTEGER NOT NULL DEFAULT 0"),
                             ("relay_attempts", "INTEGER NOT NULL DEFAULT 0"),
                             ("relay_next_s", "INTEGER NOT NULL DEFAULT 0"),
                             ("reset_count", "INTEGER NOT NULL DEFAULT 0"),
                             ("reset_first_wh", "INTEGER NOT NULL DEFAULT 0"),
                             ("reset_first_t", "INTEGER NOT NULL DEFAULT 0"),
                             ("reset_last_wh", "INTEGER NOT NULL DEFAULT 0"),
                             ("reset_last_t", "INTEGER NOT NULL DEFAULT 0"))},
              None),
)
assert [m.version for m in MIGRATIONS] == list(range(2, VERSION + 1))  # one step each


def migrate(conn: sqlite3.Connection, version: int,
            set_version: Callable[[int], None]) -> None:
    """A file at ``version`` brought to ``VERSION`` (inside the caller's transaction);
    ``set_version`` records each step. ValueError for a version this agent does not know."""
    if not 1 <= version <= VERSION:
        raise ValueError(f"schema {version}, this agent knows {VERSION}")
    for step in MIGRATIONS:
        if step.version > version:
            add_columns(conn, step.columns)
            if step.rewrite is not None:
                step.rewrite(conn)
            set_version(step.version)
