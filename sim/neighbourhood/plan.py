"""The seeded plan of a run: the neighbourhood, its households and every fault, fixed
before the first second is simulated.

``random.Random(seed)`` is the only source of randomness. The world plan (start
date, head-end outages, moratoria, one seed per gateway) is drawn from it first;
each gateway then draws its households and faults from its own seed, so gateways
can run in separate processes and still give the same result, and a run's
``--gateways`` split does not change what any one gateway sees.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from sim.neighbourhood.world import (
    DAY_S,
    HOLIDAYS,
    HOUR_S,
    NEW_METER_MAX_WH,
    REGISTER_MOD_WH,
    REGISTER_MODS,
    TIMEZONE,
    WS_PER_WH,
    Household,
)

METERS_PER_BUS = 50  # RS-485 with 1/8-unit-load transceivers; addresses 1..50
COILS_PER_MODULE = 8
COIL_UNIT_BASE = 200  # relay modules at units 201, 202, ...
# --protocols mixed: each gateway's households in turn on a Modbus RTU, an IEC 62056-21
# and a DLMS/COSEM bus (a real mixed board's three RS-485 ports, board_configs/sim-mixed.toml)
PROTOCOLS = {"modbus": ("modbus",), "mixed": ("modbus", "iec62056-21", "dlms")}
METER_PREFIX = {"modbus": "SDM", "iec62056-21": "IEC", "dlms": "DLMS"}
SETTLE_S = 12 * HOUR_S  # after the last day: no new faults, the link up, all delivered
# Many prepaid households top up only once cut off ("disconnect to recharge").
HABITS = (("planner", 30), ("last_minute", 30), ("struggler", 25), ("token_user", 15))


@dataclass(frozen=True, slots=True)
class Fault:
    """One scheduled fault. ``kind`` and what ``end``/``value``/``text`` mean:

    gateway link:  outage (end), stuck, ackloss
    agent:         crash (value = downtime s, text = point:process|power|ahead:<n>),
                   where point is sql|publish|switch and n the instruction or call count
    meter:         silent (end), corrupt (end, value = percent), reset, replace
                   (value = seconds off the bus), magnet (end), cover (instant)
    head-end:      payments_down (end), headend_offline (end),
                   moratorium (value = until, text = "*" or accounts joined by ","),
                   override (target meter, value = until, text = connect|disconnect)
    """

    t: int
    kind: str
    target: str = ""
    end: int = 0
    value: int = 0
    text: str = ""


@dataclass(frozen=True, slots=True)
class GatewaySpec:
    id: str
    first: int  # index of its first household in the neighbourhood
    count: int
    seed: int


@dataclass(frozen=True, slots=True)
class WorldPlan:
    seed: int
    start_s: int
    days: int
    poll_s: int
    mode: str  # direct | codec
    plant: str
    emergency_credit: int
    max_disconnects_per_hour: int
    store_max_bytes: int  # 0: the agent's default
    gateways: tuple[GatewaySpec, ...]
    headend: tuple[Fault, ...]
    protocols: str = "modbus"  # modbus | mixed (PROTOCOLS)

    @property
    def end_s(self) -> int:
        return self.start_s + self.days * DAY_S


def log_uniform(rng: random.Random, lo: float, hi: float) -> int:
    return int(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method (small means only)."""
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _windows(rng: random.Random, start: int, end: int, n: int, lo: float, hi: float,
             kind: str, target: str = "") -> list[Fault]:
    """``n`` non-overlapping windows of log-uniform length in [start, end)."""
    out: list[Fault] = []
    for t in sorted(rng.randrange(start, end) for _ in range(n)):
        if out and t < out[-1].end:
            continue
        out.append(Fault(t, kind, target, end=min(end, t + log_uniform(rng, lo, hi))))
    return out


