"""Disconnection policy (CONTRACT 2 [policy], CONTRACT 5 disconnect_deferred,
DOMAIN "When the relay may open").

Pure: imports only what MicroPython also has. The runtime gathers a
``PolicyInputs`` (balance, clocks, head-end state, alert state, recent
disconnections) and ``decide_disconnect`` says whether the relay may open and,
if not, every rule that holds it back, in the CONTRACT 5 order. Reconnection is
never held back: ``should_reconnect``.
"""

from __future__ import annotations

from agent.ledger.calendar import (
    DAY_S,
    day_start_s,
    in_minute_range,
    local_date,
    minute_of_day,
    parse_date,
    parse_hhmm,
    weekday,
)
from agent.ledger.record import dataclass

TYPE_CHECKING = False  # mypy treats any name TYPE_CHECKING as true; no `typing` at run time
if TYPE_CHECKING:
    from collections.abc import Iterable

# CONTRACT 5: every reason, in the order detail.reasons lists them.
REASONS = (
    "protected_hours",
    "holiday",
    "payment_outage",
    "moratorium",
    "emergency_credit",
    "notice",
    "untrusted_clock",
    "rate_limit",
)

# next_allowed_local_s looks this far ahead; a policy that protects every moment of
# it (e.g. all seven weekdays) never allows a disconnection: the answer is None.
MAX_SEARCH_DAYS = 400

WEEKDAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class Policy:
    FIELDS = (
        "protected_hours",
        "protected_weekdays",
        "holidays",
        "emergency_credit",
        "alert_levels_pct",
        "payment_outage_h",
        "min_notice_h",
        "max_disconnects_per_hour",
        "disconnect_on_tamper",
    )
    # (from_min, to_min) local minutes after midnight; to may be < from (wraps); () none
    protected_hours: tuple[tuple[int, int], ...] = ((18 * 60, 8 * 60),)
    protected_weekdays: tuple[int, ...] = (6,)  # 0 = Monday .. 6 = Sunday
    holidays: tuple[str, ...] = ()  # "YYYY-MM-DD", local dates
    emergency_credit: int = 30000  # paise
    alert_levels_pct: tuple[int, ...] = (30, 10, 0)
    payment_outage_h: int = 6
    min_notice_h: int = 24
    max_disconnects_per_hour: int = 60
    disconnect_on_tamper: bool = False


def parse_protected_hours(text: str) -> tuple[tuple[int, int], ...]:
    """``"18:00-08:00"`` -> ``((1080, 480),)``; several ranges separated by commas;
    ``""`` means none. A range may wrap midnight; ``24:00`` may end one
    (``"00:00-24:00"`` is the whole day). Raises ValueError saying what is wrong."""
    ranges: list[tuple[int, int]] = []
    if text.strip() == "":
        return ()
    for item in text.split(","):
        item = item.strip()
        halves = item.split("-")
        if len(halves) != 2:
            raise ValueError(repr(item) + " is not a range HH:MM-HH:MM (e.g. 18:00-08:00)")
        try:
            start = parse_hhmm(halves[0].strip())
            end = parse_hhmm(halves[1].strip(), allow_24=True)
        except ValueError as exc:
            raise ValueError("in range " + repr(item) + ": " + str(exc)) from None
        if start == end:
            raise ValueError(
                repr(item) + " is empty or ambiguous; use 00:00-24:00 for the whole day"
            )
        ranges.append((start, end))
    return tuple(ranges)


def parse_weekdays(names: Iterable[str]) -> tuple[int, ...]:
    """``["sun"]`` -> ``(6,)``; ValueError names an unknown day."""
    days: list[int] = []
    for name in names:
        if name not in WEEKDAY_NAMES:
            raise ValueError(repr(name) + " is not a weekday (mon, tue, wed, thu, fri, sat, sun)")
        if WEEKDAY_NAMES.index(name) not in days:
            days.append(WEEKDAY_NAMES.index(name))
    return tuple(sorted(days))


