"""One household's month as a PNG: balance (line), supply cut (red band), protected times.

The household is the one with the most disconnections in the run. The background
shades the times no credit disconnection may happen (nights 18:00-08:00, Sundays,
holidays); the dashed line is the emergency-credit floor.
"""

from __future__ import annotations

from typing import Any

from sim.neighbourhood.png import Canvas
from sim.neighbourhood.world import DAY_S, HOLIDAYS, HOUR_S, Calendar

WIDTH, HEIGHT = 960, 400
LEFT, RIGHT, TOP, BOTTOM = 80, 20, 40, 60
INK = (30, 30, 30)
GRID = (215, 215, 215)
SHADE = (238, 238, 246)
LINE = (20, 90, 200)
CUT = (220, 40, 40)
FLOOR = (240, 150, 0)


def render(series: dict[str, Any], emergency_credit: int) -> bytes:
    cal = Calendar(HOLIDAYS)
    start, end = int(series["start"]), int(series["end"])
    points: list[tuple[int, int]] = [(int(t), int(b)) for t, b in series["balance"]
                                     if int(t) <= end]
    if points:
        points.append((end, points[-1][1]))
    values = [b for _t, b in points] + [0, -emergency_credit]
    lo, hi = min(values), max(values)
    pad = max(1000, (hi - lo) // 10)
    lo, hi = lo - pad, hi + pad
    c = Canvas(WIDTH, HEIGHT)
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, TOP, HEIGHT - BOTTOM

    def x_of(t: int) -> int:
        return x0 + (x1 - x0) * (min(max(t, start), end) - start) // max(1, end - start)

    def y_of(paise: int) -> int:
        return y1 - (y1 - y0) * (paise - lo) // max(1, hi - lo)

    for t in range(start, end, HOUR_S):  # protected times
        if cal.protection(t) is not None:
            c.rect(x_of(t), y0, x_of(t + HOUR_S) - 1, y1, SHADE)
    every = max(1, (end - start) // DAY_S // 10)  # at most ~10 date labels
    for i, t in enumerate(range(start, end + 1, DAY_S)):
        c.line(x_of(t), y0, x_of(t), y1, GRID)
        if i % every == 0:
            c.text(x_of(t) - 17, y1 + 8, cal.local(t).strftime("%d %b"), INK)
    step = _nice_step(hi - lo)
    for paise in range(lo - lo % step, hi, step):
        if paise >= lo:
            c.line(x0, y_of(paise), x1, y_of(paise), GRID)
            c.text(8, y_of(paise) - 3, f"RS {paise // 100}", INK)
    for x in range(x0, x1, 8):  # the emergency-credit floor, dashed
        c.line(x, y_of(-emergency_credit), x + 3, y_of(-emergency_credit), FLOOR)
    c.line(x0, y_of(0), x1, y_of(0), INK)
    cut_from: int | None = None
    for t, connected in [(int(t), bool(v)) for t, v in series["relay"]] + [(end, True)]:
        if not connected and cut_from is None:
            cut_from = t
        elif connected and cut_from is not None:
            c.rect(x_of(cut_from), y1 - 10, max(x_of(cut_from), x_of(t) - 1), y1 - 2, CUT)
            cut_from = None
    prev: tuple[int, int] | None = None
    for t, paise in points:
        if prev is not None:
            c.line(x_of(prev[0]), y_of(prev[1]), x_of(t), y_of(prev[1]), LINE)
            c.line(x_of(t), y_of(prev[1]), x_of(t), y_of(paise), LINE)
        prev = (t, paise)
    c.line(x0, y0, x0, y1, INK)
    c.line(x0, y1, x1, y1, INK)
    c.text(x0, 12, f"{series['meter']} / {series['account']}: BALANCE (BLUE), SUPPLY CUT "
           f"(RED), PROTECTED TIMES (SHADED), EMERGENCY CREDIT FLOOR (ORANGE)", INK)
    return c.png()


def _nice_step(span: int) -> int:
    for step in (1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000):
        if span // step <= 8:
            return step
    return 1_000_000
