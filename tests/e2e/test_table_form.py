"""The table form end to end (``[mqtt] live_readings = "table"``): the agent as a process,
a real mosquitto, simulated meters on ptys. Live readings arrive as one table a poll
cycle, within one poll cycle of being read; decoded as docs/mqtt-api.md "The table form"
says (the decoder here is written from that page, not from the agent's code) they are
the simulator's values; and kill -9 with readings not yet sent, then a restart, loses
none of them (every reading committed to the store when the agent died arrives)."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.uplink import cbor, wire
from sim.broker import find_mosquitto
from sim.tomlw import dumps
from tests.e2e.harness import Gateway, wait_until

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed")

POLL_S = 3.0
QUANTITIES = ("import_wh", "export_wh", "p_w", "v_dv", "i_ma", "f_chz", "pf_milli")
KILLS = 3


class Recorder:
    """Every up/readings PUBLISH as the broker delivers it: (arrival time, payload)."""

    def __init__(self, port: int, gw: str) -> None:
        self.got: list[tuple[float, bytes]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="table-recorder")
        self.client.on_connect = lambda c, *_: c.subscribe(f"gw/{gw}/up/readings", qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.got.append((time.time(), bytes(msg.payload)))

    def messages(self) -> list[tuple[float, dict[str, Any]]]:
        with self.lock:
            got = list(self.got)
        return [(at, cbor2.loads(payload)) for at, payload in got]

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def running_sums(column: list[int | None]) -> list[int | None]:
    """docs/mqtt-api.md: running sums down the rows that skip nulls."""
    out: list[int | None] = []
    total = 0
    for x in column:
        if x is not None:
            total += x
        out.append(None if x is None else total)
    return out


def decode(msg: dict[str, Any]) -> list[tuple[str, int, dict[str, int]]]:
    """(meter, t, values) of a readings message in either form, from the docs alone."""
    if "table" not in msg:  # the series form (CONTRACT 4): a backlog
        out = []
        for s in msg["readings"]:
            ts = running_sums(s["t"])
            cols = {q: running_sums(s[q]) for q in QUANTITIES if q in s}
            out += [(s["m"], int(t or 0), {q: int(c[i] or 0) for q, c in cols.items()})
                    for i, t in enumerate(ts)]
        return out
    assert "readings" not in msg
    body = msg["table"]
    assert set(body) <= {"bn", "m", "t", *QUANTITIES}
    bn = body.get("bn", "")
    times = running_sums(body["t"])
    cols = {q: running_sums(body[q]) for q in QUANTITIES if q in body}
    assert all(len(c) == len(body["m"]) for c in [times, *cols.values()])
    rows = []
    for i, suffix in enumerate(body["m"]):
        t = times[i]
        assert t is not None
        rows.append((bn + suffix, t, {q: v for q, c in cols.items() if (v := c[i]) is not None}))
    return rows


def unsent(data_dir: Path) -> set[tuple[str, int]]:
    """(meter, t) of every reading the store holds: pending items and formed messages
    not yet acknowledged. Read-only, as the CLI reads it."""
    conn = sqlite3.connect(f"file:{data_dir / 'agent.sqlite3'}?mode=ro", uri=True)
    try:
        items = conn.execute("SELECT item FROM pending WHERE lane = 3").fetchall()
        payloads = conn.execute("SELECT payload FROM outbox WHERE topic LIKE '%up/readings'"
                                ).fetchall()
    finally:
        conn.close()
    out = {(r[0], r[1]) for (item,) in items for r in cbor2.loads(b"\x9f" + item + b"\xff")}
    for (payload,) in payloads:
        message = cbor.loads(payload, max_bytes=1 << 20)
        assert isinstance(message, dict)
        out |= {(m, t) for m, t, _ in decode(message)}
    return out


def test_live_readings_as_one_table_a_cycle_on_time_and_through_kill_9(tmp_path: Path
                                                                        ) -> None:
    # speed 0: the simulated registers stand still, so every reading must show exactly
    # what the simulator's state file says
    g = Gateway(tmp_path, speed=0.0, mqtt={"live_readings": "table"})
    raw = tomllib.loads(g.config.read_text())
    for bus in raw["bus"]:
        bus["poll_interval_s"] = POLL_S
    g.config.write_text(dumps(raw) + "\n")
    data_dir = Path(raw["gateway"]["data_dir"])
    meters = sorted(m["id"] for m in raw["meter"])
    recorder = Recorder(g.broker.port, g.gw)
    try:
        agent = g.start_agent()
        wait_until(lambda: len(recorder.messages()) >= 4, 40, "four readings messages")
        first_at = recorder.messages()[0][0]
        time.sleep(2 * POLL_S)
        # live: one table a cycle, every meter in it once, on the broker within a cycle
        live = [(at, m) for at, m in recorder.messages() if at > first_at]
        assert len(live) >= 2
        for at, msg in live:
            assert "table" in msg and wire.check_message("readings", msg) == msg
            rows = decode(msg)
            assert [m for m, _, _ in rows] == meters, "one row per meter, in meter order"
            assert rows == [(r.meter, r.t, r.values) for r in wire.decode_readings(msg)]
            for meter, t, _ in rows:
                # t is the second the reading was taken in: it was read before t + 1
                assert at - t <= POLL_S + 1.0, f"{meter} at {t} arrived {at - t:.2f} s later"
        # the values are the simulator's (its registers stand still)
        sim = g.sim_state()["meters"]
        for _, msg in live:
            for meter, _, values in decode(msg):
                assert set(values) == set(QUANTITIES)
                assert values["import_wh"] == sim[meter]["import_wh"]
                assert values["export_wh"] == sim[meter]["export_wh"]
                assert abs(values["p_w"] - sim[meter]["p_w"]) <= 1
                assert 2000 <= values["v_dv"] <= 2600 and 4900 <= values["f_chz"] <= 5100
        # kill -9 while readings wait in the store, start again: they all arrive. A
        # cycle's readings come from the bus in one burst and are formed in the turn that
        # charges them, so with the broker answering they wait for a few milliseconds:
        # the broker is paused (SIGSTOP) until readings wait, unformed or unacknowledged
        must_arrive: set[tuple[str, int]] = set()
        caught = 0
        assert g.broker.proc is not None
        broker_pid = g.broker.proc.pid
        for _ in range(KILLS):
            os.kill(broker_pid, signal.SIGSTOP)
            try:
                wait_until(lambda: unsent(data_dir), 3 * POLL_S, "readings waiting in the store")
                agent.kill9()
            finally:
                os.kill(broker_pid, signal.SIGCONT)
            held = unsent(data_dir)
            caught += bool(held)
            must_arrive |= held
            boot = max(msg["boot"] for _, msg in recorder.messages())
            # a new start polls at once: a second later, so that its readings' t (whole
            # seconds) cannot be those of the last ones and a (meter, t) twice is a
            # reading sent twice
            time.sleep(1.1)
            agent = g.start_agent()
            def restarted(b: int = boot) -> bool:
                return any(msg["boot"] > b for _, msg in recorder.messages())

            wait_until(restarted, 30, "a readings message of the new start")
        assert caught >= 1, "no kill found readings in the store"

        def arrived() -> set[tuple[str, int]]:
            return {(m, t) for _, msg in recorder.messages() for m, t, _ in decode(msg)}

        wait_until(lambda: must_arrive <= arrived(), 40,
                   "every reading the store held at a kill")
        seqs = sorted(set(g.headend.raw_seqs(g.gw)))
        assert seqs == list(range(1, len(seqs) + 1)), "seq has gaps"
        assert not g.headend.violations() and not g.headend.errors()
        got = [(m, t) for msg in g.headend.messages(g.gw, "readings")
               for m, t, _ in decode(msg)]
        assert len(got) == len(set(got)), "a reading twice after dedupe by (gw, seq)"
        print(f"table form: {len(recorder.messages())} readings messages, {caught} of "
              f"{KILLS} kills with {len(must_arrive)} readings unsent, all arrived")
    finally:
        recorder.stop()
        if g.agent is not None and not g.agent.alive():
            print(g.agent.tail())
        g.close()
