"""The agent's memory and CPU with 250 meters (issue 5) -> bench/results/uplink.md.

  python -m bench.uplink_rss [--meters 250] [--poll 5] [--warmup 20] [--window 60]

The real agent (``python -m agent.cli run``) with ``--meters`` simulated Eastron
meters on two buses (115,200 baud, polled every ``--poll`` s), a private mosquitto and
a head-end that counts the readings it receives. After ``--warmup`` s: the agent's
resident memory (VmRSS, highest of 1 s samples, and VmHWM) and its CPU time (user +
system, /proc) over ``--window`` s, divided by the readings polled in that window (as
the head-end received them, counted by their time): the agent's CPU per reading end to
end (bus frames, the ledger's transaction, forming, CBOR, TLS-less MQTT). Baselines in
the same run: the RSS of a bare interpreter that imported what the agent imports, and of
one that imported nothing; and
the bus side alone (``bus_alone``): one meter of the same simulator at the same speed
read by the agent's own Modbus client (SerialTransport, ModbusClient, ModbusMeter) in one
thread of this process, nothing else running: the CPU a reading costs before the ledger,
the uplink and the threads' hand-offs add theirs; and what one wake-up of a thread costs
here (``wake_us``: a thread that sleeps 1.75 ms, a t3.5 at this speed, and wakes), times
the fewest a reading needs (two a request: the silence before it, its answer).
Each of the agent's threads is measured too (/proc/PID/task: CPU and voluntary context
switches, i.e. wake-ups, a reading), named by py-spy where it is installed.
"""

from __future__ import annotations

import argparse
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.drivers.modbus.client import ModbusClient
from agent.drivers.modbus.codec import Request, response_length
from agent.drivers.modbus.device import ModbusMeter
from agent.drivers.modbus.maps import load_map, plan_reads
from agent.drivers.transport import SerialTransport
from bench import profile
from sim.broker import Mosquitto
from sim.headend import HeadEnd
from sim.keys import write_key
from sim.tomlw import dumps

ROOT = Path(__file__).resolve().parents[1]
LATE_S = 8.0  # the last readings of the window reach the head-end within this (LIVE_FLUSH_S)
GW = "gw-bench-01"


def config(work: Path, port: int, meters: int, poll_s: float) -> Path:
    buses = [{"name": f"rs485-{b}", "port": str(work / "tty" / f"rs485-{b}"),
              "baudrate": 115200, "parity": "N", "protocol": "modbus",
              "poll_interval_s": poll_s} for b in range(2)]
    raw: dict[str, Any] = {
        "gateway": {"id": GW, "data_dir": str(work / "data"), "timezone": "Asia/Kolkata"},
        "mqtt": {"host": "127.0.0.1", "port": port, "prefix": "gw", "keepalive_s": 30},
        "security": {"command_key_file": str(work / "cmd.key"),
                     "token_key_file": str(work / "token.key")},
        "bus": buses,
        "meter": [{"id": f"SDM-{m:04d}", "bus": f"rs485-{m % 2}", "address": 1 + m // 2,
                   "model": "eastron-sdm120", "account": f"ACC-{m:04d}", "relay": "none"}
                  for m in range(meters)],
        "tariff": {"domestic": {"fixed_per_day": 300, "duty_bp": 500, "billing_day": 1,
                                "slabs": [{"upto_kwh": 100, "rate": 550}, {"rate": 650}]}},
        "account": [{"id": f"ACC-{m:04d}", "tariff": "domestic"} for m in range(meters)],
    }
    write_key(work / "cmd.key")
    write_key(work / "token.key")
    path = work / "bench.toml"
    path.write_text(dumps(raw) + "\n")
    return path


def proc_status(pid: int | str, field: str) -> int:
    """A number of /proc/PID/status (``pid`` may be "PID/task/TID": one thread's)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])  # kB, or a count
    raise KeyError(field)


def cpu_s(pid: int | str) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid`` and its threads so far (/proc/PID/stat;
    "PID/task/TID": one thread's)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def tasks(pid: int) -> dict[int, tuple[float, int]]:
    """CPU seconds and voluntary context switches (wake-ups) of each thread of ``pid``."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            cpu = sum(cpu_s(f"{pid}/task/{tid}"))
            switches = proc_status(f"{pid}/task/{tid}", "voluntary_ctxt_switches")
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        out[int(tid)] = (cpu, switches)
    return out


