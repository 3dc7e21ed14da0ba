"""Energy, duty and fixed charges (DOMAIN "Billing", "The ledger's invariants" 1 and 5).

Pure: the runtime keeps the state records defined here (``MonthAccrual``) in its
store and posts the ``Posting``s this module returns as journal entries.

Invariant kept by ``charge`` and asserted on every call: for the month in
``MonthAccrual``, the energy paise posted so far are exactly
``energy_mp // 1000`` and the duty paise exactly ``duty_mp_bp // 10**7``
(duty accrues as energy milli-paise x duty_bp, per delta, so a mid-month change
of duty_bp never un-posts duty). Without ToD, and with one tariff all month,
``energy_mp`` is exactly E(C) for the month's consumption C.

docs/billing.md explains every rule here and why.
"""

from __future__ import annotations

from agent.errors import LedgerError
from agent.ledger.calendar import (
    DAY_S,
    add_months,
    billing_month,
    billing_month_start_s,
    date_of_day,
    days_from_civil,
    next_month,
    parse_date,
    parse_month,
)
from agent.ledger.record import dataclass
from agent.ledger.tariff import Tariff, delta_energy_mp, pro_rata

# A reading interval spanning more billing months than this (a two-year outage or a
# wild clock) is attributed to the last MAX_MONTH_PARTS months only, as if the
# earlier reading had been taken when the first of them began. It bounds the work
# per reading; the energy is still charged, none is lost.
MAX_MONTH_PARTS = 24

# Fixed charges for at most this many missing days are posted when the agent comes
# back; older missing days are never posted (docs/billing.md: the runtime logs how
# many were skipped, `days_between(last, today) - len(due)`).
MAX_FIXED_CATCHUP_DAYS = 400

# Slack added to what the breaker could pass: one step (0.01 kWh) of the coarsest
# register we read, so quantisation never makes a genuine reading a bad one.
DEFAULT_SLACK_WH = 10

_MP_PER_PAISA = 1000
_DUTY_DIVISOR = 10_000 * _MP_PER_PAISA  # basis points x milli-paise -> paise


@dataclass(frozen=True, slots=True)
class MonthAccrual:
    """One account's energy accrual for the open billing month (persisted by the runtime)."""

    FIELDS = ("month", "consumed_wh", "energy_mp", "energy_posted", "duty_posted", "duty_mp_bp")
    month: str  # billing month key "YYYY-MM"
    consumed_wh: int = 0  # C: Wh charged in this month so far
    energy_mp: int = 0  # energy accrued, milli-paise (== E(C) without ToD / tariff change)
    energy_posted: int = 0  # paise posted as `energy` entries: always energy_mp // 1000
    duty_posted: int = 0  # paise posted as `duty` entries: always duty_mp_bp // 10**7
    duty_mp_bp: int = 0  # duty accrued, milli-paise x basis points


@dataclass(frozen=True, slots=True)
class Posting:
    """What one month gets from one charged delta; either amount may be 0."""

    FIELDS = ("month", "consumed_wh", "energy_paise", "duty_paise", "tariff_version")
    month: str
    consumed_wh: int  # the part of the delta attributed to this month
    energy_paise: int
    duty_paise: int
    tariff_version: int  # the tariff in force when the energy was used


@dataclass(frozen=True, slots=True)
class Charge:
    FIELDS = ("postings", "accrual")
    postings: tuple[Posting, ...]  # in time order, one per billing month touched
    accrual: MonthAccrual  # the new state: the month of the last posting

    @property
    def energy_paise(self) -> int:
        return sum(p.energy_paise for p in self.postings)

    @property
    def duty_paise(self) -> int:
        return sum(p.duty_paise for p in self.postings)


def month_parts(t0_local_s: int, t1_local_s: int, billing_day: int) -> list[tuple[str, int, int]]:
    """``[(month, start, end), ...]``: the interval cut at billing-month starts.

    A backwards interval (the clock stepped back) is the instant ``t1``.
    At most MAX_MONTH_PARTS parts (see there).
    """
    start = min(t0_local_s, t1_local_s)
    first_s, _end_s, last = _month_around(t1_local_s, billing_day)
    if start >= first_s:  # the usual: one month
        return [(last, start, t1_local_s)]
    earliest_start = billing_month_start_s(add_months(last, 1 - MAX_MONTH_PARTS), billing_day)
    start = max(start, earliest_start)
    month = billing_month(start, billing_day)
    parts: list[tuple[str, int, int]] = []
    while True:
        end = billing_month_start_s(next_month(month), billing_day)
        if end >= t1_local_s:
            parts.append((month, start, t1_local_s))
            return parts
        parts.append((month, start, end))
        start, month = end, next_month(month)


# billing_day -> (start, end, key) of the billing month last looked up: a reading falls
# in the same month as the one before it nearly always (a plain dict: MicroPython too)
_last_month: dict[int, tuple[int, int, str]] = {}


