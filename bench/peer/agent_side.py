"""The agent's side of the peer benchmark: the board config (which is also what
``sim.meters`` serves, and what the peer's config is made from), how the agent is
started, and how its messages on the broker are read.

The board: ``meters`` Eastron SDM120 meters spread over ``buses`` buses (meter m on bus
m % buses, addresses 1, 2, ... in order), every bus at ``baudrate`` and polled every
``poll_s``; one account and no relay per meter, as bench/uplink_rss.py, each account
topped up once after the first reading (``fund``).

What counts as the agent's uplink: every publication under ``gw/<gw>/`` (``state`` and
``up/*``); reading messages are ``up/readings``, decoded with the agent's own
``wire.decode_readings``. A reading is identified by (meter, t), a message by (gw, seq).
"""

from __future__ import annotations

import json
import os
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.uplink import cbor, wire
from agent.uplink.cose import read_hex_key
from agent.uplink.delivery import STATE_EVERY_S
from bench.peer.measure import Proc, Publish
from sim.headend import HeadEnd
from sim.keys import write_key
from sim.tomlw import dumps

ROOT = Path(__file__).resolve().parents[2]
GW = "gw-bench-01"
PREFIX = "gw"
MAX_MESSAGE_BYTES = 1 << 20
QUANTITIES = 7  # what an SDM120 reading carries: every quantity of its register map
TOPUP_PAISE = 1_000_000  # Rs 10,000 an account: no alert level is reached in a run


@dataclass(frozen=True, slots=True)
class Board:
    meters: int
    buses: int
    baudrate: int
    poll_s: float
    live_readings: str = "table"  # the agent's [mqtt] live_readings (the peer has none)


def meter_id(m: int) -> str:
    return f"SDM-{m:04d}"


def write_board(work: Path, port: int, board: Board) -> Path:
    """The agent's config for ``board`` in ``work``; the same file drives sim.meters."""
    buses = [{"name": f"rs485-{b}", "port": str(work / "tty" / f"rs485-{b}"),
              "baudrate": board.baudrate, "parity": "N", "protocol": "modbus",
              "poll_interval_s": board.poll_s} for b in range(board.buses)]
    raw: dict[str, Any] = {
        "gateway": {"id": GW, "data_dir": str(work / "data"), "timezone": "Asia/Kolkata"},
        "mqtt": {"host": "127.0.0.1", "port": port, "prefix": PREFIX, "keepalive_s": 30,
                 "live_readings": board.live_readings},
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


def fund(work: Path, board_toml: Path, port: int, timeout_s: float = 30.0) -> int:
    """Top every account up once, as a head-end does (signed ``topup`` commands), and
    wait for the replies; how many were applied. Accounts at zero balance would send a
    low-balance alert and a deferred disconnection for every meter at its first charge
    (bench/uplink_rss.py runs them so): funded, the agent's uplink is that of normal
    operation."""
    with open(board_toml, "rb") as f:
        accounts = [a["id"] for a in tomllib.load(f)["account"]]
    he = HeadEnd("127.0.0.1", port, PREFIX, read_hex_key(work / "cmd.key"),
                 client_id="bench-peer-headend")
    he.start()
    try:
        ids = [he.command(GW, "topup", {"account": a, "amount": TOPUP_PAISE,
                                        "txn": f"bench-{work.name}-{a}"}) for a in accounts]
        deadline = time.monotonic() + timeout_s
        replies = [he.wait_reply(GW, cid, max(0.1, deadline - time.monotonic()))
                   for cid in ids]
    except TimeoutError as exc:
        raise RuntimeError(f"agent: top-ups not answered: {exc}") from exc
    finally:
        he.stop(offline=False)  # the retained head-end state stays "online, payments"
    return sum(1 for r in replies if r.get("code") == "ok")


def start(work: Path, board_toml: Path) -> Proc:
    """The agent as it runs in production (``agent.cli run``), from the project's venv;
    at WARNING (``BENCH_AGENT_LOG`` changes it, for debugging)."""
    return Proc([sys.executable, "-m", "agent.cli", "run", "-c", str(board_toml),
                 "--log-level", os.environ.get("BENCH_AGENT_LOG", "WARNING")],
                work / "agent.log", cwd=ROOT)


def is_uplink(pub: Publish) -> bool:
    return not pub.retain and pub.topic.startswith(f"{PREFIX}/{GW}/")


PERIOD_S = STATE_EVERY_S  # the retained health report: at every connect and every 60 s


def is_periodic(pub: Publish) -> bool:
    """Sent by the clock, not by readings: the health report on ``state``."""
    return is_uplink(pub) and pub.topic == wire.state_topic(PREFIX, GW) and not is_will(pub)


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
