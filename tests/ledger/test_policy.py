"""When the relay may open (DOMAIN), CONTRACT 5 disconnect_deferred reasons."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.ledger.calendar import DAY_S, local_date, minute_of_day, weekday
from agent.ledger.policy import (
    REASONS,
    Decision,
    Policy,
    PolicyInputs,
    decide_disconnect,
    in_protected_hours,
    is_protected_day,
    next_allowed_local_s,
    parse_protected_hours,
    parse_weekdays,
    policy_problems,
    should_reconnect,
    steady_until,
)
from tests.ledger.helpers import local_s

IST = 19_800  # UTC+05:30
POLICY = Policy(holidays=("2026-01-26", "2026-08-15", "2026-10-02"))
MONDAY_10 = local_s(2026, 3, 2, 10)  # a Monday, 10:00 local, not a holiday


def inputs(at_local_s: int = MONDAY_10, **changes: Any) -> PolicyInputs:
    """Inputs under which a disconnection is allowed, changed by keyword."""
    now = at_local_s - IST
    base = PolicyInputs(
        balance=-30_001,
        local_s=at_local_s,
        clock_trusted=True,
        moratorium_until=None,
        now_s=now,
        headend_online=True,
        payments_ok=True,
        headend_heard_s=float(now - 60),
        alerts_raised=frozenset({30, 10, 0}),
        zero_alert_at_s=now - 24 * 3600,
        disconnects_last_hour=0,
        policy=POLICY,
    )
    return dataclasses.replace(base, **changes)


def test_baseline_is_allowed() -> None:
    decision = decide_disconnect(inputs())
    assert decision == Decision(allowed=True, reasons=()) and decision.reason == ""


@pytest.mark.parametrize(
    ("reason", "changes"),
    [
        ("protected_hours", {"local_s": local_s(2026, 3, 2, 18)}),
        ("protected_hours", {"local_s": local_s(2026, 3, 2, 7, 59)}),
        ("holiday", {"local_s": local_s(2026, 3, 1, 10)}),  # a Sunday
        ("holiday", {"local_s": local_s(2026, 8, 14, 10) + DAY_S}),  # Independence Day, a Saturday
        ("holiday", {"local_s": local_s(2026, 1, 26, 10)}),  # Republic Day, a Monday
        ("payment_outage", {"payments_ok": False}),
        ("payment_outage", {"headend_online": False}),
        ("payment_outage", {"headend_online": None, "payments_ok": None, "headend_heard_s": None}),
        ("payment_outage", {"headend_heard_s": None}),
        ("payment_outage", {"headend_heard_s": float(MONDAY_10 - IST - 6 * 3600 - 1)}),
        ("moratorium", {"moratorium_until": MONDAY_10 - IST + 1}),
        ("emergency_credit", {"balance": -30_000}),
        ("emergency_credit", {"balance": -1}),
        ("emergency_credit", {"balance": 500}),
        ("notice", {"alerts_raised": frozenset({10, 0})}),
        ("notice", {"alerts_raised": frozenset({30, 10})}),
        ("notice", {"zero_alert_at_s": None}),
        ("notice", {"zero_alert_at_s": MONDAY_10 - IST - 24 * 3600 + 1}),
        ("untrusted_clock", {"clock_trusted": False}),
        ("rate_limit", {"disconnects_last_hour": 60}),
    ],
)
def test_each_reason_alone(reason: str, changes: dict[str, Any]) -> None:
    decision = decide_disconnect(inputs(**changes))
    assert decision.allowed is False
    assert decision.reasons == (reason,)
    assert decision.reason == reason


def test_boundaries_that_still_allow() -> None:
    now = MONDAY_10 - IST
    assert decide_disconnect(inputs(local_s=local_s(2026, 3, 2, 8))).allowed  # 08:00 ends it
    assert decide_disconnect(inputs(local_s=local_s(2026, 3, 2, 17, 59, 59))).allowed
    assert decide_disconnect(inputs(moratorium_until=now)).allowed  # it has ended
    assert decide_disconnect(inputs(headend_heard_s=float(now - 6 * 3600))).allowed
    assert decide_disconnect(inputs(disconnects_last_hour=59)).allowed
    # The 0% level is needed even when the policy does not list it.
    policy = dataclasses.replace(POLICY, alert_levels_pct=(20,))
    assert decide_disconnect(inputs(policy=policy, alerts_raised=frozenset({20, 0}))).allowed
    assert decide_disconnect(inputs(policy=policy, alerts_raised=frozenset({20}))).reasons == (
        "notice",
    )


def test_every_reason_at_once_in_contract_order() -> None:
    sunday_night = local_s(2026, 3, 1, 23)
    now = sunday_night - IST
    decision = decide_disconnect(
        inputs(
            sunday_night,
            now_s=now,
            payments_ok=False,
            moratorium_until=now + 3600,
            balance=0,
            alerts_raised=frozenset(),
            zero_alert_at_s=None,
            clock_trusted=False,
            disconnects_last_hour=60,
        )
    )
    assert decision.reasons == REASONS and decision.reason == "protected_hours"


def test_credit_runs_out_in_protected_hours_allowed_at_next_allowed_time_not_before() -> None:
    # Credit and notice run out Monday 19:00; the first allowed minute is Tuesday 08:00.
    ran_out = local_s(2026, 3, 2, 19)
    first_allowed = None
    for minute in range(0, 3 * 24 * 60):
        t = ran_out + minute * 60
        decision = decide_disconnect(
            inputs(t, now_s=t - IST, zero_alert_at_s=ran_out - IST - 86_400)
        )
        if decision.allowed:
            first_allowed = t
            break
        assert decision.reasons == ("protected_hours",)
    assert first_allowed == local_s(2026, 3, 3, 8) == next_allowed_local_s(ran_out, POLICY)


def test_next_allowed_skips_sundays_and_holidays() -> None:
    saturday_night = local_s(2026, 2, 28, 20)
    assert next_allowed_local_s(saturday_night, POLICY) == local_s(2026, 3, 2, 8)  # Monday
    sunday_before_republic_day = local_s(2026, 1, 25, 12)
    assert next_allowed_local_s(sunday_before_republic_day, POLICY) == local_s(2026, 1, 27, 8)
    assert next_allowed_local_s(MONDAY_10, POLICY) == MONDAY_10  # already allowed
    every_day = dataclasses.replace(POLICY, protected_weekdays=(0, 1, 2, 3, 4, 5, 6))
    assert next_allowed_local_s(MONDAY_10, every_day) is None
    all_day = dataclasses.replace(POLICY, protected_hours=((0, 1440),))
    assert next_allowed_local_s(MONDAY_10, all_day) is None


hour_ranges = st.lists(
    st.tuples(st.integers(0, 1439), st.integers(0, 1440)).filter(lambda r: r[0] != r[1]),
    max_size=3,
)


@settings(max_examples=200, deadline=None)
@given(hour_ranges, st.sets(st.integers(0, 6), max_size=5), st.integers(0, 2 * 10**9), st.data())
def test_next_allowed_is_the_first_unprotected_instant(
    ranges: list[tuple[int, int]], weekdays: set[int], t: int, data: st.DataObject
) -> None:
    policy = Policy(protected_hours=tuple(ranges), protected_weekdays=tuple(weekdays))
    nxt = next_allowed_local_s(t, policy)
    if nxt is None:
        return
    assert nxt >= t
    assert not in_protected_hours(policy, nxt) and not is_protected_day(policy, nxt)
    if nxt > t:  # every instant before it is protected
        probe = data.draw(st.integers(t, nxt - 1))
        assert in_protected_hours(policy, probe) or is_protected_day(policy, probe)


def test_holiday_and_weekday_helpers() -> None:
    sunday = local_s(2026, 3, 1, 12)
    assert weekday(sunday) == 6 and is_protected_day(POLICY, sunday)
    assert local_date(local_s(2026, 10, 2)) in POLICY.holidays
    assert minute_of_day(local_s(2026, 3, 2, 18)) == 1080 and in_protected_hours(
        POLICY, local_s(2026, 3, 2, 18)
    )


def test_parse_protected_hours() -> None:
    assert parse_protected_hours("18:00-08:00") == ((1080, 480),)
    assert parse_protected_hours("") == ()
    assert parse_protected_hours("12:00-14:00, 22:00-24:00") == ((720, 840), (1320, 1440))
    assert parse_protected_hours("00:00-24:00") == ((0, 1440),)
    for bad, words in [
        ("18:00", "not a range"),
        ("18:00-08:00-09:00", "not a range"),
        ("25:00-08:00", "not a time of day"),
        ("18:00-8:00", "is not HH:MM"),
        ("08:00-08:00", "empty or ambiguous"),
        ("00:00-00:00", "empty or ambiguous"),
        ("24:00-08:00", "not a time of day"),
    ]:
        with pytest.raises(ValueError, match=words):
            parse_protected_hours(bad)


def test_parse_weekdays_and_problems() -> None:
    assert parse_weekdays(["sun"]) == (6,)
    assert parse_weekdays(["sat", "sun", "sat"]) == (5, 6)
    with pytest.raises(ValueError, match="not a weekday"):
        parse_weekdays(["Sunday"])
    assert policy_problems(POLICY) == []
    bad = Policy(
        protected_weekdays=(7,),
        holidays=("2026-02-30",),
        alert_levels_pct=(120,),
        payment_outage_h=0,
        emergency_credit=-1,
    )
    keys = {k for k, _ in policy_problems(bad)}
    assert keys == {
        "protected_weekdays",
        "holidays",
        "alert_levels_pct",
        "payment_outage_h",
        "emergency_credit",
    }


def test_reconnect_any_time_once_positive() -> None:
    assert should_reconnect(1) and not should_reconnect(0) and not should_reconnect(-5)


@settings(max_examples=300, deadline=None)
@given(hour_ranges, st.sets(st.integers(0, 6), max_size=3),
       st.integers(1_700_000_000, 1_900_000_000), st.sampled_from([IST, 0, -12_600, 20_700]),
       st.integers(-200, 200), st.booleans(), st.booleans(), st.booleans(),
       st.one_of(st.none(), st.floats(-30_000, 30)), st.one_of(st.none(), st.integers(-90, 90)),
       st.one_of(st.none(), st.integers(-100_000, 100)), st.integers(0, 3), st.data())
def test_a_steady_answer_holds_every_second_until_steady_until(
    ranges: list[tuple[int, int]], weekdays: set[int], now: int, offset: int, balance: int,
    trusted: bool, online: bool, payments: bool, heard_ago: float | None,
    moratorium_in: int | None, zero_ago: int | None, disconnects: int, data: st.DataObject
) -> None:
    policy = Policy(protected_hours=tuple(ranges), protected_weekdays=tuple(weekdays),
                    emergency_credit=100, payment_outage_h=1, min_notice_h=1,
                    max_disconnects_per_hour=2)
    base = PolicyInputs(
        balance=balance, local_s=now + offset, clock_trusted=trusted,
        moratorium_until=None if moratorium_in is None else now + moratorium_in,
        now_s=now, headend_online=online, payments_ok=payments,
        headend_heard_s=None if heard_ago is None else now - 3600 + heard_ago,
        alerts_raised=frozenset({30, 10, 0}),
        zero_alert_at_s=None if zero_ago is None else now - 3600 + zero_ago,
        disconnects_last_hour=disconnects, policy=policy)
    decision = decide_disconnect(base)
    until = steady_until(base, decision)
    if until is None:
        assert "rate_limit" in decision.reasons
        return
    assert now < until <= now + 60
    for t in (until - 1, data.draw(st.integers(now, until - 1))):
        later = dataclasses.replace(base, now_s=t, local_s=t + offset)
        assert decide_disconnect(later) == decision, (t, until)
    # and it does not claim too little: at `until` itself something may change, never
    # later than the next minute
    assert until - now <= 60
