"""Energy/duty accrual, reading validation and the fixed charge (DOMAIN "Billing",
ledger invariants 1 and 5)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import LedgerError
from agent.ledger.billing import (
    MAX_FIXED_CATCHUP_DAYS,
    MAX_MONTH_PARTS,
    RESET_READINGS,
    Charge,
    MonthAccrual,
    ResetWatch,
    charge,
    fixed_dates_due,
    month_parts,
    validate_delta,
    watch_reset,
)
from agent.ledger.calendar import (
    add_days,
    billing_month,
    billing_month_start_s,
    days_between,
    local_date,
    next_month,
)
from agent.ledger.tariff import Slab, Tariff, TodWindow, energy_millipaise
from tests.ledger.helpers import local_s, tariffs, up_tariff

DUTY_DIVISOR = 10_000_000


def month_window(month: str, billing_day: int) -> tuple[int, int]:
    return billing_month_start_s(month, billing_day), billing_month_start_s(
        next_month(month), billing_day
    )


# --- invariant 5: reading by reading = the monthly bill, at any cadence --------------


@settings(max_examples=150, deadline=None)
@given(tariffs(), st.data())
def test_any_cadence_sums_to_the_monthly_bill(tariff: Tariff, data: st.DataObject) -> None:
    total_wh = data.draw(st.integers(0, 2_000_000))
    cuts = sorted(data.draw(st.lists(st.integers(0, total_wh), max_size=60)))
    points = [0, *cuts, total_wh]
    start, end = month_window("2026-04", tariff.billing_day)
    times = sorted(
        data.draw(st.lists(st.integers(start, end - 1), min_size=len(points), max_size=len(points)))
    )
    accrual: MonthAccrual | None = None
    energy = duty = 0
    for i in range(1, len(points)):
        result = charge(tariff, accrual, points[i] - points[i - 1], times[i - 1], times[i])
        assert [p.month for p in result.postings] == ["2026-04"]
        accrual = result.accrual
        energy += result.energy_paise
        duty += result.duty_paise
        # At every moment, not only at the end of the month:
        e_mp = energy_millipaise(tariff, points[i])
        assert accrual.energy_mp == e_mp
        assert energy == e_mp // 1000 == accrual.energy_posted
        assert duty == e_mp * tariff.duty_bp // DUTY_DIVISOR == accrual.duty_posted
    assert energy == energy_millipaise(tariff, total_wh) // 1000


@settings(max_examples=100, deadline=None)
@given(tariffs(with_tod=True), st.data())
def test_tod_postings_always_equal_floor_of_accrued(tariff: Tariff, data: st.DataObject) -> None:
    accrual: MonthAccrual | None = None
    start, _ = month_window("2026-04", tariff.billing_day)
    t = start
    energy: dict[str, int] = {}
    duty: dict[str, int] = {}
    for _ in range(data.draw(st.integers(1, 30))):
        step = data.draw(st.integers(0, 3 * 86_400))
        delta = data.draw(st.integers(0, 20_000))
        result = charge(tariff, accrual, delta, t, t + step)
        t += step
        assert sum(p.consumed_wh for p in result.postings) == delta
        for p in result.postings:
            assert p.energy_paise >= 0 and p.duty_paise >= 0
            energy[p.month] = energy.get(p.month, 0) + p.energy_paise
            duty[p.month] = duty.get(p.month, 0) + p.duty_paise
        accrual = result.accrual
        assert energy[accrual.month] == accrual.energy_mp // 1000
        assert duty[accrual.month] == accrual.energy_mp * tariff.duty_bp // DUTY_DIVISOR


@settings(max_examples=100, deadline=None)
@given(tariffs(), st.data())
def test_every_month_gets_its_own_telescopic_bill(tariff: Tariff, data: st.DataObject) -> None:
    """Readings that straddle billing months: each month's postings are E(C_month)."""
    accrual: MonthAccrual | None = None
    t = local_s(2026, 1, 1) + data.draw(st.integers(0, 40 * 86_400))
    per_month: dict[str, list[int]] = {}
    for _ in range(data.draw(st.integers(1, 12))):
        step = data.draw(st.integers(0, 70 * 86_400))
        delta = data.draw(st.integers(0, 300_000))
        result = charge(tariff, accrual, delta, t, t + step)
        t += step
        for p in result.postings:
            wh, e, d = per_month.get(p.month, [0, 0, 0])
            per_month[p.month] = [wh + p.consumed_wh, e + p.energy_paise, d + p.duty_paise]
        accrual = result.accrual
    for wh, e, d in per_month.values():
        e_mp = energy_millipaise(tariff, wh)
        assert e == e_mp // 1000 and d == e_mp * tariff.duty_bp // DUTY_DIVISOR


