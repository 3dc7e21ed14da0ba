"""The peer: thingsboard-gateway, installed in its own venv, configured from the same
board config as the agent, run against the same broker; and how its messages are read.

Install (the benchmark's own set-up step, never at the agent's run time): a venv under
``var/peer/tb-<version>/venv`` (var/ is git-ignored) with ``PINS``, kept between runs
and made again when the pins change. Besides the gateway itself the pins name what its
Modbus connector would otherwise pip-install at run time (modbus_connector.py: exactly
pymodbus 3.9.2, pyserial, pyserial-asyncio); ``installed()`` is compared before and after
the runs so a run-time install would be seen.

Configuration (``write_config``), 3.8.x format, from the gateway's own shipped
config/tb_gateway.json with only these changes: host/port of the private broker, an
access token (the MQTT username; mosquitto is anonymous), ``remoteConfiguration`` off
(it waits for a ThingsBoard server's shared attributes; nothing here answers), the
report strategy written out as ``ON_RECEIVED`` (the shipped default: every poll is sent,
no change filter), and one Modbus connector per bus (one connector polls its serial
slaves one after another, so one per bus lets the buses run in parallel, as the agent's
one scheduler per bus does). Kept as shipped: memory storage, statistics every 60 s,
QoS 1, packing (``minPackSendDelayMS`` 50, ``maxPayloadSizeBytes`` 8196). Loggers at
WARNING, as the agent runs with ``--log-level WARNING``.

Each meter is a serial RTU slave with ``pollPeriod`` = the bus's poll interval and one
``timeseries`` entry per quantity the agent reads from an SDM120 (the same input
registers as agent/drivers/modbus/maps/sdm120.toml, ``32float``, big-endian words and
bytes). Keys are the agent's quantity names, so both spend the same bytes on names;
values are the meter's float in its own unit, rounded (the converter's ``round``) to
the resolution the agent keeps (0.1 V, 1 mA, 1 W, 1 Wh, 0.01 Hz, 0.001), so both carry
the same information. Timeout 0.5 s and one retry, as the agent's bus.

ThingsBoard itself: a gateway session asks the server for its limits at connect
(client-side RPC ``getSessionLimits``) and sends nothing until the answer comes.
``ThingsBoardStub`` answers it as a self-hosted ThingsBoard CE with its default tenant
profile does: no rate limits, 64 KiB payloads, 100 messages in flight. Nothing else of
a server is emulated, and its answers are downlink: they are not counted.

Network: only 127.0.0.1. The gateway's updater posts to its vendor's update service at
start and hourly (no setting turns it off); ``env()`` points HTTP(S)_PROXY at a closed
loopback port, so that request fails at once on this machine, unmodified code.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.peer.measure import Proc, Publish

ROOT = Path(__file__).resolve().parents[2]
VERSION = "3.8.5"
PINS = (f"thingsboard-gateway=={VERSION}", "pymodbus==3.9.2", "pyserial==3.5",
        "pyserial-asyncio==0.6")
MAIN_MODULE = "thingsboard_gateway.tb_gateway"
MODBUS_MODULE = "thingsboard_gateway.connectors.modbus.modbus_connector"
TOKEN = "bench-peer-token"
TELEMETRY_TOPIC = "v1/gateway/telemetry"
STATS_TOPIC = "v1/devices/me/telemetry"  # the gateway's own statistics
STATS_PERIOD_S = 60.0  # the shipped statsSendPeriodInSeconds (write_config checks it)
RPC_REQUEST = "v1/devices/me/rpc/request/"
RPC_RESPONSE = "v1/devices/me/rpc/response/"
SESSION_LIMITS = {"maxPayloadSize": 65536, "maxInflightMessages": 100, "rateLimits": {},
                  "gatewayRateLimits": {}}
STUB_ANSWER = json.dumps(SESSION_LIMITS).encode()
DEAD_PROXY = "http://127.0.0.1:9"  # discard port: nothing listens, the connect is refused
# (tag, input register, round): the SDM120 registers of the agent's map, and the
# agent's resolution for each (its scale: V x10, A x1000, W x1, kWh x1000, Hz x100).
REGISTERS = (
    ("v_dv", 0x0000, 1), ("i_ma", 0x0006, 3), ("p_w", 0x000C, 0), ("pf_milli", 0x001E, 3),
    ("f_chz", 0x0046, 2), ("import_wh", 0x0048, 3), ("export_wh", 0x004A, 3),
)
QUANTITIES = len(REGISTERS)


def venv_dir() -> Path:
    return ROOT / "var" / "peer" / f"tb-{VERSION}" / "venv"


def python() -> Path:
    return venv_dir() / "bin" / "python"


def base_python() -> str:
    """The interpreter the project's venv was made from: the peer runs on the same one."""
    name = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return str(Path(sys.base_prefix) / "bin" / name)


