"""Low-balance alerts (DOMAIN "When the relay may open", invariant 8; CONTRACT 5 low_balance).

Pure. Levels are percentages of a *reference credit*: the balance right after the
most recent credit (a top-up or an accepted token). A level L is reached when the
balance is at or below ``reference x L // 100`` (floored), and the 0% level when
the balance is <= 0. A reference at or below zero (a credit that left the account
still in debt) makes every threshold 0.

Each level fires once per crossing: it fires when reached on a debit and is not
already raised, and stays raised until a credit lifts the balance above it
(``rearmed_levels``). The runtime keeps the raised set, the reference and the
time the 0% level fired (``PolicyInputs.zero_alert_at_s``: clear it when 0 re-arms).
"""

from __future__ import annotations

TYPE_CHECKING = False  # mypy treats any name TYPE_CHECKING as true; no `typing` at run time
if TYPE_CHECKING:
    from collections.abc import Iterable


def threshold_paise(level_pct: int, reference_paise: int) -> int:
    """The balance at or below which ``level_pct`` is reached."""
    if reference_paise <= 0:
        return 0
    return reference_paise * level_pct // 100


_sorted_levels: dict[tuple[int, ...], list[int]] = {}  # a policy's levels -> _levels()


def _levels(levels_pct: Iterable[int]) -> list[int]:
    # Highest first: the order a falling balance crosses them. 0 is always a level.
    key = tuple(levels_pct)
    known = _sorted_levels.get(key)
    if known is None:
        if len(_sorted_levels) >= 64:  # policies change rarely: a small bound
            _sorted_levels.clear()
        levels = set(key)
        levels.add(0)
        known = _sorted_levels[key] = sorted(levels, reverse=True)
    return known


def crossed_levels(
    levels_pct: Iterable[int],
    reference_paise: int,
    balance_before: int,
    balance_after: int,
    raised: frozenset[int],
) -> list[int]:
    """Levels to raise now, highest first.

    Only a debit (or no change) raises alerts: a credit moves the balance up and
    never fires one. A level reached but not raised (e.g. one added to the policy
    while the balance was already below it) fires on the next debit, so the notice
    the disconnection rule waits for is always given. The 0% level is part of
    every policy, listed or not.
    """
    if balance_after > balance_before:
        return []
    return [
        level
        for level in _levels(levels_pct)
        if level not in raised and balance_after <= threshold_paise(level, reference_paise)
    ]


def rearmed_levels(
    reference_paise: int, balance_after: int, raised: frozenset[int]
) -> frozenset[int]:
    """Raised levels that a credit re-arms: the balance is now above their threshold.

    ``reference_paise`` is the new reference (normally ``balance_after`` itself, so
    any credit leaving the balance positive re-arms every level). The caller
    removes these from its raised set (and clears the 0% time if 0 is among them).
    """
    return frozenset(
        level for level in raised if balance_after > threshold_paise(level, reference_paise)
    )


def days_left_estimate(balance_paise: int, avg_daily_spend_paise: int) -> int | None:
    """Whole days the balance lasts at the average daily spend; None if unknown.

    None when there is no spend to go by (average <= 0); 0 when the balance is
    already used up.
    """
    if avg_daily_spend_paise <= 0:
        return None
    if balance_paise <= 0:
        return 0
    return balance_paise // avg_daily_spend_paise
