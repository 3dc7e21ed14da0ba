"""Tariff tables and their prices (CONTRACT 2 [tariff.*], DOMAIN "Billing").

Pure: imports only what MicroPython also has.
Rates are paise per kWh; consumption is Wh; so rate x Wh is milli-paise (mp), exact.

E(C), the energy charge of C Wh consumed since the billing month began, is
telescopic: each slab's rate applies to the part of C inside that slab. A delta
from C1 to C2 costs E(C2) - E(C1), so charging reading by reading adds up to
exactly the monthly bill.

Time of day (``tod``): consumption between two readings is attributed to the
windows pro rata by time, and each window's part is priced at the slab price of
the Wh it covers x pct/100 (outside every window pct = 100). The parts are laid
on the slab ladder in the order they were used, so a window that came later in
the interval sits higher in the month's consumption. Without ToD, or with every
pct = 100, the price is exactly E(C2) - E(C1). With ToD one floor to whole mp per
delta is taken (at most 1/1000 paisa per reading, in the consumer's favour);
docs/billing.md has the details.
"""

from __future__ import annotations

from agent.errors import LedgerError
from agent.ledger.calendar import DAY_S, in_minute_range, minute_of_day
from agent.ledger.record import dataclass

# One priced interval covers at most one billing month (billing.charge splits at
# month boundaries), so 32 days bounds the segment walk; a longer one is refused.
MAX_TOD_SPAN_S = 32 * DAY_S


@dataclass(frozen=True, slots=True)
class Slab:
    FIELDS = ("rate", "upto_kwh")
    rate: int  # paise per kWh
    upto_kwh: int | None = None  # None: the open top slab


@dataclass(frozen=True, slots=True)
class TodWindow:
    FIELDS = ("from_min", "to_min", "pct")
    from_min: int  # local minutes after midnight, 0..1439
    to_min: int  # exclusive, 0..1440 (0 and 1440 both mean midnight); may be < from_min (wraps)
    pct: int  # percent of the slab rate applied inside the window (e.g. 80, 120)


@dataclass(frozen=True, slots=True)
class Tariff:
    FIELDS = ("name", "fixed_per_day", "slabs", "duty_bp", "billing_day", "tod", "version")
    name: str
    fixed_per_day: int  # paise per local day
    slabs: tuple[Slab, ...]
    duty_bp: int = 0  # basis points of the energy charge
    billing_day: int = 1  # 1..28: the billing month starts on this local day
    tod: tuple[TodWindow, ...] = ()
    version: int = 1  # bumped by each `tariff` command; entries reference it


def energy_millipaise(tariff: Tariff, consumed_wh: int) -> int:
    """E(C): the month's energy charge in milli-paise for ``consumed_wh`` since it began.

    Telescopic and without time of day. A tariff whose top slab is bounded (which
    ``tariff_problems`` reports) prices what lies above it at the last slab's rate.
    """
    if consumed_wh < 0:
        raise LedgerError("consumption cannot be negative: " + str(consumed_wh) + " Wh")
    total_mp = 0
    lower_wh = 0
    rate = 0
    for slab in tariff.slabs:
        rate = slab.rate
        if slab.upto_kwh is None or consumed_wh <= slab.upto_kwh * 1000:
            return total_mp + (consumed_wh - lower_wh) * rate
        upper_wh = slab.upto_kwh * 1000
        total_mp += (upper_wh - lower_wh) * rate
        lower_wh = upper_wh
    return total_mp + (consumed_wh - lower_wh) * rate


def in_window(window: TodWindow, minute: int) -> bool:
    # from == to is empty here; tariff_problems reports it.
    return in_minute_range(window.from_min, window.to_min, minute)


def window_index(tod: tuple[TodWindow, ...], minute: int) -> int:
    """Index of the first window holding ``minute``; ``len(tod)`` means outside all."""
    for i, window in enumerate(tod):
        if in_window(window, minute):
            return i
    return len(tod)


