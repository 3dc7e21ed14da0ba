"""Tariff tables (CONTRACT 2, DOMAIN "Billing").

Pure: imports only what MicroPython also has.
Rates are paise per kWh; consumption is Wh; so rate x Wh is milli-paise, exact.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Slab:
    rate: int  # paise per kWh
    upto_kwh: int | None = None  # None: the open top slab


@dataclass(frozen=True, slots=True)
class TodWindow:
    from_min: int  # local minutes after midnight, 0..1439
    to_min: int  # exclusive; may be < from_min (wraps midnight)
    pct: int  # percent of the slab rate applied inside the window (e.g. 80, 120)


@dataclass(frozen=True, slots=True)
class Tariff:
    name: str
    fixed_per_day: int  # paise per local day
    slabs: tuple[Slab, ...]
    duty_bp: int = 0  # basis points of the energy charge
    billing_day: int = 1  # 1..28: the billing month starts on this local day
    tod: tuple[TodWindow, ...] = ()
    version: int = 1  # bumped by each `tariff` command; entries reference it
