"""Polls per second against the wire limit (issues 3 and 12): the real BusScheduler
polling simulated meters on a pty, for every protocol, at 9600 and 19200 baud.

    python -m bench.wire_limit [--seconds 10] [--warmup 1] [--turnaround-ms 5]
                               [--protocols modbus,iec62056-21,dlms] [--out FILE]

Modbus RTU (Eastron SDM120): the limit is computed from the codec, not measured:
one poll is the register map's reads (``plan_reads``), and each read costs on the
wire t3.5 (the master's silent interval before the request) + the request's bytes +
the response's bytes (11 bits a character) + the simulator's turnaround;
limit = 1 / (sum over the poll's reads). The serial number is read once per meter at
the start and then every SERIAL_REFRESH_READS readings; the window opens ``--warmup``
seconds after the last meter's first reading and is shorter than 96 polls of any
meter, so it holds no serial reads and the limit has none either.

IEC 62056-21 (mode C) and DLMS/COSEM (HDLC, IS 15959): a session's frames vary (the
IEC sign-on and identification at 300 baud, the ACK, then the data block at the
bus's speed; DLMS I-frames, RR for segments, the association's frames), so the limit
is computed from the traffic itself: every byte the agent wrote or read in the
window, at the speed the port had when it moved (11 bits a character, as the
simulator paces it), plus one turnaround for every frame the agent wrote (each gets
exactly one answer); no silent interval (neither protocol needs one). limit =
readings in the window / that wire time, so the ratio is the share of the window the
line was carrying frames: what is left is the agent's own time (pacing, parsing,
scheduling) and any wait it keeps that the protocol does not ask for.

measured = readings posted by the scheduler in the window, counted from the
first to the last of them over the time between those two. The scheduler posts each
reading as it is taken here (``READINGS_HOLD_S`` = 0: the agent's bus holds a poll
cycle's readings up to 0.25 s to post them together, which would stamp a burst with one
time and shorten the span between the first and the last).
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

from agent.config import BusConfig, Config, load_config
from agent.drivers import bus as bus_module
from agent.drivers.bus import BusScheduler, default_transport
from agent.drivers.events import BusEvent, ReadingTaken
from agent.drivers.modbus.codec import Request, response_length
from agent.drivers.modbus.maps import load_map, plan_reads
from agent.drivers.transport import Transport, character_time_s, silent_interval_s
from sim.meters import serving

MODEL = "eastron-sdm120"
MODELS = {"modbus": MODEL, "iec62056-21": "iec62056-21", "dlms": "dlms-is15959"}
# DLMS meters are read as the IS 15959 meter reader (0x20, LLS); the public client
# (0x10) may read only the serial number.
METER_EXTRA = {"dlms": "client = 32\n"}
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
protocol = "{protocol}"
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
{extra}[[account]]
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


def board(tmp: Path, baud: int, meters: int, protocol: str = "modbus") -> Config:
    text = CONFIG.format(tmp=tmp, baud=baud, protocol=protocol) + "".join(
        METER.format(n=n, model=MODELS[protocol], extra=METER_EXTRA.get(protocol, ""))
        for n in range(1, meters + 1))
    path = tmp / "bench.toml"
    path.write_text(text)
    return load_config(path)


class CountingTransport:
    """The bus's real transport, counting what crosses it: (monotonic s, direction,
    bytes, baud rate in force) for every write and every read that returned bytes."""

    def __init__(self, inner: Transport, log: list[tuple[float, str, int, int]]) -> None:
        self._inner = inner
        self.log = log

    @property
    def baudrate(self) -> int:
        return self._inner.baudrate

    def set_baudrate(self, baudrate: int) -> None:
        self._inner.set_baudrate(baudrate)  # type: ignore[attr-defined]

    def write(self, data: bytes) -> None:
        self._inner.write(data)
        self.log.append((time.monotonic(), "w", len(data), self._inner.baudrate))

    def read(self, max_bytes: int, timeout_s: float) -> bytes:
        data = self._inner.read(max_bytes, timeout_s)
        if data:
            self.log.append((time.monotonic(), "r", len(data), self._inner.baudrate))
        return data

    def reset_input(self) -> None:
        self._inner.reset_input()

    def close(self) -> None:
        self._inner.close()


def traffic_wire_s(log: list[tuple[float, str, int, int]], start: float, end: float,
                   turnaround_s: float) -> tuple[float, int, int]:
    """(line time of the frames moved in [start, end), bytes, frames written)."""
    wire_s, n_bytes, frames = 0.0, 0, 0
    for t, direction, n, baud in log:
        if start <= t < end:
            wire_s += n * character_time_s(baud)
            n_bytes += n
            if direction == "w":
                wire_s += turnaround_s
                frames += 1
    return wire_s, n_bytes, frames


def measure(baud: int, meters: int, *, seconds: float, warmup_s: float,
            turnaround_ms: float, protocol: str = "modbus"
            ) -> tuple[float, list[tuple[float, str, int, int]], float]:
    """(readings per second the real scheduler gets from the simulator in the window,
    the traffic log, the window's start)."""
    with tempfile.TemporaryDirectory() as tmp:
        config = board(Path(tmp), baud, meters, protocol)
        stamps: list[tuple[float, str]] = []
        traffic: list[tuple[float, str, int, int]] = []
        lock = threading.Lock()

        def post(event: BusEvent) -> None:
            if isinstance(event, ReadingTaken):
                with lock:
                    stamps.append((time.monotonic(), event.meter))

        def counted(bus: BusConfig) -> Transport:
            return CountingTransport(default_transport(bus), traffic)

        bus_module.READINGS_HOLD_S = 0.0  # each reading posted, so stamped, as taken
        with serving(config, speed=1.0, seed=1, turnaround_ms=turnaround_ms):
            sched = BusScheduler(config.buses[0], list(config.meters), post, discover=False,
                                 transport_factory=counted)
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
        rate = (len(window) - 1) / (window[-1] - window[0])
        return rate, [x for x in traffic if window[0] <= x[0] < window[-1]], window[0]


def _row(protocol: str, baud: int, meters: int, args: argparse.Namespace) -> tuple[str, float]:
    turnaround_s = args.turnaround_ms / 1000
    got, traffic, _ = measure(baud, meters, seconds=args.seconds, warmup_s=args.warmup,
                              turnaround_ms=args.turnaround_ms, protocol=protocol)
    if protocol == "modbus":
        wire_s, n_bytes = poll_wire_s(baud, turnaround_s)
        frames = len(plan_reads(load_map(MODEL)))
    else:  # from the traffic of the readings between the window's first and last
        total_s, total_bytes, total_frames = traffic_wire_s(traffic, 0.0, float("inf"),
                                                            turnaround_s)
        polls = max(1, round(got * (traffic[-1][0] - traffic[0][0]))) if traffic else 1
        wire_s, n_bytes, frames = total_s / polls, round(total_bytes / polls), \
            round(total_frames / polls)
    limit = 1 / wire_s
    return (f"| {protocol} | {baud} | {meters} | {frames} | {n_bytes} | {wire_s * 1000:.1f} ms "
            f"| {limit:.2f} | {got:.2f} | {got / limit:.3f} |"), got / limit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wire_limit",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--turnaround-ms", type=float, default=5.0)
    parser.add_argument("--bauds", default="9600,19200")
    parser.add_argument("--meters", default="1,8,32")
    parser.add_argument("--session-meters", default="1,8",
                        help="meter counts for the IEC and DLMS buses")
    parser.add_argument("--protocols", default="modbus,iec62056-21,dlms")
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    args = parser.parse_args(argv)
    rows = ["| protocol | baud | meters | frames/poll | bytes/poll | wire s/poll "
            "| limit polls/s | measured polls/s | ratio |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    worst = float("inf")
    for protocol in args.protocols.split(","):
        counts = args.meters if protocol == "modbus" else args.session_meters
        for baud in (int(b) for b in args.bauds.split(",")):
            for meters in (int(m) for m in counts.split(",")):
                row, ratio = _row(protocol, baud, meters, args)
                worst = min(worst, ratio)
                rows.append(row)
                print(row, flush=True)
    table = "\n".join(rows)
    print(table)
    print(f"worst ratio {worst:.3f} (goal >= 0.95)")
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