def tod_segments(
    tod: tuple[TodWindow, ...], t0_local_s: int, t1_local_s: int
) -> list[tuple[int, int]]:
    """The interval cut where window membership changes: ``[(window index, seconds), ...]``
    in time order, neighbours with the same index merged. An empty or backwards
    interval is one instant at ``t1`` (its window, 0 s)."""
    if t1_local_s <= t0_local_s:
        return [(window_index(tod, minute_of_day(t1_local_s)), 0)]
    if t1_local_s - t0_local_s > MAX_TOD_SPAN_S:
        raise LedgerError("a time-of-day interval longer than 32 days is not priced in one piece")
    edges_s = sorted({w.from_min * 60 for w in tod} | {w.to_min % 1440 * 60 for w in tod})
    segments: list[tuple[int, int]] = []
    t = t0_local_s
    while t < t1_local_s:
        second_of_day = t % DAY_S
        next_edge = t - second_of_day + DAY_S  # midnight, unless an edge comes first
        for edge_s in edges_s:
            if edge_s > second_of_day:
                next_edge = t - second_of_day + edge_s
                break
        end = min(next_edge, t1_local_s)
        index = window_index(tod, minute_of_day(t))
        if segments and segments[-1][0] == index:
            segments[-1] = (index, segments[-1][1] + end - t)
        else:
            segments.append((index, end - t))
        t = end
    return segments


def pro_rata(amount: int, weights: list[int]) -> list[int]:
    """``amount`` split in proportion to ``weights`` (e.g. seconds), as exact integers.

    Cumulative floors: the parts up to and including item k hold
    ``amount x (w_0 + .. + w_k) // total``, so the parts add up to ``amount``
    exactly and none is negative. All zero weights: everything to the last item.
    """
    if len(weights) == 1:  # the usual case (one month, one version): what the loop gives
        return [amount]
    total = 0
    for weight in weights:
        total += weight
    parts: list[int] = []
    running = 0
    given = 0
    for weight in weights:
        running += weight
        if total:
            upto = amount * running // total
        else:
            upto = amount if len(parts) == len(weights) - 1 else 0
        parts.append(upto - given)
        given = upto
    return parts


def tod_split_wh(
    tod: tuple[TodWindow, ...], delta_wh: int, t0_local_s: int, t1_local_s: int
) -> list[int]:
    """Wh of ``delta_wh`` attributed to each window; the last item is outside every window.

    The items always sum to ``delta_wh``.
    """
    parts = [0] * (len(tod) + 1)
    segments = tod_segments(tod, t0_local_s, t1_local_s)
    shares = pro_rata(delta_wh, [seconds for _, seconds in segments])
    for i, wh in enumerate(shares):  # no zip(strict=) on MicroPython
        parts[segments[i][0]] += wh
    return parts


def delta_energy_mp(
    tariff: Tariff, c1_wh: int, c2_wh: int, t0_local_s: int, t1_local_s: int
) -> int:
    """Milli-paise for the month's consumption going from ``c1_wh`` to ``c2_wh``
    between two local instants: E(C2) - E(C1), time-of-day weighted when the
    tariff has windows."""
    if c2_wh < c1_wh:
        raise LedgerError("a consumption delta cannot be negative")
    if not tariff.tod:
        return energy_millipaise(tariff, c2_wh) - energy_millipaise(tariff, c1_wh)
    segments = tod_segments(tariff.tod, t0_local_s, t1_local_s)
    weighted = 0  # milli-paise x percent
    position_wh = c1_wh
    position_mp = energy_millipaise(tariff, c1_wh)
    shares = pro_rata(c2_wh - c1_wh, [seconds for _, seconds in segments])
    for i, wh in enumerate(shares):
        index = segments[i][0]
        pct = tariff.tod[index].pct if index < len(tariff.tod) else 100
        next_mp = energy_millipaise(tariff, position_wh + wh)
        weighted += (next_mp - position_mp) * pct
        position_wh += wh
        position_mp = next_mp
    return weighted // 100