# --- the hand-worked bill of ../shared/data/tariffs/up-lmv1-urban.toml ---------------


def april_minutes_wh() -> list[int]:
    """420 kWh over the 43,200 minutes of April: a daily load curve, exact total."""
    rng = random.Random(2026)
    weights = []
    for minute in range(30 * 1440):
        hour = minute % 1440 // 60
        base = 250 if hour < 6 else 900 if 18 <= hour < 23 else 500
        weights.append(base + rng.randrange(0, 200))
    total = sum(weights)
    running = given = 0
    wh = []
    for w in weights:  # cumulative floors: exact total, every minute within 1 Wh of its share
        running += w
        upto = 420_000 * running // total
        wh.append(upto - given)
        given = upto
    return wh


@pytest.mark.parametrize("cadence_min", [1, 15, 60])
def test_up_worked_bill_at_any_cadence(cadence_min: int) -> None:
    tariff = up_tariff()
    minutes = april_minutes_wh()
    start = local_s(2026, 4, 1)
    register = 5_000_000  # the meter's import register, Wh
    baseline: tuple[int, int] | None = None  # (register, time) of the last good reading
    accrual: MonthAccrual | None = None
    last_fixed: str | None = None
    energy = duty = fixed = 0
    for k in range(0, 30 * 1440 // cadence_min + 1):
        t = start + k * cadence_min * 60
        if k:
            register += sum(minutes[(k - 1) * cadence_min : k * cadence_min])
        if baseline is None:
            check = validate_delta(None, register, 0, 14_400, 100_000_000, "S1", "S1")
        else:
            check = validate_delta(
                baseline[0], register, t - baseline[1], 14_400, 100_000_000, "S1", "S1"
            )
        if check.kind == "ok" and baseline is not None:
            result = charge(tariff, accrual, check.delta_wh, baseline[1], t)
            accrual = result.accrual
            for p in result.postings:
                assert p.month == "2026-04" and p.tariff_version == tariff.version
                energy += p.energy_paise
                duty += p.duty_paise
        assert check.rebase
        baseline = (register, t)
        if t < local_s(2026, 5, 1):  # the May 1 00:00 reading would open May's fixed charge
            due = fixed_dates_due(last_fixed, local_date(t))
            fixed += tariff.fixed_per_day * len(due)
            last_fixed = due[-1] if due else last_fixed
    assert accrual is not None and accrual.consumed_wh == 420_000
    assert (energy, duty, fixed) == (250_500, 12_525, 21_990)
    assert energy + duty + fixed == 285_015


# --- month boundaries, clock steps, bounds --------------------------------------------


def test_delta_straddling_a_month_is_split_by_time() -> None:
    tariff = up_tariff()
    before = charge(tariff, None, 100_000, local_s(2026, 3, 1), local_s(2026, 3, 31, 23))
    result = charge(tariff, before.accrual, 1000, local_s(2026, 3, 31, 23), local_s(2026, 4, 1, 1))
    assert [(p.month, p.consumed_wh) for p in result.postings] == [
        ("2026-03", 500),
        ("2026-04", 500),
    ]
    assert result.accrual == MonthAccrual(
        month="2026-04",
        consumed_wh=500,
        energy_mp=500 * 550,
        energy_posted=275,
        duty_posted=13,
        duty_mp_bp=500 * 550 * 500,
    )
    assert result.postings[0].energy_paise == 500 * 550 // 1000  # still in March's first slab
    assert isinstance(result, Charge) and result.energy_paise == 275 + 275


def test_clock_behind_the_open_month_charges_the_open_month() -> None:
    tariff = up_tariff()
    april = charge(tariff, None, 1000, local_s(2026, 4, 1), local_s(2026, 4, 2)).accrual
    result = charge(tariff, april, 1000, local_s(2026, 3, 30), local_s(2026, 3, 31))
    assert [p.month for p in result.postings] == ["2026-04"]
    assert result.accrual.consumed_wh == 2000
    backwards = charge(tariff, result.accrual, 10, local_s(2026, 4, 3), local_s(2026, 4, 2))
    assert [(p.month, p.consumed_wh) for p in backwards.postings] == [("2026-04", 10)]
    # Several whole months behind, with ToD: one posting for the open month, no error.
    tod = Tariff(
        name="tod",
        fixed_per_day=0,
        slabs=(Slab(rate=550),),
        tod=(TodWindow(from_min=600, to_min=960, pct=80),),
    )
    may = charge(tod, None, 0, local_s(2026, 5, 1), local_s(2026, 5, 2)).accrual
    behind = charge(tod, may, 45_000, local_s(2026, 2, 10), local_s(2026, 4, 15))
    assert [(p.month, p.consumed_wh) for p in behind.postings] == [("2026-05", 45_000)]


def test_long_gap_is_bounded_to_the_last_months() -> None:
    parts = month_parts(local_s(2000, 1, 1), local_s(2026, 4, 15), 1)
    assert len(parts) == MAX_MONTH_PARTS
    assert parts[0][0] == "2024-05" and parts[-1][0] == "2026-04"
    result = charge(up_tariff(), None, 24_000, local_s(2000, 1, 1), local_s(2026, 4, 15))
    assert sum(p.consumed_wh for p in result.postings) == 24_000  # nothing lost


def test_duty_never_unposts_when_duty_rate_drops_mid_month() -> None:
    t1 = up_tariff()
    t2 = Tariff(name=t1.name, fixed_per_day=t1.fixed_per_day, slabs=t1.slabs, duty_bp=0, version=2)
    a = charge(t1, None, 100_000, local_s(2026, 4, 1), local_s(2026, 4, 10))
    b = charge(t2, a.accrual, 100_000, local_s(2026, 4, 10), local_s(2026, 4, 20))
    assert b.duty_paise == 0 and b.postings[0].tariff_version == 2
    assert b.accrual.duty_posted == a.accrual.duty_posted


def test_refuses_negative_delta_and_corrupt_state() -> None:
    with pytest.raises(LedgerError):
        charge(up_tariff(), None, -1, 0, 60)
    corrupt = MonthAccrual(month="1970-01", consumed_wh=10, energy_mp=5500, energy_posted=6)
    with pytest.raises(LedgerError):
        charge(up_tariff(), corrupt, 1, 0, 60)


def test_tod_tariff_through_charge() -> None:
    tod = (TodWindow(from_min=600, to_min=960, pct=80),)
    t = Tariff(name="tod", fixed_per_day=0, slabs=(Slab(rate=550),), duty_bp=500, tod=tod)
    result = charge(t, None, 1000, local_s(2026, 4, 2, 9), local_s(2026, 4, 2, 11))
    assert result.accrual.energy_mp == 500 * 550 + 500 * 440
    assert result.energy_paise == 495 and result.duty_paise == 24  # 495,000 mp x 5% = 24.75


# --- reading validation ---------------------------------------------------------------


def test_validate_delta_kinds() -> None:
    # 14.4 kW for 60 s passes at most 240 Wh; 10 Wh of register slack on top.
    ok = validate_delta(1000, 1250, 60, 14_400, 100_000, "A", "A")
    assert (ok.kind, ok.delta_wh, ok.rebase, ok.bad_reading) == ("ok", 250, True, False)
    assert validate_delta(1000, 1251, 60, 14_400, 100_000, "A", "A").kind == "implausible"
    neg = validate_delta(1000, 999, 60, 14_400, 100_000, "A", "A")
    assert (neg.kind, neg.delta_wh, neg.rebase, neg.bad_reading) == ("negative", 0, False, True)
    # 99,950 -> 100 on a register of modulus 100,000: 150 Wh, plausible: rollover.
    roll = validate_delta(99_950, 100, 60, 14_400, 100_000, "A", "A")
    assert (roll.kind, roll.delta_wh, roll.rebase, roll.bad_reading) == ("rollover", 0, True, False)
    # The same drop far from the top is not a rollover.
    assert validate_delta(50_000, 100, 60, 14_400, 100_000, "A", "A").kind == "negative"
    assert validate_delta(99_950, 100, 60, 14_400, None, "A", "A").kind == "negative"
    rep = validate_delta(99_950, 3, 60, 14_400, 100_000, "A", "B")
    assert (rep.kind, rep.delta_wh, rep.rebase) == ("replaced", 0, True)
    assert validate_delta(1000, 1200, 60, 14_400, None, None, "B").kind == "ok"  # serial unknown
    first = validate_delta(None, 1234, 0, 14_400, None, None, "A")
    assert (first.kind, first.delta_wh, first.rebase) == ("first", 0, True)
    assert validate_delta(1000, 1000, 0, 14_400, None, "A", "A").kind == "ok"
    assert validate_delta(1000, 1011, -5, 14_400, None, "A", "A").kind == "implausible"


@given(
    st.integers(0, 10**9), st.integers(0, 10**6), st.integers(0, 86_400), st.integers(1, 100_000)
)
def test_validate_delta_never_charges_more_than_the_breaker_passes(
    prev: int, delta: int, elapsed: int, max_w: int
) -> None:
    check = validate_delta(prev, prev + delta, elapsed, max_w, None, "A", "A")
    if check.kind == "ok":
        assert check.delta_wh * 3600 <= max_w * elapsed + 10 * 3600
    else:
        assert check.kind == "implausible" and check.delta_wh == 0 and not check.rebase


def test_kept_baseline_meets_a_growing_allowance() -> None:
    # A reading too big for 60 s is refused; measured against the same baseline
    # 10 minutes later, it passes (elapsed is since the baseline, not the last poll).
    assert validate_delta(0, 1000, 60, 3000, None, "A", "A").kind == "implausible"
    assert validate_delta(0, 1000, 1200, 3000, None, "A", "A").kind == "ok"


@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7200)), min_size=1,
                max_size=12), st.integers(1, 20_000))
