"""The ledger's durable tables (created by schema.py): accounts, the append-only
journal, top-ups, meters, tariff versions, the policy overlay, token verifier state
and tamper evidence.

Every function here runs inside the caller's ``store.tx()`` so that an entry,
the balance it produces and the outbox item that reports it commit together
(DOMAIN invariants 2, 3, 7). The journal is append-only: there is no UPDATE or
DELETE of ``journal`` anywhere in the agent; ``n`` is gapless per account
because it is ``accounts.n + 1`` inside the same transaction. ``tamper`` is
append-only too (evidence).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple, cast

from agent.buffer.store import LANE_LEDGER, Store
from agent.errors import LedgerError
from agent.vocab import ENTRY_KINDS

SPEND_SCAN_ENTRIES = 50_000  # spend_since reads at most this many recent entries
DISCONNECTS_KEPT_S = 86_400  # record_disconnect keeps this much either side of the newest


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


# Account and MeterState are NamedTuples, not frozen dataclasses: the writer's copy in
# memory is replaced (``_replace``) several times a reading, which costs a frozen
# dataclass three times as much. Immutable all the same.
class Account(NamedTuple):
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


class MeterState(NamedTuple):
    id: str
    serial: str | None
    base_wh: int | None
    base_t: int | None
    relay_intent: str  # closed | open
    relay_reason: str
    relay_actual: str  # closed | open | armed | '' (unknown)
    override: str  # '' | connect | disconnect
    override_until: int | None
    tamper_hold: int = 0  # unix s of the tamper that opened the relay; 0: none
    relay_attempts: int = 0  # switch attempts since the relay last matched its intent
    relay_next_s: int = 0  # unix s before which a failed switch is not retried
    # the register-reset watch (billing.ResetWatch; count 0: none)
    reset_count: int = 0
    reset_first_wh: int = 0
    reset_first_t: int = 0
    reset_last_wh: int = 0
    reset_last_t: int = 0


@dataclass(frozen=True, slots=True)
class TariffVersion:
    name: str
    version: int
    body: str  # canonical JSON of the [tariff.NAME] table
    effective_s: int  # unix s from which energy is priced with this version
    source: str  # config | command


@dataclass(frozen=True, slots=True)
class TokenRow:
    max_counter: int
    used: frozenset[int]
    wrong_in_row: int
    lockouts: int
    locked_from_s: int
    locked_until_s: int
    last_wrong_s: int


def _account(row: tuple[object, ...]) -> Account:
    alerts = frozenset(int(x) for x in str(row[5]).split(",") if x)
    return Account(*row[:5], alerts, *row[6:])  # type: ignore[arg-type, call-arg]


# what update_account may set: balance and n change only by posting
_ACCOUNT_SETTABLE = frozenset({"reference", "alerts", "zero_alert_at", "fixed_last", "month",
                               "consumed_wh", "energy_mp", "energy_posted", "duty_posted",
                               "duty_mp_bp", "deferred"})
_ACCOUNT_COLS = ("id, tariff, balance, n, reference, alerts, zero_alert_at, fixed_last, month, "
                 "consumed_wh, energy_mp, energy_posted, duty_posted, duty_mp_bp, deferred")
_METER_SETTABLE = frozenset({"serial", "base_wh", "base_t", "relay_intent", "relay_reason",
                             "relay_actual", "override", "override_until", "tamper_hold",
                             "relay_attempts", "relay_next_s", "reset_count",
                             "reset_first_wh", "reset_first_t", "reset_last_wh",
                             "reset_last_t"})
_METER_UPDATES: dict[tuple[str, ...], str] = {}  # the UPDATE for each set of fields
_METER_COLS = ("id, serial, base_wh, base_t, relay_intent, relay_reason, relay_actual, "
               "override, override_until, tamper_hold, relay_attempts, relay_next_s, "
               "reset_count, reset_first_wh, reset_first_t, reset_last_wh, reset_last_t")


class Journal:
    """The agent is the store's only writer, so a writing Journal keeps the accounts and
    meters rows in memory as well (read on every reading and every tick). A meter's
    write goes to SQLite first and to memory after it succeeds. An account's changes
    (a posting moves its balance, the month's accrual moves with it) stay in memory,
    in the transaction's unit of work (unit.py), which writes them once before the
    COMMIT: one UPDATE an account a transaction instead of three a reading. When writes
    are undone (``Store.undone`` moves) what memory holds is read again. A read-only
    Journal (the CLI's, beside a running agent) always asks SQLite. Memory: one row per
    account and per meter, as many as the config has."""

    def __init__(self, store: Store,
                 entry_item: Callable[[Entry], bytes] | None = None) -> None:
        """``entry_item``: an entry's bytes in the store (uplink/forming.py's
        ``entry_item``); a journal that posts needs it, a reader does not."""
        self.store = store
        self._entry_item = entry_item
        self.conn = store.conn
        self._keep = not store.readonly
        self._accounts: dict[str, Account] | None = None
        self._meters: dict[str, MeterState] | None = None
        # The moratoria (acct -> until) and the recorded disconnections' times, as in
        # their tables: the policy asks for both with every decision that may open a
        # relay, a few times a reading when balances are below zero.
        self._moratoria: dict[str, int] | None = None
        self._disconnects: list[int] | None = None
        self._undone = store.undone  # the store's undo count when memory was read

    def _current(self) -> None:
        """Forget what memory holds if writes were undone since it was read."""
        if self._undone != self.store.undone:
            self._undone = self.store.undone
            self._accounts = None
            self._meters = None
            self._moratoria = None
            self._disconnects = None

    def _all_accounts(self) -> dict[str, Account]:
        self._current()
        if self._accounts is None:
            rows = self.conn.execute(f"SELECT {_ACCOUNT_COLS} FROM accounts").fetchall()
            accounts = {row[0]: _account(row) for row in rows}
            if not self._keep:
                return accounts
            self._accounts = accounts
        return self._accounts

    def _all_meters(self) -> dict[str, MeterState]:
        self._current()
        if self._meters is None:
            rows = self.conn.execute(f"SELECT {_METER_COLS} FROM meters").fetchall()
            meters = {row[0]: MeterState(*row) for row in rows}
            if not self._keep:
                return meters
            self._meters = meters
        return self._meters

    # -- accounts -----------------------------------------------------------
    def ensure_account(self, acct: str, tariff: str) -> None:
        if self.store.unit is not None:  # what memory holds goes to SQLite before all
            self.store.unit.flush_accounts()  # is read again
        self.conn.execute(
            "INSERT INTO accounts (id, tariff) VALUES (?, ?) "
            "ON CONFLICT(id) DO UPDATE SET tariff = excluded.tariff",
            (acct, tariff),
        )
        self._accounts = None  # rare (start-up, provisioning): read them all again

    def account(self, acct: str) -> Account:
        if not self._keep:
            row = self.conn.execute(
                f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE id = ?", (acct,)).fetchone()
            if row is None:
                raise LedgerError(f"unknown account {acct!r}")
            return _account(row)
        try:
            return self._all_accounts()[acct]
        except KeyError:
            raise LedgerError(f"unknown account {acct!r}") from None

    def accounts(self) -> list[Account]:
        accounts = self._all_accounts()
        return [accounts[i] for i in sorted(accounts)]

    def update_account(self, acct: str, **fields: object) -> None:
        assert self.store.in_tx, "update_account() must run inside store.tx()"
        self._check_fields(fields)
        self._accounts_changed(self.account(acct), fields)

    @staticmethod
    def _check_fields(fields: dict[str, object]) -> None:
        assert fields.keys() <= _ACCOUNT_SETTABLE, fields.keys() - _ACCOUNT_SETTABLE
        if "alerts" in fields:
            fields["alerts"] = frozenset(cast("Iterable[int]", fields["alerts"]))

    def _accounts_changed(self, before: Account, fields: dict[str, object]) -> None:
        assert self._accounts is not None and self.store.unit is not None  # in a tx
        row = self._accounts[before.id] = before._replace(**fields)  # type: ignore[arg-type]
        self.store.unit.account_changed(row)

    # -- the journal --------------------------------------------------------
    def post(self, acct: str, t: int, kind: str, amt: int, ref: str) -> Entry:
        """Append one entry, move the balance, queue it for the uplink: all or nothing."""
        return self.post_all(acct, t, [(kind, amt, ref)])[0]

    def post_all(self, acct: str, t: int, items: list[tuple[str, int, str]],
                 **fields: object) -> list[Entry]:
        """Append entries ``(kind, amt, ref)`` in order, each moving the balance, queue
        them for the uplink, and set the account ``fields`` (as update_account) too: a
        reading's energy and duty with the month's accrual, in one change of the row."""
        assert self.store.in_tx, "post() must run inside store.tx()"
        encode = self._entry_item
        assert encode is not None, "a journal that posts is given entry_item"
        before = self.account(acct)
        balance, n = before.balance, before.n
        entries = []
        for kind, amt, ref in items:
            if kind not in ENTRY_KINDS:
                raise LedgerError(f"unknown entry kind {kind!r}")
            if type(amt) is not int:  # a bool is not an amount either
                raise LedgerError(f"amount must be integer paise, got {amt!r}")
            balance, n = balance + amt, n + 1
            assert -(2**63) <= balance < 2**63, "balance leaves signed 64-bit"
            entry = Entry(acct, n, t, kind, amt, balance, ref)
            self.conn.execute(
                "INSERT INTO journal (acct, n, t, kind, amt, bal, ref) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", (acct, n, t, kind, amt, balance, ref))
            self.store.add_pending(LANE_LEDGER, encode(entry), t)
            entries.append(entry)
        if fields:
            self._check_fields(fields)
        self._accounts_changed(before, {**fields, "balance": balance, "n": n})
        return entries
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
        if not self._keep:
            row = self.conn.execute(
                f"SELECT {_METER_COLS} FROM meters WHERE id = ?", (meter_id,)).fetchone()
            return MeterState(meter_id, None, None, None, "closed", "", "", "", None) \
                if row is None else MeterState(*row)
        meters = self._all_meters()
        state = meters.get(meter_id)
        if state is None:  # created on first use, with the table's defaults
            self.conn.execute("INSERT OR IGNORE INTO meters (id) VALUES (?)", (meter_id,))
            state = meters[meter_id] = MeterState(meter_id, None, None, None, "closed", "", "",
                                                  "", None)
        return state

    def meters(self) -> list[MeterState]:
        meters = self._all_meters()
        return [meters[i] for i in sorted(meters)]

    def meter_states(self) -> Mapping[str, MeterState]:
        """Meter id -> its row, for the meters that have one (none is created)."""
        return self._all_meters()

    def update_meter(self, meter_id: str, **fields: object) -> None:
        names = tuple(fields)
        sql = _METER_UPDATES.get(names)
        if sql is None:  # a few shapes in all (a reading's baseline, a relay's intent...)
            assert set(names) <= _METER_SETTABLE, set(names) - _METER_SETTABLE
            sql = _METER_UPDATES[names] = ("UPDATE meters SET " + ", ".join(
                f"{k} = ?" for k in names) + " WHERE id = ?")
        state = self.meter(meter_id)  # creates the row on first use
        self.conn.execute(sql, (*fields.values(), meter_id))
        if self._meters is not None:
            self._meters[meter_id] = state._replace(**fields)  # type: ignore[arg-type]

    # -- the disconnection rate limit ----------------------------------------
    def _all_disconnects(self) -> list[int]:
        self._current()
        if self._disconnects is None:
            times = [int(t) for (t,) in self.conn.execute("SELECT t FROM disconnects")]
            if not self._keep:
                return times
            self._disconnects = times
        return self._disconnects

    def count_disconnects(self, since_s: int) -> int:
        return sum(1 for t in self._all_disconnects() if t >= since_s)

    # -- moratoria from the head-end ('*' covers every account) ------------------
    def set_moratorium(self, acct: str, until: int, reason: str) -> None:
        self.conn.execute(
            "INSERT INTO moratoria (acct, until, reason) VALUES (?, ?, ?) "
            "ON CONFLICT(acct) DO UPDATE SET until = excluded.until, reason = excluded.reason",
            (acct, until, reason))
        if self._moratoria is not None:
            self._moratoria[acct] = until

    def _all_moratoria(self) -> dict[str, int]:
        self._current()
        if self._moratoria is None:
            moratoria = {acct: int(until) for acct, until in
                         self.conn.execute("SELECT acct, until FROM moratoria")}
            if not self._keep:
                return moratoria
            self._moratoria = moratoria
        return self._moratoria

    def moratorium_until(self, acct: str) -> int | None:
        moratoria = self._all_moratoria()
        own, every = moratoria.get(acct), moratoria.get("*")
        return every if own is None else own if every is None else max(own, every)

    def record_disconnect(self, t: int) -> None:
        # Only the last hour is ever counted; a day's rows are kept in case the clock
        # steps back, and older ones pruned here, so the table stays small.
        times = self._all_disconnects()
        low, high = t - DISCONNECTS_KEPT_S, t + DISCONNECTS_KEPT_S
        self.conn.execute("DELETE FROM disconnects WHERE t < ? OR t > ?", (low, high))
        self.conn.execute("INSERT INTO disconnects (t) VALUES (?)", (t,))
        if self._disconnects is not None:
            times[:] = [x for x in times if low <= x <= high]
            times.append(t)

    # -- spending, for the low-balance estimate of days left ---------------------
    def spend_since(self, acct: str, since_s: int) -> tuple[int, int | None]:
        """(paise debited by energy, duty and fixed entries at t >= since_s, the first t).

        Looks at the last SPEND_SCAN_ENTRIES entries only (a primary-key range, no index
        on t to maintain on every posting): a shorter window at worst, never a slow one."""
        last_n = self.account(acct).n
        row = self.conn.execute(
            "SELECT COALESCE(-SUM(amt), 0), MIN(t) FROM journal WHERE acct = ? AND n > ? "
            "AND t >= ? AND kind IN ('energy', 'duty', 'fixed')",
            (acct, last_n - SPEND_SCAN_ENTRIES, since_s)).fetchone()
        return int(row[0]), (None if row[1] is None else int(row[1]))

    # -- tariff versions (the `tariff` command; DOMAIN: entries name their version) ----
    def tariff_versions(self) -> list[TariffVersion]:
        rows = self.conn.execute("SELECT name, version, body, effective_s, source FROM tariffs "
                                 "ORDER BY name, version").fetchall()
        return [TariffVersion(*r) for r in rows]

    def add_tariff_version(self, v: TariffVersion) -> None:
        self.conn.execute("INSERT INTO tariffs (name, version, body, effective_s, source) "
                          "VALUES (?, ?, ?, ?, ?)",
                          (v.name, v.version, v.body, v.effective_s, v.source))

    # -- the policy overlay (the `policy` command over the config's [policy]) ----------
    def policy_overlay(self) -> dict[str, str]:
        """key -> JSON text of its value, as last set by a command."""
        return {k: v for k, v in self.conn.execute("SELECT key, value FROM policy ORDER BY key")}

    def set_policy_key(self, key: str, value_json: str, t: int) -> None:
        self.conn.execute("INSERT INTO policy (key, value, t) VALUES (?, ?, ?) ON CONFLICT(key) "
                          "DO UPDATE SET value = excluded.value, t = excluded.t",
                          (key, value_json, t))

    # -- offline token verifier state and wrong-entry gate (ledger invariant 4) ---------
    def token_row(self, acct: str) -> TokenRow | None:
        row = self.conn.execute(
            "SELECT max_counter, used, wrong_in_row, lockouts, locked_from_s, locked_until_s, "
            "last_wrong_s FROM tokens WHERE acct = ?", (acct,)).fetchone()
        if row is None:
            return None
        used = frozenset(int(x) for x in row[1].split(",") if x)
        return TokenRow(row[0], used, row[2], row[3], row[4], row[5], row[6])

    def save_token_row(self, acct: str, r: TokenRow) -> None:
        used = ",".join(str(c) for c in sorted(r.used))
        self.conn.execute(
            "INSERT INTO tokens (acct, max_counter, used, wrong_in_row, lockouts, locked_from_s, "
            "locked_until_s, last_wrong_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(acct) DO "
            "UPDATE SET max_counter = excluded.max_counter, used = excluded.used, "
            "wrong_in_row = excluded.wrong_in_row, lockouts = excluded.lockouts, "
            "locked_from_s = excluded.locked_from_s, locked_until_s = excluded.locked_until_s, "
            "last_wrong_s = excluded.last_wrong_s",
            (acct, r.max_counter, used, r.wrong_in_row, r.lockouts, r.locked_from_s,
             r.locked_until_s, r.last_wrong_s))

    # -- tamper evidence (append-only) -------------------------------------------------
    def record_tamper(self, meter: str, acct: str | None, t: int, kind: str, code: int,
                      balance: int | None, relay: str, action: str) -> int:
        cur = self.conn.execute(
            "INSERT INTO tamper (meter, acct, t, kind, code, balance, relay, action) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (meter, acct, t, kind, code, balance, relay, action))
        return int(cur.lastrowid or 0)

    def tamper_recorded(self, meter: str, t: int, code: int) -> bool:
        """Is this meter's log entry (its time and code) recorded already? A restarted
        agent reads the meter's event log from the start again."""
        row = self.conn.execute("SELECT 1 FROM tamper WHERE meter = ? AND t = ? AND code = ? "
                                "LIMIT 1", (meter, t, code)).fetchone()
        return row is not None

    def tamper_log(self, meter: str | None = None, limit: int = 100) -> list[dict[str, object]]:
        cols = ("id", "meter", "acct", "t", "kind", "code", "balance", "relay", "action")
        where, params = ("WHERE meter = ?", (meter,)) if meter else ("", ())
        rows = self.conn.execute(f"SELECT {', '.join(cols)} FROM tamper {where} "
                                 f"ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
        return [dict(zip(cols, r, strict=True)) for r in reversed(rows)]
