"""Watching the agent from outside, with the true time of everything it commits.

The agent is not instrumented. After every step (and at a crash, once the lost
transaction is rolled back) the simulation reads what the agent has *committed*:

- every journal entry, event, reading and command reply, through TEMP triggers the
  simulation adds to the agent's own connection: a temp table row is inserted in
  the same transaction as the agent's row, so it exists exactly when the agent's
  does (a rolled-back one leaves no trace, a committed one is seen once, in commit
  order, whether or not the uplink was up to form it into a message yet). Entries
  are read from the rows the agent queues them in for the uplink (a transaction's
  entries, then its events, at its commit: store.py), not from the journal table:
  a trigger a row of entries instead of one an entry. The end checks compare them
  with the journal, so an entry journalled but never queued is found too.

So each entry and event gets the true time of the step that committed it; the
legality of a disconnection is judged with these, not with the agent's clock.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

import cbor2

from agent.buffer.sequence import split_sequence
from agent.buffer.store import LANE_EVENTS, LANE_LEDGER, LANE_READINGS, LANE_REPLY
from agent.uplink import cbor
from sim.neighbourhood.headend import strict_loads

CREDIT_KINDS = ("topup", "token")

_TEMP = (
    "CREATE TEMP TABLE IF NOT EXISTS sim_seen (src TEXT NOT NULL, item BLOB, t INTEGER)",
    "CREATE TEMP TRIGGER IF NOT EXISTS sim_pending AFTER INSERT ON main.pending "
    f"WHEN NEW.lane IN ({LANE_EVENTS}, {LANE_LEDGER}, {LANE_READINGS}) BEGIN "
    "INSERT INTO sim_seen (src, item) VALUES (CASE NEW.lane "
    f"WHEN {LANE_EVENTS} THEN 'event' WHEN {LANE_LEDGER} THEN 'entries' "
    "ELSE 'reading' END, NEW.item); END",
    # Readings may be appended to a meter's pending run (item = item || reading): the
    # bytes appended are the new reading.
    "CREATE TEMP TRIGGER IF NOT EXISTS sim_append AFTER UPDATE OF item ON main.pending "
    f"WHEN NEW.lane = {LANE_READINGS} AND length(NEW.item) > length(OLD.item) "
    "AND substr(NEW.item, 1, length(OLD.item)) = OLD.item BEGIN "
    "INSERT INTO sim_seen (src, item) VALUES "
    "('reading', substr(NEW.item, length(OLD.item) + 1)); END",
    # a disconnection decided (journal.record_disconnect): when, by the agent's clock
    "CREATE TEMP TRIGGER IF NOT EXISTS sim_decided AFTER INSERT ON main.disconnects BEGIN "
    "INSERT INTO sim_seen (src, t) VALUES ('decided', NEW.t); END",
    "CREATE TEMP TRIGGER IF NOT EXISTS sim_outbox AFTER INSERT ON main.outbox "
    f"WHEN NEW.lane = {LANE_REPLY} BEGIN INSERT INTO sim_seen (src, item) "
    "VALUES ('reply', NEW.payload); END",
)


@dataclass(frozen=True, slots=True)
class Entry:
    true_t: int
    boot: int
    acct: str
    n: int
    t: int
    kind: str
    amt: int
    bal: int
    ref: str


@dataclass
class Account:
    balance: int = 0
    credit_t: int | None = None  # the last credit that left the balance > 0 (re-arms alerts)
    alerts: dict[int, int] = field(default_factory=dict)  # level -> true t, this episode


@dataclass
class Observer:
    entries: list[Entry] = field(default_factory=list)
    events: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)  # t, boot, e
    replies: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    readings: list[tuple[int, str, int, int]] = field(default_factory=list)  # t, m, rt, wh
    accounts: dict[str, Account] = field(default_factory=dict)
    step_min: dict[str, int] = field(default_factory=dict)  # lowest balance in this step
    step_decided: list[int] = field(default_factory=list)  # true times decided this step
    step_credits: list[Entry] = field(default_factory=list)
    last_n: dict[str, int] = field(default_factory=dict)  # the last entry seen, by account
    _texts: dict[str, str] = field(default_factory=dict)  # one copy of each text kept

    @staticmethod
    def install(conn: sqlite3.Connection) -> None:
        # The observer's table in memory, not in a temp file: it only lives for the
        # process (TEMP objects are per connection); the agent's own tables are untouched.
        conn.execute("PRAGMA temp_store = MEMORY")
        for statement in _TEMP:
            conn.execute(statement)

    def begin_step(self) -> None:
        self.step_min = {a: s.balance for a, s in self.accounts.items()}
        self.step_decided = []
        self.step_credits = []

    def scan(self, conn: sqlite3.Connection, true_t: int, boot: int, offset_s: int) -> None:
        """Everything committed since the last scan, in commit order (outside a tx).
        ``offset_s``: the agent's clock minus true time (to read its own time stamps)."""
        seen = conn.execute("SELECT src, item, t FROM temp.sim_seen ORDER BY rowid").fetchall()
        if not seen:
            return
        conn.execute("DELETE FROM temp.sim_seen")
        for src, item, t in seen:
            if src == "decided":
                self.step_decided.append(int(t) - offset_s)
                continue
            if src == "entries":
                text = self._texts.setdefault  # a month of entries shares a few texts
                for e in _sequence(bytes(item)):
                    assert isinstance(e, dict), e
                    if e["n"] > self.last_n.get(e["acct"], 0):  # else resent (resync)
                        self.last_n[e["acct"]] = e["n"]
                        self._entry(Entry(true_t, boot, text(e["acct"], e["acct"]), e["n"],
                                          e["t"], text(e["kind"], e["kind"]), e["amt"],
                                          e["bal"], text(e["ref"], e["ref"])))
                continue
            if src == "reading":
                for body in _sequence(bytes(item)):
                    self.readings.append((true_t, *reading_key(body)))
                continue
            if src == "reply":
                self.replies.append((true_t, _map(bytes(item))))
                continue
            # the events a transaction emitted: a sequence of them (store.py)
            for data in split_sequence(bytes(item)):
                self._event(true_t, boot, _map(data), offset_s)

    def _entry(self, entry: Entry) -> None:
        self.entries.append(entry)
        state = self.accounts.setdefault(entry.acct, Account())
        state.balance = entry.bal
        self.step_min[entry.acct] = min(self.step_min.get(entry.acct, entry.bal), entry.bal)
        if entry.kind in CREDIT_KINDS and entry.amt > 0:
            self.step_credits.append(entry)
            if entry.bal > 0:
                state.credit_t = entry.true_t
                state.alerts = {}

    def _event(self, true_t: int, boot: int, body: dict[str, Any], offset_s: int) -> None:
        self.events.append((true_t, boot, body))
        if body.get("type") == "low_balance" and isinstance(body.get("acct"), str):
            level = body.get("detail", {}).get("level_pct")
            if isinstance(level, int):
                # The agent dates an alert by the reading that crossed the level (its own
                # clock, read back to true time), a moment before it commits the event.
                state = self.accounts.setdefault(body["acct"], Account())
                state.alerts.setdefault(level, min(true_t, int(body["t"]) - offset_s))


def _map(data: bytes) -> dict[str, Any]:
    body = strict_loads(data)  # cbor.loads, faster when it is sure
    if body is None:
        body = cbor.loads(data, max_bytes=cbor.MAX_UPLINK_BYTES)
    assert isinstance(body, dict)
    return body


def _sequence(data: bytes) -> list[Any]:
    """Every CBOR item in ``data`` (RFC 8742 sequence: one reading, a run of them, or a
    transaction's entries): the agent's own bytes, decoded at once as an
    indefinite-length array."""
    items = cbor2.loads(b"\x9f" + data + b"\xff")
    assert isinstance(items, list)
    return items


def reading_key(item: object) -> tuple[str, int, int]:
    """(meter, t, import_wh) of a pending reading item, whichever layout the store uses:
    ``[m, t, import_wh, ...]`` or ``{"m", "t", "v": {...}}``."""
    if isinstance(item, list):
        return str(item[0]), int(item[1]), -1 if item[2] is None else int(item[2])
    assert isinstance(item, dict), item
    return str(item["m"]), int(item["t"]), int(item.get("v", {}).get("import_wh", -1))
