"""`meter-agent scan`: directly on a free port, and through the running agent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sim.broker import find_mosquitto
from tests.e2e.harness import ROOT, Proc, make_config, wait_until


def scan(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", "scan", "--bus", "rs485-0",
                           "--addresses", "1-6", "-c", str(config), "--json", *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_scan_finds_configured_and_unknown_meters_directly(tmp_path: Path) -> None:
    config = make_config(tmp_path, 1883, meters=2)
    meters = Proc([sys.executable, "-m", "sim.meters", "-c", str(config), "--extra-meter", "5",
                   "--state-file", str(tmp_path / "m.json")], tmp_path / "meters.log")
    try:
        wait_until(lambda: (tmp_path / "m.json").exists(), 10, "the simulated meters")
        out = scan(config)
        assert out.returncode == 0, out.stderr
        found = {f["address"]: f for f in json.loads(out.stdout)["found"]}
        assert set(found) == {1, 2, 5}
        assert found[1]["meter"] == "SDM-0001" and found[5]["meter"] is None
        assert all(f["serial"] for f in found.values())
        assert "found 3" in out.stderr  # progress for the technician
    finally:
        meters.stop()


@pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed")
def test_scan_through_the_running_agent(tmp_path: Path) -> None:
    from tests.e2e.harness import Gateway

    g = Gateway(tmp_path / "gw", meters=1)
    try:
        g.start_agent()
        wait_until(lambda: (Path(g.raw["gateway"]["data_dir"]) / "control.sock").exists(), 20,
                   "the agent")
        out = scan(g.config)
        assert out.returncode == 0, out.stderr
        found = {f["address"] for f in json.loads(out.stdout)["found"]}
        assert 1 in found
    finally:
        g.close()
