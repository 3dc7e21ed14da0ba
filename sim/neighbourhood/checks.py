"""The checks at the end of a gateway's run: every invariant of DOMAIN.md, from outside.

Each check returns violations as one line each, prefixed by its name. The money
checks recompute what the agent should have charged from the readings it
committed (seen through the observer's triggers), with this file's own rules and
tariff (``world.energy_mp``), never with ``agent.ledger``:

  ledger       integer paise; balance = sum of entries; n gapless from 1; each entry's
               bal = previous bal + amt; what was observed during the run is still
               there unchanged (append-only); every entry delivered once
  topups       each txn credited once; every cloud payment credited exactly once
  tokens       each token credited at most once, every one typed right credited
  energy       per account and billing month: energy paise = floor(E(C) / 1000) and
               duty = floor(E(C) x duty_bp / 1e7), C replayed from the readings with
               DOMAIN's rules; the open month's C equals the agent's own counter
  metered      per meter: each charged delta equals the register truth to within
               float32 quantisation; unbilled Wh only across rollover, replacement, a
               register reset (three consistent readings below the baseline rebase the
               meter on the first of them: only what was used up to it goes unbilled) or
               a bad reading, reported by reason
  fixed        one fixed charge per account and local date, never for a future date
  alerts       the low_balance events are exactly the crossings of the levels, in order
  relays       every disconnection legal (judge.py); every reconnection in time
  readings     each committed reading delivered exactly once (after dedupe by
               (gw, seq)), none lost but in a crash or a reported drop; seq gapless
  wire         the head-end saw no invalid message and no seq with two payloads
  tamper       each tamper the meters reported became a `tamper` event
  disk         with [store] max_bytes, the bytes held never pass it while readings could
               still be dropped (data_dropped reported)
  crash        the store was consistent at every boot; the agent raised nothing
"""

from __future__ import annotations

import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING, Any

from sim.neighbourhood.world import (
    BILLING_DAY,
    DUTY_BP,
    REGISTER_MOD_WH,
    WS_PER_WH,
    billing_month,
    billing_month_of,
    energy_mp,
)

if TYPE_CHECKING:
    from sim.neighbourhood.runner import GatewaySim

MAX_POWER_W = 45 * 300  # SDM120: Imax 45 A at 300 V, the agent's plausibility bound
SLACK_WH = 10
RESET_READINGS = 3  # DOMAIN: consistent readings below the baseline that rebase a meter
QUANT_WH = 9  # float32 kWh near the register's top is 7.8 Wh coarse, plus flooring


@dataclass
class Replay:
    charged: dict[tuple[str, str], int]  # (account, month) -> Wh
    open_month: dict[str, str]
    meter_charged: dict[str, int]
    meter_truth: dict[str, int]
    unbilled: dict[str, int]  # reason -> Wh
    off_truth: list[str]


def _plausible(delta_wh: int, elapsed_s: int) -> bool:
    return delta_wh * 3600 <= MAX_POWER_W * max(elapsed_s, 0) + SLACK_WH * 3600


def classify(base_wh: int, new_wh: int, elapsed_s: int, base_serial: str | None,
             new_serial: str | None) -> str:
    """DOMAIN "Billing": ok | replaced | rollover (rebased, not charged) | negative |
    implausible (bad: the baseline is kept)."""
    if base_serial is not None and new_serial is not None and base_serial != new_serial:
        return "replaced"
    if new_wh >= base_wh:
        return "ok" if _plausible(new_wh - base_wh, elapsed_s) else "implausible"
    if base_wh < REGISTER_MOD_WH and _plausible(REGISTER_MOD_WH - base_wh + new_wh, elapsed_s):
        return "rollover"
    return "negative"


def pro_rata(amount: int, weights: list[int]) -> list[int]:
    total, running, given, out = sum(weights), 0, 0, []
    for i, w in enumerate(weights):
        running += w
        upto = amount * running // total if total else (amount if i == len(weights) - 1 else 0)
        out.append(upto - given)
        given = upto
    return out