def thread_names(pid: int) -> dict[int, str]:
    """Thread id -> Python thread name, from ``py-spy dump`` (bench extra) if installed."""
    names = {pid: "MainThread"}
    py_spy = Path(sys.executable).parent / "py-spy"
    if py_spy.exists():
        dump = subprocess.run([str(py_spy), "dump", "--pid", str(pid)], capture_output=True,
                              text=True, timeout=30).stdout
        for line in dump.splitlines():
            parts = line.split(maxsplit=3)  # Thread 4776 (idle): "bus-rs485-0"
            if len(parts) == 4 and parts[0] == "Thread" and parts[1].isdigit():
                names[int(parts[1])] = parts[3].strip('"')
    return names


# The fewest wake-ups an SDM120 reading takes: two requests, each after the line's
# silence (a sleep) and with its answer (a sleep through it, or a wait for its bytes).
WAKES_PER_READING = 4


def wake_us(n: int = 2000) -> float:
    """CPU µs of this thread a block-and-wake: sleeping one t3.5 at 115,200 baud."""
    started = time.thread_time()
    for _ in range(n):
        time.sleep(0.00175)
    return (time.thread_time() - started) / n * 1e6


def bare_rss_kb(code: str) -> int:
    proc = subprocess.Popen([sys.executable, "-c", code + "; import time; time.sleep(30)"],
                            cwd=ROOT)
    try:
        time.sleep(2.0)
        return proc_status(proc.pid, "VmRSS")
    finally:
        proc.kill()
        proc.wait()


def bus_alone(readings: int) -> tuple[float, float]:
    """CPU µs of this thread a reading: (``readings`` polls of one simulated SDM120 at
    115,200 baud through the agent's Modbus client, after one that reads its serial;
    the same requests written and their answers read with bare write/select/read on the
    descriptor, no codec, no pacing: the system calls and wake-ups a reading needs)."""
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        work = Path(tmp)
        cfg = config(work, 1883, 1, 5.0)  # the broker's port is never used here
        log = open(work / "meters.log", "wb")
        sim = subprocess.Popen([sys.executable, "-m", "sim.meters", "-c", str(cfg)], cwd=ROOT,
                               stdout=log, stderr=subprocess.STDOUT)
        try:
            port = work / "tty" / "rs485-0"
            deadline = time.monotonic() + 10
            while not port.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            transport = SerialTransport(str(port), 115200)
            try:
                meter = ModbusMeter(ModbusClient(transport), 1, "eastron-sdm120")
                meter.read("SDM-0000", 0)
                started = time.thread_time()
                for i in range(readings):
                    meter.read("SDM-0000", i)
                client_s = time.thread_time() - started
                requests = [Request(1, b.function, b.address, b.count)
                            for b in plan_reads(load_map("eastron-sdm120"))]
                frames = [(r.to_bytes(), response_length(r)) for r in requests]
                fd = transport._fd
                assert fd is not None
                started = time.thread_time()
                for _ in range(readings):
                    for frame, length in frames:
                        os.write(fd, frame)
                        got = 0
                        while got < length:
                            select.select([fd], [], [], 1.0)
                            got += len(os.read(fd, 256))
                        time.sleep(0.002)  # the line's silence before the next request
                bare_s = time.thread_time() - started
                return client_s / readings * 1e6, bare_s / readings * 1e6
            finally:
                transport.close()
        finally:
            sim.terminate()
            sim.wait(10)
            log.close()


