"""End-to-end harness: a real mosquitto, simulated meters on real ptys, the agent as a
process, and the simulated head-end in this process. Every process is stopped by its
pid when the test ends, whatever happens."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.uplink.cose import read_hex_key
from sim.broker import Mosquitto
from sim.headend import HeadEnd
from sim.keys import repoint_meter_keys, write_key
from sim.tomlw import dumps

ROOT = Path(__file__).resolve().parents[2]
SIM_CONFIG = ROOT / "board_configs" / "sim.toml"
MIXED_CONFIG = ROOT / "board_configs" / "sim-mixed.toml"  # modbus + iec62056-21 + dlms


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str,
               step: Callable[[], None] | None = None, poll_s: float = 0.1) -> Any:
    """The first true value of ``predicate``, asked every ``poll_s`` (or after each
    ``step()``, for a test that drives the loop itself) until ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        if step is not None:
            step()
        else:
            time.sleep(poll_s)


def make_config(workdir: Path, broker_port: int, *, base: Path = SIM_CONFIG,
                **overrides: Any) -> Path:
    """A board config (``base``: the sim one), made fast and re-pointed into ``workdir``.

    ``overrides`` are ``section=dict`` merged into the config (``policy={...}``), plus
    ``meters=N`` to keep only the first N meters, or ``meters=[ids]`` to keep those (and
    their accounts, and only the buses they use).
    """
    with open(base, "rb") as f:
        raw: dict[str, Any] = tomllib.load(f)
    raw["gateway"]["data_dir"] = str(workdir / "data")
    raw["mqtt"].update(host="127.0.0.1", port=broker_port, keepalive_s=5)
    for key in ("command_key_file", "token_key_file"):
        path = workdir / "keys" / f"{key.split('_')[0]}.key"
        write_key(path)
        raw["security"][key] = str(path)
    repoint_meter_keys(raw, workdir / "keys")
    for bus in raw["bus"]:
        bus["port"] = str(workdir / "tty" / bus["name"])
        bus["poll_interval_s"] = 0.5
    # No protected times unless a test asks: the e2e tests exercise the plumbing;
    # the policy rules have their own tests.
    raw["policy"].update(protected_hours="", protected_weekdays=[], holidays=[],
                         min_notice_h=0)
    meters = overrides.pop("meters", None)
    if isinstance(meters, int):
        raw["meter"] = raw["meter"][:meters]
        raw["account"] = raw["account"][:meters]
    elif meters is not None:
        raw["meter"] = [m for m in raw["meter"] if m["id"] in meters]
        accounts = {m["account"] for m in raw["meter"]}
        raw["account"] = [a for a in raw["account"] if a["id"] in accounts]
        used = {m["bus"] for m in raw["meter"]} | {
            m["relay"].split(":")[1] for m in raw["meter"] if m["relay"].count(":") == 3}
        raw["bus"] = [b for b in raw["bus"] if b["name"] in used]
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(raw.get(section), dict):
            raw[section].update(values)
        else:
            raw[section] = values
    path = workdir / "agent.toml"
    path.write_text(dumps(raw) + "\n")
    return path


class Proc:
    """A child process in its own session; stopped (TERM, then KILL) by pid."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self._f = open(log, "ab")
        self.proc = subprocess.Popen(args, stdout=self._f, stderr=subprocess.STDOUT,
                                     cwd=ROOT, start_new_session=True)
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
        self._f.close()

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class Gateway:
    """One simulated gateway: broker, meters, agent, head-end."""

    def __init__(self, workdir: Path, *, speed: float = 10.0, load_scale: float = 1.0,
                 base: Path = SIM_CONFIG, **overrides: Any) -> None:
        self.workdir = workdir
        self.broker = Mosquitto(workdir / "broker")
        self.broker.start()
        self.config = make_config(workdir, self.broker.port, base=base, **overrides)
        with open(self.config, "rb") as f:
            self.raw = tomllib.load(f)
        self.gw = self.raw["gateway"]["id"]
        self.state_file = workdir / "meters.json"
        self.control = workdir / "sim.sock"  # the simulator's fault socket (sim.faults)
        self.meters = Proc([sys.executable, "-m", "sim.meters", "-c", str(self.config),
                            "--speed", str(speed), "--load-scale", str(load_scale),
                            "--state-file", str(self.state_file),
                            "--control", str(self.control)], workdir / "meters.log")
        self.key = read_hex_key(Path(self.raw["security"]["command_key_file"]))
        self.headend = HeadEnd("127.0.0.1", self.broker.port, "gw", self.key, persistent=True)
        self.headend.start()
        self.headend.publish_state(online=True, payments=True)
        self.agent: Proc | None = None
        self.agent_runs = 0
        wait_until(lambda: self.state_file.exists(), 10, "the simulated meters")

    def start_agent(self) -> Proc:
        self.agent_runs += 1
        self.agent = Proc([sys.executable, "-m", "agent.cli", "run", "-c", str(self.config),
                           "--log-level", "DEBUG"], self.workdir / f"agent-{self.agent_runs}.log")
        return self.agent

    def sim_state(self) -> dict[str, Any]:
        for _ in range(20):
            try:
                data: dict[str, Any] = json.loads(self.state_file.read_text())
                return data
            except (OSError, ValueError):
                time.sleep(0.05)
        raise AssertionError("cannot read the simulator's state file")

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(
            (Path(self.raw["gateway"]["data_dir"]) / "status.json").read_text())
        return data

    def quiesce(self, timeout_s: float = 30) -> None:
        """Stop the meters, then wait until the agent has delivered everything it holds."""
        self.meters.stop()

        def drained() -> bool:
            backlog = self.status()["backlog"]
            return bool(backlog["messages"] == 0 and backlog["bytes"] == 0)

        time.sleep(2)
        wait_until(drained, timeout_s, "the agent's outbox to drain")

    def command(self, op: str, args: dict[str, Any], **kw: Any) -> dict[str, Any]:
        cid = self.headend.command(self.gw, op, args, **kw)
        reply: dict[str, Any] = self.headend.wait_reply(self.gw, cid, timeout_s=15)
        return reply

    def close(self) -> None:
        try:
            self.headend.stop()
        finally:
            for proc in (self.agent, self.meters):
                if proc is not None:
                    proc.stop()
            self.broker.stop()