def month_split(sim: GatewaySim, t0: int, t1: int, wh: int) -> list[tuple[str, int]]:
    """``wh`` used between two readings, cut at billing-month starts pro rata by time
    (a reading exactly at a month's start closes the month before)."""
    if t1 <= t0:
        return [(billing_month(t1, sim.cal), wh)]
    known = _last_month.get(sim.cal.tz)  # the usual: the month of the reading before
    if known is not None and known[0] <= t0 and t1 <= known[1]:
        return [(known[2], wh)]
    local = sim.cal.local(t0)
    year, month = local.year, local.month
    cuts = [t0]
    while True:
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        start = _month_start(sim.cal.tz, year, month)
        if start >= t1:
            break
        cuts.append(start)
    if len(cuts) == 1:  # within a month (the usual): pro_rata would give it all
        key = billing_month_of(local)
        year, month = int(key[:4]), int(key[5:])
        after = (year + 1, 1) if month == 12 else (year, month + 1)
        _last_month[sim.cal.tz] = (_month_start(sim.cal.tz, year, month),
                                   _month_start(sim.cal.tz, *after), key)
        return [(key, wh)]
    cuts.append(t1)
    parts = pro_rata(wh, [b - a for a, b in zip(cuts, cuts[1:], strict=False)])
    return [(billing_month(a, sim.cal), p) for a, p in zip(cuts, parts, strict=False)]


_month_starts: dict[tuple[tzinfo, int, int], int] = {}  # at most 12 a year simulated
# zone -> (start, end, key) of the billing month of the last reading interval within one
_last_month: dict[tzinfo, tuple[int, int, str]] = {}


def _month_start(tz: tzinfo, year: int, month: int) -> int:
    """The true time the billing month starts (BILLING_DAY, 00:00 local)."""
    key = (tz, year, month)
    start = _month_starts.get(key)
    if start is None:
        start = _month_starts[key] = int(datetime(year, month, BILLING_DAY,
                                                  tzinfo=tz).timestamp())
    return start


Row = tuple[int, int, int, "str | None", int]  # agent t, Wh read, register truth (W s),
# serial read, true time served


