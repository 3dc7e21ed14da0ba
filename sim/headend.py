"""A simulated head-end (CONTRACT 3-7), as a library for tests and as a small CLI:

    python -m sim.headend -c board_configs/sim.toml [--host H] [--port P]
                          [--topup PAISE] [--quiet]

It subscribes ``{prefix}/+/up/#`` and ``{prefix}/+/state`` (QoS 1), decodes and checks
every message (agent.uplink.wire), keeps every arrival and drops duplicates by
``(gw, seq)`` as a real head-end must (CONTRACT 4: delivery is at-least-once); a seq
that arrives again with DIFFERENT bytes is recorded in ``violations()``. It publishes
the retained ``{prefix}/headend/state`` (Last Will ``{"online": false}``) and signs
commands with the gateway's command key.

paho runs callbacks on its network thread; every piece of state here is guarded by one
re-entrant lock with a condition, so ``wait_for`` predicates may call the accessors.
Nothing here is bounded: it is a test tool that lives for one test or one session.
"""

from __future__ import annotations

import argparse
import json
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.clock import Clock, SystemClock
from agent.drivers.reading import Reading
from agent.uplink import cbor, wire
from agent.uplink.commands import make_command

CONNECT_TIMEOUT_S = 10.0  # start(): connected and subscribed within this, or TimeoutError
PUBLISH_TIMEOUT_S = 5.0  # a QoS 1 publish must be acknowledged by the broker within this


@dataclass(frozen=True, slots=True)
class Arrival:
    gw: str
    kind: str  # readings | events | ledger | reply | state
    seq: int | None  # None for state and for messages that did not decode
    payload: bytes
    retain: bool


