"""``python -m sim.neighbourhood``: run one seed, print the report, exit 1 on a violation."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sim.neighbourhood import Options, run
from sim.neighbourhood.plant import BUGS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sim.neighbourhood",
        description="A month of a neighbourhood through the real agent runtime, with faults; "
                    "checks every DOMAIN.md invariant (docs/simulation.md).")
    parser.add_argument("--meters", type=int, default=200)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--report", type=Path, metavar="DIR",
                        help="write report.json, report.txt and household.png here")
    parser.add_argument("--plant-bug", default="", choices=("",) + BUGS,
                        help="monkeypatch a bug in on purpose: the run should fail")
    parser.add_argument("--mode", default="direct", choices=("direct", "codec"),
                        help="codec: the real Modbus client and CRCs (and IEC 62056-21 "
                             "driver) over an in-memory line; DLMS buses are direct")
    parser.add_argument("--protocols", default="modbus", choices=("modbus", "mixed"),
                        help="mixed: each gateway's meters on a Modbus, an IEC 62056-21 and "
                             "a DLMS bus")
    parser.add_argument("--poll-min", type=int, default=30, help="poll interval, minutes")
    parser.add_argument("--gateways", type=int, default=0,
                        help="concentrators (default: one per 50 meters)")
    parser.add_argument("--jobs", type=int, default=0, help="processes (default: up to 2)")
    args = parser.parse_args(argv)
    if args.meters < 1 or args.days < 1 or args.poll_min < 1:
        parser.error("--meters, --days and --poll-min must be >= 1")
    from sim.neighbourhood import report
    from sim.neighbourhood.plot import render

    options = Options(seed=args.seed, meters=args.meters, days=args.days,
                      poll_min=args.poll_min, mode=args.mode, plant=args.plant_bug,
                      gateways=args.gateways, jobs=args.jobs, protocols=args.protocols)
    result = run(options)
    data = report.build(result)
    text = report.to_text(data, result)
    sys.stdout.write(text)
    if args.report is not None:
        args.report.mkdir(parents=True, exist_ok=True)
        (args.report / "report.json").write_text(report.to_json(data))
        (args.report / "report.txt").write_text(text)
        best = min(result.gateways, key=lambda g: (-int(g.plot["opens"]), g.id))
        (args.report / "household.png").write_bytes(
            render(best.plot, result.plan.emergency_credit))
    return 1 if data["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
