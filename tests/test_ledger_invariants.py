"""DOMAIN's ledger invariants, as one hypothesis state machine against the REAL store.

Store + Journal + the ledger's parts in a temp dir (WAL, synchronous=FULL), driven by random
interleavings of readings (valid, negative, implausible, register rollover, replaced
meter, a register reset: consistent readings below the baseline), top-ups (with
duplicate txns, also to another account), offline tokens (valid,
duplicate, forged), restarts, wall-clock jumps both ways, head-end payment outages,
manual overrides, relay read-backs, outbox forming and acknowledgement; and power cuts:
any step may be cut at a random SQL statement (an exception no handler catches, like
kill -9), after which the agent restarts from the store alone. After every step:

 1. money is int paise; entries chain (bal = previous bal + amt) and sum to the balance;
 2. n is gapless from 1; every entry is in exactly one of: delivered, outbox, pending;
 3. a txn is credited once, to the first account it reached;
 4. a token counter is credited at most once, and every "accepted" one is durable;
 5. per billing month, energy entries = floor(E(C)/1000) and duty = floor(E(C)*bp/10^7)
    where C is the Wh of that month's valid deltas, computed here from the readings;
 6. while the balance is below -emergency_credit and no override holds the relay, a
    recorded deferral explains why supply is on; the relay never opens for credit at or
    above that floor, and closes whenever the balance is positive;
 7. a cut step leaves the store exactly as at its last COMMIT (each transaction all or
    nothing), and the restarted agent satisfies 1-6 and 8;
 8. each alert level fires once per crossing (re-armed only by a credit that leaves the
    balance positive) and all of them, the 0% one min_notice_h earlier, precede any
    credit disconnection.

SOAK=1 runs a longer campaign.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from agent.buffer.store import LANE_EVENTS, LANE_LEDGER
from agent.ledger.billing import month_parts
from agent.ledger.policy import REASONS
from agent.ledger.tariff import pro_rata
from agent.ledger.tokens import issue_token
from agent.uplink import forming
from tests.ledger.rig import IST_S, TOKEN_KEY, UP_TABLE, Rig, decode, unix

SOAK = bool(os.environ.get("SOAK"))
pytestmark = pytest.mark.timeout(3600 if SOAK else 120)
METERS = ("M1", "M2")
ACCTS = ("A1", "A2")
MAX_W = 45 * 300  # eastron-sdm120: 45 A at the 300 V the agent allows for
SLACK_WH = 10
RESET_READINGS = 3  # DOMAIN: consistent readings below the baseline that rebase the meter
REG_MAX = 99_999_990  # its register's modulus
EMERGENCY = 5_000
MIN_NOTICE_H = 1
LEVELS = (30, 10, 0)
POLICY = {"protected_hours": "18:00-08:00", "protected_weekdays": ["sun"],
          "emergency_credit": EMERGENCY, "alert_levels_pct": list(LEVELS),
          "min_notice_h": MIN_NOTICE_H, "payment_outage_h": 6}
SLABS = ((150_000, 550), (300_000, 600), (500_000, 650), (None, 700))  # UP_TABLE, in Wh
TXNS = tuple(f"T{i}" for i in range(8))


def e_mp(c_wh: int) -> int:
    """E(C) for the UP table, written out again here (milli-paise)."""
    total, lower = 0, 0
    for upper, rate in SLABS:
        if upper is None or c_wh <= upper:
            return total + (c_wh - lower) * rate
        total, lower = total + (upper - lower) * rate, upper
    raise AssertionError


def plausible(delta_wh: int, elapsed_s: int) -> bool:
    return delta_wh * 3600 <= MAX_W * max(elapsed_s, 0) + SLACK_WH * 3600


def classify(base: tuple[int, int, str] | None, value: int, t: int, serial: str) -> str:
    """docs/billing.md's table, independently: first | replaced | ok | implausible |
    rollover | negative."""
    if base is None:
        return "first"
    prev, prev_t, prev_serial = base
    if prev_serial != serial:
        return "replaced"
    if value >= prev:
        return "ok" if plausible(value - prev, t - prev_t) else "implausible"
    if prev < REG_MAX and plausible(REG_MAX - prev + value, t - prev_t):
        return "rollover"
    return "negative"


class PowerCut(BaseException):
    """Raised from inside SQLite calls: nothing in the agent may catch it (kill -9)."""


class CuttingConnection:
    """Passes everything to the real connection; the n-th statement raises PowerCut
    instead of running (once: the rollback that follows runs, as the OS would undo an
    uncommitted WAL frame). ``on_commit`` sees each COMMIT that went through."""

    def __init__(self, conn: sqlite3.Connection, at: int,
                 on_commit: Callable[[], None]) -> None:
        self._conn = conn
        self._left = at
        self._on_commit = on_commit
        self.fired = False

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        self._left -= 1
        if self._left == 0:
            self.fired = True
            raise PowerCut(sql)
        cursor = self._conn.execute(sql, params)
        if sql == "COMMIT":
            self._on_commit()
        return cursor

    def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
        self._left -= 1
        if self._left == 0:
            self.fired = True
            raise PowerCut(sql)
        return self._conn.executemany(sql, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


cuts = st.one_of(st.none(), st.none(), st.none(), st.integers(1, 30))


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="ledger-sm-"))
        self.rig = Rig(self.tmp, meters=2, tariff=UP_TABLE, policy=POLICY,
                       now_s=unix(2026, 3, 30, 10))
        self.db = Path(self.rig.cfg.gateway.data_dir) / "agent.sqlite3"
        self.base: dict[str, tuple[int, int, str] | None] = {m: None for m in METERS}
        self.below: dict[str, list[tuple[int, int]]] = {m: [] for m in METERS}  # (wh, t)
        self.serial = {m: f"{m}-S0" for m in METERS}
        self.month_c: dict[str, dict[str, int]] = {a: {} for a in ACCTS}
        self.open_month: dict[str, str | None] = {a: None for a in ACCTS}
        self.txns: dict[str, str] = {}
        self.tokens: dict[str, dict[int, int]] = {a: {} for a in ACCTS}  # counter -> paise
        self.unentered: dict[str, list[tuple[int, int]]] = {a: [] for a in ACCTS}
        self.next_counter = dict.fromkeys(ACCTS, 1)
        self.delivered_entries: list[dict[str, Any]] = []
        self.delivered_events: list[dict[str, Any]] = []
        self.events_seen = 0
        self.raised: dict[str, set[int]] = {a: set() for a in ACCTS}
        self.zero_at: dict[str, int | None] = dict.fromkeys(ACCTS)
        self.intents = {m: self.rig.meter(m).relay_intent for m in METERS}
        self.cut_steps = 0

    def teardown(self) -> None:
        self.rig.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- running a step, possibly cut --------------------------------------------------
    def _snapshot(self) -> dict[str, list[Any]]:
        """The committed state, read through a second connection (what is on disk)."""
        ro = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            tables = [r[0] for r in ro.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE "
                "'sqlite_%' ORDER BY name")]
            return {t: ro.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall()
                    for t in tables}
        finally:
            ro.close()

    def _step(self, fn: Callable[[], Any], cut: int | None) -> tuple[bool, Any]:
        """Run one agent call; with ``cut`` the power fails at that statement (or just
        after the call, if it ran fewer). Returns (completed, result)."""
        if cut is None:
            return True, fn()
        committed = [self._snapshot()]  # the state at the last COMMIT, as on disk
        proxy = CuttingConnection(self.rig.store.conn, cut,
                                  lambda: committed.append(self._snapshot()))
        real = self.rig.store.conn
        self.rig.store.conn = self.rig.journal.conn = proxy  # type: ignore[assignment]
        try:
            result = fn()
        except PowerCut:
            assert self._snapshot() == committed[-1], "a cut transaction left a trace"
            self.rig.store.conn = self.rig.journal.conn = real
            self.cut_steps += 1
            self.rig.restart()
            return False, None
        self.rig.store.conn = self.rig.journal.conn = real
        self.rig.restart()  # the power fails just after the call returned
        return True, result

    def _after(self) -> None:
        """Every step ends as the runtime's loop does: a tick, then the bus follows."""
        self.rig.tick()

    # -- readings ---------------------------------------------------------------------
    @initialize(first=st.integers(0, 5_000_000))
    def installed(self, first: int) -> None:
        for m in METERS:
            self.rig.read(m, 1_000_000 + first, self.serial[m])
            self._model_reading(m, 1_000_000 + first, self.rig.now, self.serial[m])

    @rule(seconds=st.integers(60, 6 * 3600), load=st.lists(st.integers(0, 1000), min_size=2,
                                                           max_size=2), cut=cuts)
    def time_passes(self, seconds: int, load: list[int], cut: int | None) -> None:
        """The usual step: time passes and the bus reads every meter (valid readings, at
        any fraction of what the breaker could pass)."""
        self.rig.advance(seconds)
        self._after()
        for i, m in enumerate(METERS):
            self._read(m, "ok", load[i], 1, cut)

    @rule(m=st.sampled_from(METERS),
          kind=st.sampled_from(["ok", "implausible", "negative", "replaced", "near_top"]),
          frac=st.integers(0, 1000), extra=st.integers(1, 5_000_000), cut=cuts)
    def reading(self, m: str, kind: str, frac: int, extra: int, cut: int | None) -> None:
        self._read(m, kind, frac, extra, cut)

    def _read(self, m: str, kind: str, frac: int, extra: int, cut: int | None) -> None:
        base, t = self.base[m], self.rig.now
        if base is None:
            value = 1_000_000 + extra
        elif kind == "ok":
            bound = (MAX_W * max(t - base[1], 0) + SLACK_WH * 3600) // 3600
            value = (base[0] + bound * frac // 1000) % REG_MAX  # may wrap: a rollover
        elif kind == "implausible":
            value = base[0] + (MAX_W * max(t - base[1], 0)) // 3600 + SLACK_WH + extra
        elif kind == "negative":
            value = max(base[0] - extra, 0)
        else:  # a replaced meter: a new serial and any register; near_top: about to wrap
            self.serial[m] = f"{m}-S{int(self.serial[m].split('-S')[1]) + 1}"
            value = REG_MAX - 1 - extra % 5000 if kind == "near_top" else extra
        self._read_value(m, value, cut)

    def _read_value(self, m: str, value: int, cut: int | None) -> None:
        serial, t = self.serial[m], self.rig.now
        done, _ = self._step(lambda: self.rig.read(m, value, serial), cut)
        if done:
            self._model_reading(m, value, t, serial)
        self._after()

    @rule(m=st.sampled_from(METERS), start=st.integers(0, 100_000),
          loads=st.lists(st.integers(0, 1000), min_size=1, max_size=4),
          gap_s=st.integers(60, 3600), cut=cuts)
    def register_reset(self, m: str, start: int, loads: list[int], gap_s: int,
                       cut: int | None) -> None:
        """The register starts again low (same serial) and climbs: two to five readings,
        the last one possibly cut."""
        base = self.base[m]
        if base is None or start >= base[0]:
            return
        value = start
        self._read_value(m, value, None)
        for i, frac in enumerate(loads):
            self.rig.advance(gap_s)
            value += (MAX_W * gap_s // 3600) * frac // 1000
            self._read_value(m, value, cut if i == len(loads) - 1 else None)

    def _model_reading(self, m: str, value: int, t: int, serial: str) -> None:
        base = self.base[m]
        kind = classify(base, value, t, serial)
        if kind == "negative":
            below = self.below[m]
            if not (below and value >= below[-1][0] and plausible(value - below[-1][0],
                                                                   t - below[-1][1])):
                below.clear()
            below.append((value, t))
            if len(below) < RESET_READINGS:
                return  # the baseline is kept
            # a register reset: rebased on the first of them, the last charged from it
            assert base is not None
            base = (below[0][0], below[0][1], base[2])
            below.clear()
            kind = classify(base, value, t, serial)
            assert kind == "ok", kind
        else:
            self.below[m].clear()
        if kind == "implausible":
            return  # the baseline is kept
        self.base[m] = (value, t, serial)
        if kind != "ok" or base is None or value == base[0]:
            return
        acct = "A" + m[1:]
        parts = month_parts(base[1] + IST_S, t + IST_S, 1)
        shares = pro_rata(value - base[0], [end - start for _, start, end in parts])
        for i, (month, _, _) in enumerate(parts):
            current = self.open_month[acct]
            if current is None or month > current:  # a month once left is never reopened
                self.open_month[acct] = current = month
            self.month_c[acct][current] = self.month_c[acct].get(current, 0) + shares[i]

    # -- money in -----------------------------------------------------------------------
    @rule(acct=st.sampled_from(ACCTS), i=st.integers(0, len(TXNS) - 1), cut=cuts)
    def topup(self, acct: str, i: int, cut: int | None) -> None:
        txn, amount = TXNS[i], 1_000 * (i + 1) ** 2
        done, result = self._step(lambda: self.rig.topup(acct, amount, txn), cut)
        if done:
            applied, _ = result
            assert applied == (txn not in self.txns), (txn, self.txns)
            if applied:
                self.txns[txn] = acct
                self._credited(acct)
        self._after()

    @rule(acct=st.sampled_from(ACCTS), rupees=st.integers(1, 400), cut=cuts)
    def token_valid(self, acct: str, rupees: int, cut: int | None) -> None:
        counter = self.next_counter[acct]
        self.next_counter[acct] += 1
        self.unentered[acct].append((counter, rupees * 100))
        self._enter(acct, counter, rupees * 100, cut)

    @rule(acct=st.sampled_from(ACCTS), data=st.data())
    def token_again(self, acct: str, data: st.DataObject) -> None:
        """A token entered before (a duplicate), or one left over (e.g. refused: locked)."""
        known = list(self.tokens[acct].items()) + self.unentered[acct]
        if known:
            counter, amount = data.draw(st.sampled_from(known))
            self._enter(acct, counter, amount, None)

    def _enter(self, acct: str, counter: int, amount: int, cut: int | None) -> None:
        digits = issue_token(TOKEN_KEY, acct, amount, counter)
        seen = counter in self.tokens[acct]
        done, out = self._step(
            lambda: self.rig.ledger.credit.enter_token(acct, digits, self.rig.now), cut)
        if done:
            if out["ok"]:
                assert not seen and out["amount"] == amount and out["counter"] == counter
                self.tokens[acct][counter] = amount
                self.unentered[acct].remove((counter, amount))
                assert self._committed_refs(acct) >= {f"token:{acct}:{counter}"}
                self._credited(acct)
            else:
                assert out["reason"] in ("used", "locked", "out_of_window"), out
                assert out["reason"] != "used" or seen
        self._after()

    @rule(acct=st.sampled_from(ACCTS), digits=st.text("0123456789 -", min_size=0, max_size=24),
          flip=st.integers(0, 19), cut=cuts)
    def token_forged(self, acct: str, digits: str, flip: int, cut: int | None) -> None:
        if len(digits) % 2:  # half the time: a genuine token with one digit changed
            real = issue_token(TOKEN_KEY, acct, 10_000, self.next_counter[acct]).replace(" ", "")
            digits = real[:flip] + str((int(real[flip]) + 1) % 10) + real[flip + 1:]
        done, out = self._step(
            lambda: self.rig.ledger.credit.enter_token(acct, digits, self.rig.now), cut)
        assert not done or (not out["ok"] and out["reason"] in ("malformed", "bad_mac",
                                                                 "locked")), out
        self._after()

    def _credited(self, acct: str) -> None:
        if self.rig.account(acct).balance > 0:
            self.raised[acct] = set()  # a credit that leaves the balance positive re-arms all
            self.zero_at[acct] = None

    def _committed_refs(self, acct: str) -> set[str]:
        ro = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            return {r[0] for r in ro.execute("SELECT ref FROM journal WHERE acct = ?", (acct,))}
        finally:
            ro.close()

    # -- time, restarts and the outside world ---------------------------------------
    @rule(days=st.integers(-40, 40), seconds=st.integers(0, 86_399))
    def clock_jump(self, days: int, seconds: int) -> None:
        self.rig.now += days * 86_400 + seconds  # an NTP step or a lost RTC
        self._after()

    @rule()
    def restart(self) -> None:
        self.rig.restart()
        self._after()

    @rule(payments=st.booleans())
    def headend(self, payments: bool) -> None:
        self.rig.ledger.relays.headend_state(True, payments, self.rig.now)
        self._after()

    @rule(m=st.sampled_from(METERS), action=st.sampled_from(["connect", "disconnect", "auto"]),
          minutes=st.one_of(st.none(), st.integers(1, 600)))
    def override(self, m: str, action: str, minutes: int | None) -> None:
        until = None if minutes is None or action == "auto" else self.rig.now + minutes * 60
        self.rig.ledger.relays.set_override(m, action, until, self.rig.now)
        self._after()

    @rule(cut=cuts)
    def relays_follow(self, cut: int | None) -> None:
        self._step(self.rig.follow_relays, cut)
        self._after()

    @rule(ack=st.integers(0, 5))
    def deliver(self, ack: int) -> None:
        forming.form_messages(self.rig.store, "gw-test", 1, self.rig.now, True)
        for row in self.rig.store.outbox_next(set(), ack):
            message = decode(row.payload)
            self.delivered_entries += message.get("entries", [])
            self.delivered_events += message.get("events", [])
            self.rig.store.ack(row.seq)
        self._after()

    # -- the invariants ----------------------------------------------------------------
    def _all(self, lane: int, key: str, delivered: list[dict[str, Any]]) -> list[Any]:
        items = list(delivered)
        for row in self.rig.store.outbox_next(set(), 10**6):
            if row.lane == lane:
                items += decode(row.payload).get(key, [])
        items += [decode(i) for i in self.rig.store.pending_items(lane)]
        return items

    @invariant()
    def money_and_journal(self) -> None:  # invariants 1, 2, 3, 4, 7 (outbox)
        wire = Counter((e["acct"], e["n"]) for e in self._all(LANE_LEDGER, "entries",
                                                              self.delivered_entries))
        assert all(c == 1 for c in wire.values()), "an entry queued twice"
        for acct in ACCTS:
            entries = self.rig.entries(acct)
            account = self.rig.account(acct)
            assert [e.n for e in entries] == list(range(1, len(entries) + 1)) and \
                account.n == len(entries)
            bal = 0
            for e in entries:
                assert type(e.amt) is int and type(e.bal) is int
                bal += e.amt
                assert e.bal == bal
            assert account.balance == bal
            assert {n for a, n in wire if a == acct} == {e.n for e in entries}
            topups = [e.ref for e in entries if e.kind == "topup"]
            assert sorted(topups) == sorted(t for t, a in self.txns.items() if a == acct)
            tokens = Counter(e.ref for e in entries if e.kind == "token")
            assert tokens == Counter(f"token:{acct}:{c}" for c in self.tokens[acct])
            assert all(e.amt == self.tokens[acct][int(e.ref.split(":")[2])]
                       for e in entries if e.kind == "token")
            dates = [e.ref.split("/")[0] for e in entries if e.kind == "fixed"]
            assert len(dates) == len(set(dates)), "a fixed charge posted twice for a date"

    @invariant()
    def energy_per_month(self) -> None:  # invariant 5
        for acct in ACCTS:
            energy: Counter[str] = Counter()
            duty: Counter[str] = Counter()
            for e in self.rig.entries(acct):
                if e.kind in ("energy", "duty"):
                    (energy if e.kind == "energy" else duty)[e.ref.split("/")[1]] -= e.amt
            months = set(self.month_c[acct]) | set(energy) | set(duty)
            for month in months:
                c = self.month_c[acct].get(month, 0)
                assert energy[month] == e_mp(c) // 1000, (acct, month, c)
                assert duty[month] == e_mp(c) * 500 // 10**7, (acct, month, c)
            account = self.rig.account(acct)
            if account.month:
                assert account.consumed_wh == self.month_c[acct][account.month]
        for m in METERS:
            st_ = self.rig.meter(m)
            expect = self.base[m]
            assert (st_.base_wh, st_.base_t) == ((None, None) if expect is None
                                                 else (expect[0], expect[1]))
            below = self.below[m]
            assert st_.reset_count == len(below)
            if below:
                assert (st_.reset_first_wh, st_.reset_first_t, st_.reset_last_wh,
                        st_.reset_last_t) == (*below[0], *below[-1])

    @invariant()
    def alerts_and_relays(self) -> None:  # invariants 6 and 8
        events = self._all(LANE_EVENTS, "events", self.delivered_events)
        for event in events[self.events_seen:]:
            if event["type"] == "low_balance":
                acct, level = event["acct"], event["detail"]["level_pct"]
                assert level not in self.raised[acct], f"{acct}: level {level} fired twice"
                self.raised[acct].add(level)
                if level == 0:
                    self.zero_at[acct] = event["t"]
        self.events_seen = len(events)
        now = self.rig.now
        for m in METERS:
            acct = "A" + m[1:]
            account, state = self.rig.account(acct), self.rig.meter(m)
            assert account.alerts == frozenset(self.raised[acct])
            held = bool(state.override) or bool(state.tamper_hold)
            if not held and account.balance > 0:
                assert state.relay_intent == "closed", "no reconnection with credit"
            if state.relay_intent == "open" and not held:
                assert account.balance <= 0
            newly_open = state.relay_intent == "open" and self.intents[m] != "open"
            if newly_open and state.relay_reason == "credit":
                assert account.balance < -EMERGENCY, "opened within the emergency credit"
                assert self.raised[acct] >= set(LEVELS), "opened before every alert"
                zero_at = self.zero_at[acct]
                assert zero_at is not None and now - zero_at >= MIN_NOTICE_H * 3600
            if state.relay_intent == "closed" and not held and account.balance < -EMERGENCY:
                reasons = account.deferred.split(",")
                assert account.deferred and set(reasons) <= set(REASONS), account
                assert "emergency_credit" not in reasons
            elif state.relay_intent == "closed" and not held and account.balance < 0:
                assert "emergency_credit" in account.deferred.split(",")
            self.intents[m] = state.relay_intent


LedgerMachine.TestCase.settings = settings(
    max_examples=400 if SOAK else 35, stateful_step_count=60 if SOAK else 30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestLedgerInvariants = LedgerMachine.TestCase