def _month_around(local_s: int, billing_day: int) -> tuple[int, int, str]:
    """(start, end, key) of the billing month containing ``local_s``."""
    known = _last_month.get(billing_day)
    if known is not None and known[0] <= local_s < known[1]:
        return known
    key = billing_month(local_s, billing_day)  # checks billing_day
    year, month = parse_month(key)
    # the end from the date itself: next_month refuses a key past 9999-12
    after = (year + 1, 1) if month == 12 else (year, month + 1)
    known = (billing_month_start_s(key, billing_day),
             days_from_civil(after[0], after[1], billing_day) * DAY_S, key)
    _last_month[billing_day] = known
    return known


def _check(accrual: MonthAccrual) -> None:
    # TigerBeetle-style: refuse to build on a state that already breaks the invariant.
    if (
        accrual.energy_posted != accrual.energy_mp // _MP_PER_PAISA
        or accrual.duty_posted != accrual.duty_mp_bp // _DUTY_DIVISOR
        or accrual.consumed_wh < 0
        or accrual.energy_mp < 0
        or accrual.duty_mp_bp < 0
    ):
        raise LedgerError("month accrual breaks its invariant: " + repr(accrual))


def _accrue(
    tariff: Tariff, accrual: MonthAccrual, delta_wh: int, t0_local_s: int, t1_local_s: int
) -> tuple[MonthAccrual, Posting]:
    consumed_wh = accrual.consumed_wh + delta_wh
    mp = delta_energy_mp(tariff, accrual.consumed_wh, consumed_wh, t0_local_s, t1_local_s)
    energy_mp = accrual.energy_mp + mp
    duty_mp_bp = accrual.duty_mp_bp + mp * tariff.duty_bp
    after = MonthAccrual(
        month=accrual.month,
        consumed_wh=consumed_wh,
        energy_mp=energy_mp,
        energy_posted=energy_mp // _MP_PER_PAISA,
        duty_posted=duty_mp_bp // _DUTY_DIVISOR,
        duty_mp_bp=duty_mp_bp,
    )
    posting = Posting(
        month=accrual.month,
        consumed_wh=delta_wh,
        energy_paise=after.energy_posted - accrual.energy_posted,
        duty_paise=after.duty_posted - accrual.duty_posted,
        tariff_version=tariff.version,
    )
    return after, posting


def _combined(a: Posting, b: Posting) -> Posting:
    return Posting(
        month=b.month,
        consumed_wh=a.consumed_wh + b.consumed_wh,
        energy_paise=a.energy_paise + b.energy_paise,
        duty_paise=a.duty_paise + b.duty_paise,
        tariff_version=b.tariff_version,
    )


def charge(
    tariff: Tariff,
    accrual: MonthAccrual | None,
    delta_wh: int,
    t0_local_s: int,
    t1_local_s: int,
) -> Charge:
    """Charge ``delta_wh`` used between two local instants (the readings' times).

    ``accrual`` is the open month's state (None before the account's first charge).
    A delta that straddles billing months is split between them pro rata by time
    (exact integer parts): one ``Posting`` per month, in order, each month
    starting from C = 0; the returned accrual is the last month's. A part that
    falls in a month *before* the open one (the clock went back) is charged to the
    open month: a month once left is never reopened.
    """
    if delta_wh < 0:
        raise LedgerError("cannot charge a negative delta: " + str(delta_wh) + " Wh")
    if accrual is not None:
        _check(accrual)
    parts = month_parts(t0_local_s, t1_local_s, tariff.billing_day)
    shares = pro_rata(delta_wh, [end - start for _, start, end in parts])
    current = accrual if accrual is not None else MonthAccrual(month=parts[0][0])
    postings: list[Posting] = []
    for i, wh in enumerate(shares):
        month, start, end = parts[i]
        if month > current.month:  # "YYYY-MM" keys sort as dates
            current = MonthAccrual(month=month)
        # A month behind the open one (the clock is behind) goes to the open month;
        # its part is still priced over its own interval.
        current, posting = _accrue(tariff, current, wh, start, end)
        if postings and postings[-1].month == posting.month:
            posting = _combined(postings.pop(), posting)
        postings.append(posting)
    _check(current)
    return Charge(postings=tuple(postings), accrual=current)


# --- reading validation -------------------------------------------------------------

# kind -> (the reading becomes the new baseline, it is a `bad_reading` event)
DELTA_KINDS = {
    "ok": (True, False),
    "first": (True, False),  # no baseline yet: this reading becomes it, nothing charged
    "rollover": (True, False),
    "replaced": (True, False),
    "negative": (False, True),
    "implausible": (False, True),
}