def replay(sim: GatewaySim) -> Replay:
    """What DOMAIN's rules charge for the readings the agent committed, in commit order."""
    served: dict[str, list[Row]] = defaultdict(list)
    for true_t, _boot, _step, meter, t, wh, reg_ws, serial in sim.served:
        served[meter].append((t, wh, reg_ws, serial, true_t))
    jumps = {hh.meter: [j[0] for j in hh.jumps] for hh in sim.households}
    cursor: dict[str, int] = defaultdict(int)
    base: dict[str, Row] = {}
    last: dict[str, Row] = {}
    charged: dict[tuple[str, str], int] = defaultdict(int)
    open_month: dict[str, str] = {}
    meter_charged: dict[str, int] = defaultdict(int)
    unbilled: dict[str, int] = defaultdict(int)
    off: list[str] = []
    first_reg: dict[str, int] = {}
    under: dict[str, list[Row]] = {}  # readings below the baseline, consistent so far
    for _true, meter, t, wh in sim.obs.readings:
        rows = served[meter]
        i = cursor[meter]
        while i < len(rows) and (rows[i][0], rows[i][1]) != (t, wh):
            i += 1
        if i == len(rows):
            off.append(f"{meter}: committed reading t={t} {wh} Wh was never served")
            continue
        cursor[meter] = i + 1
        row = rows[i]
        last[meter] = row
        first_reg.setdefault(meter, row[2])
        acct = sim.account_of[meter]
        if meter not in base:
            base[meter] = row
            continue
        b_t, b_wh, b_reg, b_serial, b_true = base[meter]
        kind = classify(b_wh, wh, t - b_t, b_serial, row[3])
        if kind == "negative":
            below = under.get(meter)
            if below and wh >= below[-1][1] and _plausible(wh - below[-1][1],
                                                           t - below[-1][0]):
                below.append(row)
            else:
                below = under[meter] = [row]
            if len(below) < RESET_READINGS:
                continue
            # DOMAIN: a register reset; the first reading below the old baseline is the
            # new one, and what was used up to it (the jump) is not billed
            del under[meter]
            unbilled["register_reset"] += (below[0][2] - b_reg) // WS_PER_WH
            first = below[0]
            base[meter] = (first[0], first[1], first[2], first[3] or b_serial, first[4])
            b_t, b_wh, b_reg, b_serial, b_true = base[meter]
            kind = classify(b_wh, wh, t - b_t, b_serial, row[3])
        else:
            under.pop(meter, None)
        if kind in ("negative", "implausible"):
            continue
        truth_wh = (row[2] - b_reg) // WS_PER_WH
        base[meter] = (t, wh, row[2], row[3] or b_serial, row[4])
        if kind != "ok":
            unbilled[kind] += truth_wh
            continue
        delta = wh - b_wh
        if any(b_true < j <= row[4] for j in jumps[meter]):
            # the register was reset or swapped without a new serial being seen, and has
            # since climbed past the old baseline: only the climb past it is charged
            unbilled["register_reset"] += truth_wh - delta
        elif abs(delta - truth_wh) > QUANT_WH:
            off.append(f"{meter}: charged {delta} Wh between t={b_t} and t={t}, the register "
                       f"truth is {truth_wh} Wh")
        meter_charged[meter] += delta
        for month, part in month_split(sim, b_t, t, delta):
            month = max(month, open_month.get(acct, month))  # a left month never reopens
            open_month[acct] = month
            charged[(acct, month)] += part
    for meter, row in last.items():  # after the last baseline: bad readings, not charged
        if base[meter][2] != row[2]:
            unbilled["bad_reading"] += (row[2] - base[meter][2]) // WS_PER_WH
    truth = {m: (last[m][2] - first_reg[m]) // WS_PER_WH for m in last}
    return Replay(dict(charged), open_month, dict(meter_charged), truth, dict(unbilled), off)


def check(sim: GatewaySim) -> tuple[list[str], dict[str, Any]]:
    """(violations, facts for the report)."""
    out: list[str] = []
    conn = sim.final_conn()
    out += [f"crash: {c}" for c in sim.life.consistency]
    out += [f"crash: {e}" for e in sim.life.errors]
    entries = _ledger(sim, conn, out)
    rep = replay(sim)
    _money(sim, conn, entries, rep, out)
    _alerts(sim, entries, out)
    for d in sim.judge.opens:
        if d.broken:
            stale = " an open intent from before the restart, executed without a new " \
                "decision;" if d.stale else ""
            out.append(f"relays: {sim.cal.describe(d.t)} (t={d.t}, boot {d.boot}) {d.meter} "
                       f"opened ({d.reason}):{stale} " + "; ".join(d.broken))
    sim.judge.settle(sim.life.downtime, sim.now)
    out += [f"relays: late reconnection: {x}" for x in sim.judge.late]
    delivery = _readings(sim, conn, out)
    out += [f"wire: {v}" for v in sim.headend.got.violations]
    if sim.disk_over:
        t, held, readings = sim.disk_over[0]
        out.append(f"disk: {len(sim.disk_over)} steps over [store] max_bytes "
                   f"{sim.plan.store_max_bytes}, first at t={t}: {held} bytes held, {readings} "
                   "of them readings that should have been dropped first")
    seen_tamper = Counter((e.get("m"), e.get("detail", {}).get("code"))
                          for _t, _b, e in sim.obs.events if e.get("type") == "tamper")
    for (meter, code), n in sorted(Counter(
            (m, c) for _t, m, c in sim.posted_tampers).items()):
        if seen_tamper[(meter, code)] < n:
            out.append(f"tamper: {meter} reported code {code} {n}x, "
                       f"{seen_tamper[(meter, code)]} tamper event(s)")
    facts = {"replay": rep, "entries": entries, "delivery": delivery}
    return out, facts


def _ledger(sim: GatewaySim, conn: sqlite3.Connection, out: list[str]) -> list[tuple[Any, ...]]:
    rows = conn.execute("SELECT acct, n, t, kind, amt, bal, ref FROM journal "
                        "ORDER BY acct, n").fetchall()
    prev: dict[str, tuple[int, int]] = {}
    for acct, n, _t, _kind, amt, bal, _ref in rows:
        if not isinstance(amt, int) or not isinstance(bal, int):
            out.append(f"ledger: {acct} n={n}: amount {amt!r} / balance {bal!r} not integer")
            continue
        last_n, last_bal = prev.get(acct, (0, 0))
        if n != last_n + 1:
            out.append(f"ledger: {acct}: entry n={n} follows n={last_n}")
        if bal != last_bal + amt:
            out.append(f"ledger: {acct} n={n}: bal {bal} != {last_bal} + {amt}")
        prev[acct] = (n, bal)
    for acct, balance, n in conn.execute("SELECT id, balance, n FROM accounts ORDER BY id"):
        if prev.get(acct, (0, 0)) != (n, balance):
            out.append(f"ledger: {acct}: balance {balance} n {n}, entries end at "
                       f"{prev.get(acct)}")
    seen = sorted((e.acct, e.n, e.kind, e.amt, e.bal, e.ref) for e in sim.obs.entries)
    if seen != [(a, n, k, amt, bal, ref) for a, n, _t, k, amt, bal, ref in rows]:
        final = {(a, n): (k, amt, bal, ref) for a, n, _t, k, amt, bal, ref in rows}
        for e in sim.obs.entries:  # which ones (sorted by acct and n, rows are the same)
            if final.get((e.acct, e.n)) != (e.kind, e.amt, e.bal, e.ref):
                out.append(f"ledger: {e.acct} n={e.n} committed at t={e.true_t} as "
                           f"{(e.kind, e.amt, e.bal, e.ref)}, now {final.get((e.acct, e.n))}")
        if len(sim.obs.entries) != len(rows):
            out.append(f"ledger: {len(rows)} entries in the journal, {len(sim.obs.entries)} "
                       "seen committed")
    got = Counter((acct, n) for _t, acct, n in sim.headend.got.entries)
    for key, count in got.items():
        if count > 1:
            out.append(f"ledger: entry {key} delivered {count} times")
    missing = [(a, n) for a, n, *_ in rows if (a, n) not in got]
    if missing:
        out.append(f"ledger: {len(missing)} entries never delivered, e.g. {missing[:3]}")
    return rows


def _money(sim: GatewaySim, conn: sqlite3.Connection, rows: list[tuple[Any, ...]], rep: Replay,
           out: list[str]) -> None:
    credits = Counter(ref for _a, _n, _t, kind, _amt, _b, ref in rows if kind == "topup")
    out += [f"topups: txn {r} credited {c} times" for r, c in credits.items() if c > 1]
    topups: dict[str, list[tuple[Any, ...]]] = defaultdict(list)  # txn -> its rows, in order
    for r in rows:
        if r[3] == "topup":
            topups[r[6]].append(r)
    for txn, (acct, amount, _t) in sorted(sim.consumers.ledger.cloud.items()):
        found = topups.get(txn, [])
        if len(found) != 1 or found[0][0] != acct or found[0][4] != amount:
            out.append(f"topups: payment {txn} ({acct}, {amount} paise) credited as {found}")
    tokens = Counter(ref for _a, _n, _t, kind, _amt, _b, ref in rows if kind == "token")
    out += [f"tokens: {r} credited {c} times" for r, c in tokens.items() if c > 1]
    typed = {(acct, digits) for _t, acct, digits, note in sim.consumers.ledger.entries
             if not note.startswith("typo")}
    for _t, acct, counter, amount, digits in sim.consumers.ledger.tokens:
        if (acct, digits) in typed and tokens[f"token:{acct}:{counter}"] != 1:
            out.append(f"tokens: {acct} token #{counter} ({amount} paise) typed, credited "
                       f"{tokens[f'token:{acct}:{counter}']} times")
    posted: dict[tuple[str, str, str], int] = defaultdict(int)
    for acct, _n, _t, kind, amt, _b, ref in rows:
        if kind in ("energy", "duty"):
            parts = ref.split("/")
            posted[(acct, parts[1] if len(parts) > 2 else "?", kind)] -= amt
    for (acct, month), wh in sorted(rep.charged.items()):
        mp = energy_mp(wh)
        want = {"energy": mp // 1000, "duty": mp * DUTY_BP // 10_000_000}
        for kind, paise in want.items():
            if posted.get((acct, month, kind), 0) != paise:
                out.append(f"energy: {acct} {month}: {kind} posted "
                           f"{posted.get((acct, month, kind), 0)} paise, the tariff on "
                           f"{wh} Wh gives {paise}")
    months = {(a, m) for (a, m, _k) in posted}
    for acct, month in sorted(months - set(rep.charged)):
        out.append(f"energy: {acct} {month}: charged with no energy replayed")
    for acct, month, consumed in conn.execute("SELECT id, month, consumed_wh FROM accounts"):
        if month and rep.charged.get((acct, month), 0) != consumed:
            out.append(f"energy: {acct} {month}: the agent counts {consumed} Wh, the readings "
                       f"give {rep.charged.get((acct, month), 0)}")
    out += [f"metered: {x}" for x in rep.off_truth]
    fixed: dict[tuple[str, str], int] = defaultdict(int)
    true_t = {(e.acct, e.n): e.true_t for e in sim.obs.entries}
    for acct, n, _t, kind, _amt, _b, ref in rows:
        if kind != "fixed":
            continue
        date = ref.split("/")[0]
        fixed[(acct, date)] += 1
        when = true_t.get((acct, n))
        if when is not None and date > sim.cal.local(when).date().isoformat():
            out.append(f"fixed: {acct} charged for {date} on "
                       f"{sim.cal.local(when).date().isoformat()}")
    out += [f"fixed: {a} charged {c} times for {d}" for (a, d), c in fixed.items() if c > 1]


def _alerts(sim: GatewaySim, rows: list[tuple[Any, ...]], out: list[str]) -> None:
    levels = sorted(sim.judge.policy.levels, reverse=True)
    expected: dict[str, list[int]] = defaultdict(list)
    state: dict[str, tuple[int, set[int]]] = {}
    for acct, _n, _t, kind, amt, bal, _ref in rows:
        reference, raised = state.get(acct, (0, set()))
        if kind in ("topup", "token") and amt > 0:
            reference = max(bal, 0)
            raised = {lvl for lvl in raised if bal <= _threshold(lvl, reference)}
        elif amt <= 0:
            for lvl in levels:
                if lvl not in raised and bal <= _threshold(lvl, reference):
                    raised.add(lvl)
                    expected[acct].append(lvl)
        state[acct] = (reference, raised)
    actual: dict[str, list[int]] = defaultdict(list)
    for _t, _b, e in sim.obs.events:
        if e.get("type") == "low_balance":
            actual[str(e.get("acct"))].append(int(e.get("detail", {}).get("level_pct", -1)))
    for acct in sorted(set(expected) | set(actual)):
        if expected[acct] != actual[acct]:
            out.append(f"alerts: {acct}: levels fired {actual[acct]}, the crossings were "
                       f"{expected[acct]}")


def _threshold(level: int, reference: int) -> int:
    return reference * level // 100 if reference > 0 else 0


def _readings(sim: GatewaySim, conn: sqlite3.Connection, out: list[str]) -> list[int]:
    committed = Counter((m, t, wh) for _tt, m, t, wh in sim.obs.readings)
    got = sim.headend.got
    delivered = Counter((m, t, wh) for _at, m, t, wh in got.readings)
    for key, n in delivered.items():
        if n > 1:
            out.append(f"readings: {key} delivered {n} times")
        if committed[key] < n:
            out.append(f"readings: {key} delivered but never committed")
    dropped = sum(int(e.get("detail", {}).get("count", 0)) for _t, _b, e in sim.obs.events
                  if e.get("type") == "data_dropped"
                  and e.get("detail", {}).get("what") == "readings")
    undelivered = sum((committed - delivered).values())
    if undelivered > dropped:
        out.append(f"readings: {undelivered} committed readings never delivered, "
                   f"{dropped} reported dropped")
    crashed = {s for _t, _b, s in sim.life.crash_steps}
    committed_keys = set(committed)
    lost = [(m, t) for _tt, _b, step, m, t, wh, _r, _s in sim.served
            if (m, t, wh) not in committed_keys and step + 1 not in crashed]
    if lost:
        out.append(f"readings: {len(lost)} served outside a crashed step and never "
                   f"committed, e.g. {lost[:3]}")
    gaps = {int(s) for _t, _b, e in sim.obs.events if e.get("type") == "data_dropped"
            for s in e.get("detail", {}).get("seqs", [])}
    top = int(conn.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()[0]) - 1
    missing = [s for s in range(1, top + 1) if s not in got.seqs and s not in gaps]
    if missing:
        out.append(f"readings: {len(missing)} seqs never delivered (nor reported dropped), "
                   f"e.g. {missing[:5]}")
    arrival = {(m, t, wh): at for at, m, t, wh in got.readings}
    served_at = {(m, t, wh): tt for tt, _b, _s, m, t, wh, _r, _x in sim.served}
    return sorted(arrival[k] - served_at[k] for k in arrival if k in served_at)
