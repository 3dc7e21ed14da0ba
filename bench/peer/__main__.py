"""The agent and thingsboard-gateway side by side, in one run (issue 14, item 1).

  python -m bench.peer [--rounds 3] [--meters 250] [--quick] [--out FILE] [--keep]

Set-up (needs PyPI once; cached in var/peer/): the peer's venv (bench/peer/tbgw.py) and a
venv with only the agent's wheel for the footprint (bench/peer/footprint.py). Then one
private mosquitto on a free port, a counter subscribed to ``#`` and a stub answering the
peer's session-limits request, shared by every run; per round, interleaved:
  live run, agent; live run, peer      -> bytes per live reading, start-up
  load run, agent; load run, peer      -> CPU per reading, reconnect, loss
(bench/peer/runs.py), and the footprint once at the end. Writes ``--out``
(bench/results/peer.md) and the raw figures to var/peer/last-run.json (``--render-only``
writes the markdown again from them; a quick run's go to var/peer/last-quick.json).
``--quick``: a smoke run of about two minutes (one round, 20 meters, short windows),
written to var/peer/peer-quick.md; a full run also rewrites its rows in bench/RESULTS.md.
``BENCH_AGENT_LOG`` / ``BENCH_TB_LOG`` set the sides' log levels (default WARNING);
``--keep`` keeps every run's directory (logs, configs) under var/peer/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.peer import footprint, report, runs, summary, tbgw, text
from bench.peer.agent_side import PREFIX, Board
from bench.peer.measure import BrokerCounter
from sim.broker import Mosquitto

ROOT = Path(__file__).resolve().parents[2]
VAR = ROOT / "var" / "peer"
QUICK = {"rounds": 1, "meters": 20, "live_poll": 8.0, "cycles": 1, "warmup": 4.0,
         "window": 8.0, "outage": 5.0, "settle": 12.0, "repeat": 2, "check_poll": 0.0}


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.peer", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--meters", type=int, default=250)
    ap.add_argument("--buses", type=int, default=2)
    ap.add_argument("--baud", type=int, default=115200)
    ap.add_argument("--live-poll", type=float, default=30.0,
                    help="poll interval of the live runs, s (stands for 15 minutes)")
    ap.add_argument("--cycles", type=int, default=2, help="whole poll cycles a live run")
    ap.add_argument("--check-poll", type=float, default=90.0,
                    help="one more live run per side, one cycle at this interval, to check "
                         "that the live figure does not depend on it (0: none)")
    ap.add_argument("--load-poll", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=20.0)
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--outage", type=float, default=20.0)
    ap.add_argument("--settle", type=float, default=40.0)
    ap.add_argument("--repeat", type=int, default=7, help="import-time samples")
    ap.add_argument("--agent-live", choices=("table", "series"), default="table",
                    help="the agent's [mqtt] live_readings in every run")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-footprint", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "peer.md")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md",
                    help="rewrite the bench/peer rows of this file (not with --quick)")
    ap.add_argument("--render-only", type=Path, metavar="JSON",
                    help="run nothing: write the markdown again from a run's raw figures "
                         "(var/peer/last-run.json)")
    args = ap.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) == ap.get_default(key):
                setattr(args, key, value)
        if args.out == ap.get_default("out"):  # a smoke run never replaces the figures
            args.out = VAR / "peer-quick.md"
    return args


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _versions(before: dict[str, str]) -> str:
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, cwd=ROOT, check=False).stdout.strip()
    mosq = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True,
                          check=False).stdout.splitlines()
    mosquitto = mosq[0].replace("mosquitto version ", "") if mosq else "?"
    peer = ", ".join(f"{n} {before[n]}" for n in ("thingsboard-gateway", "tb-mqtt-client",
                                                  "tb-paho-mqtt-client", "pymodbus",
                                                  "pyserial-asyncio") if n in before)
    return (f"meter-agent at {git or '?'}, Python {platform.python_version()}, "
            f"mosquitto {mosquitto}; peer: {peer}")


def write(args: argparse.Namespace, results: report.Results, inputs: dict[str, Any]) -> None:
    """The markdown (``--out``, and the rows of ``--results`` unless quick)."""
    setup = text.setup(results, inputs["unchanged"], inputs["stub_answers"],
                       inputs["resent"], inputs["failures"])
    args.out.write_text(report.render(results, setup, text.notes(results)))
    if not args.quick and args.results.exists():
        old = args.results.read_text()
        try:
            args.results.write_text(summary.replace_block(old, summary.rows(results)))
        except ValueError as exc:
            _say(f"{args.results}: not updated: {exc}")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.render_only:
        raw = json.loads(args.render_only.read_text())
        results = report.from_raw(raw)
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=ROOT, check=False).stdout.strip()
        results.meta["rendered"] = (f"written again from that run's raw figures by the "
                                    f"report code at {git or '?'} (`--render-only`)")
        write(args, results, raw["method_inputs"])
        _say(f"wrote {args.out} from {args.render_only}")
        return 0
    started = time.monotonic()
    VAR.mkdir(parents=True, exist_ok=True)
    _say(f"peer venv (thingsboard-gateway {tbgw.VERSION}) ...")
    tbgw.ensure_venv(VAR / "install.log")
    before = tbgw.installed(tbgw.python())
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=VAR))
    broker = Mosquitto(scratch / "broker")
    broker.start()
    counter = BrokerCounter(broker.port)
    stub = tbgw.ThingsBoardStub(broker.port)
    results = report.Results(args={k: v for k, v in vars(args).items()
                                   if k not in ("out", "results")},
                             meta={})
    failures: list[str] = []
    try:
        counter.start()
        stub.start()
        # The head-end's retained state, as the agent finds it in production (uplink_rss).
        counter.publish_retained(f"{PREFIX}/headend/state", json.dumps(
            {"online": True, "payments": True}).encode())
        env = runs.Env(broker, counter, scratch)
        live = Board(args.meters, args.buses, args.baud, args.live_poll, args.agent_live)
        load = Board(args.meters, args.buses, args.baud, args.load_poll, args.agent_live)
        for rnd in range(1, args.rounds + 1):
            for side in (runs.AGENT, runs.PEER):
                _say(f"round {rnd}: live run, {side.name}")
                try:
                    results.live[side.name].append(
                        runs.live_run(env, side, live, args.cycles, args.keep))
                except RuntimeError as exc:
                    failures.append(f"round {rnd}, live, {side.name}: {exc}")
                    _say(failures[-1])
            for side in (runs.AGENT, runs.PEER):
                _say(f"round {rnd}: load run, {side.name}")
                try:
                    results.load[side.name].append(runs.load_run(
                        env, side, load, args.warmup, args.window, args.outage, args.settle,
                        args.keep))
                except RuntimeError as exc:
                    failures.append(f"round {rnd}, load, {side.name}: {exc}")
                    _say(failures[-1])
        if args.check_poll:
            check = Board(args.meters, args.buses, args.baud, args.check_poll,
                          args.agent_live)
            for side in (runs.AGENT, runs.PEER):
                _say(f"cross-check: live run at {args.check_poll:g} s polls, {side.name}")
                try:
                    results.check[side.name] = runs.live_run(env, side, check, 1, args.keep)
                except RuntimeError as exc:
                    failures.append(f"cross-check, {side.name}: {exc}")
                    _say(failures[-1])
        if not args.no_footprint:
            _say("footprint ...")
            results.footprint = footprint.measure(scratch, args.repeat, VAR / "install.log")
    finally:
        stub.stop()
        counter.stop()
        broker.stop()
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    after = tbgw.installed(tbgw.python())
    took = time.monotonic() - started
    results.meta = {
        "command": ("python -m bench.peer " + shlex.join(
            sys.argv[1:] if argv is None else argv)).strip(),
        "duration": f"the run took {took / 60:.1f} min",
        "machine": f"{platform.machine()}, {_cpus()} CPUs (a shared virtual machine), "
                   f"Linux {platform.release()}",
        "versions": _versions(before),
    }
    inputs = {"unchanged": before == after, "stub_answers": stub.answered,
              "resent": counter.resent_to_me, "failures": failures}
    # A smoke run keeps its figures apart: last-run.json stays the full run's.
    raw = VAR / ("last-quick.json" if args.quick else "last-run.json")
    raw.write_text(json.dumps(_raw(results) | {"method_inputs": inputs}, indent=1,
                              default=str))

    write(args, results, inputs)
    _say(f"wrote {args.out} ({took / 60:.1f} min)")
    return 1 if failures else 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def _raw(r: report.Results) -> dict[str, Any]:
    return {"args": r.args, "meta": r.meta,
            "live": {k: [dataclasses.asdict(x) for x in v] for k, v in r.live.items()},
            "load": {k: [dataclasses.asdict(x) for x in v] for k, v in r.load.items()},
            "check": {k: dataclasses.asdict(v) for k, v in r.check.items()},
            "footprint": {k: dataclasses.asdict(v) for k, v in r.footprint.items()}}


if __name__ == "__main__":
    sys.exit(main())
