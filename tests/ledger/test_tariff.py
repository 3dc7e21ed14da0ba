"""E(C), telescopic slabs and time-of-day attribution (DOMAIN "Billing")."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import LedgerError
from agent.ledger.tariff import (
    Slab,
    Tariff,
    TodWindow,
    delta_energy_mp,
    energy_millipaise,
    pro_rata,
    tariff_problems,
    tod_split_wh,
    version_at,
    version_parts,
)
from tests.ledger.helpers import UP_INLINE, UP_TOML, local_s, tariffs, up_tariff

CONTRACT_TARIFF = Tariff(
    name="domestic",
    fixed_per_day=300,
    slabs=(Slab(upto_kwh=100, rate=550), Slab(upto_kwh=300, rate=650), Slab(rate=750)),
    duty_bp=500,
)


def reference_energy_mp(tariff: Tariff, consumed_wh: int) -> int:
    """E(C) written differently: rate x the clamp of C into each slab."""
    total, lower = 0, 0
    for slab in tariff.slabs:
        upper = consumed_wh if slab.upto_kwh is None else slab.upto_kwh * 1000
        total += slab.rate * max(0, min(consumed_wh, upper) - lower)
        lower = upper
    return total


def test_hand_worked_up_bill_energy() -> None:
    # 150*550 + 150*600 + 120*650 = 250,500 paise (the file's worked check)
    assert energy_millipaise(up_tariff(), 420_000) == 250_500 * 1000


def test_inline_copy_matches_shared_file() -> None:
    if not UP_TOML.exists():
        pytest.skip("../shared is not beside this checkout")
    with UP_TOML.open("rb") as f:
        assert tomllib.load(f)["tariff"]["up-lmv1-urban"] == UP_INLINE


def test_slab_edges() -> None:
    t = CONTRACT_TARIFF
    assert energy_millipaise(t, 0) == 0
    assert energy_millipaise(t, 1) == 550
    assert energy_millipaise(t, 100_000) == 100_000 * 550
    assert energy_millipaise(t, 100_001) == 100_000 * 550 + 650
    assert energy_millipaise(t, 300_001) == 100_000 * 550 + 200_000 * 650 + 750
    with pytest.raises(LedgerError):
        energy_millipaise(t, -1)


@given(tariffs(), st.integers(0, 3_000_000))
def test_energy_matches_reference(tariff: Tariff, c: int) -> None:
    assert energy_millipaise(tariff, c) == reference_energy_mp(tariff, c)


@given(st.integers(-(10**6), 10**6), st.lists(st.integers(0, 10**5), min_size=1, max_size=20))
def test_pro_rata_is_exact(amount: int, weights: list[int]) -> None:
    parts = pro_rata(amount, weights)
    assert sum(parts) == amount and len(parts) == len(weights)
    if amount >= 0:
        assert all(p >= 0 for p in parts)
    total = sum(weights)
    for part, w in zip(parts, weights, strict=True):
        if total:
            assert abs(part * total - amount * w) < total  # within one unit of the exact share


SOLAR_PEAK = (
    TodWindow(from_min=600, to_min=960, pct=80),
    TodWindow(from_min=1080, to_min=1320, pct=120),
)


def test_tod_hand_example() -> None:
    # 1 kWh from 09:00 to 11:00: half outside (100%), half in the solar window (80%).
    t = Tariff(name="tod", fixed_per_day=0, slabs=(Slab(rate=550),), tod=SOLAR_PEAK)
    t0, t1 = local_s(2026, 3, 2, 9), local_s(2026, 3, 2, 11)
    assert tod_split_wh(SOLAR_PEAK, 1000, t0, t1) == [500, 0, 500]
    assert delta_energy_mp(t, 0, 1000, t0, t1) == 500 * 550 + 500 * 550 * 80 // 100
    # Evening peak across midnight-free span 17:00-23:00: 1h outside, 4h peak, 1h outside.
    t0, t1 = local_s(2026, 3, 2, 17), local_s(2026, 3, 2, 23)
    assert tod_split_wh(SOLAR_PEAK, 6000, t0, t1) == [0, 4000, 2000]


def test_tod_segment_order_places_later_windows_higher_on_the_ladder() -> None:
    # 2 kWh over 09:00-11:00, slab edge at 1 kWh: the first (outside) kWh is cheap,
    # the second (solar, 80%) kWh sits in the dearer slab.
    t = Tariff(
        name="tod",
        fixed_per_day=0,
        slabs=(Slab(rate=100, upto_kwh=1), Slab(rate=1000)),
        tod=SOLAR_PEAK,
    )
    mp = delta_energy_mp(t, 0, 2000, local_s(2026, 3, 2, 9), local_s(2026, 3, 2, 11))
    assert mp == 1000 * 100 + 1000 * 1000 * 80 // 100


def test_wrapping_window_and_instant() -> None:
    night = (TodWindow(from_min=1320, to_min=360, pct=50),)  # 22:00-06:00
    t0, t1 = local_s(2026, 3, 2, 21), local_s(2026, 3, 3, 7)  # 1h out, 8h in, 1h out
    assert tod_split_wh(night, 1000, t0, t1) == [800, 200]
    # A backwards or empty interval is the instant t1.
    assert tod_split_wh(night, 70, t1, t1) == [0, 70]  # 07:00: outside
    assert tod_split_wh(night, 70, t1, local_s(2026, 3, 2, 23)) == [70, 0]  # back to 23:00


@given(
    tariffs(with_tod=True),
    st.integers(0, 500_000),
    st.integers(0, 200_000),
    st.integers(0, 10**9),
    st.integers(0, 31 * 86_400),
)
def test_tod_attribution_sums_and_bounds(
    tariff: Tariff, c1: int, d: int, t0: int, span: int
) -> None:
    parts = tod_split_wh(tariff.tod, d, t0, t0 + span)
    assert sum(parts) == d and all(p >= 0 for p in parts)
    base = energy_millipaise(tariff, c1 + d) - energy_millipaise(tariff, c1)
    priced = delta_energy_mp(tariff, c1, c1 + d, t0, t0 + span)
    pcts = [w.pct for w in tariff.tod] + [100]
    assert min(pcts) * base // 100 - 1 <= priced <= max(pcts) * base // 100 + 1


@given(
    tariffs(),
    st.integers(0, 500_000),
    st.integers(0, 200_000),
    st.integers(0, 10**9),
    st.integers(0, 31 * 86_400),
)
def test_tod_at_100_pct_is_exactly_telescopic(
    tariff: Tariff, c1: int, d: int, t0: int, span: int
) -> None:
    flat = Tariff(
        name="f",
        fixed_per_day=0,
        slabs=tariff.slabs,
        tod=(TodWindow(from_min=300, to_min=1200, pct=100),),
    )
    expected = energy_millipaise(tariff, c1 + d) - energy_millipaise(tariff, c1)
    assert delta_energy_mp(flat, c1, c1 + d, t0, t0 + span) == expected
    assert delta_energy_mp(tariff, c1, c1 + d, t0, t0 + span) == expected


def test_tod_span_is_bounded() -> None:
    t = Tariff(name="tod", fixed_per_day=0, slabs=(Slab(rate=550),), tod=SOLAR_PEAK)
    with pytest.raises(LedgerError):
        delta_energy_mp(t, 0, 10, 0, 33 * 86_400)


def test_tariff_problems() -> None:
    assert tariff_problems(up_tariff()) == []
    assert tariff_problems(CONTRACT_TARIFF) == []
    bad = Tariff(
        name="bad",
        fixed_per_day=-1,
        slabs=(Slab(rate=5, upto_kwh=100), Slab(rate=-1), Slab(rate=5, upto_kwh=50)),
        duty_bp=20_000,
        billing_day=31,
        tod=(
            TodWindow(from_min=600, to_min=600, pct=80),
            TodWindow(from_min=0, to_min=720, pct=2000),
            TodWindow(from_min=700, to_min=800, pct=100),
        ),
    )
    keys = [k for k, _ in tariff_problems(bad)]
    for key in (
        "fixed_per_day",
        "duty_bp",
        "billing_day",
        "slabs[1].rate",
        "slabs[1].upto_kwh",
        "slabs[2].upto_kwh",
        "tod[0]",
        "tod[1].pct",
        "tod",
    ):
        assert key in keys, key


def _version_parts_plain(versions: list[tuple[int, Tariff]], t0: int,
                         t1: int) -> list[tuple[Tariff, int, int]]:
    """The docstring's rule, written out: cut (t0, t1] where a version came into force."""
    if t1 <= t0:
        return [(version_at(versions, t1), t0, t1)]
    points = [t0, *sorted({e for e, _ in versions if t0 < e < t1}), t1]
    return [(version_at(versions, a), a, b) for a, b in zip(points, points[1:], strict=False)]


@given(st.lists(st.integers(0, 3000), min_size=1, max_size=4), st.integers(0, 3000),
       st.integers(-500, 2000))
def test_version_parts_cut_where_a_version_comes_into_force(
        effective: list[int], t0: int, span: int) -> None:
    """One version (the usual, answered without the loop) or several: the same parts as
    the rule written out, in and out of the interval."""
    tariffs = [Tariff(name="t", fixed_per_day=0, slabs=(Slab(500),), version=i + 1)
               for i in range(len(effective))]
    versions = list(zip(sorted(effective), tariffs, strict=True))
    assert version_parts(versions, t0, t0 + span) == \
        _version_parts_plain(versions, t0, t0 + span)


@given(st.integers(-10**12, 10**12), st.integers(-10**9, 10**9))
def test_pro_rata_of_one_part_is_all_of_it(amount: int, weight: int) -> None:
    assert pro_rata(amount, [weight]) == [amount]