def measure(meters: int, poll_s: float, warmup_s: float, window_s: float,
            profile_out: Path | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "broker")
        broker.start()
        procs: list[subprocess.Popen[bytes]] = []
        he = None
        try:
            cfg = config(work, broker.port, meters, poll_s)
            he = HeadEnd("127.0.0.1", broker.port, "gw", bytes(32), client_id="bench-he")
            he.start()
            he.publish_state(online=True, payments=True)
            log = open(work / "meters.log", "wb")
            procs.append(subprocess.Popen([sys.executable, "-m", "sim.meters", "-c", str(cfg)],
                                          cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
            time.sleep(2.0)
            agent = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "-c", str(cfg),
                                      "--log-level", "WARNING"], cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(agent)
            time.sleep(warmup_s)
            names = thread_names(agent.pid)
            spy = profile.record(agent.pid, window_s, profile_out) if profile_out else None
            w0, c0, t0 = time.time(), cpu_s(agent.pid), tasks(agent.pid)
            rss = 0
            t_end = time.monotonic() + window_s
            while time.monotonic() < t_end:
                rss = max(rss, proc_status(agent.pid, "VmRSS"))
                time.sleep(1.0)
            w1, c1, t1 = time.time(), cpu_s(agent.pid), tasks(agent.pid)
            sys_s = c1[1] - c0[1]
            per_thread = {names.get(tid, f"thread {tid}"): (t1[tid][0] - t0[tid][0],
                                                            t1[tid][1] - t0[tid][1])
                          for tid in t1 if tid in t0}
            # Readings go out a message a few seconds of them at a time: counted by when
            # they were polled (their t), once each, after the last of the window arrived,
            # not by when their message did (that moved the count by a message's worth).
            time.sleep(LATE_S)
            first_s, last_s = int(w0) + 1, int(w1)
            polled = {(r.meter, r.t) for r in he.readings(GW) if first_s <= r.t <= last_s}
            per_s = len(polled) / (last_s - first_s + 1)
            hwm = proc_status(agent.pid, "VmHWM")
            if spy is not None:
                spy.wait(30)
        finally:
            for p in reversed(procs):
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            if he is not None:
                he.stop()
            broker.stop()
    imports = ("import paho.mqtt.client, cbor2, sqlite3, zoneinfo, serial, agent.runtime")
    alone_us, bare_us = bus_alone(300)
    return {"meters": meters, "poll": poll_s, "window": window_s, "rss_kb": rss,
            "alone_us": alone_us, "bare_us": bare_us, "wake_us": wake_us(),
            "threads": per_thread,
            "hwm_kb": hwm, "readings": round(per_s * (w1 - w0)),
            "cpu_s": sum(c1) - sum(c0), "sys_s": sys_s,
            "bare_kb": bare_rss_kb("pass"), "imports_kb": bare_rss_kb(imports)}


def report(r: dict[str, Any]) -> str:
    per = r["cpu_s"] / max(1, r["readings"]) * 1000
    return "\n".join([
        f"## The agent with {r['meters']} meters: memory and CPU",
        "",
        f"`python -m bench.uplink_rss`: the real agent (`agent.cli run`), {r['meters']} "
        f"simulated SDM120 meters on two buses at 115,200 baud polled every {r['poll']:g} s, "
        f"a local mosquitto and a head-end; measured over {r['window']:g} s after a warm-up.",
        "",
        "| what | figure |",
        "|---|---:|",
        f"| agent RSS (highest 1 s sample) | **{r['rss_kb'] / 1024:.1f} MB** |",
        f"| agent peak RSS (VmHWM) | {r['hwm_kb'] / 1024:.1f} MB |",
        f"| baseline: bare interpreter | {r['bare_kb'] / 1024:.1f} MB |",
        f"| baseline: interpreter + the agent's imports, nothing running | "
        f"{r['imports_kb'] / 1024:.1f} MB |",
        f"| readings polled in the window (received by the head-end, by their time) | "
        f"{r['readings']:,} |",
        f"| agent CPU (user + system) in the window | {r['cpu_s']:.2f} s |",
        f"| of it in the kernel (system) | {r['sys_s']:.2f} s |",
        f"| **agent CPU per reading, end to end** | **{per:.2f} ms** |",
        f"| baseline: the bus side alone (one meter, the agent's Modbus client in one "
        f"thread, same simulator and speed) | {r['alone_us']:.0f} µs a reading |",
        f"| baseline: the same frames with bare write/select/read, no codec | "
        f"{r['bare_us']:.0f} µs a reading |",
        f"| baseline: one wake-up of a thread (sleep 1.75 ms, wake), × the "
        f"{WAKES_PER_READING} a reading needs at least | {r['wake_us']:.0f} µs × "
        f"{WAKES_PER_READING} = {r['wake_us'] * WAKES_PER_READING:.0f} µs a reading |",
        f"| end to end / the bus side alone / bare frames | {per * 1000 / r['alone_us']:.2f}"
        f" / {per * 1000 / r['bare_us']:.2f} |",
        "",
        "| thread | CPU a reading | wake-ups a reading |",
        "|---|---:|---:|",
        *[f"| {name} | {cpu / max(1, r['readings']) * 1e6:.0f} µs | "
          f"{wakes / max(1, r['readings']):.2f} |"
          for name, (cpu, wakes) in sorted(r["threads"].items(), key=lambda kv: -kv[1][0])
          if cpu or wakes],
    ])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--meters", type=int, default=250)
    parser.add_argument("--poll", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--profile", type=Path, default=None,
                        help="also sample the agent with py-spy over the window; the "
                        "functions holding its CPU go to this markdown file")
    args = parser.parse_args()
    raw = args.profile.with_suffix(".raw") if args.profile else None
    result = measure(args.meters, args.poll, args.warmup, args.window, raw)
    print(report(result))
    if args.profile and raw is not None:
        args.profile.write_text(
            f"# Where the agent's CPU goes\n\n`python -m bench.uplink_rss --meters "
            f"{args.meters} --poll {args.poll:g} --window {args.window:g} --profile "
            f"{args.profile}`: py-spy samples of the agent process (every thread) over the "
            f"measured window.\n\n{report(result)}\n\n"
            f"{profile.summary(profile.collapse(raw))}\n")
        raw.unlink()


if __name__ == "__main__":
    main()
