"""The ledger's pure rules on MicroPython: one program, run by CPython and by real
MicroPython (scripts/micropython-test.sh); their outputs must be identical, line for
line. It also checks values worked out by hand (the UP LMV-1 bill, the docs/tokens.md
token), so both interpreters are held to the same fixed answers, not only to each
other. Only MicroPython-safe Python here: no dict printing (order), no f-string
format specs beyond what both support, no typing at run time.
"""

from __future__ import annotations

from agent.errors import LedgerError
from agent.ledger import alerts, billing, calendar, policy, tariff, tokens
from agent.ledger.hmac256 import hmac_sha256

TYPE_CHECKING = False  # as in agent/ledger: no `typing` at run time on MicroPython
if TYPE_CHECKING:
    from typing import Any

OUT: list[str] = []


def out(name: str, value: object) -> None:
    OUT.append(name + " " + plain(value))


def plain(value: Any) -> str:
    """A stable text for ints, strs, bools, None and (nested) lists/tuples/dicts/sets."""
    if isinstance(value, dict):
        return "{" + ", ".join(plain(k) + ": " + plain(value[k]) for k in sorted(value)) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(plain(v) for v in value) + "]"
    if isinstance(value, (set, frozenset)):
        return plain(sorted(value))
    return repr(value)


UP = tariff.Tariff(
    name="up-lmv1-urban", fixed_per_day=733, duty_bp=500, billing_day=1,
    slabs=(tariff.Slab(550, 150), tariff.Slab(600, 300), tariff.Slab(650, 500), tariff.Slab(700)),
)
TOD = tariff.Tariff(
    name="tod", fixed_per_day=0, duty_bp=500, billing_day=5,
    slabs=(tariff.Slab(550, 100), tariff.Slab(650)),
    tod=(tariff.TodWindow(600, 960, 80), tariff.TodWindow(1080, 1320, 120)),
)


def calendar_part() -> None:
    for ymd in ((1970, 1, 1), (2000, 2, 29), (2026, 3, 1), (2026, 12, 31), (9999, 12, 31),
                (1, 1, 1)):
        out("days_from_civil " + plain(ymd), calendar.days_from_civil(*ymd))
    for days in (-719162, -1, 0, 11016, 20513, 2932896):
        out("civil_from_days " + str(days), calendar.civil_from_days(days))
    t = calendar.days_from_civil(2026, 3, 1) * 86400 + 13 * 3600 + 5 * 60
    out("local_date", calendar.local_date(t))
    out("weekday", calendar.weekday(t))
    out("minute_of_day", calendar.minute_of_day(t))
    out("billing_month", [calendar.billing_month(t, d) for d in (1, 2, 28)])
    out("add_months", [calendar.add_months("2026-01", n) for n in (-13, -1, 0, 11, 12)])
    out("month_start", calendar.billing_month_start_s("2026-02", 15))
    out("parse_hhmm", [calendar.parse_hhmm("00:00"), calendar.parse_hhmm("24:00", True)])
    for bad in ("2026-02-29", "2026-13-01", "20260101", "2026-1-01"):
        try:
            calendar.parse_date(bad)
            out("parse_date " + bad, "accepted")
        except ValueError:
            out("parse_date " + bad, "ValueError")


def tariff_part() -> None:
    out("E(C)", [tariff.energy_millipaise(UP, c) for c in (0, 1, 150000, 150001, 420000,
                                                           10**9)])
    start = calendar.days_from_civil(2026, 4, 7) * 86400
    out("tod_segments", tariff.tod_segments(TOD.tod, start + 9 * 3600, start + 30 * 3600))
    out("tod_split", tariff.tod_split_wh(TOD.tod, 12345, start + 9 * 3600, start + 30 * 3600))
    out("delta_tod", tariff.delta_energy_mp(TOD, 99000, 111345, start + 9 * 3600,
                                            start + 30 * 3600))
    out("pro_rata", [tariff.pro_rata(10, [1, 1, 1]), tariff.pro_rata(7, [0, 0]),
                     tariff.pro_rata(100, [3, 0, 7])])
    bad = tariff.Tariff(name="bad", fixed_per_day=-1, slabs=(tariff.Slab(-5, 10),),
                        duty_bp=10001, billing_day=29,
                        tod=(tariff.TodWindow(600, 700, 90), tariff.TodWindow(650, 800, 90)))
    out("tariff_problems", tariff.tariff_problems(bad))
    out("tariff_table", tariff.tariff_table(TOD))
    v2 = tariff.Tariff(name="up", fixed_per_day=0, slabs=(tariff.Slab(900),), version=2)
    versions = [(0, UP), (1000, v2)]
    out("version_at", [tariff.version_at(versions, t).version for t in (-5, 999, 1000)])
    out("version_parts", [(p[0].version, p[1], p[2]) for p in
                          tariff.version_parts(versions, 500, 1500)])
    try:
        tariff.energy_millipaise(UP, -1)
    except LedgerError as exc:
        out("negative C", type(exc).__name__)


