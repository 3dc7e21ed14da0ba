"""Bytes per reading on the wire (issues 5 and 14) -> sections of bench/results/uplink.md.

  python -m bench.uplink_wire [--meters 500] [--hours 72] [--live-hours 6]

The same readings (``--meters`` meters polled every 15 minutes for ``--hours``, all
seven quantities, realistic values) three ways:
1. as the agent sends a backlog (the store's runs formed by forming.form_backlog);
2. as the agent sends live data (messages of what is polled within LIVE_FLUSH_S);
3. the baseline: ThingsBoard gateway telemetry JSON (``v1/gateway/telemetry``:
   ``{"SDM-0001": [{"ts": ms, "values": {...}}]}``), compact separators, grouped
   exactly like the agent's messages (the fairest grouping for JSON), and one
   reading per message as the ThingsBoard gateway's connectors usually send it.
Both with and without MQTT PUBLISH framing (fixed header, topic, packet id).

Then live readings, series against the table form (``[mqtt] live_readings``, issue
14), both formed by the real outbox (``forming.form_messages`` once a second, a
``PollCycle`` fed every reading for the table form) from the same readings of the
first ``--live-hours``, at two timings: each meter at its own second of the interval
(as above), and back to back, as the agent's bus schedulers poll (two buses, a meter
every ``POLL_GAP_S`` on each, every interval from its start). With seven quantities
and with five (``FIVE``); against the series of the same run, and against the peer's
figure in bench/results/peer.md (from that file's run, seven quantities).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from agent.buffer.cycle import PollCycle
from agent.buffer.store import LANE_READINGS, Store
from agent.drivers.reading import Reading
from agent.uplink import cbor, forming, wire

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_767_225_600
STEP_S = 900
AGENT_TOPIC = "gw/gw-demo-01/up/readings"
TB_TOPIC = "v1/gateway/telemetry"
POLL_GAP_S = 0.04  # back to back: a meter every 40 ms on each of two buses (bench/peer)
BUSES = 2
FIVE = ("import_wh", "p_w", "v_dv", "i_ma", "pf_milli")  # a five-quantity meter
PEER = ROOT / "bench" / "results" / "peer.md"


def make_readings(meters: int, hours: int, seed: int = 1) -> list[Reading]:
    """A daily load profile per meter (W), with the registers and instantaneous values
    a single-phase meter shows; each meter polled at its own second of the interval."""
    rng = random.Random(seed)
    out = []
    for m in range(meters):
        base = rng.uniform(150, 900)
        wh = rng.randrange(100_000, 9_000_000)
        offset = rng.randrange(STEP_S)
        for k in range(hours * 3600 // STEP_S):
            t = T0 + k * STEP_S + offset
            hour = (t // 3600) % 24
            p = base * (0.5 + 0.9 * math.exp(-((hour - 20) % 24) ** 2 / 8)) * rng.uniform(.8, 1.2)
            wh += int(p * STEP_S / 3600)
            v = 2300 + rng.randrange(-60, 60)
            out.append(Reading(f"SDM-{m:04d}", t, {
                "import_wh": wh, "export_wh": 0, "p_w": int(p), "v_dv": v,
                "i_ma": int(p / (v / 10) * 1000), "f_chz": 5000 + rng.randrange(-15, 15),
                "pf_milli": rng.randrange(880, 990)}))
    out.sort(key=lambda r: r.t)
    return out


def mqtt_overhead(topic: str, payload: int) -> int:
    """PUBLISH QoS 1: fixed header (1 + remaining-length varint), topic, packet id."""
    remaining = 2 + len(topic) + 2 + payload
    return 1 + (1 if remaining < 128 else 2 if remaining < 16384 else 3) + 2 + len(topic) + 2


def thingsboard(groups: list[list[Reading]]) -> tuple[int, int]:
    """(payload bytes, with framing) of the readings as ThingsBoard gateway telemetry."""
    payload = framed = 0
    for group in groups:
        body: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in group:
            body[r.meter].append({"ts": r.t * 1000, "values": dict(r.values)})
        n = len(json.dumps(body, separators=(",", ":")).encode())
        payload += n
        framed += n + mqtt_overhead(TB_TOPIC, n)
    return payload, framed


def backlog(readings: list[Reading]) -> tuple[list[bytes], list[list[Reading]]]:
    """The agent's backlog messages, and the readings in each."""
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        store = Store(Path(tmp))
        with store.tx():
            for r in readings:
                store.add_pending(LANE_READINGS, forming.reading_item(r), r.t, r.meter)
        while forming.form_backlog(store, "gw-demo-01", 1, readings[-1].t + 3600, 64):
            pass
        payloads = [row.payload for row in store.outbox_next(set(), 1_000_000)]
        store.close()
    groups = [wire.decode_readings(cbor.loads(p, max_bytes=1 << 20)) for p in payloads]
    return payloads, groups