def tariff_problems(tariff: Tariff) -> list[tuple[str, str]]:
    """Every rule the tariff breaks, as ``(key, message)`` for the config loader."""
    problems: list[tuple[str, str]] = []
    if tariff.fixed_per_day < 0:
        problems.append(("fixed_per_day", "must be >= 0 paise"))
    if not 0 <= tariff.duty_bp <= 10_000:
        problems.append(("duty_bp", "must be 0..10000 basis points"))
    if not 1 <= tariff.billing_day <= 28:
        problems.append(("billing_day", "must be 1..28 (a day every month has)"))
    if tariff.version < 1:
        problems.append(("version", "must be >= 1"))
    if not tariff.slabs:
        problems.append(("slabs", "needs at least one slab"))
    previous_kwh = 0
    for i, slab in enumerate(tariff.slabs):
        key = "slabs[" + str(i) + "]"
        last = i == len(tariff.slabs) - 1
        if slab.rate < 0:
            problems.append((key + ".rate", "must be >= 0 paise/kWh"))
        if slab.upto_kwh is None and not last:
            problems.append((key + ".upto_kwh", "only the last slab may be open"))
        elif slab.upto_kwh is not None and last:
            problems.append((key + ".upto_kwh", "the last slab must be open (no upto_kwh)"))
        elif slab.upto_kwh is not None:
            if slab.upto_kwh <= previous_kwh:
                problems.append((key + ".upto_kwh", "must be greater than the slab before"))
            previous_kwh = slab.upto_kwh
    for i, window in enumerate(tariff.tod):
        key = "tod[" + str(i) + "]"
        if not 0 <= window.from_min <= 1439:
            problems.append((key + ".from", "must be 00:00..23:59"))
        if not 0 <= window.to_min <= 1440:
            problems.append((key + ".to", "must be 00:00..24:00"))
        if window.from_min == window.to_min:
            problems.append((key, "from and to are equal: an empty or ambiguous window"))
        if not 0 <= window.pct <= 1000:
            problems.append((key + ".pct", "must be 0..1000 percent"))
    if tariff.tod:
        for minute in range(1440):
            holders = [i for i, w in enumerate(tariff.tod) if in_window(w, minute)]
            if len(holders) > 1:
                problems.append(("tod", "windows " + str(holders) + " overlap"))
                break
    return problems


def _hhmm_text(minutes: int) -> str:
    minutes = minutes % 1440  # 24:00 is written as 00:00, as the config writes midnight
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def tariff_table(tariff: Tariff) -> dict[str, object]:
    """The tariff as a CONTRACT 2 ``[tariff.NAME]`` table (what the `tariff` command
    carries): the canonical form the agent stores for each version, so two equal
    tariffs always give equal tables."""
    slabs: list[dict[str, int]] = []
    for slab in tariff.slabs:
        item = {"rate": slab.rate}
        if slab.upto_kwh is not None:
            item["upto_kwh"] = slab.upto_kwh
        slabs.append(item)
    table: dict[str, object] = {
        "fixed_per_day": tariff.fixed_per_day,
        "slabs": slabs,
        "duty_bp": tariff.duty_bp,
        "billing_day": tariff.billing_day,
    }
    if tariff.tod:
        table["tod"] = [
            {"from": _hhmm_text(w.from_min), "to": _hhmm_text(w.to_min), "pct": w.pct}
            for w in tariff.tod
        ]
    return table


# --- tariff versions (the `tariff` command) ------------------------------------------
# ``versions`` is ``[(effective_s, Tariff), ...]`` in version order, effective times
# never decreasing; the first is in force before its own effective time too.


def version_at(versions: list[tuple[int, Tariff]], t: int) -> Tariff:
    """The version in force at unix time ``t``."""
    chosen = versions[0][1]
    for effective_s, tariff in versions:
        if effective_s > t:
            break
        chosen = tariff
    return chosen


def version_parts(
    versions: list[tuple[int, Tariff]], t0: int, t1: int
) -> list[tuple[Tariff, int, int]]:
    """``[(tariff, start, end), ...]``: the interval (t0, t1] cut where a new version came
    into force, so energy is priced by the version in force when it was used. A
    backwards interval (the clock went back) is one part, the version at ``t1``."""
    if t1 <= t0:
        return [(version_at(versions, t1), t0, t1)]
    if len(versions) == 1 and not t0 < versions[0][0] < t1:  # the usual: what the loop
        return [(versions[0][1], t0, t1)]  # below gives for one version, not cut
    points = [t0]
    for effective_s, _ in versions:
        if t0 < effective_s < t1 and effective_s != points[-1]:
            points.append(effective_s)
    points.append(t1)
    return [
        (version_at(versions, points[i]), points[i], points[i + 1])
        for i in range(len(points) - 1)
    ]
