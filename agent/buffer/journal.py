"""The ledger's durable tables: accounts, the append-only journal, top-ups, meters.

Every function here runs inside the caller's ``store.tx()`` so that an entry,
the balance it produces and the outbox item that reports it commit together
(DOMAIN invariants 2, 3, 7). The journal is append-only: there is no UPDATE or
DELETE of ``journal`` anywhere in the agent; ``n`` is gapless per account
because it is ``accounts.n + 1`` inside the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.buffer.store import LANE_LEDGER, Store
from agent.errors import LedgerError
from agent.uplink import cbor

SCHEMA = """
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
  override_until INTEGER
);
CREATE TABLE IF NOT EXISTS disconnects (
  t INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS moratoria (
  acct   TEXT PRIMARY KEY,
  until  INTEGER NOT NULL,
  reason TEXT NOT NULL
);
"""

KINDS = ("topup", "token", "energy", "fixed", "duty", "adjust")


@dataclass(frozen=True, slots=True)
class Entry:
    acct: str
    n: int
    t: int
    kind: str
    amt: int
    bal: int
    ref: str

    def wire(self) -> dict[str, object]:
        return {"acct": self.acct, "n": self.n, "t": self.t, "kind": self.kind,
                "amt": self.amt, "bal": self.bal, "ref": self.ref}


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    tariff: str
    balance: int
    n: int
    reference: int
    alerts: frozenset[int]
    zero_alert_at: int | None
    fixed_last: str | None
    month: str
    consumed_wh: int
    energy_mp: int
    energy_posted: int
    duty_posted: int
    duty_mp_bp: int
    deferred: str


@dataclass(frozen=True, slots=True)
class MeterState:
    id: str
    serial: str | None
    base_wh: int | None
    base_t: int | None
    relay_intent: str  # closed | open
    relay_reason: str
    relay_actual: str  # closed | open | armed | '' (unknown)
    override: str  # '' | connect | disconnect
    override_until: int | None


_ACCOUNT_COLS = ("id, tariff, balance, n, reference, alerts, zero_alert_at, fixed_last, month, "
                 "consumed_wh, energy_mp, energy_posted, duty_posted, duty_mp_bp, deferred")
_METER_COLS = ("id, serial, base_wh, base_t, relay_intent, relay_reason, relay_actual, "
               "override, override_until")


class Journal:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.conn = store.conn

    # -- accounts -----------------------------------------------------------
    def ensure_account(self, acct: str, tariff: str) -> None:
        self.conn.execute(
            "INSERT INTO accounts (id, tariff) VALUES (?, ?) "
            "ON CONFLICT(id) DO UPDATE SET tariff = excluded.tariff",
            (acct, tariff),
        )

    def account(self, acct: str) -> Account:
        row = self.conn.execute(
            f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE id = ?", (acct,)
        ).fetchone()
        if row is None:
            raise LedgerError(f"unknown account {acct!r}")
        alerts = frozenset(int(x) for x in row[5].split(",") if x)
        return Account(row[0], row[1], row[2], row[3], row[4], alerts, row[6], row[7], row[8],
                       row[9], row[10], row[11], row[12], row[13], row[14])

    def accounts(self) -> list[Account]:
        ids = [r[0] for r in self.conn.execute("SELECT id FROM accounts ORDER BY id")]
        return [self.account(i) for i in ids]

    def update_account(self, acct: str, **fields: object) -> None:
        allowed = {"reference", "alerts", "zero_alert_at", "fixed_last", "month", "consumed_wh",
                   "energy_mp", "energy_posted", "duty_posted", "duty_mp_bp", "deferred"}
        assert set(fields) <= allowed, set(fields) - allowed  # balance/n only change via post()
        if "alerts" in fields:
            fields["alerts"] = ",".join(str(x) for x in sorted(fields["alerts"]))  # type: ignore[call-overload]
        sets = ", ".join(f"{k} = ?" for k in fields)
        self.conn.execute(f"UPDATE accounts SET {sets} WHERE id = ?", (*fields.values(), acct))

    # -- the journal --------------------------------------------------------
    def post(self, acct: str, t: int, kind: str, amt: int, ref: str) -> Entry:
        """Append one entry, move the balance, queue it for the uplink: all or nothing."""
        assert self.store._depth, "post() must run inside store.tx()"
        if kind not in KINDS:
            raise LedgerError(f"unknown entry kind {kind!r}")
        if not isinstance(amt, int) or isinstance(amt, bool):
            raise LedgerError(f"amount must be integer paise, got {amt!r}")
        row = self.conn.execute("SELECT balance, n FROM accounts WHERE id = ?", (acct,)).fetchone()
        if row is None:
            raise LedgerError(f"unknown account {acct!r}")
        balance, n = int(row[0]) + amt, int(row[1]) + 1
        assert -(2**63) <= balance < 2**63, "balance leaves signed 64-bit"
        entry = Entry(acct, n, t, kind, amt, balance, ref)
        self.conn.execute(
            "INSERT INTO journal (acct, n, t, kind, amt, bal, ref) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (acct, n, t, kind, amt, balance, ref),
        )
        self.conn.execute("UPDATE accounts SET balance = ?, n = ? WHERE id = ?",
                          (balance, n, acct))
        self.store.add_pending(LANE_LEDGER, cbor.dumps(entry.wire()), t)
        return entry

    def topup_applied(self, txn: str) -> tuple[str, int] | None:
        row = self.conn.execute("SELECT acct, amount FROM topups WHERE txn = ?", (txn,)).fetchone()
        return None if row is None else (row[0], int(row[1]))

    def topup(self, acct: str, amount: int, txn: str, t: int, kind: str = "topup") -> Entry | None:
        """Credit once per ``txn`` (DOMAIN invariant 3); None when already applied."""
        if amount <= 0:
            raise LedgerError("a top-up amount must be > 0 paise")
        if self.topup_applied(txn) is not None:
            return None
        entry = self.post(acct, t, kind, amount, txn)
        self.conn.execute("INSERT INTO topups (txn, acct, amount, n, t) VALUES (?, ?, ?, ?, ?)",
                          (txn, acct, amount, entry.n, t))
        return entry

    def entries(self, acct: str, from_n: int = 1, limit: int = 1000) -> list[Entry]:
        rows = self.conn.execute(
            "SELECT acct, n, t, kind, amt, bal, ref FROM journal WHERE acct = ? AND n >= ? "
            "ORDER BY n LIMIT ?", (acct, from_n, limit)).fetchall()
        return [Entry(*r) for r in rows]

    def recent(self, acct: str, limit: int = 10) -> list[Entry]:
        rows = self.conn.execute(
            "SELECT acct, n, t, kind, amt, bal, ref FROM journal WHERE acct = ? "
            "ORDER BY n DESC LIMIT ?", (acct, limit)).fetchall()
        return [Entry(*r) for r in reversed(rows)]

    # -- meters -------------------------------------------------------------
    def meter(self, meter_id: str) -> MeterState:
        row = self.conn.execute(
            f"SELECT {_METER_COLS} FROM meters WHERE id = ?", (meter_id,)).fetchone()
        if row is None:
            self.conn.execute("INSERT OR IGNORE INTO meters (id) VALUES (?)", (meter_id,))
            return MeterState(meter_id, None, None, None, "closed", "", "", "", None)
        return MeterState(*row)

    def meters(self) -> list[MeterState]:
        rows = self.conn.execute(f"SELECT {_METER_COLS} FROM meters ORDER BY id").fetchall()
        return [MeterState(*r) for r in rows]

    def update_meter(self, meter_id: str, **fields: object) -> None:
        allowed = {"serial", "base_wh", "base_t", "relay_intent", "relay_reason",
                   "relay_actual", "override", "override_until"}
        assert set(fields) <= allowed, set(fields) - allowed
        self.meter(meter_id)  # creates the row on first use
        sets = ", ".join(f"{k} = ?" for k in fields)
        self.conn.execute(f"UPDATE meters SET {sets} WHERE id = ?", (*fields.values(), meter_id))

    # -- the disconnection rate limit ----------------------------------------
    def count_disconnects(self, since_s: int) -> int:
        self.conn.execute("DELETE FROM disconnects WHERE t < ?", (since_s - 3600,))
        row = self.conn.execute("SELECT COUNT(*) FROM disconnects WHERE t >= ?",
                                (since_s,)).fetchone()
        return int(row[0])

    # -- moratoria from the head-end ('*' covers every account) ------------------
    def set_moratorium(self, acct: str, until: int, reason: str) -> None:
        self.conn.execute(
            "INSERT INTO moratoria (acct, until, reason) VALUES (?, ?, ?) "
            "ON CONFLICT(acct) DO UPDATE SET until = excluded.until, reason = excluded.reason",
            (acct, until, reason))

    def moratorium_until(self, acct: str) -> int | None:
        row = self.conn.execute("SELECT MAX(until) FROM moratoria WHERE acct IN (?, '*')",
                                (acct,)).fetchone()
        return None if row[0] is None else int(row[0])

    def record_disconnect(self, t: int) -> None:
        self.conn.execute("INSERT INTO disconnects (t) VALUES (?)", (t,))
