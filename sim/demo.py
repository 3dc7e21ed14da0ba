"""``meter-agent demo``: broker + simulated meters + head-end + agent, with a live view.

Everything runs from a fresh temp directory (config, keys, data, ptys, logs)
so the demo never touches a real board's state; the broker listens on a free
loopback port. The config's path is printed at once and stays on the live view,
so the CLI can be pointed at the running agent from another terminal. Ctrl-C
(or ``--duration``) stops every process it started, by pid, and says where the
logs are.

It lives in ``sim/`` with the simulator it drives: the package a board installs
(``agent/``) carries neither; ``meter-agent demo`` finds it in a source checkout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

from sim.broker import INSTALL_HINT, Mosquitto, find_mosquitto
from sim.keys import repoint_meter_keys, write_key
from sim.tomlw import dumps

DEMO_TOPUP_PAISE = 20_000  # ₹200 each: enough to watch it fall, low enough to see alerts
# The simulated meters run 3x faster than real time: lively, yet the heaviest household
# (an evening peak with an appliance, about 3.3 kW, so 10 kW at 3x) stays within what
# the smallest meter can pass (an SDM120: 45 A x 300 V = 13.5 kW), so the agent's
# plausibility check accepts every delta and bills it. At 10x (an earlier choice) the
# evening readings were implausible and nothing was billed.
DEMO_SPEED = 3.0


def prepare(config: str, workdir: Path, broker_port: int) -> Path:
    """Write the demo's own config: the given board config, re-pointed into ``workdir``."""
    with open(config, "rb") as f:
        raw: dict[str, Any] = tomllib.load(f)
    raw["gateway"]["data_dir"] = str(workdir / "data")
    raw.setdefault("mqtt", {})
    raw["mqtt"]["host"] = "127.0.0.1"
    raw["mqtt"]["port"] = broker_port
    for key in ("command_key_file", "token_key_file"):
        path = workdir / "keys" / f"{key.split('_')[0]}.key"
        write_key(path)
        raw["security"][key] = str(path)
    repoint_meter_keys(raw, workdir / "keys")
    for bus in raw.get("bus", []):
        bus["port"] = str(workdir / "tty" / bus["name"])
    out = workdir / "agent.toml"
    out.write_text(dumps(raw) + "\n")
    return out


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    f = open(log, "ab")
    return subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _rupees(paise: int | None) -> str:
    if paise is None:
        return "-"
    sign = "-" if paise < 0 else ""
    return f"{sign}₹{abs(paise) // 100}.{abs(paise) % 100:02d}"


def render(status: dict[str, Any] | None, elapsed_s: float, config: Path | None = None) -> str:
    lines = [f"meter-agent demo — {elapsed_s:5.0f}s — Ctrl-C to stop"]
    if config is not None:
        lines.append(f"from another terminal: meter-agent status -c {config}")
    lines.append("")
    if status is None:
        lines.append("waiting for the agent to start ...")
        return "\n".join(lines)
    link = status["link"]
    backlog = status["backlog"]["messages"]
    lines.append(f"gateway {status['gateway']}  boot {status['boot']}  link "
                 f"{'up' if link['connected'] else 'DOWN'}  backlog {backlog}  "
                 f"head-end payments {status['headend']['payments']}")
    lines.append("")
    protocols = {b["name"]: b["protocol"] for b in status["buses"]}
    lines.append(f"{'meter':<10} {'protocol':<12} {'kWh':>10} {'W':>7} {'balance':>11} "
                 f"{'relay':<7}")
    for m in status["meters"]:
        r = m["reading"] or {}
        kwh = f"{r['import_wh'] / 1000:.3f}" if "import_wh" in r else "-"
        relay = m["relay"]["actual"] or "?"
        lines.append(f"{m['id']:<10} {protocols.get(m['bus'], '?'):<12} {kwh:>10} "
                     f"{r.get('p_w', '-')!s:>7} {_rupees(m['balance']):>11} {relay:<7}")
    return "\n".join(lines)


def run_demo(config: str, duration_s: float | None = None) -> int:
    if find_mosquitto() is None:
        print(f"meter-agent: {INSTALL_HINT}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="meter-agent-demo-"))
    broker = Mosquitto(workdir / "broker")
    broker.start()
    cfg_path = prepare(config, workdir, broker.port)
    print(f"meter-agent demo: config {cfg_path} (logs and data beside it)", flush=True)
    py = sys.executable
    procs = [
        _spawn([py, "-m", "sim.meters", "-c", str(cfg_path), "--speed", str(DEMO_SPEED),
                "--state-file", str(workdir / "meters.json")], workdir / "meters.log"),
        _spawn([py, "-m", "sim.headend", "-c", str(cfg_path), "--topup",
                str(DEMO_TOPUP_PAISE)], workdir / "headend.log"),
        _spawn([py, "-m", "agent.cli", "run", "-c", str(cfg_path)], workdir / "agent.log"),
    ]
    status_path = workdir / "data" / "status.json"
    start = time.monotonic()
    interactive = sys.stdout.isatty()
    stopping = False

    def on_signal(_signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        while not stopping:
            elapsed = time.monotonic() - start
            if duration_s is not None and elapsed >= duration_s:
                break
            for proc in procs:
                if proc.poll() is not None:
                    print(f"a demo process exited ({proc.args!r}); "
                          f"see the logs in {workdir}", file=sys.stderr)
                    return 1
            try:
                status = json.loads(status_path.read_text())
            except (OSError, ValueError):
                status = None
            frame = render(status, elapsed, cfg_path)
            print(("\x1b[H\x1b[2J" if interactive else "\n") + frame, flush=True)
            time.sleep(1.0)
    finally:
        for proc in reversed(procs):  # agent first, then head-end, then meters
            _stop(proc)
        broker.stop()
        print(f"\nstopped; config, logs and data are in {workdir}")
        print(f"inspect with: meter-agent status -c {workdir / 'agent.toml'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_demo(os.environ.get("CONFIG", "board_configs/sim-mixed.toml")))