@dataclass(frozen=True, slots=True)
class DeltaCheck:
    FIELDS = ("kind", "delta_wh", "reason")
    kind: str  # a key of DELTA_KINDS
    delta_wh: int  # Wh to charge: > 0 only for kind "ok"
    reason: str  # "" for ok; otherwise a sentence for the event / log

    @property
    def rebase(self) -> bool:
        """The new reading becomes the baseline (else the old one is kept)."""
        return DELTA_KINDS[self.kind][0]

    @property
    def bad_reading(self) -> bool:
        return DELTA_KINDS[self.kind][1]


def _plausible(delta_wh: int, elapsed_s: int, max_power_w: int, slack_wh: int) -> bool:
    # delta <= P x t / 3600 + slack, in integers: Wh x 3600 vs W x s.
    return delta_wh * 3600 <= max_power_w * max(elapsed_s, 0) + slack_wh * 3600


def validate_delta(
    prev_wh: int | None,
    new_wh: int,
    elapsed_s: int,
    max_power_w: int,
    register_max_wh: int | None,
    prev_serial: str | None,
    new_serial: str | None,
    slack_wh: int = DEFAULT_SLACK_WH,
) -> DeltaCheck:
    """Classify a new import register value against the baseline.

    ``elapsed_s`` is the time since the *baseline* reading (not the last poll), so
    a kept baseline meets a growing allowance. ``register_max_wh`` is the
    register's modulus (the first value it cannot show; None: unknown). Serials
    are compared only when both are known.
    """
    if prev_wh is None:
        return DeltaCheck("first", 0, "first reading: new baseline")
    if prev_serial is not None and new_serial is not None and prev_serial != new_serial:
        return DeltaCheck(
            "replaced", 0, "meter serial changed " + prev_serial + " -> " + new_serial
        )
    if new_wh >= prev_wh:
        delta_wh = new_wh - prev_wh
        if _plausible(delta_wh, elapsed_s, max_power_w, slack_wh):
            return DeltaCheck("ok", delta_wh, "")
        return DeltaCheck(
            "implausible",
            0,
            f"{delta_wh} Wh in {elapsed_s} s is more than {max_power_w} W could pass",
        )
    if register_max_wh is not None and prev_wh < register_max_wh:
        wrapped_wh = register_max_wh - prev_wh + new_wh
        if _plausible(wrapped_wh, elapsed_s, max_power_w, slack_wh):
            return DeltaCheck(
                "rollover",
                0,
                f"register wrapped at {register_max_wh} Wh ({prev_wh} -> {new_wh})",
            )
    return DeltaCheck("negative", 0, f"register went back from {prev_wh} to {new_wh} Wh")


# --- register reset (DOMAIN "Billing": a counter that went back, same serial) ----------

# This many consecutive readings below the baseline, consistent with each other (each
# at or above the one before, by no more than the breaker could pass), rebase the
# meter: the first of them is the new baseline and the last is charged from it. Fewer
# are bad readings (a glitch), the baseline kept. So at most the energy used up to the
# first of them (the jump itself) goes unbilled, never more than these readings.
RESET_READINGS = 3


@dataclass(frozen=True, slots=True)
class ResetWatch:
    """Readings below the baseline so far (persisted with the meter's baseline)."""

    FIELDS = ("count", "first_wh", "first_t", "last_wh", "last_t")
    count: int  # consecutive consistent readings below the baseline, 1..RESET_READINGS
    first_wh: int  # the first of them: the baseline if the reset is confirmed
    first_t: int
    last_wh: int  # the latest of them: the next must be consistent with it
    last_t: int


def watch_reset(
    watch: ResetWatch | None,
    new_wh: int,
    t: int,
    max_power_w: int,
    slack_wh: int = DEFAULT_SLACK_WH,
) -> ResetWatch:
    """The watch after one more reading below the baseline (a "negative" DeltaCheck).

    A reading that does not follow on from the last one watched (lower than it, or
    more than the breaker could pass since) starts the count again from itself.
    ``count == RESET_READINGS`` confirms the reset.
    """
    if watch is not None and new_wh >= watch.last_wh and _plausible(
            new_wh - watch.last_wh, t - watch.last_t, max_power_w, slack_wh):
        return ResetWatch(watch.count + 1, watch.first_wh, watch.first_t, new_wh, t)
    return ResetWatch(1, new_wh, t, new_wh, t)


# --- fixed charge -------------------------------------------------------------------


def fixed_dates_due(last_posted_date: str | None, today: str) -> list[str]:
    """Local dates whose fixed charge is due now, oldest first.

    First start (nothing posted yet): just today. A clock at or behind the last
    posted date: nothing (each date at most once, ever). Days the agent was off:
    each posted once, the most recent MAX_FIXED_CATCHUP_DAYS of them at most.
    Call it only with a trusted clock: a clock far in the future would otherwise
    consume dates that can never be posted again.
    """
    today_day = parse_date(today)
    if last_posted_date is None:
        return [today]
    first_day = max(parse_date(last_posted_date) + 1, today_day - MAX_FIXED_CATCHUP_DAYS + 1)
    return [date_of_day(day) for day in range(first_day, today_day + 1)]
