"""A small head-end for meter-agent gateways, written only against docs/mqtt-api.md:
paho-mqtt, cbor2 and the standard library, no code of the agent.

    python examples/headend_example.py --key-file keys/gw-demo-01.cmd.key \\
        [--host 127.0.0.1] [--port 1883] [--prefix gw] [--gw gw-demo-01] \\
        [--ping] [--topup ACCOUNT PAISE] [--readings N] [--timeout S]

It says the head-end is up and payments work (retained ``{prefix}/headend/state``),
signs and sends the commands asked for (COSE_Mac0, HMAC 256/256), and prints one JSON
line per reading (delta encoding undone), ledger entry, event, reply and gateway state,
dropping duplicates by (gw, seq). It exits 0 once every command has its reply and N
readings have arrived, 1 at the timeout.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import secrets
import sys
import threading
import time
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

QUANTITIES = ("import_wh", "export_wh", "p_w", "v_dv", "i_ma", "f_chz", "pf_milli")
PROTECTED = bytes.fromhex("a10105")  # {1: 5}: alg HMAC 256/256


def sign_command(key: bytes, op: str, args: dict[str, Any], ttl_s: int = 600) -> tuple[str,
                                                                                   bytes]:
    """A command (docs/mqtt-api.md "Commands"): its id and its COSE_Mac0 bytes."""
    now = int(time.time())
    cid = "ex-" + secrets.token_hex(6)
    payload = cbor2.dumps({"id": cid, "op": op, "iat": now, "exp": now + ttl_s,
                           "args": args}, canonical=True)
    mac_structure = cbor2.dumps(["MAC0", PROTECTED, b"", payload])  # RFC 9052 6.3
    tag = hmac.new(key, mac_structure, hashlib.sha256).digest()
    return cid, cbor2.dumps(cbor2.CBORTag(17, [PROTECTED, {}, payload, tag]))


def undelta(values: list[int]) -> list[int]:
    out, total = [], 0
    for v in values:
        total += v
        out.append(total)
    return out


def undelta_cells(values: list[int | None]) -> list[int | None]:
    """The table form's columns: running sums that skip nulls (docs/mqtt-api.md)."""
    out: list[int | None] = []
    total = 0
    for v in values:
        if v is not None:
            total += v
        out.append(None if v is None else total)
    return out


def readings_of(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The readings of an up/readings message, one map per reading: the series form, or
    the table form of a gateway with [mqtt] live_readings = "table"."""
    out = []
    if "table" in message:
        table = message["table"]
        bn = table.get("bn", "")
        times = undelta_cells(table["t"])
        cells = {q: undelta_cells(table[q]) for q in QUANTITIES if q in table}
        for i, suffix in enumerate(table["m"]):
            out.append({"m": bn + suffix, "t": times[i],
                        **{q: c[i] for q, c in cells.items() if c[i] is not None}})
        return out
    for series in message["readings"]:
        times = undelta(series["t"])
        columns = {q: undelta(series[q]) for q in QUANTITIES if q in series}
        for i, t in enumerate(times):
            out.append({"m": series["m"], "t": t, **{q: c[i] for q, c in columns.items()}})
    return out


class HeadEnd:
    def __init__(self, args: argparse.Namespace, key: bytes) -> None:
        self.args = args
        self.key = key
        self.seen: set[tuple[str, int]] = set()  # a real head-end: a unique index
        self.readings = 0
        self.waiting: set[str] = set()
        self.lock = threading.Lock()
        self.print_lock = threading.Lock()
        self.done = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id="example-headend-" + secrets.token_hex(3))
        p = args.prefix
        self.client.will_set(f"{p}/headend/state", json.dumps({"online": False}), 1, True)
        self.client.on_connect = self.on_connect
        self.client.on_message = self.on_message

    def print(self, kind: str, body: Any) -> None:
        # one JSON object a line: paho's thread and this one both print
        with self.print_lock:
            print(json.dumps({kind: body}, default=repr), flush=True)

    def on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                   properties: Any) -> None:
        p = self.args.prefix
        client.subscribe([(f"{p}/+/up/#", 1), (f"{p}/+/state", 1)])
        client.publish(f"{p}/headend/state", json.dumps({"online": True, "payments": True}),
                       qos=1, retain=True)

    def on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if parts[-1] == "state":
            self.print("state", {"gw": parts[-2], **json.loads(msg.payload)})
            return
        kind = parts[-1]
        try:
            message = cbor2.loads(msg.payload)
            key = (message["gw"], message["seq"])
        except (cbor2.CBORDecodeError, KeyError, TypeError) as exc:
            self.print("error", f"{msg.topic}: {exc}")
            return
        with self.lock:
            if key in self.seen:
                return  # at-least-once delivery: a duplicate
            self.seen.add(key)
            if kind == "readings":
                for reading in readings_of(message):
                    self.readings += 1
                    self.print("reading", {"gw": message["gw"], **reading})
            elif kind == "ledger":
                for entry in message["entries"]:
                    self.print("entry", entry)
            elif kind == "events":
                for event in message["events"]:
                    self.print("event", event)
            elif kind == "reply":
                self.waiting.discard(message["id"])
                self.print("reply", {k: message.get(k) for k in
                                     ("id", "ok", "code", "msg", "result", "dup")})
            if not self.waiting and self.readings >= self.args.readings:
                self.done.set()

    def command(self, op: str, args: dict[str, Any]) -> None:
        cid, data = sign_command(self.key, op, args)
        with self.lock:
            self.waiting.add(cid)
        self.client.publish(f"{self.args.prefix}/{self.args.gw}/cmd", data, qos=1)
        self.print("sent", {"id": cid, "op": op, "args": args})

    def run(self) -> int:
        self.client.connect(self.args.host, self.args.port, 30)
        self.client.loop_start()
        try:
            if self.args.ping:
                self.command("ping", {})
            if self.args.topup:
                account, amount = self.args.topup
                self.command("topup", {"account": account, "amount": int(amount),
                                       "txn": "example-" + secrets.token_hex(6)})
            if self.args.readings == 0 and not self.waiting:
                self.done.set()
            return 0 if self.done.wait(self.args.timeout) else 1
        finally:
            self.client.disconnect()
            self.client.loop_stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--prefix", default="gw")
    parser.add_argument("--gw", default="gw-demo-01")
    parser.add_argument("--key-file", required=True, help="the gateway's command key (hex)")
    parser.add_argument("--ping", action="store_true")
    parser.add_argument("--topup", nargs=2, metavar=("ACCOUNT", "PAISE"))
    parser.add_argument("--readings", type=int, default=0, help="wait for this many")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    with open(args.key_file) as f:
        key = bytes.fromhex(f.read().strip())
    return HeadEnd(args, key).run()


if __name__ == "__main__":
    sys.exit(main())
