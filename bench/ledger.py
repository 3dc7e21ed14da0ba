"""Ledger benchmarks -> bench/results/ledger.md.

  python -m bench.ledger [--postings N] [--readings N] [--out FILE]

1. Ledger postings per second: one journal entry (entry + balance + outbox item) per
   transaction, as the agent commits them, with the store's synchronous=FULL, and in
   the same run with NORMAL and OFF as baselines (the ratio is the price of FULL).
2. The charge path per reading: Charging.on_reading (validate the delta, price it,
   post energy/duty, alerts, relay decision, one transaction), CPU and wall time, with
   synchronous=FULL; and the pure part alone (billing.charge) for comparison.
The store lives in a temp dir beside the repo (same file system as a real data_dir).
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from agent.buffer.journal import Journal
from agent.buffer.store import Store
from agent.drivers.reading import Reading
from agent.ledger import billing
from agent.uplink import forming
from tests.ledger.helpers import up_tariff
from tests.ledger.rig import UP_TABLE, Rig, unix

ROOT = Path(__file__).resolve().parents[1]
MODES = ("FULL", "NORMAL", "OFF")


def postings_per_s(mode: str, n: int) -> float:
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        store = Store(Path(tmp))
        store.conn.execute(f"PRAGMA synchronous = {mode}")
        journal = Journal(store, forming.entry_item)
        with store.tx():
            journal.ensure_account("A1", "dom")
        start = time.perf_counter()
        for i in range(n):
            with store.tx():
                journal.post("A1", 1_770_000_000 + i, "energy", -3, f"M1/2026-03/dom@1#{i}")
        elapsed = time.perf_counter() - start
        assert journal.account("A1").n == n
        store.close()
    return n / elapsed


def charge_path(n: int, per_tx: int = 1) -> tuple[float, float]:
    """(CPU µs, wall µs) per Charging.on_reading, synchronous=FULL, 15 s cadence;
    ``per_tx`` readings a transaction (the runtime commits a poll cycle's readings
    together: BATCH is a cycle of 50 meters)."""
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        rig = Rig(Path(tmp), now_s=unix(2026, 4, 1), tariff=UP_TABLE)
        rig.topup("A1", 10**9, "bench")  # a household in credit: the usual path
        register = 1_000_000
        rig.read("M1", register)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for start in range(0, n, per_tx):
            with rig.store.tx():
                for i in range(start, min(start + per_tx, n)):
                    rig.now += 15
                    register += 3 + i % 5  # about 1 kW
                    rig.ledger.charging.on_reading(Reading("M1", rig.now, {"import_wh": register}))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        rig.close()
    return cpu / n * 1e6, wall / n * 1e6


BATCH = 50


def pure_charge(n: int) -> float:
    """CPU µs per billing.charge call (no store)."""
    tariff = up_tariff()
    accrual = None
    t = unix(2026, 4, 1) + 19_800
    cpu0 = time.process_time()
    for i in range(n):
        result = billing.charge(tariff, accrual, 3 + i % 5, t, t + 15)
        accrual, t = result.accrual, t + 15
    return (time.process_time() - cpu0) / n * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postings", type=int, default=3000)
    parser.add_argument("--readings", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ledger.md")
    args = parser.parse_args(argv)
    samples = {m: [postings_per_s(m, args.postings) for _ in range(args.repeat)] for m in MODES}
    rates = {m: statistics.median(v) for m, v in samples.items()}
    runs = [charge_path(args.readings) for _ in range(args.repeat)]
    cpu_us = statistics.median(r[0] for r in runs)
    wall_us = statistics.median(r[1] for r in runs)
    batched = [charge_path(args.readings, BATCH) for _ in range(args.repeat)]
    batch_cpu_us = statistics.median(r[0] for r in batched)
    batch_wall_us = statistics.median(r[1] for r in batched)
    pure_us = statistics.median(pure_charge(args.readings * 10) for _ in range(args.repeat))
    lines = [
        "# Ledger benchmarks",
        "",
        f"Command: `python -m bench.ledger --postings {args.postings} --readings "
        f"{args.readings} --repeat {args.repeat}` (median of {args.repeat} runs each)",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared with other work), "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"{platform.system()} {platform.release()}; store in a temp dir under the repo.",
        "",
        "## Ledger postings per second (one entry + balance + outbox item per transaction)",
        "",
        "| synchronous | postings/s (median) | vs FULL | each run |",
        "|---|---:|---:|---|",
    ]
    for mode in MODES:
        runs_text = ", ".join(f"{v:,.0f}" for v in samples[mode])
        lines.append(f"| {mode}{' (the agent)' if mode == 'FULL' else ''} | "
                     f"{rates[mode]:,.0f} | {rates[mode] / rates['FULL']:.2f}x | {runs_text} |")
    lines += [
        "",
        f"FULL costs {rates['OFF'] / rates['FULL']:.1f}x against OFF and "
        f"{rates['NORMAL'] / rates['FULL']:.1f}x against NORMAL: the price of a commit that "
        "survives a power cut (DOMAIN invariant 7).",
        "",
        "## The charge path, per reading (Charging.on_reading, synchronous=FULL)",
        "",
        "| what | per reading |",
        "|---|---:|",
        f"| CPU, the whole path (validate, price, post, alerts, relay decision, commit) | "
        f"{cpu_us:,.0f} µs |",
        f"| wall time, the same (includes the fsync of the commit) | {wall_us:,.0f} µs "
        f"(runs: {', '.join(f'{r[1]:,.0f}' for r in runs)}) |",
        f"| CPU, {BATCH} readings a transaction (a poll cycle of {BATCH} meters, as the "
        f"runtime commits them) | {batch_cpu_us:,.0f} µs ({cpu_us / batch_cpu_us:.1f}x less) |",
        f"| wall time, {BATCH} readings a transaction (one fsync a cycle) | "
        f"{batch_wall_us:,.0f} µs ({wall_us / batch_wall_us:.1f}x less; runs: "
        f"{', '.join(f'{r[1]:,.0f}' for r in batched)}) |",
        f"| CPU, the pure pricing alone (billing.charge) | {pure_us:,.1f} µs |",
        "",
        f"At a 15 s poll, the single writer keeps up with about {15e6 / wall_us:,.0f} "
        f"meters on this machine with a transaction a reading, {15e6 / batch_wall_us:,.0f} "
        f"with a cycle's readings in one (wall time, fsync included); the SQLite work, "
        f"not the pricing ({pure_us / cpu_us:.0%} of the CPU), dominates. fsync latency on "
        "this shared virtual machine varies several-fold from one invocation to the next "
        "(FULL measured 400 to 2,000 postings/s on different invocations the same day); "
        "on a Raspberry Pi's SD card expect it higher still. Re-measure on the target board.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
