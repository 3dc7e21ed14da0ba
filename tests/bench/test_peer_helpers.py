"""The peer benchmark's pure helpers (bench/peer): nothing here installs or starts the
peer. /proc stat parsing, MQTT framing sizes, reading each side's messages, and the
loss/duplicate count of the reconnect run."""

from __future__ import annotations

import json
import os

from agent.drivers.reading import Reading
from agent.uplink import cbor, wire
from bench.peer import agent_side, tbgw
from bench.peer.measure import Publish, parse_stat, publish_overhead, tree_cpu_s
from bench.peer.runs import AGENT, PEER, losses

# A real line of /proc/<pid>/stat (proc(5)), its comm with a space and a ')'.
STAT = ("4242 (tb gw) x) S 1 4242 4242 0 -1 4194560 5612 0 0 0 1234 567 89 10 20 0 9 0 "
        "88 1156599808 16380 18446744073709551615 1 1 0 0 0 0 0 16781312 17642 0 0 0 17 1 "
        "0 0 0 0 0")


def test_parse_stat_counts_fields_after_the_last_paren() -> None:
    st = parse_stat(STAT)
    assert (st.ppid, st.utime, st.stime, st.cutime, st.cstime) == (1, 1234, 567, 89, 10)


def test_tree_cpu_of_this_process_is_positive() -> None:
    assert tree_cpu_s(os.getpid()) > 0


def test_publish_overhead_qos1() -> None:
    # 1 byte header + 1 byte remaining length (< 128) + 2 topic length + 2 packet id
    assert publish_overhead("v1/gateway/telemetry", 100) == 6
    # remaining = 2 + 20 + 2 + 200 = 224: a 2-byte varint
    assert publish_overhead("v1/gateway/telemetry", 200) == 7
    assert publish_overhead("t", 100, qos=0) == 4


def _tb(at_s: float, device: str, ts_ms: int) -> Publish:
    body = {device: [{"ts": ts_ms, "values": {tag: 1.0 for tag, _, _ in tbgw.REGISTERS}}]}
    return Publish(at_s, tbgw.TELEMETRY_TOPIC, json.dumps(body).encode(), 1, False)


def _agent(at_s: float, seq: int, readings: list[Reading]) -> Publish:
    payload = cbor.dumps(wire.readings_message(agent_side.GW, 1, seq, readings))
    return Publish(at_s, wire.up_topic(agent_side.PREFIX, agent_side.GW, "readings"),
                   payload, 1, False)


def _values() -> dict[str, int]:
    return {q: 1 for q in wire.QUANTITIES}


def test_peer_readings_and_uplink() -> None:
    pub = _tb(0.0, "SDM-0001", 1_000)
    assert tbgw.readings(pub) == [("SDM-0001", 1_000, tbgw.QUANTITIES)]
    assert tbgw.is_uplink(pub)
    answer = Publish(0.0, tbgw.RPC_RESPONSE + "1", tbgw.STUB_ANSWER, 1, False)
    assert not tbgw.is_uplink(answer)
    assert tbgw.readings(Publish(0.0, "v1/gateway/connect", b"{}", 1, False)) is None


def test_agent_readings_key_and_will() -> None:
    pub = _agent(0.0, 7, [Reading("SDM-0001", 100, _values()), Reading("SDM-0002", 100,
                                                                      _values())])
    assert agent_side.readings(pub) == [("SDM-0001", 100_000, 7), ("SDM-0002", 100_000, 7)]
    assert agent_side.message_key(pub) == (agent_side.GW, 7)
    will = Publish(0.0, wire.state_topic(agent_side.PREFIX, agent_side.GW),
                   b'{"online": false, "boot": 1}', 1, False)
    assert agent_side.is_will(will) and agent_side.is_uplink(will)
    assert not agent_side.is_uplink(Publish(0.0, pub.topic, pub.payload, 1, True))


def test_losses_peer_gap_and_duplicate() -> None:
    # Every 5 s from t = 1000 s; the poll at 1030 s is missing, 1040 s arrives twice.
    times = [1000 + 5 * k for k in range(20) if k != 6]
    pubs = [_tb(0.0, "SDM-0001", t * 1000) for t in times] + [_tb(0.0, "SDM-0001", 1_040_000)]
    got = losses(PEER, pubs, 5.0, wall_down=1020.0, wall_up=1035.0, wall_end=1100.0)
    assert got["lost"] == 1 and got["duplicates"] == 1
    assert got["during_outage"] == 3  # of 1020..1035 s inclusive, 1030 did not arrive
    assert got["redelivered"] == 0


def test_losses_agent_dedupes_by_seq_first() -> None:
    r1 = [Reading("SDM-0001", 1000 + 5 * k, _values()) for k in range(3)]
    r2 = [Reading("SDM-0001", 1015 + 5 * k, _values()) for k in range(3)]
    pubs = [_agent(0.0, 1, r1), _agent(1.0, 2, r2), _agent(2.0, 2, r2), _agent(3.0, 4, r1)]
    got = losses(AGENT, pubs, 5.0, wall_down=1000.0, wall_up=1010.0, wall_end=1100.0)
    assert got["redelivered"] == 1  # seq 2 twice: dropped before counting readings
    assert got["seq_gaps"] == 1  # seq 3 never came
    assert got["duplicates"] == 3  # seq 4 carries seq 1's readings again
    assert got["lost"] == 0


def test_reports_groups_messages_sent_together() -> None:
    from bench.peer.runs import reports

    stats = [Publish(t, tbgw.STATS_TOPIC, b"x" * n, 1, False)
             for t, n in ((1.0, 100), (1.5, 10), (61.0, 100), (61.2, 10))]
    size = len(tbgw.STATS_TOPIC)
    assert reports(stats) == [110 + 2 * size, 110 + 2 * size]