def billing_part() -> None:
    # The hand-worked bill, hourly over April 2026: 14 kWh a day on a daily curve.
    hourly = [3, 2, 2, 2, 2, 3, 6, 9, 8, 5, 4, 4, 5, 4, 4, 4, 5, 7, 10, 12, 11, 9, 6, 4]
    start = calendar.days_from_civil(2026, 4, 1) * 86400
    accrual: billing.MonthAccrual | None = None
    energy = duty = 0
    used = 0
    for hour in range(30 * 24):
        day, h = hour // 24, hour % 24
        total = day * 14000 + 14000 * sum(hourly[: h + 1]) // sum(hourly)
        result = billing.charge(UP, accrual, total - used, start + hour * 3600,
                                start + (hour + 1) * 3600)
        accrual = result.accrual
        energy += result.energy_paise
        duty += result.duty_paise
        used = total
    fixed = len(billing.fixed_dates_due("2026-03-31", "2026-04-30")) * UP.fixed_per_day
    assert (used, energy, duty, fixed) == (420000, 250500, 12525, 21990), (energy, duty)
    out("month bill", [used, energy, duty, fixed, energy + duty + fixed])
    assert accrual is not None
    out("accrual", [accrual.month, accrual.consumed_wh, accrual.energy_mp, accrual.duty_mp_bp])
    across = billing.charge(TOD, None, 50000, start + 2 * 86400, start + 6 * 86400)
    out("across months", [(p.month, p.consumed_wh, p.energy_paise, p.duty_paise)
                          for p in across.postings])
    out("month_parts", billing.month_parts(start - 86400, start + 40 * 86400, 1))
    checks = [
        billing.validate_delta(None, 5, 60, 13500, 99999990, None, None),
        billing.validate_delta(1000, 1200, 60, 13500, 99999990, "A", "A"),
        billing.validate_delta(1000, 900, 60, 13500, 99999990, None, None),
        billing.validate_delta(1000, 900000, 60, 13500, 99999990, None, None),
        billing.validate_delta(99999980, 50, 60, 13500, 99999990, None, None),
        billing.validate_delta(1000, 5, 60, 13500, 99999990, "A", "B"),
    ]
    out("validate_delta", [(c.kind, c.delta_wh, c.rebase, c.bad_reading) for c in checks])
    watch = None
    watches = []
    for value, t in ((100, 60), (300, 660), (200, 1260), (250, 1860), (260, 2460)):
        watch = billing.watch_reset(watch, value, t, 13500)
        watches.append((watch.count, watch.first_wh, watch.last_wh))
    out("watch_reset", watches)
    out("fixed_dates_due", [billing.fixed_dates_due(None, "2026-04-01"),
                            billing.fixed_dates_due("2026-04-03", "2026-04-01"),
                            len(billing.fixed_dates_due("2020-01-01", "2026-04-01"))])


def alerts_part() -> None:
    levels = (30, 10, 0)
    raised: frozenset[int] = frozenset()
    fired: list[tuple[int, list[int]]] = []
    balance, reference = 10000, 10000
    for debit in (6000, 500, 2600, 850, 100, 200, 1):
        before, balance = balance, balance - debit
        crossed = alerts.crossed_levels(levels, reference, before, balance, raised)
        raised = raised | frozenset(crossed)
        fired.append((balance, crossed))
    out("crossed", fired)
    out("rearmed", [sorted(alerts.rearmed_levels(500, 500, raised)),
                    sorted(alerts.rearmed_levels(0, -5, raised))])
    out("threshold", [alerts.threshold_paise(30, 999), alerts.threshold_paise(10, -5)])
    out("days_left", [alerts.days_left_estimate(1000, 300), alerts.days_left_estimate(-1, 3),
                      alerts.days_left_estimate(5, 0)])


