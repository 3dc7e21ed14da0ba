"""buffer/schema.py: every table of the one database file, one version counter, one
ordered list of migrations; old files open and are brought up to date."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.buffer import schema
from agent.buffer.journal import Journal
from agent.buffer.store import Store
from agent.errors import StoreError
from agent.uplink import cbor, forming
from tests.buffer.test_store import SCHEMA_1

T0 = 1_767_225_600
# the meters table as the ledger first had it (no tamper hold, back-off, reset watch)
METERS_FIRST = """
CREATE TABLE meters (id TEXT PRIMARY KEY, serial TEXT, base_wh INTEGER, base_t INTEGER,
  relay_intent TEXT NOT NULL DEFAULT 'closed', relay_reason TEXT NOT NULL DEFAULT '',
  relay_actual TEXT NOT NULL DEFAULT '', override TEXT NOT NULL DEFAULT '',
  override_until INTEGER);
"""
# the columns added to it since (migration 3), in order; a file at version 2 may have
# none of them, the tamper hold and relay back-off, or every one, by the build it had
LATER_METERS = ["tamper_hold", "relay_attempts", "relay_next_s", "reset_count",
                "reset_first_wh", "reset_first_t", "reset_last_wh", "reset_last_t"]


def tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}


def columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def test_a_new_store_has_every_table_at_the_current_version(tmp_path: Path) -> None:
    store = Store(tmp_path)
    want = {statement.split()[5] for statement in schema.STORE_TABLES}
    want |= {s.split()[5] for s in schema.LEDGER_TABLES.split(";") if s.strip()}
    assert tables(store.conn) - {"sqlite_sequence"} == want  # AUTOINCREMENT's own table
    assert "accounts" in want and "pending" in want and "tamper" in want
    assert store.meta("schema") == schema.VERSION
    store.close()
    assert Store(tmp_path).meta("schema") == schema.VERSION  # a reopen changes nothing


def test_the_migrations_are_one_ordered_list_up_to_the_version() -> None:
    assert [m.version for m in schema.MIGRATIONS] == list(range(2, schema.VERSION + 1))


def test_migrate_records_each_step_and_refuses_what_it_does_not_know() -> None:
    conn = sqlite3.connect(":memory:")
    conn.executescript(SCHEMA_1 + METERS_FIRST)
    steps: list[int] = []
    schema.migrate(conn, 1, steps.append)
    assert steps == [2, 3] and "stripped" in columns(conn, "pending")
    assert "reset_last_t" in columns(conn, "meters")
    steps.clear()
    schema.migrate(conn, schema.VERSION, steps.append)
    assert steps == []  # nothing to do at the current version
    for version in (0, schema.VERSION + 1):
        with pytest.raises(ValueError, match=f"schema {version}, this agent knows"):
            schema.migrate(conn, version, steps.append)


def test_a_file_newer_than_this_agent_is_refused(tmp_path: Path) -> None:
    Store(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "agent.sqlite3")
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (schema.VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=f"schema {schema.VERSION + 1}, this agent knows"):
        Store(tmp_path)


def test_a_schema_1_file_with_the_first_ledger_tables_gets_every_later_column(
        tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "agent.sqlite3")
    conn.executescript(SCHEMA_1 + METERS_FIRST)
    conn.executemany("INSERT INTO meta VALUES (?, ?)", [("schema", 1), ("boot", 2),
                                                        ("next_seq", 3)])
    conn.execute("INSERT INTO meters (id, base_wh, base_t) VALUES ('M1', 100, ?)", (T0,))
    old = cbor.dumps({"m": "M1", "t": T0, "v": {"import_wh": 100}})
    conn.execute("INSERT INTO pending (lane, item, size, t) VALUES (3, ?, ?, ?)",
                 (old, len(old), T0))
    conn.commit()
    conn.close()
    store = Store(tmp_path)
    assert store.meta("schema") == schema.VERSION
    assert store.conn.execute("SELECT m, n, sealed FROM pending").fetchall() == [("M1", 1, 1)]
    # the store's open migrates (not the journal's): every later meters column is there
    assert columns(store.conn, "meters")[-len(LATER_METERS):] == LATER_METERS
    state = Journal(store, forming.entry_item).meter("M1")
    assert (state.base_wh, state.reset_count, state.relay_next_s) == (100, 0, 0)


@pytest.mark.parametrize("had", [0, 3, len(LATER_METERS)])
def test_a_schema_2_file_gets_the_meters_columns_it_lacks_and_keeps_its_rows(
        tmp_path: Path, had: int) -> None:
    """A file written at version 2, whose meters table a writing Journal had brought up
    to date by name as far as its build knew: migration 3 adds the rest and keeps the
    values of the columns it had."""
    store = Store(tmp_path)
    store.close()
    conn = sqlite3.connect(tmp_path / "agent.sqlite3")
    conn.execute("DROP TABLE meters")
    conn.executescript(METERS_FIRST)
    for name in LATER_METERS[:had]:
        conn.execute(f"ALTER TABLE meters ADD COLUMN {name} INTEGER NOT NULL DEFAULT 0")
    conn.execute("INSERT INTO meters (id, base_wh, base_t, relay_intent) "
                 "VALUES ('M1', 100, ?, 'open')", (T0,))
    if had:
        conn.execute("UPDATE meters SET tamper_hold = ?", (T0 - 60,))
    conn.execute("UPDATE meta SET value = 2 WHERE key = 'schema'")
    conn.commit()
    conn.close()
    store = Store(tmp_path)
    assert store.meta("schema") == 3 == schema.VERSION
    assert columns(store.conn, "meters")[-len(LATER_METERS):] == LATER_METERS
    state = Journal(store, forming.entry_item).meter("M1")
    assert (state.base_wh, state.base_t, state.relay_intent) == (100, T0, "open")
    assert state.tamper_hold == (T0 - 60 if had else 0)
    assert (state.relay_attempts, state.reset_count, state.reset_last_t) == (0, 0, 0)
    store.close()
    assert Store(tmp_path).meta("schema") == schema.VERSION  # a reopen changes nothing
