"""The neighbourhood's truth: the calendar, the tariff, households and their meters.

Everything the checks compare the agent against lives here, computed without
the agent's own code (``agent.ledger`` is never imported), so a bug shared by
the agent and its checks cannot hide.

Time is *true* time, integer Unix seconds. The agent's clock may be wrong
(``runner.py`` moves it); the households and meters never see that.

A household's load is a pure function of (household, local hour): the mean
power of each local hour comes from its daily shape, its size, the season and
a hash of (seed, hour), so the energy drawn over an interval does not depend on
how often anybody looked, only on when the supply was connected. Energy is
kept exactly, as integer watt-seconds; the register shows whole Wh, wraps at
the model's maximum and reaches the agent as an IEEE-754 float32 of kWh, as an
Eastron SDM120 sends it (``register_wh``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Final
from zoneinfo import ZoneInfo

HOUR_S: Final = 3600
DAY_S: Final = 86_400
TIMEZONE: Final = "Asia/Kolkata"
WS_PER_WH: Final = 3600
# Eastron SDM120: the register map's register_max_wh; the agent treats it as the
# register's modulus, so the simulated register wraps there.
REGISTER_MOD_WH: Final = 99_999_990
# Where each protocol's simulated register wraps: the SDM120's float32 kWh register
# at its map's register_max_wh; an IEC 62056-21 readout of kWh with six integer digits
# (999999.999 kWh); a DLMS double-long-unsigned of Wh (2**32 Wh). Only the SDM120's is
# reached in a month: a household that starts near REGISTER_MOD_WH on an IEC or DLMS
# meter just counts on past it.
REGISTER_MODS: Final = {"modbus": REGISTER_MOD_WH, "iec62056-21": 1_000_000_000,
                        "dlms": 2**32}
NEW_METER_MAX_WH: Final = 50  # a replacement arrives with a few Wh from its factory test

# Uttar Pradesh domestic urban (LMV-1), ../shared/data/tariffs/up-lmv1-urban.toml:
# Rs 5.50/kWh to 150 kWh, 6.00 to 300, 6.50 to 500, 7.00 above; 5 % duty; Rs 220/month
# fixed for 2 kW as 733 paise a day.
TARIFF_NAME: Final = "up-lmv1-urban"
SLABS: Final = ((150, 550), (300, 600), (500, 650), (None, 700))  # (upto kWh, paise/kWh)
DUTY_BP: Final = 500
FIXED_PER_DAY: Final = 733
BILLING_DAY: Final = 1

# A holiday calendar like UP's gazetted list for 2026 (dates illustrative: the sim
# needs holidays inside every simulated month, not an authoritative list).
HOLIDAYS: Final = (
    "2026-01-14", "2026-01-26", "2026-02-15", "2026-03-04", "2026-03-21", "2026-04-03",
    "2026-04-14", "2026-05-01", "2026-05-27", "2026-06-26", "2026-08-15", "2026-08-28",
    "2026-09-04", "2026-10-02", "2026-10-20", "2026-11-08", "2026-11-24", "2026-12-25",
)  # fmt: skip

# Mean load (W) by local hour for two kinds of household: an evening peak (most), and
# one with people at home in the day (a shop or tailoring at home).
EVENING_W: Final = (
    180, 150, 140, 140, 150, 260, 650, 1100, 950, 600, 420, 380,
    400, 420, 380, 360, 420, 700, 1300, 1600, 1500, 1100, 650, 300,
)  # fmt: skip
DAYTIME_W: Final = (
    160, 140, 130, 130, 140, 240, 520, 800, 900, 1000, 1050, 1100,
    1150, 1100, 1050, 1000, 950, 900, 1100, 1250, 1150, 900, 520, 260,
)  # fmt: skip
# Air coolers and fans: the same house uses far more in May than in January.
SEASON_PCT: Final = (70, 75, 95, 130, 160, 160, 130, 120, 120, 100, 80, 70)

_MASK: Final = (1 << 64) - 1


def mix64(x: int) -> int:
    """SplitMix64's finaliser: a fast, well-mixed hash of a 64-bit integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def unit(seed: int, k: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, k)."""
    return mix64(seed ^ mix64(k)) / 2.0**64


# -- the calendar, independently of agent.ledger.calendar --------------------------------
class Calendar:
    """Local time and the protected times of the policy the simulation configures."""

    def __init__(self, holidays: tuple[str, ...], protected: tuple[int, int] = (18, 8),
                 weekdays: tuple[int, ...] = (6,)) -> None:
        self.tz = ZoneInfo(TIMEZONE)
        self.holidays = frozenset(holidays)
        self.protected = protected  # local hours [from, to), wrapping midnight
        self.weekdays = weekdays  # 0 Monday .. 6 Sunday

    def local(self, t: int) -> datetime:
        return datetime.fromtimestamp(t, self.tz)

    def offset_s(self, t: int) -> int:
        off = self.local(t).utcoffset()
        return int(off.total_seconds()) if off is not None else 0

    def protection(self, t: int) -> str | None:
        """Why a credit disconnection may not happen at true time ``t`` (None: it may)."""
        local = self.local(t)
        start, end = self.protected
        if local.hour >= start or local.hour < end:
            return "protected_hours"
        if local.weekday() in self.weekdays:
            return "protected_weekday"
        if local.date().isoformat() in self.holidays:
            return "holiday"
        return None

    def describe(self, t: int) -> str:
        return self.local(t).strftime("%a %Y-%m-%d %H:%M")