def make_world(seed: int, meters: int, days: int, *, gateways: int, poll_s: int, mode: str,
               plant: str, protocols: str = "modbus") -> WorldPlan:
    rng = random.Random(seed)
    tz = ZoneInfo(TIMEZONE)
    if rng.random() < 0.5:  # edges are where bugs live: half the runs reach a holiday
        # (on a weekday) after a week or so, when credit has begun to run out
        weekday_holidays = [h for h in HOLIDAYS if datetime.fromisoformat(h).weekday() != 6]
        holiday = datetime.fromisoformat(rng.choice(weekday_holidays)).replace(tzinfo=tz)
        before = min(4, days), max(min(4, days), min(days, 12))
        start_s = int(holiday.timestamp()) - rng.randint(*before) * DAY_S
    else:
        month = rng.randrange(12) + 1
        day = 1 if rng.random() < 0.5 else rng.randrange(2, 29)
        start_s = int(datetime(2026, month, day, tzinfo=tz).timestamp())
    end_s = start_s + days * DAY_S
    per = -(-meters // gateways)
    specs = tuple(GatewaySpec(f"gw-{g + 1:02d}", g * per, min(per, meters - g * per),
                              rng.getrandbits(63)) for g in range(gateways) if g * per < meters)
    head: list[Fault] = []
    head += _windows(rng, start_s, end_s, 1 + poisson(rng, days / 30), HOUR_S, 7 * DAY_S,
                     "payments_down")
    head += _windows(rng, start_s, end_s, poisson(rng, days / 45), 1800, 12 * HOUR_S,
                     "headend_offline")
    if rng.random() < 0.4:  # a heat wave: the utility suspends disconnections for days
        t = rng.randrange(start_s, end_s)
        head.append(Fault(t, "moratorium", value=t + rng.randrange(2, 5) * DAY_S,
                          text="*", target="heatwave"))
    for _ in range(poisson(rng, 1.5)):  # a medical certificate for one household
        t = rng.randrange(start_s, end_s)
        acct = f"ACC-{rng.randrange(meters) + 1:04d}"
        head.append(Fault(t, "moratorium", value=t + 7 * DAY_S, text=acct, target="medical"))
    head.sort(key=lambda f: (f.t, f.kind, f.target))
    return WorldPlan(
        seed=seed, start_s=start_s, days=days, poll_s=poll_s, mode=mode, plant=plant,
        emergency_credit=rng.choice((5_000, 10_000, 20_000)),
        max_disconnects_per_hour=rng.choice((3, 6, 60)),
        store_max_bytes=(1 << 20) if rng.random() < 0.25 else 0,
        gateways=specs, headend=tuple(head), protocols=protocols)


def make_households(spec: GatewaySpec, rng: random.Random, start_s: int,
                    protocols: str = "modbus") -> list[Household]:
    """The gateway's households, drawn alike whatever their meters speak. With several
    protocols the i-th household's meter is on bus ``i % len(protocols)``, numbered on
    that bus from address 1; a meter with a coil relay (Modbus, and IEC meters, which
    have no breaker) takes the next coil of the relay modules on the Modbus bus."""
    households = []
    kinds = PROTOCOLS[protocols]
    on_bus = dict.fromkeys(kinds, 0)
    coils = 0
    for i in range(spec.count):
        n = spec.first + i + 1
        protocol = kinds[i % len(kinds)]
        on_bus[protocol] += 1
        address, coil_index = on_bus[protocol], coils
        if protocol != "dlms":  # a DLMS meter switches itself (its disconnect control)
            coils += 1
        habit = rng.choices([h for h, _ in HABITS], [w for _, w in HABITS])[0]
        rollover = rng.random() < 0.03
        start_wh = REGISTER_MOD_WH - rng.randrange(500, 6000) if rollover \
            else rng.randrange(50_000, 5_000_000)
        balance = rng.randrange(1, 9) * 5_000 if habit == "struggler" \
            else rng.randrange(2, 16) * 10_000
        households.append(Household(
            index=n, meter=f"{METER_PREFIX[protocol]}-{n:04d}", account=f"ACC-{n:04d}",
            address=address, coil_unit=COIL_UNIT_BASE + 1 + coil_index // COILS_PER_MODULE,
            coil=coil_index % COILS_PER_MODULE,
            seed=rng.getrandbits(63), size_pct=rng.randrange(20, 70),
            daytime=rng.random() < 0.2, habit=habit, start_balance=balance,
            reg_ws=start_wh * WS_PER_WH, serial=10_000_000 + rng.randrange(90_000_000),
            last_t=start_s, protocol=protocol, register_mod_wh=REGISTER_MODS[protocol]))
    return households


def make_faults(plan: WorldPlan, spec: GatewaySpec, rng: random.Random,
                households: list[Household]) -> list[Fault]:
    start, end, days = plan.start_s, plan.end_s, plan.days
    faults: list[Fault] = []
    outages = _windows(rng, start + HOUR_S, end, poisson(rng, days / 5), 60, 3 * DAY_S,
                       "outage")
    if rng.random() < 0.6 or plan.store_max_bytes:  # one long outage: > payment_outage_h;
        # with a small [store] max_bytes, long enough to fill it
        t = rng.randrange(start + HOUR_S, max(start + 2 * HOUR_S, end - 2 * DAY_S))
        hours = (50, 72) if plan.store_max_bytes else (6, 60)
        long = Fault(t, "outage", end=min(end, t + rng.randrange(hours[0] * HOUR_S,
                                                                 hours[1] * HOUR_S)))
        outages = [o for o in outages if o.end <= long.t or o.t >= long.end] + [long]
    faults += outages
    faults += [Fault(rng.randrange(start, end), "stuck") for _ in range(poisson(rng, days / 15))]
    faults += [Fault(rng.randrange(start, end), "ackloss")
               for _ in range(poisson(rng, days / 6))]
    for _ in range(poisson(rng, days * 0.15)):
        t = rng.randrange(start + 600, end)
        r = rng.random()
        if r < 0.5:
            how, downtime = "process", rng.randrange(5, 90)
        elif r < 0.9:
            how, downtime = "power", log_uniform(rng, 60, 8 * HOUR_S)
        else:
            how, downtime = f"ahead:{rng.randrange(HOUR_S, 3 * DAY_S)}", rng.randrange(10, 600)
        point = rng.choice(("sql", "sql", "sql", "publish", "switch"))
        count = rng.randrange(1, 400) if point == "sql" else rng.randrange(1, 4)
        faults.append(Fault(t, "crash", value=downtime, text=f"{point}:{count}:{how}"))
    for hh in households:
        m = hh.meter
        if rng.random() < 0.06:
            faults += _windows(rng, start, end, 1, HOUR_S, 3 * DAY_S, "silent", m)
        if rng.random() < 0.06:
            w = _windows(rng, start, end, 1, 2 * HOUR_S, 3 * DAY_S, "corrupt", m)[0]
            faults.append(Fault(w.t, "corrupt", m, end=w.end, value=rng.randrange(5, 60)))
        if rng.random() < 0.015:
            faults.append(Fault(rng.randrange(start, end), "reset", m))
        if rng.random() < 0.015:
            faults.append(Fault(rng.randrange(start, end), "replace", m,
                                value=rng.randrange(600, 5400),
                                text=str(rng.randrange(NEW_METER_MAX_WH + 1))))
        if rng.random() < 0.02:
            faults += _windows(rng, start, end, 1, 2 * HOUR_S, 2 * DAY_S, "magnet", m)
        if rng.random() < 0.01:
            faults.append(Fault(rng.randrange(start, end), "cover", m))
    if rng.random() < 0.5:  # a technician's override through the head-end
        hh = rng.choice(households)
        t = rng.randrange(start, end)
        action = rng.choice(("disconnect", "connect"))
        until = t + (rng.randrange(1, 4) * HOUR_S if action == "disconnect" else 2 * DAY_S)
        faults.append(Fault(t, "override", hh.meter, value=until, text=action))
    faults.sort(key=lambda f: (f.t, f.kind, f.target))
    return faults