def policy_part() -> None:
    pol = policy.Policy(holidays=("2026-08-15",), emergency_credit=30000, min_notice_h=24)
    monday_10 = calendar.days_from_civil(2026, 3, 2) * 86400 + 10 * 3600
    base: dict[str, Any] = dict(
        balance=-30001, local_s=monday_10, clock_trusted=True, moratorium_until=None,
        now_s=monday_10 - 19800, headend_online=True, payments_ok=True,
        headend_heard_s=monday_10 - 19800, alerts_raised=frozenset((30, 10, 0)),
        zero_alert_at_s=monday_10 - 19800 - 86400, disconnects_last_hour=0, policy=pol)
    variants: list[dict[str, Any]] = [
        {}, {"local_s": monday_10 + 9 * 3600}, {"local_s": monday_10 - 86400},
        {"payments_ok": False}, {"moratorium_until": monday_10}, {"balance": -30000},
        {"zero_alert_at_s": monday_10 - 19800}, {"clock_trusted": False},
        {"disconnects_last_hour": 60}, {"headend_heard_s": monday_10 - 19800 - 7 * 3600}]
    decisions = []
    for change in variants:
        args = dict(base)
        args.update(change)
        d = policy.decide_disconnect(policy.PolicyInputs(**args))
        decisions.append((d.allowed, d.reasons, d.reason))
    out("decisions", decisions)
    friday_1805 = calendar.days_from_civil(2026, 8, 14) * 86400 + 18 * 3600 + 300
    out("next_allowed", [policy.next_allowed_local_s(t, pol) for t in (monday_10, friday_1805)])
    out("protected_hours", [policy.parse_protected_hours(""),
                            policy.parse_protected_hours("18:00-08:00, 12:00-13:30"),
                            policy.parse_protected_hours("00:00-24:00")])
    out("weekdays", policy.parse_weekdays(["sun", "mon", "sun"]))
    bad = policy.Policy(protected_weekdays=(7,), holidays=("2026-02-30",), emergency_credit=-1,
                        alert_levels_pct=(101,), payment_outage_h=0,
                        max_disconnects_per_hour=0)
    out("policy_problems", policy.policy_problems(bad))


def tokens_part() -> None:
    out("rfc4231", hmac_sha256(b"Jefe", b"what do ya want for nothing?").hex())
    key = bytes(range(32))
    worked = tokens.issue_token(key, "ACC-0001", 50000, 1)
    assert worked == "5612 0026 2256 9263 9732", worked  # docs/tokens.md
    out("issued", [worked, tokens.issue_token(key, "ACC-0001", 50000, 2),
                   tokens.issue_token(key, "ACC-0002", 50000, 1),
                   tokens.issue_token(key, "ACC-0001", 26214300, 65535)])
    state, gate = tokens.TokenState(), tokens.TokenGate()
    now = 1000
    results: list[tuple[bool, str, int, int | None]] = []
    entries = [tokens.issue_token(key, "ACC-0001", 100 * c, c) for c in (3, 1, 3)]
    entries += ["5612 0026 2256 9263 9733", "abc", "0" * 20, "1" * 20, "2" * 20]
    entries += [tokens.issue_token(key, "ACC-0001", 700, 7)]
    for digits in entries:
        check, gate = tokens.enter_token(key, "ACC-0001", digits, state, gate, now)
        if check.ok:
            state = check.new_state
        results.append((check.ok, check.reason, check.amount_paise, check.counter))
        now += 10
    out("entries", results)
    out("gate", [gate.wrong_in_row, gate.lockouts, gate.locked_until_s,
                 tokens.gate_locked(gate, now), tokens.gate_locked(gate, gate.locked_until_s)])
    out("state", [state.max_counter, sorted(state.used)])


def main() -> None:
    calendar_part()
    tariff_part()
    billing_part()
    alerts_part()
    policy_part()
    tokens_part()
    for line in OUT:
        print(line)
    print("ok", len(OUT))


main()