def ensure_venv(log: Path) -> Path:
    """The peer's venv, made (and ``PINS`` installed from PyPI) unless already there."""
    venv = venv_dir()
    stamp = venv / ".bench-pins"
    if stamp.exists() and stamp.read_text() == "\n".join(PINS) and python().exists():
        return venv
    if venv.exists():
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        for args in ([base_python(), "-m", "venv", str(venv)],
                     [str(python()), "-m", "pip", "install", "--disable-pip-version-check",
                      *PINS]):
            done = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}); see {log}")
    stamp.write_text("\n".join(PINS))
    return venv


def installed(py: Path) -> dict[str, str]:
    """{distribution: version} in the venv of ``py``."""
    code = ("import importlib.metadata as m, json; print(json.dumps("
            "{d.metadata['Name'].lower(): d.version for d in m.distributions()}))")
    out = subprocess.run([str(py), "-I", "-c", code], capture_output=True, text=True, check=True)
    found: dict[str, str] = json.loads(out.stdout)
    return found


def _shipped(name: str) -> Any:
    site = next((venv_dir() / "lib").glob("python*/site-packages"))
    return json.loads((site / "thingsboard_gateway" / "config" / name).read_text())


def _slave(bus: dict[str, Any], meter: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "serial", "method": "rtu", "port": bus["port"], "baudrate": bus["baudrate"],
        "parity": bus.get("parity", "N"), "stopbits": 1, "bytesize": 8,
        "timeout": bus.get("timeout_s", 0.5), "retries": 1,
        "byteOrder": "BIG", "wordOrder": "BIG",
        "pollPeriod": int(bus["poll_interval_s"] * 1000),
        "unitId": meter["address"], "deviceName": meter["id"], "deviceType": "default",
        "connectAttemptTimeMs": 500, "connectAttemptCount": 5,
        "waitAfterFailedAttemptsMs": 30000,
        "attributes": [],
        "timeseries": [{"tag": tag, "type": "32float", "functionCode": 4, "objectsCount": 2,
                        "address": address, "round": digits}
                       for tag, address, digits in REGISTERS],
        "attributeUpdates": [], "rpc": [],
    }


