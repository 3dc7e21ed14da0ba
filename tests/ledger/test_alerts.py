"""Low-balance alerts: each level once per crossing (ledger invariant 8)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.ledger.alerts import crossed_levels, days_left_estimate, rearmed_levels, threshold_paise

LEVELS = (30, 10, 0)


def test_thresholds() -> None:
    assert threshold_paise(30, 100_000) == 30_000
    assert threshold_paise(10, 999) == 99  # floored
    assert threshold_paise(0, 100_000) == 0
    assert threshold_paise(30, -500) == 0  # a credit that left the account in debt


def test_each_level_fires_once_per_crossing() -> None:
    raised: frozenset[int] = frozenset()
    ref = 100_000
    assert crossed_levels(LEVELS, ref, 100_000, 30_001, raised) == []
    assert crossed_levels(LEVELS, ref, 30_001, 30_000, raised) == [30]  # at the level counts
    raised |= {30}
    assert crossed_levels(LEVELS, ref, 30_000, 20_000, raised) == []  # already raised
    # One big debit can cross several levels at once, highest first.
    assert crossed_levels(LEVELS, ref, 20_000, -5, raised) == [10, 0]
    raised |= {10, 0}
    assert crossed_levels(LEVELS, ref, -5, -50_000, raised) == []


def test_zero_level_is_balance_at_or_below_zero_and_always_present() -> None:
    assert crossed_levels((50,), 1000, 1, 0, frozenset({50})) == [0]
    assert crossed_levels((50,), 1000, 2, 1, frozenset({50})) == []


def test_credit_never_fires_and_rearms_what_it_lifts() -> None:
    raised = frozenset({30, 10, 0})
    # A top-up to 50,000 paise: the new reference is 50,000; every level re-arms.
    assert rearmed_levels(50_000, 50_000, raised) == raised
    assert crossed_levels(LEVELS, 50_000, -100, 50_000, frozenset()) == []
    # A top-up that leaves the balance in debt re-arms nothing (reference <= 0).
    assert rearmed_levels(-200, -200, raised) == frozenset()
    # A credit that lifts the balance above 0 but stays under a level's threshold of
    # an older, larger reference re-arms only what it lifted.
    assert rearmed_levels(100_000, 20_000, raised) == frozenset({10, 0})


def test_unraised_level_below_balance_fires_on_next_debit() -> None:
    # e.g. a level added to the policy while the balance was already below it
    assert crossed_levels((50, 30, 10, 0), 100_000, 40_000, 40_000, frozenset({30})) == [50]
    assert crossed_levels((50, 30, 10, 0), 100_000, 39_000, 40_000, frozenset({30})) == []


@settings(max_examples=200)
@given(st.lists(st.one_of(st.integers(-20_000, 0), st.integers(1, 60_000)), max_size=120))
def test_random_walk_fires_once_per_crossing(moves: list[int]) -> None:
    balance = reference = 50_000
    raised: frozenset[int] = frozenset()
    fired_since_rearm: dict[int, int] = {}
    for move in moves:
        before, balance = balance, balance + move
        if move > 0:  # a top-up: new reference, re-arm what it lifts
            reference = balance
            rearmed = rearmed_levels(reference, balance, raised)
            raised -= rearmed
            for level in rearmed:
                fired_since_rearm[level] = 0
        for level in crossed_levels(LEVELS, reference, before, balance, raised):
            fired_since_rearm[level] = fired_since_rearm.get(level, 0) + 1
            raised |= {level}
        assert all(count <= 1 for count in fired_since_rearm.values())
        if move <= 0:  # after any debit, every level the balance is at or below is raised
            for level in LEVELS:
                if balance <= threshold_paise(level, reference):
                    assert level in raised
        if balance < 0:
            assert raised >= set(LEVELS) or move > 0


def test_days_left_estimate() -> None:
    assert days_left_estimate(10_000, 3_000) == 3
    assert days_left_estimate(-1, 3_000) == 0
    assert days_left_estimate(10_000, 0) is None


@given(st.lists(st.integers(0, 100), max_size=6), st.integers(0, 10**6),
       st.integers(-10**6, 10**6), st.integers(-10**6, 10**6))
def test_crossed_levels_with_the_levels_kept_is_the_same(levels: list[int], reference: int,
                                                         before: int, after: int) -> None:
    """The sorted levels are kept per policy: asked twice, or after others, the same."""
    first = crossed_levels(levels, reference, before, after, frozenset())
    crossed_levels([5, 50], reference, before, after, frozenset())
    again = crossed_levels(tuple(levels), reference, before, after, frozenset())
    plain = [] if after > before else [
        lv for lv in sorted({0, *levels}, reverse=True) if after <= threshold_paise(lv, reference)]
    assert first == again == plain