def policy_problems(policy: Policy) -> list[tuple[str, str]]:
    """Every rule the policy breaks, as ``(key, message)`` for the config loader."""
    problems: list[tuple[str, str]] = []
    for i, (start, end) in enumerate(policy.protected_hours):
        if not 0 <= start <= 1439 or not 0 <= end <= 1440 or start == end:
            problems.append(("protected_hours", "range " + str(i) + " is not a valid range"))
    for day in policy.protected_weekdays:
        if not 0 <= day <= 6:
            problems.append(("protected_weekdays", str(day) + " is not 0..6"))
    for date in policy.holidays:
        try:
            parse_date(date)
        except ValueError as exc:
            problems.append(("holidays", str(exc)))
    if policy.emergency_credit < 0:
        problems.append(("emergency_credit", "must be >= 0 paise"))
    for level in policy.alert_levels_pct:
        if not 0 <= level <= 100:
            problems.append(("alert_levels_pct", str(level) + " is not 0..100"))
    if policy.payment_outage_h < 1:
        problems.append(("payment_outage_h", "must be >= 1 hour"))
    if policy.min_notice_h < 0:
        problems.append(("min_notice_h", "must be >= 0 hours"))
    if policy.max_disconnects_per_hour < 1:
        problems.append(("max_disconnects_per_hour", "must be >= 1"))
    return problems


@dataclass(frozen=True, slots=True)
class PolicyInputs:
    FIELDS = (
        "balance",
        "local_s",
        "clock_trusted",
        "moratorium_until",
        "now_s",
        "headend_online",
        "payments_ok",
        "headend_heard_s",
        "alerts_raised",
        "zero_alert_at_s",
        "disconnects_last_hour",
        "policy",
    )
    balance: int  # paise
    local_s: int  # now, local seconds (unix + utc offset)
    clock_trusted: bool  # NTP-synchronised since boot, or confirmed by the head-end
    moratorium_until: int | None  # unix s; a head-end moratorium covering the account
    now_s: int  # now, unix s
    headend_online: bool | None  # last retained {prefix}/headend/state "online"; None: never heard
    payments_ok: bool | None  # ... its "payments"
    headend_heard_s: float | None  # unix s of the last state heard over a live connection
    alerts_raised: frozenset[int]  # alert levels (pct) currently raised
    zero_alert_at_s: int | None  # unix s the 0% level fired (None: not raised)
    disconnects_last_hour: int  # credit disconnections by this gateway in the last hour
    policy: Policy


@dataclass(frozen=True, slots=True)
class Decision:
    FIELDS = ("allowed", "reasons")
    allowed: bool
    reasons: tuple[str, ...]  # every rule holding the disconnection back, REASONS order

    @property
    def reason(self) -> str:
        """CONTRACT 5 detail.reason: the first of ``reasons`` ("" when allowed)."""
        return self.reasons[0] if self.reasons else ""


def in_protected_hours(policy: Policy, local_s: int) -> bool:
    minute = minute_of_day(local_s)
    for start, end in policy.protected_hours:
        if in_minute_range(start, end, minute):
            return True
    return False


def is_protected_day(policy: Policy, local_s: int) -> bool:
    """A protected weekday or a holiday (both give the reason ``holiday``)."""
    return weekday(local_s) in policy.protected_weekdays or local_date(local_s) in policy.holidays


def payments_possible(inputs: PolicyInputs) -> bool:
    """The head-end last said online and payments up, heard live recently enough."""
    return (
        inputs.headend_online is True
        and inputs.payments_ok is True
        and inputs.headend_heard_s is not None
        and inputs.now_s - inputs.headend_heard_s <= inputs.policy.payment_outage_h * 3600
    )


