"""The simulation's fast paths give what the plain versions give (the neighbourhood's
reports must not change with them): the register's float32 arithmetic without Decimal,
the households' cached hourly power; and the agent's health report from its short
status. (cbor.loads's own fast path: tests/uplink.)"""

from __future__ import annotations

import random
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from sim.neighbourhood.plan import make_world
from sim.neighbourhood.runner import GatewaySim
from sim.neighbourhood.world import (
    DAYTIME_W,
    EVENING_W,
    REGISTER_MOD_WH,
    Household,
    register_wh,
    register_wh_decimal,
    unit,
)


def test_register_wh_is_the_decimal_arithmetic() -> None:
    rng = random.Random(7)
    values = [*range(0, 20_000), *range(REGISTER_MOD_WH - 20_000, REGISTER_MOD_WH + 10)]
    values += [rng.randrange(REGISTER_MOD_WH) for _ in range(100_000)]
    values += [2**e * 1000 // 1024 + k for e in range(10, 37) for k in range(-50, 50)]
    for wh in values:
        assert register_wh(wh) == register_wh_decimal(wh), wh


def _power_reference(hh: Household, local_hour: int, season_pct: int) -> int:
    shape = DAYTIME_W if hh.daytime else EVENING_W
    base = shape[local_hour % 24] * hh.size_pct * season_pct // 10_000
    noise = 0.6 + 0.8 * unit(hh.seed, local_hour)
    burst = 1200 * unit(hh.seed + 1, local_hour) if unit(hh.seed + 2, local_hour) < 0.12 \
        else 0.0
    return int(base * noise + burst)


@settings(max_examples=300)
@given(st.integers(0, 2**63 - 1), st.integers(1, 400), st.booleans(),
       st.lists(st.tuples(st.integers(0, 10**7), st.sampled_from([70, 100, 160])),
                min_size=1, max_size=150))
def test_cached_power_is_the_hash_of_the_hour(seed: int, size_pct: int, daytime: bool,
                                              asks: list[tuple[int, int]]) -> None:
    hh = Household(0, "M", "A", 1, 1, 1, seed, size_pct, daytime, "planner", 0, 0, 0, 0)
    for hour, season in asks + asks:
        assert hh.power_w(hour, season) == _power_reference(hh, hour, season)


def test_health_report_from_health_is_the_one_from_status(tmp_path: Path) -> None:
    """The runtime's minute health report is built from ``Status.health()``, a part of
    ``Status.report()``: the same bytes as from the whole status, after a simulated week."""
    plan = make_world(2, 10, 7, gateways=1, poll_s=1800, mode="direct", plant="")
    sim = GatewaySim(plan, plan.gateways[0], tmp_path)
    sim.run()
    rt = sim.rt
    assert rt is not None and rt.meters
    assert any(m["errors"] for m in rt.status.health()["meters"])
    health, whole = rt.status.health(), rt.status.report()
    assert rt.delivery.state_payload(health) == rt.delivery.state_payload(whole)