class HeadEnd:
    def __init__(self, host: str, port: int, prefix: str, command_key: bytes, *,
                 client_id: str = "headend-sim", protocol: str = "3.1.1",
                 clock: Clock | None = None, share_group: str | None = None,
                 persistent: bool = False,
                 on_line: Callable[[str], None] | None = None) -> None:
        """``protocol`` "3.1.1" or "5"; ``share_group`` subscribes the up topics as
        ``$share/{group}/...`` (several head-ends sharing the load, CONTRACT 3);
        ``persistent`` keeps the broker session (messages queue while stopped);
        ``on_line`` receives one human-readable line per message."""
        self.host, self.port, self.prefix = host, port, prefix
        self.command_key = command_key
        self.clock: Clock = clock or SystemClock()
        self.on_line = on_line
        self._cond = threading.Condition(threading.RLock())
        self._arrivals: list[Arrival] = []
        self._by_seq: dict[str, dict[int, tuple[str, dict[str, Any], bytes]]] = {}
        self._states: dict[str, dict[str, Any] | None] = {}
        self._errors: list[str] = []
        self._violations: list[str] = []
        self._connected = False
        self._subscribed = False
        self._v5 = protocol == "5"
        if protocol not in ("3.1.1", "5"):
            raise ValueError("protocol must be 3.1.1 or 5")
        share = f"$share/{share_group}/" if share_group else ""
        self._topics = [(f"{share}{prefix}/+/up/#", 1), (f"{share}{prefix}/+/state", 1)]
        if self._v5:
            self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                       protocol=mqtt.MQTTv5)
        else:
            self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                       protocol=mqtt.MQTTv311, clean_session=not persistent)
        self._persistent = persistent
        self._client.will_set(wire.headend_state_topic(prefix), json.dumps({"online": False}),
                              qos=1, retain=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Connect, subscribe, and return once the broker has granted the subscriptions."""
        if self._v5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 3600 if self._persistent else 0
            self._client.connect(self.host, self.port, 30, clean_start=not self._persistent,
                                 properties=props)
        else:
            self._client.connect(self.host, self.port, 30)
        self._client.loop_start()
        self.wait_for(lambda: self._subscribed, CONNECT_TIMEOUT_S,
                      f"connection to {self.host}:{self.port} and SUBACK")

    def stop(self, *, offline: bool = True) -> None:
        """Disconnect cleanly; with ``offline`` first publish {"online": false} (a clean
        disconnect does not fire the Last Will)."""
        try:
            if offline and self._connected:
                self._publish(wire.headend_state_topic(self.prefix),
                              json.dumps({"online": False}).encode(), retain=True)
            self._client.disconnect()
        finally:
            self._client.loop_stop()

    def __enter__(self) -> HeadEnd:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- publishing ---------------------------------------------------------------------
    def _publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        info.wait_for_publish(PUBLISH_TIMEOUT_S)
        if not info.is_published():
            raise TimeoutError(f"no PUBACK for {topic} within {PUBLISH_TIMEOUT_S} s")

    def publish_state(self, online: bool, payments: bool) -> None:
        """The retained head-end state every agent follows (DOMAIN: when the relay may open)."""
        body = json.dumps({"online": online, "payments": payments}).encode()
        self._publish(wire.headend_state_topic(self.prefix), body, retain=True)

    def command(self, gw: str, op: str, args: dict[str, Any], *, id: str | None = None,
                iat: int | None = None, exp: int | None = None,
                key: bytes | None = None) -> str:
        """Sign (with ``key`` or the command key) and publish one command; its id."""
        cid = id if id is not None else f"he-{secrets.token_hex(6)}"
        data = make_command(key if key is not None else self.command_key, op, args, id=cid,
                            iat=iat, exp=exp, now_s=int(self.clock.time_s()))
        self.send_raw(gw, data)
        return cid

    def send_raw(self, gw: str, payload: bytes) -> None:
        self._publish(wire.cmd_topic(self.prefix, gw), payload)

    # -- paho callbacks (network thread) ------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        if reason_code.is_failure:
            self._error(f"connect refused: {reason_code}")
            return
        with self._cond:
            self._connected = True
            self._cond.notify_all()
        client.subscribe(self._topics)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        with self._cond:
            self._connected = self._subscribed = False
            self._cond.notify_all()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any,
                      properties: Any) -> None:
        failed = [rc for rc in reason_codes if rc.is_failure]
        if failed:
            self._error(f"subscription refused: {failed}")
            return
        with self._cond:
            self._subscribed = True
            self._cond.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # Never raise here: an exception would stop paho's network thread.
        payload = bytes(msg.payload)
        rest = msg.topic[len(self.prefix) + 1:].split("/")
        if len(rest) == 2 and rest[1] == "state":
            self._on_state(rest[0], payload, bool(msg.retain))
        elif len(rest) == 3 and rest[1] == "up" and rest[2] in wire.KINDS:
            self._on_up(rest[0], rest[2], payload, bool(msg.retain))
        else:
            self._error(f"unexpected topic {msg.topic}")

    def _on_state(self, gw: str, payload: bytes, retain: bool) -> None:
        state: dict[str, Any] | None = None
        if payload:
            try:
                decoded = json.loads(payload)
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
                self._error(f"{gw}/state: not JSON: {exc}")
                return
            if not isinstance(decoded, dict):
                self._error(f"{gw}/state: not a JSON object")
                return
            state = decoded
        with self._cond:
            self._arrivals.append(Arrival(gw, "state", None, payload, retain))
            self._states[gw] = state
            self._cond.notify_all()
        self._line(f"{gw} state {json.dumps(state)}")

    def _on_up(self, gw: str, kind: str, payload: bytes, retain: bool) -> None:
        try:
            msg = wire.check_message(kind, cbor.loads(payload, max_bytes=cbor.MAX_UPLINK_BYTES))
        except wire.WireError as exc:  # CborError is a WireError
            with self._cond:
                self._arrivals.append(Arrival(gw, kind, None, payload, retain))
            self._error(f"{gw}/up/{kind}: {exc}")
            return
        seq = int(msg["seq"])
        lines: list[str] = []
        with self._cond:
            self._arrivals.append(Arrival(gw, kind, seq, payload, retain))
            seen = self._by_seq.setdefault(gw, {})
            if msg["gw"] != gw:
                self._violations.append(f"{gw} seq {seq}: gw field is {msg['gw']!r}")
            if seq in seen:
                if seen[seq][2] != payload:
                    self._violations.append(f"{gw} seq {seq}: sent again with other bytes")
            else:
                seen[seq] = (kind, msg, payload)
                lines = _describe(gw, kind, msg)
            self._cond.notify_all()
        for line in lines:
            self._line(line)

    def _error(self, text: str) -> None:
        with self._cond:
            self._errors.append(text)
            self._cond.notify_all()
        self._line("ERROR " + text)

    def _line(self, text: str) -> None:
        if self.on_line is not None:
            self.on_line(text)

    # -- queries (any thread) -----------------------------------------------------------
    def messages(self, gw: str, kind: str) -> list[dict[str, Any]]:
        """Deduplicated ``up/{kind}`` messages of ``gw``, in seq order."""
        if kind not in wire.KINDS:
            raise ValueError(f"kind must be one of {', '.join(wire.KINDS)}")
        with self._cond:
            seen = self._by_seq.get(gw, {})
            return [seen[s][1] for s in sorted(seen) if seen[s][0] == kind]

    def raw_seqs(self, gw: str) -> list[int]:
        """The seq of every up/* arrival of ``gw``, duplicates included, in arrival order."""
        with self._cond:
            return [a.seq for a in self._arrivals if a.gw == gw and a.seq is not None]

    def arrivals(self) -> list[Arrival]:
        with self._cond:
            return list(self._arrivals)

    def readings(self, gw: str) -> list[Reading]:
        return [r for m in self.messages(gw, "readings") for r in wire.decode_readings(m)]

    def events(self, gw: str, type: str | None = None) -> list[dict[str, Any]]:
        return [e for m in self.messages(gw, "events") for e in m["events"]
                if type is None or e["type"] == type]

    def ledger_entries(self, gw: str, acct: str | None = None) -> list[dict[str, Any]]:
        return [e for m in self.messages(gw, "ledger") for e in m["entries"]
                if acct is None or e["acct"] == acct]

    def replies(self, gw: str, id: str | None) -> list[dict[str, Any]]:
        """Every reply to command ``id`` (a repeat carries "dup": true), in seq order."""
        return [m for m in self.messages(gw, "reply") if m["id"] == id]

    def dropped_seqs(self, gw: str) -> set[int]:
        """Seqs the gateway dropped at its storage bound (data_dropped detail.seqs)."""
        return {s for e in self.events(gw, "data_dropped") for s in e["detail"].get("seqs", [])
                if isinstance(s, int)}

    def gaps(self, gw: str) -> list[int]:
        """Seqs below the highest one received that have not arrived and were not named
        as dropped: lost in transit so far (they come again after a reconnect)."""
        with self._cond:
            have = set(self._by_seq.get(gw, {}))
        if not have:
            return []
        dropped = self.dropped_seqs(gw)
        return [s for s in range(1, max(have)) if s not in have and s not in dropped]

    def state(self, gw: str) -> dict[str, Any] | None:
        with self._cond:
            return self._states.get(gw)

    def errors(self) -> list[str]:
        with self._cond:
            return list(self._errors)

    def violations(self) -> list[str]:
        with self._cond:
            return list(self._violations)

    @property
    def connected(self) -> bool:
        with self._cond:
            return self._connected

    def wait_for(self, predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
        """Wait until ``predicate()`` is truthy and return its value; TimeoutError naming
        ``what`` otherwise. Wakes on every arrival, and at least every 0.1 s."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what} "
                                       f"(connected={self._connected}, "
                                       f"{len(self._arrivals)} arrivals, "
                                       f"errors={self._errors[-3:]})")
                self._cond.wait(min(left, 0.1))

    def wait_reply(self, gw: str, id: str | None, timeout_s: float) -> dict[str, Any]:
        """The first reply to ``id`` from ``gw``."""
        try:
            return dict(self.wait_for(lambda: self.replies(gw, id)[:1], timeout_s,
                                      f"the reply to command {id!r} from {gw}")[0])
        except TimeoutError as exc:
            seen = [m["id"] for m in self.messages(gw, "reply")][-5:]
            raise TimeoutError(f"{exc}; last reply ids from {gw}: {seen}; is the agent "
                               f"running with prefix {self.prefix!r} and this command "
                               "key?") from None


def _describe(gw: str, kind: str, msg: dict[str, Any]) -> list[str]:
    """One line per message (readings: per meter); the CLI's output."""
    head = f"{gw} #{msg['seq']}"
    if kind == "readings" and "table" in msg:  # the table form: one line per reading
        return [f"{head} readings {r.meter}: t={r.t} "
                + " ".join(f"{q}={v}" for q, v in r.values.items())
                for r in wire.decode_readings(msg)]
    if kind == "readings":
        out = []
        for s in msg["readings"]:
            t = wire.undelta(s["t"])
            last = {q: wire.undelta(s[q])[-1] for q in wire.QUANTITIES if q in s}
            values = " ".join(f"{q}={v}" for q, v in last.items())
            out.append(f"{head} readings {s['m']}: {len(t)} x, last t={t[-1]} {values}")
        return out
    if kind == "events":
        return [f"{head} event {e['type']} t={e['t']} m={e.get('m', '-')} "
                f"acct={e.get('acct', '-')} {_json(e['detail'])}"
                for e in msg["events"]]
    if kind == "ledger":
        return [f"{head} ledger {e['acct']} n={e['n']} {e['kind']} amt={e['amt']} "
                f"bal={e['bal']} ref={e['ref']}" for e in msg["entries"]]
    dup = " (dup)" if msg.get("dup") else ""
    return [f"{head} reply {msg['id']} {msg['code']}{dup} {msg['msg']} "
            f"{_json(msg['result'])}"]


def _json(value: object) -> str:
    """For printing: JSON where it can be (bytes become their repr), else repr."""
    try:
        return json.dumps(value, default=repr)
    except (TypeError, ValueError):  # a non-text key in a nested map
        return repr(value)


def main(argv: list[str] | None = None) -> int:
    from agent.config import load_config  # the CLI only: tests use the class directly
    from agent.errors import AgentError
    from agent.uplink.cose import read_hex_key

    parser = argparse.ArgumentParser(
        prog="python -m sim.headend",
        description="A simulated head-end: prints what gateways send, tops up accounts.")
    parser.add_argument("-c", "--config", default="board_configs/sim.toml")
    parser.add_argument("--host", help="broker host (default: the config's mqtt.host)")
    parser.add_argument("--port", type=int, help="broker port (default: the config's)")
    parser.add_argument("--topup", type=int, default=0, metavar="PAISE",
                        help="top up every account once at start with this many paise")
    parser.add_argument("--quiet", action="store_true",
                        help="print only replies and errors, not every message")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
        key = read_hex_key(cfg.security.command_key_file)
    except AgentError as exc:
        print(f"sim.headend: {exc}", file=sys.stderr)
        return 2

    def show(line: str) -> None:
        if not args.quiet or " reply " in line or line.startswith("ERROR"):
            print(line, flush=True)

    he = HeadEnd(args.host or cfg.mqtt.host, args.port or cfg.mqtt.port, cfg.mqtt.prefix, key,
                 on_line=show)
    try:
        he.start()
    except (OSError, TimeoutError) as exc:
        print(f"sim.headend: cannot reach the broker: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        he.publish_state(online=True, payments=True)
        run = secrets.token_hex(4)  # txn unique per run: a rerun tops up again
        for account in cfg.accounts if args.topup > 0 else ():
            cid = he.command(cfg.gateway.id, "topup", {"account": account.id,
                                                       "amount": args.topup,
                                                       "txn": f"sim-{run}-{account.id}"})
            print(f"sent topup {account.id} {args.topup} paise as {cid}", flush=True)
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        he.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
