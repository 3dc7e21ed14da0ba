"""Calendar arithmetic on local seconds (CONTRACT 1: local-time rules use gateway.timezone).

The caller turns Unix time into *local seconds* (``local_s = unix_s + utc_offset_s``,
the offset from zoneinfo, outside the ledger), so everything here is plain integer
arithmetic on a proleptic Gregorian calendar with days of 86,400 s: no datetime,
no zoneinfo, so it runs on MicroPython too. Day numbers count from 1970-01-01
(day 0, a Thursday). The conversions are Howard Hinnant's ``days_from_civil`` /
``civil_from_days`` ("chrono-Compatible Low-Level Date Algorithms"), which are
exact for every year, negative ones included, given floor division.

Dates are ``"YYYY-MM-DD"`` strings and billing months ``"YYYY-MM"`` strings
(years 0001..9999), so both sort correctly as text.
"""

from __future__ import annotations

DAY_S = 86_400
_MIN_YEAR = 1
_MAX_YEAR = 9999


def days_from_civil(year: int, month: int, day: int) -> int:
    """Day number (0 = 1970-01-01) of a proleptic Gregorian date."""
    y = year - 1 if month <= 2 else year
    era = y // 400
    yoe = y - era * 400  # [0, 399]
    mp = month - 3 if month > 2 else month + 9  # March = 0 .. February = 11
    doy = (153 * mp + 2) // 5 + day - 1  # [0, 365]
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy  # [0, 146096]
    return era * 146_097 + doe - 719_468


def civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a day number (0 = 1970-01-01)."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097  # [0, 146096]
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365  # [0, 399]
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)  # [0, 365]
    mp = (5 * doy + 2) // 153  # [0, 11]
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    return year, month, day


def days_in_month(year: int, month: int) -> int:
    if month == 12:
        return 31
    return days_from_civil(year, month + 1, 1) - days_from_civil(year, month, 1)


def _date_text(year: int, month: int, day: int) -> str:
    if not _MIN_YEAR <= year <= _MAX_YEAR:
        raise ValueError("year " + str(year) + " is outside 0001..9999")
    return f"{year:04d}-{month:02d}-{day:02d}"


def _digits(text: str) -> bool:
    # str.isdigit() would accept other scripts' digits; dates are ASCII.
    return len(text) > 0 and all("0" <= ch <= "9" for ch in text)


def parse_date(date: str) -> int:
    """Day number of a ``"YYYY-MM-DD"`` date; ValueError names what is wrong."""
    if (
        len(date) != 10
        or date[4] != "-"
        or date[7] != "-"
        or not _digits(date[:4] + date[5:7] + date[8:])
    ):
        raise ValueError("date " + repr(date) + " is not YYYY-MM-DD")
    year, month, day = int(date[:4]), int(date[5:7]), int(date[8:])
    if year < _MIN_YEAR or not 1 <= month <= 12:
        raise ValueError("date " + repr(date) + " has no such month")
    if not 1 <= day <= days_in_month(year, month):
        raise ValueError("date " + repr(date) + " has no such day")
    return days_from_civil(year, month, day)


def date_of_day(days: int) -> str:
    year, month, day = civil_from_days(days)
    return _date_text(year, month, day)


def day_number(local_s: int) -> int:
    return local_s // DAY_S  # floor: an instant before 1970 belongs to the day it is in


def day_start_s(local_s: int) -> int:
    """Local seconds of the midnight that starts the day containing ``local_s``."""
    return local_s - local_s % DAY_S


def local_date(local_s: int) -> str:
    """``"YYYY-MM-DD"`` of the local day containing ``local_s``."""
    return date_of_day(day_number(local_s))


def weekday(local_s: int) -> int:
    """0 = Monday .. 6 = Sunday (1970-01-01 was a Thursday, 3)."""
    return (day_number(local_s) + 3) % 7


def minute_of_day(local_s: int) -> int:
    """0..1439: whole local minutes since midnight."""
    return local_s % DAY_S // 60


def days_between(date_a: str, date_b: str) -> int:
    """Days from ``date_a`` to ``date_b`` (negative when b is earlier)."""
    return parse_date(date_b) - parse_date(date_a)


def add_days(date: str, n: int) -> str:
    return date_of_day(parse_date(date) + n)


def parse_hhmm(text: str, allow_24: bool = False) -> int:
    """Minutes after midnight of ``"HH:MM"`` (00:00..23:59; ``24:00`` only if allowed)."""
    if len(text) != 5 or text[2] != ":" or not _digits(text[:2] + text[3:]):
        raise ValueError(repr(text) + " is not HH:MM")
    hours, minutes = int(text[:2]), int(text[3:])
    if allow_24 and hours == 24 and minutes == 0:
        return 1440
    if hours > 23 or minutes > 59:
        raise ValueError(repr(text) + " is not a time of day (00:00..23:59)")
    return hours * 60 + minutes


def in_minute_range(start_min: int, end_min: int, minute: int) -> bool:
    """Is ``minute`` (0..1439) in [start, end)? A range with end < start wraps
    midnight; end may be 1440 (24:00); start == end is empty."""
    if start_min < end_min:
        return start_min <= minute < end_min
    if start_min > end_min:
        return minute >= start_min or minute < end_min
    return False


# --- billing months ------------------------------------------------------------------
# A billing month "YYYY-MM" starts at local midnight on `billing_day` (1..28, so it
# exists in every month) of that month and ends where the next one starts.


def _check_billing_day(billing_day: int) -> None:
    if not 1 <= billing_day <= 28:
        raise ValueError("billing_day must be 1..28, not " + str(billing_day))


def _month_key(year: int, month: int) -> str:
    if not _MIN_YEAR <= year <= _MAX_YEAR:
        raise ValueError("year " + str(year) + " is outside 0001..9999")
    return f"{year:04d}-{month:02d}"


def parse_month(month_key: str) -> tuple[int, int]:
    if len(month_key) != 7 or month_key[4] != "-" or not _digits(month_key[:4] + month_key[5:]):
        raise ValueError("billing month " + repr(month_key) + " is not YYYY-MM")
    year, month = int(month_key[:4]), int(month_key[5:])
    if year < _MIN_YEAR or not 1 <= month <= 12:
        raise ValueError("billing month " + repr(month_key) + " has no such month")
    return year, month


def billing_month(local_s: int, billing_day: int) -> str:
    """Key of the billing month containing ``local_s``: "2026-03" runs from
    billing_day of March (inclusive) to billing_day of April (exclusive)."""
    _check_billing_day(billing_day)
    year, month, day = civil_from_days(day_number(local_s))
    if day < billing_day:
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    return _month_key(year, month)


def add_months(month_key: str, n: int) -> str:
    """The billing month ``n`` months after (or before, n < 0) ``month_key``."""
    year, month = parse_month(month_key)
    index = year * 12 + month - 1 + n
    return _month_key(index // 12, index % 12 + 1)


def next_month(month_key: str) -> str:
    return add_months(month_key, 1)


def billing_month_start_s(month_key: str, billing_day: int) -> int:
    """Local seconds at which billing month ``month_key`` begins."""
    _check_billing_day(billing_day)
    year, month = parse_month(month_key)
    return days_from_civil(year, month, billing_day) * DAY_S
