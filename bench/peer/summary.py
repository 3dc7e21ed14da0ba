"""The bench/peer rows of bench/RESULTS.md, written between BEGIN and END there."""

from __future__ import annotations

from collections.abc import Sequence

from bench.peer import tbgw
from bench.peer.report import Results, cell, med, ratio
from bench.peer.runs import LoadResult

BEGIN = "<!-- bench/peer: rows written by python -m bench.peer -->"
END = "<!-- end bench/peer -->"


def rows(r: Results) -> str:
    """The rows for bench/RESULTS.md (between BEGIN and END there)."""
    a = r.args
    la, lp = r.live["agent"], r.live["peer"]
    ga, gp = r.load["agent"], r.load["peer"]
    said: list[str] = []

    def command() -> str:  # the command in the first row, "same" below it (as above it)
        said.append("x")
        return f"`{r.meta['command']}`" if len(said) == 1 else "same"

    def row(what: str, xa: Sequence[float], xp: Sequence[float], fmt: str) -> str:
        return (f"| {what} | {cell(xa, fmt)} | {cell(xp, fmt)} | {ratio(xa, xp)} | "
                f"{command()} |")

    rows = [
        BEGIN,
        "| vs thingsboard-gateway 3.8.x | agent | thingsboard-gateway "
        f"{tbgw.VERSION} | ratio agent/peer | command |",
        "|---|---:|---:|---:|---|",
        row(f"bytes on the broker per live reading (readings messages, topic + payload; "
            f"{a['meters']} meters, 15-min behaviour)", [x.per_reading for x in la],
            [x.per_reading for x in lp], "{:.1f} B"),
        row("every uplink publication at 15-min polls, per reading (the agent's prepaid "
            "ledger journal and its health report every 60 s; the peer's statistics every "
            "60 s)", [x.at_interval(a["meters"], 900.0) for x in la],
            [x.at_interval(a["meters"], 900.0) for x in lp], "{:.1f} B"),
        row(f"CPU per reading, end to end ({a['meters']} meters, {a['load_poll']:g} s polls)",
            [x.cpu_ms_per_reading for x in ga], [x.cpu_ms_per_reading for x in gp],
            "{:.2f} ms"),
        row(f"readings delivered per second (polled: {a['meters'] / a['load_poll']:.0f}/s)",
            [x.readings / x.window_s for x in ga], [x.readings / x.window_s for x in gp],
            "{:.1f}"),
        row(f"start-up to the first reading on the broker ({a['live_poll']:g} s polls)",
            [x.startup_s for x in la], [x.startup_s for x in lp], "{:.2f} s"),
        row(f"broker back after {a['outage']:g} s down → first uplink message",
            [x.first_up_s for x in ga if x.first_up_s is not None],
            [x.first_up_s for x in gp if x.first_up_s is not None], "{:.2f} s"),
        f"| readings lost / duplicated over the outage, sum of {len(ga)} rounds (agent: "
        f"after dedupe by (gw, seq); peer: by (device, ts)) | {_loss(ga)} | {_loss(gp)} | — "
        f"| {command()} |",
    ]
    fa, fp = r.footprint.get("agent"), r.footprint.get("peer")
    if fa is not None and fp is not None:
        rows += [
            row("installed size (package + runtime dependencies)", [fa.total_bytes / 1e6],
                [fp.total_bytes / 1e6], "{:.1f} MB"),
            row("runtime dependencies", [float(len(fa.deps))], [float(len(fp.deps))],
                "{:.0f}"),
            row("import, wall time of a fresh interpreter", [1000 * med(fa.wall_s)],
                [1000 * med(fp.wall_s)], "{:.0f} ms"),
            row("RSS after import", [med(fa.rss_kb) / 1024], [med(fp.rss_kb) / 1024],
                "{:.1f} MB"),
        ]
    rows += ["", "Details, method and every run: `bench/results/peer.md`.", END]
    return "\n".join(rows)


def _loss(xs: Sequence[LoadResult]) -> str:
    return (f"{sum(x.loss['lost'] for x in xs)} lost, "
            f"{sum(x.loss['duplicates'] for x in xs)} duplicated")


def replace_block(text: str, block: str) -> str:
    """``text`` with what lies between BEGIN and END (inclusive) replaced by ``block``."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"no {BEGIN!r} ... {END!r} block")
    return text[:start] + block + text[end + len(END):]
