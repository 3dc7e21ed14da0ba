"""Broker outages and a full store (issue 5):

- 15 s without the broker, with the agent as a process over MQTT 5 and a head-end on
  a shared subscription: every reading arrives, in time order per meter, seq gapless;
- hours without the broker, run in a moment: the store, outbox and delivery of the
  agent in this process with a simulated clock, a broker that is down while eight
  hours of readings of 100 meters pile up; after it is back every reading arrives, in
  order per meter, and readings taken after the return go out ahead of the backlog;
- the store full (free disk under the floor from the start, and none of the room for
  live readings that the floor keeps otherwise: a test knob): instantaneous values go
  first, then whole readings, each drop reported as data_dropped, while the ledger and
  relay control go on (credit runs out, the relay opens, a top-up closes it).
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import pytest

from agent.buffer.store import Store
from agent.clock import SimClock
from agent.drivers.reading import Reading
from agent.uplink import cbor, wire
from sim.broker import Mosquitto, find_mosquitto
from sim.headend import HeadEnd
from tests.e2e.harness import wait_until
from tests.e2e.uplink_helpers import GW, Pipeline, WiredGateway, config_for

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed")
T0 = 1_767_225_600


def in_order(readings: list[Reading], meter: str) -> list[Reading]:
    mine = sorted((r for r in readings if r.meter == meter), key=lambda r: r.t)
    imports = [r.values["import_wh"] for r in mine]
    assert imports == sorted(imports), f"{meter}: the import register ran backwards"
    return mine


def test_a_15_s_outage_over_mqtt_5(tmp_path: Path) -> None:
    """The agent speaks MQTT 5; the harness's head-end (persistent session) checks that
    nothing is missing; a second head-end on a shared subscription gets data too (a
    broker delivers a shared group's messages only to members that are connected, so
    it is not the one that can vouch for completeness across a broker restart)."""
    g = WiredGateway(tmp_path, meters=2, mqtt={"protocol": "5", "session_expiry_s": 3600})
    shared = HeadEnd("127.0.0.1", g.broker.port, "gw", g.key, client_id="he-shared",
                     protocol="5", share_group="headend")
    shared.start()
    he = g.headend
    try:
        g.start_agent()
        wait_until(lambda: len(he.readings(g.gw)) >= 4, 30, "first readings")
        g.broker.stop()
        down_t = int(time.time())
        time.sleep(15)
        g.broker.start()
        wait_until(lambda: any(r.t >= down_t + 17 for r in he.readings(g.gw)), 60,
                   "readings after the outage")
        g.quiesce()
        seqs = sorted(set(he.raw_seqs(g.gw)))
        assert seqs == list(range(1, len(seqs) + 1))
        assert not he.violations() and not he.errors()
        for meter in ("SDM-0001", "SDM-0002"):
            ts = [r.t for r in in_order(he.readings(g.gw), meter)]
            outage = [t for t in ts if down_t <= t <= down_t + 15]
            assert len(outage) >= 10, f"{meter}: the readings of the outage are missing"
            assert max(b - a for a, b in zip(ts, ts[1:], strict=False)) <= 3
        state = he.state(g.gw)
        assert state is not None and state["online"] is True and state["reconnects"] >= 1
        assert shared.readings(g.gw) and not shared.errors()
    finally:
        shared.stop()
        g.close()


def test_hours_without_the_broker(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    clock = SimClock(T0)
    cfg = config_for(broker.port, tmp_path / "data")
    he = HeadEnd("127.0.0.1", broker.port, "gw", bytes(32), client_id="he-hours",
                 persistent=True)
    he.start()
    broker.stop()  # the head-end's session stays in the broker's persistence
    pipe = Pipeline(cfg, clock=clock, backoff_max_s=0.5, max_inflight=2)  # a slow link
    pipe.start()
    meters = [f"M{m:03d}" for m in range(100)]
    made: list[Reading] = []
    try:
        for minute in range(8 * 60):  # 8 hours, one reading a minute per meter
            batch = [Reading(m, int(clock.time_s()) + i % 30,
                             {"import_wh": 1000 * i + minute * (i + 1), "p_w": 60 * i,
                              "v_dv": 2300 + minute % 7}) for i, m in enumerate(meters)]
            pipe.add(batch)
            made += batch
            clock.advance(60)
            if minute % 60 == 0:
                pipe.turn(0)  # the agent keeps trying; nothing is formed while down
        assert pipe.link.attempts >= 1 and not pipe.link.connected
        assert pipe.store.backlog()[0] == 0  # no seq was taken for what cannot be sent
        broker.start()
        pipe.run_until(lambda: pipe.delivery.up, 20, "the link back")
        pipe.turn()  # the first tick after the return: what piled up is backlog now
        live = [Reading(m, int(clock.time_s()), {"import_wh": 10**7, "p_w": 1, "v_dv": 1})
                for m in meters[:3]]
        pipe.add(live)
        clock.advance(10)
        pipe.next_form = 0  # the next turn forms (a runtime tick) before the drain is over
        started = time.monotonic()
        pipe.run_until(pipe.drained, 120, "the backlog to drain")
        drain_s = time.monotonic() - started
        wait_until(lambda: len(he.readings(GW)) == len(made) + 3, 30, "every reading")
        assert not he.violations() and not he.errors()
        got = he.readings(GW)
        for meter in meters:
            assert in_order(got, meter) == [r for r in made + live if r.meter == meter]
        # in seq order: the live readings came first, and the backlog of each meter
        # went out in time order, message after message
        by_seq = [(m["seq"], r) for m in he.messages(GW, "readings")
                  for r in wire.decode_readings(m)]
        first_live = min(s for s, r in by_seq if r.t == live[0].t)
        stream: dict[str, list[int]] = defaultdict(list)
        for _, r in sorted(by_seq, key=lambda x: x[0]):
            if r.values["import_wh"] != 10**7:
                stream[r.meter].append(r.t)
        assert all(ts == sorted(ts) for ts in stream.values())
        arrival = [a.seq for a in he.arrivals() if a.kind == "readings"]
        assert arrival.index(first_live) <= 3, "live data waited for the drain"
        print(f"hours outage: {len(made)} readings drained in {drain_s:.2f} s as "
              f"{len(he.messages(GW, 'readings'))} messages")
    finally:
        pipe.stop()
        he.stop()
        broker.stop()


def test_the_store_full_drops_in_order_and_the_ledger_and_relay_go_on(tmp_path: Path
                                                                      ) -> None:
    g = WiredGateway(
        tmp_path, speed=10.0, meters=1,
        store={"min_free_bytes": 1 << 62},  # under the floor from the first tick
        tariff={"domestic": {"fixed_per_day": 0, "slabs": [{"rate": 1_000_000}],
                             "duty_bp": 0, "billing_day": 1}},
        policy={"emergency_credit": 0, "alert_levels_pct": [0]})
    g.env = {"UPLINK_TEST_FLOOR_ROOM_BYTES": "1"}  # no room kept for live readings
    try:
        g.start_agent()
        wait_until(lambda: g.headend.events(g.gw, "data_dropped"), 30, "a data_dropped event")
        g.command("ping", {})  # confirms the clock: the relay may open
        wait_until(lambda: g.sim_state()["meters"]["SDM-0001"]["connected"] is False, 30,
                   "the relay to open when credit runs out")
        reply = g.command("topup", {"account": "ACC-0001", "amount": 10_000_000,
                                    "txn": "FULL-1"})
        assert reply["ok"] and reply["result"]["balance"] > 0
        wait_until(lambda: g.sim_state()["meters"]["SDM-0001"]["connected"] is True, 15,
                   "the relay to close after the top-up")
        wait_until(lambda: any(e["ref"] == "FULL-1" for e in g.headend.ledger_entries(g.gw)),
                   15, "the top-up on up/ledger")
        wait_until(lambda: any(e["detail"]["what"] == "readings"
                               for e in g.headend.events(g.gw, "data_dropped")), 30,
                   "whole readings dropped")
        drops = g.headend.events(g.gw, "data_dropped")
        kinds = [e["detail"]["what"] for e in drops]
        assert kinds[0] == "instantaneous", kinds  # always before whole readings
        assert all(e["detail"]["count"] > 0 for e in drops)
        status = g.status()
        assert status["backlog"]["bytes"] < 64 * 1024
        store = Store.open_readonly(g.data_dir())
        counters = store.counters()
        store.close()
        assert counters["dropped_readings"] > 0 and counters["stripped_readings"] > 0
        entries = g.headend.ledger_entries(g.gw, "ACC-0001")
        assert sum(e["amt"] for e in entries) == entries[-1]["bal"]
        assert any(e["kind"] == "energy" for e in entries)
        raw = [cbor.loads(a.payload) for a in g.headend.arrivals()
               if a.kind == "events" and a.seq is not None]
        assert raw
    finally:
        g.close()