def test_a_reset_is_confirmed_only_by_consistent_readings(
        readings: list[tuple[int, int]], max_w: int) -> None:
    """Fed readings below a baseline one by one (value, seconds since the last): the
    count is the length of the run of consistent readings ending here, and the run's
    first reading is the one the meter would be rebased on."""
    watch: ResetWatch | None = None
    t = 0
    run: list[tuple[int, int]] = []
    for value, gap_s in readings:
        t += gap_s
        if run and value >= run[-1][0] and (value - run[-1][0]) * 3600 <= (
                max_w * (t - run[-1][1]) + 10 * 3600):
            run.append((value, t))
        else:
            run = [(value, t)]
        watch = watch_reset(watch, value, t, max_w)
        assert watch.count == len(run)
        assert (watch.first_wh, watch.first_t) == run[0]
        assert (watch.last_wh, watch.last_t) == run[-1]
        if watch.count >= RESET_READINGS:  # confirmed: the meter is rebased, a new watch
            watch, run = None, []


# --- fixed charge ----------------------------------------------------------------------


def test_fixed_dates_due_rules() -> None:
    assert fixed_dates_due(None, "2026-04-01") == ["2026-04-01"]
    assert fixed_dates_due("2026-04-01", "2026-04-01") == []
    assert fixed_dates_due("2026-04-05", "2026-04-01") == []  # clock went back
    assert fixed_dates_due("2026-02-27", "2026-03-02") == ["2026-02-28", "2026-03-01", "2026-03-02"]
    far = fixed_dates_due("2020-01-01", "2026-04-01")
    assert len(far) == MAX_FIXED_CATCHUP_DAYS and far[-1] == "2026-04-01"
    # The days never posted, which the runtime logs: 2020-01-02 .. 2025-02-25.
    assert days_between("2020-01-01", "2026-04-01") - len(far) == 1882
    assert far[0] == add_days("2020-01-01", 1883)