def live(readings: list[Reading]) -> tuple[list[bytes], list[list[Reading]]]:
    """The agent's live messages: what is polled within one LIVE_FLUSH_S shares one."""
    windows: dict[int, list[Reading]] = defaultdict(list)
    for r in readings:
        windows[r.t // forming.LIVE_FLUSH_S].append(r)
    payloads, groups = [], []
    for seq, (_, group) in enumerate(sorted(windows.items()), start=1):
        payloads.append(forming.encode_readings("gw-demo-01", 1, seq, wire.readings_body(group)))
        groups.append(group)
    return payloads, groups


def back_to_back(readings: list[Reading], meters: int) -> list[Reading]:
    """The same readings at the times the agent's bus schedulers take them: every
    interval from its start, the meters of each bus one after another."""
    out = []
    for r in readings:
        m = int(r.meter.split("-")[1])
        cycle = (r.t - T0) // STEP_S
        t = T0 + cycle * STEP_S + int((m // BUSES) * POLL_GAP_S)
        out.append(Reading(r.meter, t, r.values))
    out.sort(key=lambda r: (r.t, r.meter))
    return out


def only(readings: list[Reading], quantities: tuple[str, ...]) -> list[Reading]:
    return [Reading(r.meter, r.t, {q: v for q, v in r.values.items() if q in quantities})
            for r in readings]


def live_formed(readings: list[Reading], *, table_form: bool) -> tuple[list[bytes], int]:
    """The live messages the outbox forms from ``readings`` (in time order), ticking once
    a second as the runtime does: (payloads, readings in them)."""
    meters = sorted({r.meter for r in readings})
    cycle = PollCycle({m: float(STEP_S) for m in meters}, forming.TABLE_LINGER_S) \
        if table_form else None
    payloads: list[bytes] = []
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        store = Store(Path(tmp))
        store.conn.execute("PRAGMA synchronous = OFF")  # bytes, not durability
        i, now = 0, readings[0].t
        while True:
            with store.tx():
                while i < len(readings) and readings[i].t <= now:
                    r = readings[i]
                    store.add_pending(LANE_READINGS, forming.reading_item(r), r.t, r.meter)
                    if cycle is not None:
                        cycle.reading(r.meter, r.t)
                    i += 1
            forming.form_messages(store, "gw-demo-01", 1, now, True, cycle=cycle)
            rows = store.outbox_next(set(), 1_000_000)
            payloads += [row.payload for row in rows]
            store.ack_many([row.seq for row in rows])
            if store.pending_stats(LANE_READINGS)[0]:
                now += 1
            elif i < len(readings):
                now = max(now + 1, readings[i].t)  # nothing waits: on to the next poll
            else:
                break
        store.close()
    messages = [wire.check_readings(cbor.loads(p, max_bytes=1 << 20)) for p in payloads]
    decoded = sum(len(wire.decode_readings(m)) for m in messages)
    assert decoded == len(readings) and all(("table" in m) == table_form for m in messages)
    return payloads, decoded


def peer_live_b() -> float | None:
    """The peer's live bytes per reading (topic + payload) from bench/results/peer.md."""
    try:
        text = PEER.read_text()
    except OSError:
        return None
    m = re.search(r"reading messages: topic \+ payload, B/reading\*\* \| [\d.]+ \[[^]]*\] "
                  r"\| ([\d.]+) ", text)
    return float(m.group(1)) if m else None


def measure_live(meters: int, hours: int) -> dict[str, Any]:
    spread = make_readings(meters, hours)
    timings = {"spread": spread, "back to back": back_to_back(spread, meters)}
    out: dict[str, Any] = {"meters": meters, "hours": hours, "peer": peer_live_b(), "rows": []}
    for timing, readings in timings.items():
        for label, quantities in (("7", tuple(wire.QUANTITIES)), ("5", FIVE)):
            rs = only(readings, quantities)
            row: dict[str, Any] = {"timing": timing, "quantities": label}
            for form in ("series", "table"):
                payloads, n = live_formed(rs, table_form=form == "table")
                payload = sum(len(p) for p in payloads)
                row[form] = {
                    "messages": len(payloads), "readings": n, "payload": payload / n,
                    "topic": (payload + len(AGENT_TOPIC) * len(payloads)) / n,
                    "framed": (payload + sum(mqtt_overhead(AGENT_TOPIC, len(p))
                                             for p in payloads)) / n}
            out["rows"].append(row)
    return out


def report_live(r: dict[str, Any]) -> str:
    peer = r["peer"]
    lines = [
        "## Live readings: series against the table form (issue 14)",
        "",
        f"{r['meters']} meters every 15 minutes for {r['hours']} hours "
        f"(`python -m bench.uplink_wire --live-hours {r['hours']}`), the same readings "
        "formed by the real outbox both ways: series (`live_readings = \"series\"`, what "
        f"is polled within LIVE_FLUSH_S = {forming.LIVE_FLUSH_S} s shares a message) and "
        "the table form (`live_readings = \"table\"`, one message when a poll cycle is "
        f"complete or TABLE_LINGER_S = {forming.TABLE_LINGER_S} s after its first "
        "reading). Timing \"back to back\": as the agent's bus schedulers poll (two "
        f"buses, a meter every {POLL_GAP_S * 1000:.0f} ms on each); \"spread\": each "
        "meter at its own second of the interval. B/reading with the topic is what "
        "bench/results/peer.md counts on the broker (topic + payload).",
        "",
        "| timing | quantities | series: messages | series B/reading (payload / + topic "
        "/ framed) | table: messages | table B/reading (payload / + topic / framed) | "
        "table / series (+ topic) |" + (" table / peer (+ topic) |" if peer else ""),
        "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if peer else ""),
    ]
    for row in r["rows"]:
        se, ta = row["series"], row["table"]
        cells = [row["timing"], row["quantities"], f"{se['messages']:,}",
                 f"{se['payload']:.1f} / {se['topic']:.1f} / {se['framed']:.1f}",
                 f"{ta['messages']:,}",
                 f"{ta['payload']:.1f} / {ta['topic']:.1f} / {ta['framed']:.1f}",
                 f"**1/{se['topic'] / ta['topic']:.1f}**"]
        if peer:
            cells.append(f"1/{peer / ta['topic']:.1f}" if row["quantities"] == "7" else "—")
        lines.append("| " + " | ".join(cells) + " |")
    if peer:
        lines += ["", f"Peer: thingsboard-gateway's {peer:.1f} B/reading (topic + payload, "
                  "seven quantities, 250 meters) is the figure of bench/results/peer.md, "
                  "measured in that file's run (`python -m bench.peer`), not in this one."]
    return "\n".join(lines)


def measure(meters: int, hours: int) -> dict[str, Any]:
    readings = make_readings(meters, hours)
    n = len(readings)
    rows: dict[str, Any] = {"readings": n, "meters": meters, "hours": hours}
    for name, (payloads, groups) in (("backlog", backlog(readings)), ("live", live(readings))):
        assert sum(len(g) for g in groups) == n
        payload = sum(len(p) for p in payloads)
        framed = payload + sum(mqtt_overhead(AGENT_TOPIC, len(p)) for p in payloads)
        tb_payload, tb_framed = thingsboard(groups)
        rows[name] = {"messages": len(payloads), "payload": payload / n, "framed": framed / n,
                      "tb_payload": tb_payload / n, "tb_framed": tb_framed / n}
    one_each = thingsboard([[r] for r in readings])
    rows["tb_one_per_message"] = {"payload": one_each[0] / n, "framed": one_each[1] / n}
    return rows


def report(r: dict[str, Any]) -> str:
    lines = [
        "## Bytes per reading on the wire",
        "",
        f"{r['readings']:,} readings: {r['meters']} meters, every 15 minutes for "
        f"{r['hours']} hours, all seven quantities (`python -m bench.uplink_wire`).",
        "Baseline: the same readings as ThingsBoard gateway telemetry JSON "
        "(`{\"SDM-0001\": [{\"ts\": ms, \"values\": {...}}]}`, compact), grouped into "
        "messages exactly as the agent grouped them.",
        "",
        "| how the agent sent them | messages | agent B/reading | JSON B/reading | ratio |"
        " agent B/reading, MQTT framing incl. | JSON, framing incl. | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, label in (("backlog", "backlog (after an outage)"),
                        ("live", f"live ({forming.LIVE_FLUSH_S} s batches)")):
        x = r[name]
        lines.append(f"| {label} | {x['messages']:,} | {x['payload']:.1f} | "
                     f"{x['tb_payload']:.1f} | 1/{x['tb_payload'] / x['payload']:.1f} | "
                     f"{x['framed']:.1f} | {x['tb_framed']:.1f} | "
                     f"1/{x['tb_framed'] / x['framed']:.1f} |")
    one = r["tb_one_per_message"]
    lines += ["", f"JSON with one reading per message (how ThingsBoard connectors "
              f"usually publish): {one['payload']:.1f} B/reading, {one['framed']:.1f} with "
              f"framing, i.e. 1/{one['framed'] / r['live']['framed']:.1f} against the "
              "agent's live messages and "
              f"1/{one['framed'] / r['backlog']['framed']:.1f} against its backlog."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--meters", type=int, default=500)
    parser.add_argument("--hours", type=int, default=72)
    parser.add_argument("--live-hours", type=int, default=6,
                        help="hours of readings for series against the table form")
    args = parser.parse_args()
    print(report(measure(args.meters, args.hours)))
    print()
    print(report_live(measure_live(args.meters, args.live_hours)))


if __name__ == "__main__":
    main()
