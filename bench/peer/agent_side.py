"""The agent's side of the peer benchmark: the board config (which is also what
``sim.meters`` serves, and what the peer's config is made from), how the agent is
started, and how its messages on the broker are read.

The board: ``meters`` Eastron SDM120 meters spread over ``buses`` buses (meter m on bus
m % buses, addresses 1, 2, ... in order), every bus at ``baudrate`` and polled every
``poll_s``; one account and no relay per meter, as bench/uplink_rss.py.

What counts as the agent's uplink: every publication under ``gw/<gw>/`` (``state`` and
``up/*``); reading messages are ``up/readings``, decoded with the agent's own
``wire.decode_readings``. A reading is identified by (meter, t), a message by (gw, seq).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.uplink import cbor, wire
from bench.peer.measure import Proc, Publish
from sim.keys import write_key
from sim.tomlw import dumps

ROOT = Path(__file__).resolve().parents[2]
GW = "gw-bench-01"
PREFIX = "gw"
MAX_MESSAGE_BYTES = 1 << 20
QUANTITIES = 7  # what an SDM120 reading carries: every quantity of its register map


@dataclass(frozen=True, slots=True)
class Board:
    meters: int
    buses: int
    baudrate: int
    poll_s: float


def meter_id(m: int) -> str:
    return f"SDM-{m:04d}"


def write_board(work: Path, port: int, board: Board) -> Path:
    """The agent's config for ``board`` in ``work``; the same file drives sim.meters."""
    buses = [{"name": f"rs485-{b}", "port": str(work / "tty" / f"rs485-{b}"),
              "baudrate": board.baudrate, "parity": "N", "protocol": "modbus",
              "poll_interval_s": board.poll_s} for b in range(board.buses)]
    raw: dict[str, Any] = {
        "gateway": {"id": GW, "data_dir": str(work / "data"), "timezone": "Asia/Kolkata"},
        "mqtt": {"host": "127.0.0.1", "port": port, "prefix": PREFIX, "keepalive_s": 30},
        "security": {"command_key_file": str(work / "cmd.key"),
                     "token_key_file": str(work / "token.key")},
        "bus": buses,
        "meter": [{"id": meter_id(m), "bus": f"rs485-{m % board.buses}",
                   "address": 1 + m // board.buses, "model": "eastron-sdm120",
                   "account": f"ACC-{m:04d}", "relay": "none"} for m in range(board.meters)],
        "tariff": {"domestic": {"fixed_per_day": 300, "duty_bp": 500, "billing_day": 1,
                                "slabs": [{"upto_kwh": 100, "rate": 550}, {"rate": 650}]}},
        "account": [{"id": f"ACC-{m:04d}", "tariff": "domestic"} for m in range(board.meters)],
    }
    write_key(work / "cmd.key")
    write_key(work / "token.key")
    path = work / "board.toml"
    path.write_text(dumps(raw) + "\n")
    return path


def start(work: Path, board_toml: Path) -> Proc:
    """The agent as it runs in production (``agent.cli run``), from the project's venv;
    at WARNING (``BENCH_AGENT_LOG`` changes it, for debugging)."""
    return Proc([sys.executable, "-m", "agent.cli", "run", "-c", str(board_toml),
                 "--log-level", os.environ.get("BENCH_AGENT_LOG", "WARNING")],
                work / "agent.log", cwd=ROOT)


def is_uplink(pub: Publish) -> bool:
    return not pub.retain and pub.topic.startswith(f"{PREFIX}/{GW}/")


def is_will(pub: Publish) -> bool:
    """Its Last Will (CONTRACT 3: ``{"online": false, ...}`` on ``state``), which the
    broker publishes for it; also its last word at a clean stop."""
    if pub.topic != wire.state_topic(PREFIX, GW):
        return False
    try:
        return json.loads(pub.payload).get("online") is False
    except ValueError:
        return False


def readings(pub: Publish) -> list[tuple[str, int, int]] | None:
    """(meter, t in ms, quantities) of each reading in an up/readings message; None for
    any other publication."""
    if pub.retain or pub.topic != wire.up_topic(PREFIX, GW, "readings"):
        return None
    decoded = wire.decode_readings(cbor.loads(pub.payload, max_bytes=MAX_MESSAGE_BYTES))
    return [(r.meter, r.t * 1000, len(r.values)) for r in decoded]


def message_key(pub: Publish) -> tuple[str, int] | None:
    """(gw, seq) of an up/* message (CONTRACT 4: a head-end dedupes by it)."""
    if pub.retain or not pub.topic.startswith(f"{PREFIX}/{GW}/up/"):
        return None
    msg = cbor.loads(pub.payload, max_bytes=MAX_MESSAGE_BYTES)
    env = wire.check_envelope(msg)
    return str(env["gw"]), int(env["seq"])
