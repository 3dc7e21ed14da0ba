"""Shared test data for the ledger tests."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from agent.ledger.calendar import days_from_civil
from agent.ledger.tariff import Slab, Tariff, TodWindow

# ../shared (beside the repo, also in CI) holds the real UP tariff with a hand-worked bill.
UP_TOML = Path(__file__).resolve().parents[3] / "shared" / "data" / "tariffs" / "up-lmv1-urban.toml"

# The same table, for a checkout without shared/ beside it (test_tariff checks they agree).
UP_INLINE: dict[str, Any] = {
    "fixed_per_day": 733,
    "slabs": [
        {"upto_kwh": 150, "rate": 550},
        {"upto_kwh": 300, "rate": 600},
        {"upto_kwh": 500, "rate": 650},
        {"rate": 700},
    ],
    "duty_bp": 500,
    "billing_day": 1,
}


def tariff_from_table(name: str, table: dict[str, Any]) -> Tariff:
    """A minimal stand-in for the config loader (keyword construction, as it does)."""
    return Tariff(
        name=name,
        fixed_per_day=table["fixed_per_day"],
        slabs=tuple(Slab(rate=s["rate"], upto_kwh=s.get("upto_kwh")) for s in table["slabs"]),
        duty_bp=table.get("duty_bp", 0),
        billing_day=table.get("billing_day", 1),
    )


def up_tariff() -> Tariff:
    if UP_TOML.exists():
        with UP_TOML.open("rb") as f:
            table = tomllib.load(f)["tariff"]["up-lmv1-urban"]
    else:
        table = UP_INLINE
    return tariff_from_table("up-lmv1-urban", table)


def local_s(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> int:
    return days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + sec


@st.composite
def tariffs(draw: st.DrawFn, with_tod: bool = False) -> Tariff:
    """Valid random tariffs (open top slab; ToD windows that never overlap)."""
    bounds = sorted(set(draw(st.lists(st.integers(1, 800), max_size=4))))
    rates = draw(st.lists(st.integers(0, 2000), min_size=len(bounds) + 1, max_size=len(bounds) + 1))
    slabs = tuple(Slab(rate=r, upto_kwh=b) for r, b in zip(rates, bounds, strict=False))
    slabs += (Slab(rate=rates[-1]),)
    tod: tuple[TodWindow, ...] = ()
    if with_tod:
        edges = sorted(set(draw(st.lists(st.integers(0, 1439), max_size=7))))
        wrap = len(edges) >= 2 and draw(st.booleans())  # one window across midnight
        inner = edges[1:-1] if wrap else edges
        pairs = [(inner[i], inner[i + 1]) for i in range(0, len(inner) - 1, 2)]
        if wrap:
            pairs.append((edges[-1], edges[0]))
        tod = tuple(
            TodWindow(from_min=a, to_min=b, pct=draw(st.integers(0, 300))) for a, b in pairs
        )
    return Tariff(
        name="t",
        fixed_per_day=draw(st.integers(0, 2000)),
        slabs=slabs,
        duty_bp=draw(st.integers(0, 2000)),
        billing_day=draw(st.integers(1, 28)),
        tod=tod,
    )