def notice_given(inputs: PolicyInputs) -> bool:
    """Every alert level (0% always included) raised, the 0% one min_notice_h ago."""
    required = set(inputs.policy.alert_levels_pct)
    required.add(0)
    for level in required:
        if level not in inputs.alerts_raised:
            return False
    return (
        inputs.zero_alert_at_s is not None
        and inputs.now_s - inputs.zero_alert_at_s >= inputs.policy.min_notice_h * 3600
    )


def decide_disconnect(inputs: PolicyInputs) -> Decision:
    """May the relay open for lack of credit now? Every rule is evaluated."""
    policy = inputs.policy
    held = (
        in_protected_hours(policy, inputs.local_s),
        is_protected_day(policy, inputs.local_s),
        not payments_possible(inputs),
        inputs.moratorium_until is not None and inputs.now_s < inputs.moratorium_until,
        not inputs.balance < -policy.emergency_credit,
        not notice_given(inputs),
        not inputs.clock_trusted,
        inputs.disconnects_last_hour >= policy.max_disconnects_per_hour,
    )
    reasons = tuple(REASONS[i] for i in range(len(REASONS)) if held[i])
    return Decision(allowed=not reasons, reasons=reasons)


# steady_until never looks further than this: protected hours and days are decided per
# local minute, so a decision is known to hold at most to the next minute.
STEADY_MAX_S = 60


def steady_until(inputs: PolicyInputs, decision: Decision) -> int | None:
    """The first unix second after ``inputs.now_s`` at which time passing alone could
    change ``decide_disconnect``'s answer (allowed and every reason) for these inputs,
    with ``local_s`` moving with ``now_s``; at most STEADY_MAX_S ahead. None when the
    answer may change at the next second: the rate limit holds it back, and its hour
    slides over disconnections the inputs only count. The caller watches every other
    input (balance, alerts, head-end state, trust, moratoria, the policy, the count)."""
    if "rate_limit" in decision.reasons:
        return None
    now = inputs.now_s
    policy = inputs.policy
    # the next local minute (protected hours, weekdays and holidays) and the next unix
    # minute (a zone's offset changes on one), whichever comes first
    until = now + min(60 - inputs.local_s % 60, 60 - now % 60)
    if payments_possible(inputs):  # stale at the first second with now - heard > outage
        heard, outage_s = inputs.headend_heard_s, policy.payment_outage_h * 3600
        assert heard is not None
        stale = int(heard + outage_s) + 1
        if stale - 1 - heard > outage_s:  # heard + outage_s rounded up to a whole second
            stale -= 1
        until = min(until, stale)
    if inputs.moratorium_until is not None and now < inputs.moratorium_until:
        until = min(until, inputs.moratorium_until)
    notice_s = policy.min_notice_h * 3600
    if inputs.zero_alert_at_s is not None and now - inputs.zero_alert_at_s < notice_s:
        until = min(until, inputs.zero_alert_at_s + notice_s)
    return until


def _protected_range_end(policy: Policy, local_s: int) -> int | None:
    """If ``local_s`` is in a protected range, the local second that range ends."""
    minute = minute_of_day(local_s)
    midnight = day_start_s(local_s)
    for start, end in policy.protected_hours:
        if in_minute_range(start, end, minute):
            # A wrapping range entered before midnight ends tomorrow.
            wraps_tonight = start > end and minute >= start
            return midnight + (DAY_S if wraps_tonight else 0) + end * 60
    return None


def next_allowed_local_s(local_s: int, policy: Policy) -> int | None:
    """The first instant at or after ``local_s`` outside protected hours, protected
    weekdays and holidays; None if there is none within MAX_SEARCH_DAYS."""
    t = local_s
    limit = local_s + MAX_SEARCH_DAYS * DAY_S
    while t <= limit:
        if is_protected_day(policy, t):
            t = day_start_s(t) + DAY_S
            continue
        end = _protected_range_end(policy, t)
        if end is None:
            return t
        t = end
    return None


def should_reconnect(balance: int) -> bool:
    """Reconnection is allowed at any hour once the balance is positive again."""
    return balance > 0
