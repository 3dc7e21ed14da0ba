"""Polls per second against the wire limit (issue 3): the real BusScheduler polling
simulated Eastron SDM120 meters on a pty, at 9600 and 19200 baud, for 1, 8 and 32 meters.

    python -m bench.wire_limit [--seconds 10] [--warmup 3] [--turnaround-ms 5] [--out FILE]

The limit is computed, not measured: one SDM120 poll is the register map's
reads (``plan_reads``), and each read costs on the wire
    t3.5 (the master's silent interval before the request)
  + the request's bytes + the response's bytes (11 bits a character)
  + the simulator's turnaround.
limit = 1 / (sum over the poll's reads). The serial number is read once per
meter at the start and then every SERIAL_REFRESH_READS readings; the
measurement window starts after ``--warmup`` seconds (every meter has read its
serial by then: it opens ``--warmup`` seconds after the last meter's first
reading) and is shorter than 96 polls of any meter, so the window holds no
serial reads and the limit has none either.

measured = readings posted by the scheduler in the window, counted from the
first to the last of them over the time between those two.
ratio = measured / limit (goal: >= 0.95). Every meter is always due
(``poll_interval_s`` = 1 ms), so the bus never idles: this is the wire's
throughput, not a polling schedule.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

from agent.config import Config, load_config
from agent.drivers.bus import BusEvent, BusScheduler
from agent.drivers.modbus.codec import Request, response_length
from agent.drivers.modbus.maps import load_map, plan_reads
from agent.drivers.transport import character_time_s, silent_interval_s
from sim.meters import serving

MODEL = "eastron-sdm120"
CONFIG = """
[gateway]
id = "gw-bench"
data_dir = "{tmp}/data"
timezone = "Asia/Kolkata"
[mqtt]
host = "127.0.0.1"
[security]
command_key_file = "{tmp}/cmd.key"
token_key_file = "{tmp}/token.key"
[[bus]]
name = "bench"
port = "{tmp}/tty/bench"
baudrate = {baud}
protocol = "modbus"
poll_interval_s = 0.001
timeout_s = 0.2
[tariff.t]
fixed_per_day = 0
slabs = [ {{ rate = 1 }} ]
"""
METER = """
[[meter]]
id = "M{n}"
bus = "bench"
address = {n}
model = "{model}"
account = "A{n}"
[[account]]
id = "A{n}"
tariff = "t"
"""


def poll_wire_s(baud: int, turnaround_s: float) -> tuple[float, int]:
    """(seconds one poll holds the wire, bytes it moves)."""
    char_s = character_time_s(baud)
    total_s, total_bytes = 0.0, 0
    for block in plan_reads(load_map(MODEL)):
        request = Request(1, block.function, block.address, block.count)
        n_bytes = len(request.to_bytes()) + response_length(request)
        total_s += silent_interval_s(baud) + n_bytes * char_s + turnaround_s
        total_bytes += n_bytes
    return total_s, total_bytes


def board(tmp: Path, baud: int, meters: int) -> Config:
    text = CONFIG.format(tmp=tmp, baud=baud) + "".join(
        METER.format(n=n, model=MODEL) for n in range(1, meters + 1))
    path = tmp / "bench.toml"
    path.write_text(text)
    return load_config(path)


def measure(baud: int, meters: int, *, seconds: float, warmup_s: float,
            turnaround_ms: float) -> float:
    """Readings per second the real scheduler gets from the simulator in the window."""
    with tempfile.TemporaryDirectory() as tmp:
        config = board(Path(tmp), baud, meters)
        stamps: list[tuple[float, str]] = []
        lock = threading.Lock()

        def post(event: BusEvent) -> None:
            if event.kind == "reading":
                with lock:
                    stamps.append((time.monotonic(), event.meter))

        with serving(config, speed=1.0, seed=1, turnaround_ms=turnaround_ms):
            sched = BusScheduler(config.buses[0], list(config.meters), post, discover=False)
            sched.start()
            try:
                # The window opens once every meter has read its serial (its first
                # reading) and the warm-up has passed.
                while True:
                    time.sleep(0.1)
                    with lock:
                        first = {m: t for t, m in reversed(stamps)}
                    if len(first) == meters:
                        break
                opens = max(first.values()) + warmup_s
                time.sleep(max(0.0, opens + seconds - time.monotonic()) + 0.2)
            finally:
                sched.stop()
                sched.join(10)
        window = [t for t, _ in stamps if opens <= t < opens + seconds]
        # Readings between the first and the last in the window, over the time between
        # them: no +-1 reading of quantization at the window's edges.
        return (len(window) - 1) / (window[-1] - window[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wire_limit",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--turnaround-ms", type=float, default=5.0)
    parser.add_argument("--bauds", default="9600,19200")
    parser.add_argument("--meters", default="1,8,32")
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    args = parser.parse_args(argv)
    rows = ["| baud | meters | bytes/poll | wire s/poll | limit polls/s | measured polls/s "
            "| ratio |", "|---:|---:|---:|---:|---:|---:|---:|"]
    worst = float("inf")
    for baud in (int(b) for b in args.bauds.split(",")):
        for meters in (int(m) for m in args.meters.split(",")):
            wire_s, n_bytes = poll_wire_s(baud, args.turnaround_ms / 1000)
            limit = 1 / wire_s
            got = measure(baud, meters, seconds=args.seconds, warmup_s=args.warmup,
                          turnaround_ms=args.turnaround_ms)
            worst = min(worst, got / limit)
            rows.append(f"| {baud} | {meters} | {n_bytes} | {wire_s * 1000:.1f} ms | "
                        f"{limit:.2f} | {got:.2f} | {got / limit:.3f} |")
            print(rows[-1], flush=True)
    table = "\n".join(rows)
    print(table)
    print(f"worst ratio {worst:.3f} (goal >= 0.95)")
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