def write_config(cfg_dir: Path, board_toml: Path, port: int) -> None:
    """The gateway's config directory for the board in ``board_toml`` (see module doc)."""
    with open(board_toml, "rb") as f:
        board = tomllib.load(f)
    cfg_dir.mkdir(parents=True, exist_ok=True)
    main = _shipped("tb_gateway.json")
    tb = main["thingsboard"]
    if tb["statistics"]["statsSendPeriodInSeconds"] != STATS_PERIOD_S:
        raise RuntimeError("the shipped statistics period is not STATS_PERIOD_S")
    tb.update(host="127.0.0.1", port=port, remoteShell=False, remoteConfiguration=False,
              security={"type": "accessToken", "accessToken": TOKEN},
              reportStrategy={"type": "ON_RECEIVED"})
    main["connectors"] = []
    for bus in board["bus"]:
        meters = [m for m in board["meter"] if m["bus"] == bus["name"]]
        name = f"modbus-{bus['name']}.json"
        (cfg_dir / name).write_text(json.dumps({
            "name": bus["name"], "logLevel": os.environ.get("BENCH_TB_LOG", "WARNING"),
            "master": {"slaves": [_slave(bus, m) for m in meters]}}, indent=1))
        main["connectors"].append({"type": "modbus", "name": bus["name"],
                                   "configuration": name})
    (cfg_dir / "tb_gateway.json").write_text(json.dumps(main, indent=1))
    logs = _shipped("logs.json")
    for logger in logs.get("loggers", {}).values():
        logger["level"] = os.environ.get("BENCH_TB_LOG", "WARNING")
    (cfg_dir / "logs.json").write_text(json.dumps(logs, indent=1))
    for extra in ("list.json", "statistics.json"):  # files the main config names
        (cfg_dir / extra).write_text(json.dumps(_shipped(extra)))


def env(cfg_dir: Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    out.update(TB_GW_CONFIG_DIR=str(cfg_dir) + os.sep, HTTP_PROXY=DEAD_PROXY,
               HTTPS_PROXY=DEAD_PROXY, http_proxy=DEAD_PROXY, https_proxy=DEAD_PROXY,
               PYTHONUNBUFFERED="1")
    return out


def start(work: Path, board_toml: Path, port: int) -> Proc:
    """The gateway as its own entry point runs it, in ``work`` (it writes logs/ there)."""
    cfg_dir = work / "tb-config"
    write_config(cfg_dir, board_toml, port)
    return Proc([str(python()), "-m", MAIN_MODULE], work / "peer.log", cwd=work,
                env=env(cfg_dir))


class ThingsBoardStub:
    """Answers the gateway's ``getSessionLimits`` RPC (see the module doc)."""

    def __init__(self, port: int) -> None:
        self.answered = 0
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-tb-stub",
                                   protocol=mqtt.MQTTv311)
        self._client.reconnect_delay_set(1, 1)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._port = port

    def start(self) -> None:
        self._client.connect("127.0.0.1", self._port, keepalive=30)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object,
                    reason_code: object, properties: object) -> None:
        client.subscribe(RPC_REQUEST + "+", qos=1)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            method = json.loads(msg.payload).get("method")
        except ValueError:
            return
        if method == "getSessionLimits":
            request_id = msg.topic[len(RPC_REQUEST):]
            client.publish(RPC_RESPONSE + request_id, STUB_ANSWER, qos=1)
            self.answered += 1


def is_uplink(pub: Publish) -> bool:
    """What the gateway publishes: ThingsBoard's device and gateway APIs, less the
    stub's answers. (On a plain broker the gateway also gets its own RPC request back,
    as a server-side RPC, and answers it with an error on the response topic: that
    answer is its own, and counted.)"""
    return (not pub.retain and pub.topic.startswith("v1/")
            and not (pub.topic.startswith(RPC_RESPONSE) and pub.payload == STUB_ANSWER))


def is_periodic(pub: Publish) -> bool:
    """Sent by the clock, not by readings: its statistics (every STATS_PERIOD_S)."""
    return is_uplink(pub) and pub.topic == STATS_TOPIC


def readings(pub: Publish) -> list[tuple[str, int, int]] | None:
    """(device, ts in ms, quantities) of each entry of a ``v1/gateway/telemetry``
    message (``{"SDM-0001": [{"ts": ms, "values": {...}}]}``); None for any other."""
    if pub.retain or pub.topic != TELEMETRY_TOPIC:
        return None
    body = json.loads(pub.payload)
    out = []
    for device, entries in body.items():
        for entry in entries if isinstance(entries, list) else [entries]:
            values = entry.get("values", entry)
            out.append((str(device), int(entry.get("ts", 0)), len(values)))
    return out