@settings(max_examples=200)
@given(st.lists(st.integers(-40, 40), min_size=1, max_size=80))
def test_fixed_never_twice_under_clock_jumps(jumps: list[int]) -> None:
    today = "2026-04-01"
    last: str | None = None
    posted: list[str] = []
    for jump in jumps:
        today = add_days(today, jump)
        due = fixed_dates_due(last, today)
        posted += due
        if due:
            last = due[-1]
    assert len(posted) == len(set(posted))
    assert posted == sorted(posted)
    # Every date from the first to the last posted is posted (gaps here are < 400 days).
    assert len(posted) == days_between(posted[0], posted[-1]) + 1


def _month_parts_plain(t0: int, t1: int, billing_day: int) -> list[tuple[str, int, int]]:
    """month_parts worked out from the calendar alone (no month kept from a call before)."""
    start = min(t0, t1)
    parts: list[tuple[str, int, int]] = []
    month = billing_month(start, billing_day)
    while True:
        end = billing_month_start_s(next_month(month), billing_day)
        if end >= t1:
            return [*parts, (month, start, t1)]
        parts.append((month, start, end))
        start, month = end, next_month(month)


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(1_700_000_000, 1_800_000_000),
                          st.integers(-3 * 86_400, 70 * 86_400), st.integers(1, 28)),
                min_size=1, max_size=30))
def test_month_parts_with_the_month_kept_is_the_plain_split(
        asks: list[tuple[int, int, int]]) -> None:
    """month_parts keeps the billing month it last found (the next reading nearly always
    falls in it): in any order of calls, each answer is the one worked out afresh."""
    for t1, back, billing_day in asks:
        t0 = t1 - back
        if t1 - min(t0, t1) > 20 * 31 * 86_400:
            continue
        assert month_parts(t0, t1, billing_day) == _month_parts_plain(t0, t1, billing_day)
