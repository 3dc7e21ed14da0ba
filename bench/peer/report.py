"""bench/results/peer.md from the runs' results: every figure is written by this code,
none by hand (the set-up text and the notes: text.py; the RESULTS.md rows: summary.py).
A figure is "median [lowest–highest]" over the rounds; ratio = the agent's median / the
peer's median (below 1: the agent spends less)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.peer import agent_side, tbgw
from bench.peer.footprint import Footprint
from bench.peer.runs import LiveResult, LoadResult, framing_ok


@dataclass
class Results:
    args: dict[str, Any]
    meta: dict[str, str]
    live: dict[str, list[LiveResult]] = field(default_factory=lambda: {"agent": [], "peer": []})
    load: dict[str, list[LoadResult]] = field(default_factory=lambda: {"agent": [], "peer": []})
    footprint: dict[str, Footprint] = field(default_factory=dict)
    check: dict[str, LiveResult] = field(default_factory=dict)  # one cycle, longer interval


def med(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def cell(xs: Sequence[float], fmt: str = "{:.1f}") -> str:
    """"median [lowest–highest]"; just the value when there is one run. A unit after
    the format ("{:.1f} B") is written once, at the end."""
    if not xs:
        return "—"
    number, _, unit = fmt.partition("} ")
    number += "}" if unit else ""
    unit = f" {unit}" if unit else ""
    if len(xs) == 1:
        return number.format(xs[0]) + unit
    return (f"{number.format(med(xs))} [{number.format(min(xs))}–"
            f"{number.format(max(xs))}]{unit}")


def ratio(a: Sequence[float], p: Sequence[float]) -> str:
    ma, mp = med(a), med(p)
    if not a or not p or mp == 0:
        return "—"
    r = ma / mp
    return f"**{r:.2f}**" + (f" (1/{1 / r:.1f})" if 0 < r < 1 else f" ({r:.1f}×)")


def _row(label: str, a: Sequence[float], p: Sequence[float], fmt: str = "{:.1f}",
         with_ratio: bool = True) -> str:
    return f"| {label} | {cell(a, fmt)} | {cell(p, fmt)} | {ratio(a, p) if with_ratio else '—'} |"


HEAD = ["| what | agent | thingsboard-gateway | ratio agent/peer |", "|---|---:|---:|---:|"]


def _live(r: Results) -> list[str]:
    a, p = r.live["agent"], r.live["peer"]
    args = r.args

    def f(fn: Callable[[LiveResult], float]) -> tuple[list[float], list[float]]:
        return [fn(x) for x in a], [fn(x) for x in p]

    cycles, meters = args["cycles"], args["meters"]
    ok = {side: all(framing_ok(x, meters, cycles) for x in xs) for side, xs in r.live.items()}
    lines = [
        "## 1. Bytes on the broker per live reading (15-minute behaviour)",
        "",
        f"{meters} SDM120 meters on {args['buses']} buses at {args['baud']:,} baud, "
        f"polled every {args['live_poll']:g} s; {cycles} whole poll cycles a run, from half "
        "a cycle after the side's first reading message. Counted: the topic and payload "
        "bytes of every PUBLISH of the side's reading messages as the broker delivered "
        "them to a subscriber of `#` (agent: `gw/{gw}/up/readings`, CBOR; peer: "
        "`v1/gateway/telemetry`, JSON), divided by the readings in them. A reading is one "
        "poll of one meter with all 7 quantities an SDM120 reading of the agent carries "
        "(import_wh, export_wh, p_w, v_dv, i_ma, f_chz, pf_milli); the peer reads the "
        "same 7 registers. Framing: the MQTT PUBLISH header (fixed header, topic length, "
        "packet id; +1 property-length byte for the peer's MQTT 5), estimated from the "
        "sizes.",
        "",
        *HEAD,
        _row("**reading messages: topic + payload, B/reading**",
             *f(lambda x: x.per_reading)),
        _row("with the MQTT framing, B/reading",
             *f(lambda x: (x.payload_topic_bytes + x.framing_bytes) / max(1, x.readings))),
        _row("readings per message", *f(lambda x: x.readings / max(1, x.messages)),
             with_ratio=False),
        _row("every uplink publication sent because of readings, B/reading (the agent's "
             "includes its prepaid ledger journal, which the peer has no counterpart of)",
             *f(lambda x: x.per_reading_driven)),
        _row("clock-driven reports, B each (agent: its health report on `state`, every "
             f"{agent_side.PERIOD_S:g} s; peer: its statistics on `{tbgw.STATS_TOPIC}`, "
             f"every {tbgw.STATS_PERIOD_S:g} s; the mean after the first of the run)",
             *f(lambda x: x.steady_report()), fmt="{:,.0f}"),
        _row("**every uplink publication at 15-minute polls, B/reading** (the "
             "reading-driven bytes per reading, plus the clock-driven reports of 15 "
             f"minutes shared by its {meters} readings)",
             *f(lambda x: x.at_interval(meters, 900.0))),
        _row("readings in the window (should be meters × cycles = "
             f"{meters * cycles:,})", *f(lambda x: float(x.readings)), fmt="{:.0f}",
             with_ratio=False),
        f"| framing check: no meter twice in a message, every meter once a cycle | "
        f"{'yes' if ok['agent'] else '**no**'} | {'yes' if ok['peer'] else '**no**'} | — |",
    ]
    ca, cp = r.check.get("agent"), r.check.get("peer")
    if ca is not None and cp is not None:
        cok = {s: framing_ok(x, meters, 1) for s, x in r.check.items()}
        lines += [
            _row(f"cross-check, one cycle at {args['check_poll']:g} s polls: B/reading",
                 [ca.per_reading], [cp.per_reading]),
            f"| cross-check framing | {'yes' if cok['agent'] else '**no**'} | "
            f"{'yes' if cok['peer'] else '**no**'} | — |",
        ]
    lines += [
        "",
        "Every uplink publication in the window, by topic, bytes per reading at "
        f"{args['live_poll']:g} s polls (median over the rounds; the clock-driven topics "
        "cost more per reading at longer intervals, as above):",
        "",
        "| side | topic | B/reading |",
        "|---|---|---:|",
    ]
    for side, xs in r.live.items():
        topics = sorted({t for x in xs for t in x.by_topic})
        for t in topics:
            per = [x.by_topic.get(t, 0) / max(1, x.readings) for x in xs]
            lines.append(f"| {side} | `{t}` | {med(per):.1f} |")
    return lines


def _load(r: Results) -> list[str]:
    a, p = r.load["agent"], r.load["peer"]
    args = r.args
    expected = args["meters"] / args["load_poll"]

    def f(fn: Callable[[LoadResult], float]) -> tuple[list[float], list[float]]:
        return [fn(x) for x in a], [fn(x) for x in p]

    return [
        f"## 2. CPU per reading, end to end ({args['meters']} meters, polled every "
        f"{args['load_poll']:g} s)",
        "",
        f"The same board at {args['load_poll']:g} s polls. After {args['warmup']:g} s from "
        "the first reading message: user + system CPU time of the side's process (all its "
        "threads, and any child it started: /proc/<pid>/stat utime + stime + cutime + "
        f"cstime, plus live descendants) over {args['window']:g} s, divided by the readings "
        "that arrived on the broker in the same window. The simulated meters and the "
        "broker are not counted.",
        "",
        *HEAD,
        _row("**CPU per reading, ms**", *f(lambda x: x.cpu_ms_per_reading), fmt="{:.2f}"),
        _row(f"readings delivered per second (polled: {expected:.1f}/s)",
             *f(lambda x: x.readings / x.window_s), with_ratio=False),
        _row("CPU used, % of one core", *f(lambda x: 100 * x.cpu_s / x.window_s)),
        _row("RSS at the end of the window, MB", *f(lambda x: x.rss_kb / 1024)),
    ]


def _startup(r: Results) -> list[str]:
    args = r.args
    la, lp = r.live["agent"], r.live["peer"]
    ga, gp = r.load["agent"], r.load["peer"]
    return [
        "## 3. Start-up to the first reading on the broker",
        "",
        "From just before the side's process is started (fork + exec) to the arrival of "
        "its first reading message on the broker. Both with the same board and poll "
        "interval in each row.",
        "",
        *HEAD,
        _row(f"**{args['meters']} meters, {args['live_poll']:g} s polls, s**",
             [x.startup_s for x in la], [x.startup_s for x in lp], fmt="{:.2f}"),
        _row(f"{args['meters']} meters, {args['load_poll']:g} s polls, s",
             [x.startup_s for x in ga], [x.startup_s for x in gp], fmt="{:.2f}"),
    ]


def _reconnect(r: Results) -> list[str]:
    args = r.args
    a, p = r.load["agent"], r.load["peer"]

    def f(fn: Callable[[LoadResult], float | None]) -> tuple[list[float], list[float]]:
        return ([v for x in a if (v := fn(x)) is not None],
                [v for x in p if (v := fn(x)) is not None])

    lines = [
        "## 4. Reconnect after the broker was down",
        "",
        f"At the end of each CPU run: the broker is stopped for {args['outage']:g} s while "
        "the side keeps polling, then started again on the same port (with its "
        "persistence file: sessions survive, as on a production broker). Time from the "
        "broker accepting connections again (the earlier of its port answering and the "
        "counter's own CONNACK; the counter retries every 20 ms, the start polls every "
        "50 ms) to the side's first uplink message, and to its first reading message. "
        f"Then {args['settle']:g} s to catch up, and every uplink message of the run is "
        "checked: the agent's deduplicated by (gw, seq) first; readings by (meter, ts).",
        "",
        *HEAD,
        _row("**broker up → first uplink message, s**", *f(lambda x: x.first_up_s),
             fmt="{:.2f}"),
        _row("broker up → first reading message, s", *f(lambda x: x.first_reading_s),
             fmt="{:.2f}"),
        _row("the counter's own reconnect, s (0: first to connect)",
             *f(lambda x: max(0.0, x.counter_back_s)), fmt="{:.2f}", with_ratio=False),
        "",
        "What arrived, per run (redelivered: the same (gw, seq) again; seq gaps: seqs "
        "missing between the first and last; duplicates: a (meter, ts) twice after "
        "dedupe; lost: polls missing from a meter's series; taken while down: readings "
        "polled during the outage that arrived):",
        "",
        "| side | round | redelivered | seq gaps | duplicate readings | lost readings | "
        "taken while down, arrived |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for side, xs in r.load.items():
        for i, x in enumerate(xs, start=1):
            seq = "—" if side == "peer" else str(x.loss["seq_gaps"])
            red = "—" if side == "peer" else str(x.loss["redelivered"])
            lines.append(f"| {side} | {i} | {red} | {seq} | {x.loss['duplicates']} | "
                         f"{x.loss['lost']} | {x.loss['during_outage']} |")
    return lines


def _footprint(r: Results) -> list[str]:
    fa, fp = r.footprint.get("agent"), r.footprint.get("peer")
    if fa is None or fp is None:
        return ["## 5. Footprint", "", "Not measured in this run."]
    mb = "{:.1f}"

    def one(fn: Callable[[Footprint], float]) -> tuple[list[float], list[float]]:
        return [fn(fa)], [fn(fp)]

    return [
        "## 5. Footprint",
        "",
        "Agent: a fresh venv with only `pip install .` (no extras). Peer: its venv as the "
        "benchmark runs it (the gateway and what its Modbus connector needs). Both less a "
        "bare venv (`python -m venv`: pip, setuptools); disk as du counts it (allocated "
        "blocks). Imports: the agent `agent.runtime`; the peer its entry module "
        f"`{tbgw.MAIN_MODULE}` and the Modbus connector it loads for this config "
        f"(`{tbgw.MODBUS_MODULE}`). Import and RSS: a fresh `python -I` each time, "
        f"median [range] of {len(fa.wall_s)}.",
        "",
        *HEAD,
        _row("**installed size, MB** (runtime dependencies + package)",
             *one(lambda x: x.total_bytes / 1e6), fmt=mb),
        _row("the package itself, MB", *one(lambda x: x.package_bytes / 1e6), fmt="{:.2f}"),
        _row("its runtime dependencies, MB", *one(lambda x: x.deps_bytes / 1e6), fmt=mb),
        _row("**runtime dependencies (distributions)**", *one(lambda x: float(len(x.deps))),
             fmt="{:.0f}"),
        _row("**import, wall time of `python -I -c 'import …'`, ms**",
             [1000 * t for t in fa.wall_s], [1000 * t for t in fp.wall_s], fmt="{:.0f}"),
        _row("the imports alone (inside the process), ms", [1000 * t for t in fa.import_s],
             [1000 * t for t in fp.import_s], fmt="{:.0f}"),
        _row("**RSS after the imports, MB**", [k / 1024 for k in fa.rss_kb],
             [k / 1024 for k in fp.rss_kb]),
        "",
        "Baseline, same run: `python -I -c pass` "
        f"{cell([1000 * t for t in fa.bare_wall_s], '{:.0f}')} ms, RSS "
        f"{fa.bare_rss_kb / 1024:.1f} MB.",
        "",
        "The agent's package by folder: " + ", ".join(
            f"`{k}` {v / 1e6:.2f} MB" for k, v in sorted(fa.package_parts.items(),
                                                       key=lambda kv: -kv[1])[:3])
        + (" (the wheel ships `sim/` beside `agent/`)." if "sim" in fa.package_parts
           else " (the wheel ships `agent/` alone: the simulator stays in the source tree)."),
        "",
        f"Agent's runtime dependencies: {', '.join(fa.deps)}.",
        "",
        f"Peer's runtime dependencies: {', '.join(fp.deps)}.",
    ]


def _runs(r: Results) -> list[str]:
    lines = ["## Every run", "",
             "| round | side | live: B/reading | live: readings | start-up s | CPU s | "
             "window readings | ms/reading | broker up → first msg s |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for side in ("agent", "peer"):
        for i, (lv, ld) in enumerate(zip(r.live[side], r.load[side], strict=False), start=1):
            up = "—" if ld.first_up_s is None else f"{ld.first_up_s:.2f}"
            lines.append(f"| {i} | {side} | {lv.per_reading:.1f} | {lv.readings} | "
                         f"{lv.startup_s:.2f} | {ld.cpu_s:.2f} | {ld.readings} | "
                         f"{ld.cpu_ms_per_reading:.2f} | {up} |")
    return lines


def from_raw(d: dict[str, Any]) -> Results:
    """The Results of a run from the raw JSON that run wrote (var/peer/last-run.json)."""
    r = Results(args=d["args"], meta=d["meta"])
    r.live = {k: [LiveResult(**x) for x in v] for k, v in d["live"].items()}
    r.load = {k: [LoadResult(**x) for x in v] for k, v in d["load"].items()}
    r.check = {k: LiveResult(**v) for k, v in d.get("check", {}).items()}
    r.footprint = {k: Footprint(**v) for k, v in d.get("footprint", {}).items()}
    return r


def render(r: Results, method: str, notes: list[str]) -> str:
    """peer.md: the head, ``method`` (text.setup), the tables, ``notes`` (text.notes)."""
    meta = r.meta
    head = [
        "# The agent beside thingsboard-gateway (issue 14, item 1)",
        "",
        f"Command: `{meta['command']}` ({meta['duration']}; {r.args['rounds']} "
        f"round{'s' if r.args['rounds'] != 1 else ''}, interleaved: agent, peer, agent, "
        "peer … for each kind of run).",
        f"Machine: {meta['machine']}. Versions: {meta['versions']}.",
        *([f"This page was {meta['rendered']}."] if meta.get("rendered") else []),
        "",
        "Each figure is the median over the rounds with [lowest–highest]; ratio = "
        "agent / peer (below 1: the agent spends less).",
        "",
        method,
        "",
    ]
    body = [*_live(r), "", *_load(r), "", *_startup(r), "", *_reconnect(r), "",
            *_footprint(r), "", *notes, "", *_runs(r), ""]
    return "\n".join(head + body)
