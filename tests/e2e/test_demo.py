"""``meter-agent demo`` (CONTRACT 9): one command runs simulated meters, a broker, a
head-end and the agent with a live view; ``make demo`` shows the three protocols side by
side (board_configs/sim-mixed.toml), and the agent bills what the meters count."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sim.broker import find_mosquitto
from tests.e2e.harness import MIXED_CONFIG, ROOT

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed")

METERS = {"SDM-0001": "modbus", "SDM-0002": "modbus", "IEC-0001": "iec62056-21",
          "DLMS-0001": "dlms"}


def test_the_demo_shows_three_protocols_and_bills_them() -> None:
    out = subprocess.run([sys.executable, "-m", "agent.cli", "demo", "-c", str(MIXED_CONFIG),
                          "--duration", "25"], cwd=ROOT, capture_output=True, text=True,
                         timeout=90)
    assert out.returncode == 0, out.stderr
    # the config is said at once (for the CLI in another terminal), not only at the end
    said = re.fullmatch(r"meter-agent demo: config (\S+) .*", out.stdout.splitlines()[0])
    assert said is not None, out.stdout[:200]
    config = Path(said.group(1))
    assert config.name == "agent.toml"
    last = out.stdout.split("meter-agent demo —")[-1]
    assert f"meter-agent status -c {config}" in last
    rows = {line.split()[0]: line.split() for line in last.splitlines()
            if line.split() and line.split()[0] in METERS}
    assert set(rows) == set(METERS), last
    for meter, row in rows.items():
        assert row[1] == METERS[meter] and row[2] != "-" and row[4] != "-", row
    for account in ("ACC-0001", "ACC-0002", "ACC-0003", "ACC-0004"):
        book = json.loads(subprocess.run(
            [sys.executable, "-m", "agent.cli", "ledger", account, "-c", str(config), "--json",
             "--limit", "100000"], cwd=ROOT, capture_output=True, text=True, check=True).stdout)
        energy = [e for e in book["entries"] if e["kind"] == "energy"]
        assert energy and sum(e["amt"] for e in energy) < 0, (account, book)