# -- the tariff, independently of agent.ledger.tariff -----------------------------------------
def energy_mp(consumed_wh: int) -> int:
    """E(C) in milli-paise: telescopic slabs, rate (paise/kWh) x Wh."""
    total, lower = 0, 0
    for upto_kwh, rate in SLABS:
        top = consumed_wh if upto_kwh is None else min(consumed_wh, upto_kwh * 1000)
        if top > lower:
            total += (top - lower) * rate
        if upto_kwh is None or consumed_wh <= upto_kwh * 1000:
            break
        lower = upto_kwh * 1000
    return total


def billing_month(t: int, cal: Calendar) -> str:
    return billing_month_of(cal.local(t))


def billing_month_of(local: datetime) -> str:
    """The billing month of a local time (``billing_month``)."""
    year, month = local.year, local.month
    if local.day < BILLING_DAY:
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    return f"{year:04d}-{month:02d}"


# -- what the meter sends ------------------------------------------------------------------
_F32: Final = struct.Struct(">f")


def register_wh(wh: int) -> int:
    """The Wh the agent decodes from the register: float32 kWh, then exact x 1000.

    In binary floating point, exactly as with Decimal: ``wh / 1000`` is the correctly
    rounded double of the exact quotient (as float(Decimal(wh) / 1000) is), and a float32
    (24-bit significand) times 1000 needs 34 bits, so the double product is exact and
    ``round`` (half to even) sees the exact value. tests/sim checks it against Decimal."""
    kwh: float = _F32.unpack(_F32.pack(wh / 1000))[0]
    return round(kwh * 1000)


def register_wh_decimal(wh: int) -> int:
    """``register_wh`` with Decimal arithmetic: the reference the test compares with."""
    kwh = struct.unpack(">f", struct.pack(">f", float(Decimal(wh) / 1000)))[0]
    return round(Decimal(kwh) * 1000)


@dataclass
class Household:
    """One household, its prepaid account, its meter on the bus and its relay coil."""

    index: int
    meter: str
    account: str
    address: int
    coil_unit: int
    coil: int
    seed: int
    size_pct: int  # mean load relative to the shape, percent
    daytime: bool
    habit: str  # planner | last_minute | struggler | token_user
    start_balance: int  # paise, the opening top-up
    reg_ws: int  # the register, watt-seconds (mod REGISTER_MOD_WH Wh)
    serial: int
    last_t: int  # integrated up to this true time
    connected: bool = True
    protocol: str = "modbus"  # its meter's protocol: modbus | iec62056-21 | dlms (plan.py)
    register_mod_wh: int = REGISTER_MOD_WH  # where its register wraps (REGISTER_MODS)
    magnet: bool = False  # tamper: the meter registers MAGNET_PCT of what is drawn
    used_ws: int = 0  # everything drawn (truth, whatever the meter registers)
    registered_ws: int = 0  # everything the meter registered (across resets/swaps)
    open_ws: int = 0  # would have been drawn while the supply was cut (for the report)
    jumps: list[tuple[int, str, int, int]] = field(default_factory=list)  # (t, kind, wh0, wh1)
    # power_w of the hours asked lately (a pure function of its arguments): each hour is
    # asked again by every poll inside it. Cleared past POWER_CACHE_MAX entries.
    _power: dict[tuple[int, int], int] = field(default_factory=dict, repr=False,
                                               compare=False)

    MAGNET_PCT = 40
    POWER_CACHE_MAX = 64

    def power_w(self, local_hour: int, season_pct: int) -> int:
        """Mean power of one local hour (hours counted since 1970 in local time)."""
        key = (local_hour, season_pct)
        power = self._power.get(key)
        if power is None:
            if len(self._power) >= self.POWER_CACHE_MAX:
                self._power.clear()
            power = self._power[key] = self._power_w(local_hour, season_pct)
        return power

    def _power_w(self, local_hour: int, season_pct: int) -> int:
        shape = DAYTIME_W if self.daytime else EVENING_W
        base = shape[local_hour % 24] * self.size_pct * season_pct // 10_000
        # unit(seed + i, hour), with the hour's own hash computed once
        hour = mix64(local_hour)
        noise = 0.6 + 0.8 * (mix64(self.seed ^ hour) / 2.0**64)
        burst = 1200 * (mix64((self.seed + 1) ^ hour) / 2.0**64) \
            if mix64((self.seed + 2) ^ hour) / 2.0**64 < 0.12 else 0.0
        return int(base * noise + burst)

    def advance(self, t: int, cal: Calendar, season_pct: int) -> None:
        """Integrate up to true time ``t`` with the present relay and tamper state."""
        if t <= self.last_t:
            return
        offset = cal.offset_s(self.last_t)
        s = self.last_t
        while s < t:
            local_hour = (s + offset) // HOUR_S
            end = min(t, (local_hour + 1) * HOUR_S - offset)
            ws = self.power_w(local_hour, season_pct) * (end - s)
            if self.connected:
                self.used_ws += ws
                reg = ws * self.MAGNET_PCT // 100 if self.magnet else ws
                self.registered_ws += reg
                self.reg_ws = (self.reg_ws + reg) % (self.register_mod_wh * WS_PER_WH)
            else:
                self.open_ws += ws
            s = end
        self.last_t = t

    @property
    def wh(self) -> int:
        return self.reg_ws // WS_PER_WH

    def reset_register(self, t: int) -> None:
        before = self.wh
        self.reg_ws = 0
        self.jumps.append((t, "reset", before, 0))

    def replace(self, t: int, new_serial: int, new_wh: int) -> None:
        before = self.wh
        self.serial = new_serial
        self.reg_ws = new_wh * WS_PER_WH
        self.jumps.append((t, "replaced", before, new_wh))


def season_pct(start_s: int, cal: Calendar) -> int:
    return SEASON_PCT[cal.local(start_s).month - 1]
