"""Calendar arithmetic on local seconds, checked against CPython's datetime."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.ledger.calendar import (
    add_days,
    add_months,
    billing_month,
    billing_month_start_s,
    civil_from_days,
    date_of_day,
    days_between,
    days_from_civil,
    in_minute_range,
    local_date,
    minute_of_day,
    next_month,
    parse_date,
    parse_hhmm,
    weekday,
)

EPOCH = datetime(1970, 1, 1)
MIN_S = int((datetime(1, 1, 1) - EPOCH).total_seconds())
MAX_S = int((datetime(9999, 12, 31, 23, 59, 59) - EPOCH).total_seconds())
instants = st.integers(min_value=MIN_S, max_value=MAX_S)
dates = st.dates(min_value=date(1, 1, 1), max_value=date(9999, 12, 31))


def as_dt(local_s: int) -> datetime:
    return EPOCH + timedelta(seconds=local_s)


def reference_billing_month(dt: datetime, billing_day: int) -> str:
    year, month = dt.year, dt.month
    if dt.day < billing_day:
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    return f"{year:04d}-{month:02d}"


@given(instants)
def test_date_weekday_minute_match_datetime(s: int) -> None:
    dt = as_dt(s)
    assert local_date(s) == dt.date().isoformat()
    assert weekday(s) == dt.weekday()
    assert minute_of_day(s) == dt.hour * 60 + dt.minute


def test_known_instants() -> None:
    assert local_date(0) == "1970-01-01" and weekday(0) == 3  # a Thursday
    assert local_date(-1) == "1969-12-31" and minute_of_day(-1) == 1439
    # 2026-01-26 (Republic Day) 10:30 local
    s = days_from_civil(2026, 1, 26) * 86_400 + 10 * 3600 + 30 * 60
    assert (local_date(s), weekday(s), minute_of_day(s)) == ("2026-01-26", 0, 630)


@given(st.integers(min_value=-(10**9), max_value=10**9))
def test_civil_round_trip_far_beyond_datetime(days: int) -> None:
    assert days_from_civil(*civil_from_days(days)) == days


@given(instants, st.integers(min_value=1, max_value=28))
def test_billing_month_matches_reference(s: int, billing_day: int) -> None:
    dt = as_dt(s)
    if dt.year == 1 and dt.month == 1 and dt.day < billing_day:
        return  # would be month 0000-12, outside the supported years
    key = billing_month(s, billing_day)
    assert key == reference_billing_month(dt, billing_day)
    if key < "9999-12":
        assert billing_month_start_s(key, billing_day) <= s
        assert s < billing_month_start_s(next_month(key), billing_day)


def test_billing_month_examples() -> None:
    march_1 = days_from_civil(2026, 3, 1) * 86_400
    assert billing_month(march_1, 1) == "2026-03"
    assert billing_month(march_1 - 1, 1) == "2026-02"
    assert billing_month(march_1, 5) == "2026-02"  # March 5 starts "2026-03" when billing_day=5
    assert billing_month(days_from_civil(2026, 1, 4) * 86_400, 5) == "2025-12"
    assert billing_month_start_s("2026-03", 5) == days_from_civil(2026, 3, 5) * 86_400
    assert next_month("2026-12") == "2027-01" and add_months("2026-01", -1) == "2025-12"
    assert add_months("2026-05", -24) == "2024-05"
    with pytest.raises(ValueError):
        billing_month(march_1, 29)


@given(dates, dates)
def test_days_between_matches_datetime(a: date, b: date) -> None:
    assert days_between(a.isoformat(), b.isoformat()) == (b - a).days


@given(dates, st.integers(min_value=-5000, max_value=5000))
def test_add_days_matches_datetime(d: date, n: int) -> None:
    try:
        expected = (d + timedelta(days=n)).isoformat()
    except OverflowError:
        with pytest.raises(ValueError):
            add_days(d.isoformat(), n)
        return
    assert add_days(d.isoformat(), n) == expected


@given(dates)
def test_parse_date_round_trip(d: date) -> None:
    assert date_of_day(parse_date(d.isoformat())) == d.isoformat()


@pytest.mark.parametrize(
    "text",
    [
        "2026-02-29",
        "2026-13-01",
        "2026-00-10",
        "2026-1-01",
        "2026/01/01",
        "0000-01-01",
        "",
        "2026-01-32",
        "२०२६-01-01",
        "2026-01-0١",
    ],
)
def test_parse_date_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_date(text)


def test_parse_hhmm() -> None:
    assert parse_hhmm("00:00") == 0 and parse_hhmm("18:00") == 1080 and parse_hhmm("23:59") == 1439
    assert parse_hhmm("24:00", allow_24=True) == 1440
    for bad in ("24:00", "8:00", "08:60", "25:00", "08-00", "0800", "08:00 "):
        with pytest.raises(ValueError):
            parse_hhmm(bad)


def test_in_minute_range() -> None:
    assert in_minute_range(1080, 480, 1080) and in_minute_range(1080, 480, 0)
    assert in_minute_range(1080, 480, 479) and not in_minute_range(1080, 480, 480)
    assert in_minute_range(0, 1440, 1439) and not in_minute_range(600, 600, 600)
