"""Delivery over a fake link (the transport swapped, nothing patched): the in-flight
window, deletion only on PUBACK, resending the same bytes, live data ahead of a backlog,
a stuck link restarting the client and never the store, and the health state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.buffer.cycle import PollCycle
from agent.buffer.store import LANE_BACKLOG, LANE_EVENTS, LANE_READINGS, Store
from agent.clock import SimClock
from agent.drivers.reading import Reading
from agent.events import MeterOnline
from agent.uplink import cbor, forming
from agent.uplink.delivery import MAX_INFLIGHT, MAX_METER_ERRORS, Delivery, state_payload

T0 = 1_767_225_600
GW = "gw1"


class FakeLink:
    """What Delivery needs of MqttLink; the test plays the broker."""

    def __init__(self) -> None:
        self.connected = True
        self.sent: list[tuple[int, str, bytes, bool]] = []  # (mid, topic, payload, retain)
        self.restarts = 0
        self.mid = 0

    def publish(self, suffix: str, payload: bytes, *, retain: bool = False) -> int | None:
        if not self.connected:
            return None
        self.mid += 1
        self.sent.append((self.mid, suffix, payload, retain))
        return self.mid

    def restart(self) -> None:
        self.restarts += 1

    def status(self) -> dict[str, Any]:
        return {"connected": self.connected, "reconnects": 2, "restarts": self.restarts}

    def seqs(self) -> list[int]:
        return [decoded(p)["seq"] for _, s, p, _ in self.sent if s.startswith("up/")]


def decoded(payload: bytes) -> dict[str, Any]:
    out = cbor.loads(payload, max_bytes=1 << 20)
    assert isinstance(out, dict)
    return out


def setup(tmp_path: Path, **kw: Any) -> tuple[Store, FakeLink, SimClock, Delivery]:
    store = Store(tmp_path)
    link = FakeLink()
    clock = SimClock(T0)
    delivery = Delivery(store, link, clock, gw=GW, boot=1, **kw)  # type: ignore[arg-type]
    delivery.on_connected()
    return store, link, clock, delivery


def events(store: Store, n: int, t: int = T0) -> None:
    for i in range(n):  # a row each (one transaction's events share rows)
        with store.tx():
            store.add_pending(LANE_EVENTS, forming.event_item(t, MeterOnline(f"M{i}", None)), t)


def form(store: Store, clock: SimClock) -> None:
    # one message per event: form one event at a time
    while store.pending_stats(LANE_EVENTS)[0]:
        with store.tx():
            [(row_id, item, *_)] = store.pending(LANE_EVENTS, 1, 1)
            seq = store.take_seq()
            msg = {"v": 1, "gw": GW, "boot": 1, "seq": seq, "events": [cbor.loads(item)]}
            store.add_outbox(seq, LANE_EVENTS, cbor.dumps(msg), int(clock.time_s()))
            store.delete_pending([row_id])


def test_the_window_is_bounded_and_rows_leave_only_on_puback(tmp_path: Path) -> None:
    store, link, clock, delivery = setup(tmp_path)
    events(store, 100)
    form(store, clock)
    delivery.pump()
    assert len(link.sent) == MAX_INFLIGHT == len(delivery.inflight)
    delivery.pump()
    assert len(link.sent) == MAX_INFLIGHT  # no room, nothing more
    for mid, *_ in link.sent[:5]:
        delivery.on_puback(mid)
    assert store.backlog()[0] == 100  # deleted at the next pump, in one transaction
    delivery.pump()
    assert store.backlog()[0] == 95 and len(link.sent) == MAX_INFLIGHT + 5
    assert link.seqs() == list(range(1, MAX_INFLIGHT + 6))


def test_the_window_is_bounded_in_bytes_too(tmp_path: Path) -> None:
    store, link, clock, delivery = setup(tmp_path, max_inflight_bytes=1000)
    events(store, 100)
    form(store, clock)
    delivery.pump()
    assert 1 < len(link.sent) < MAX_INFLIGHT
    assert sum(len(p) for _, _, p, _ in link.sent) <= 1000


def test_after_a_reconnect_the_same_bytes_go_again(tmp_path: Path) -> None:
    store, link, clock, delivery = setup(tmp_path)
    events(store, 3)
    form(store, clock)
    delivery.pump()
    first = [p for _, _, p, _ in link.sent]
    delivery.on_puback(link.sent[0][0])
    delivery.on_disconnected()
    link.connected = False
    delivery.pump()
    assert len(link.sent) == 3
    link.connected = True
    delivery.on_connected()
    delivery.pump()
    assert [p for _, _, p, _ in link.sent[3:]] == first[1:]  # unacknowledged: sent again
    assert store.backlog()[0] == 2


def test_a_late_puback_of_an_old_connection_is_ignored(tmp_path: Path) -> None:
    store, link, clock, delivery = setup(tmp_path)
    events(store, 1)
    form(store, clock)
    delivery.pump()
    delivery.on_disconnected()
    delivery.on_connected()
    delivery.on_puback(link.sent[0][0])  # that mid belonged to the old connection
    delivery.pump()
    assert store.backlog()[0] == 1 and len(link.sent) == 2


def test_live_readings_overtake_a_backlog_drain(tmp_path: Path) -> None:
    """Six hours of 50 meters at 1-minute polls piled up; the link is slow (the test
    acknowledges one message per round); a live reading goes out after one PUBACK."""
    store, link, clock, delivery = setup(tmp_path, max_inflight=2)
    with store.tx():
        for i in range(360):
            for m in range(50):
                r = Reading(f"M{m:02d}", T0 + 60 * i, {"import_wh": i, "p_w": 100 + m})
                store.add_pending(LANE_READINGS, forming.reading_item(r), r.t, r.meter)
    clock.advance(6 * 3600 + 120)
    forming.form_messages(store, GW, 1, int(clock.time_s()), True)
    delivery.pump()
    assert len(delivery.inflight) == 2
    assert store.outbox_rows(LANE_BACKLOG) > 2
    live = Reading("M07", int(clock.time_s()), {"import_wh": 999, "p_w": 1})
    with store.tx():
        store.add_pending(LANE_READINGS, forming.reading_item(live), live.t, live.meter)
    clock.advance(forming.LIVE_FLUSH_S)
    forming.form_messages(store, GW, 1, int(clock.time_s()), True)
    delivery.on_puback(link.sent[0][0])
    delivery.pump()
    newest = decoded(link.sent[-1][2])
    assert newest["readings"] == [{"m": "M07", "t": [live.t], "import_wh": [999], "p_w": [1]}]
    assert store.outbox_rows(LANE_BACKLOG) > 0  # the drain is far from done


def test_pump_forms_the_backlog_on_demand(tmp_path: Path) -> None:
    store, link, clock, delivery = setup(tmp_path)
    with store.tx():
        for i in range(96 * 40):
            r = Reading(f"M{i % 40}", T0 + i, {"import_wh": i})
            store.add_pending(LANE_READINGS, forming.reading_item(r), r.t, r.meter)
    clock.advance(3600)
    delivery.pump()  # no form_messages: the pump formed the backlog itself
    assert link.sent and store.pending_stats(LANE_READINGS)[0] < 96 * 40


def test_the_tick_forms_what_is_due_and_only_while_the_link_is_up(tmp_path: Path) -> None:
    """Delivery is the runtime's one caller of forming: its tick forms the events (due at
    every call), nothing while the link is down; the next pump publishes them."""
    store, link, clock, delivery = setup(tmp_path)
    events(store, 3)
    link.connected = False
    delivery.tick(int(clock.time_s()))
    assert store.pending_stats(LANE_EVENTS)[0] == 3 and store.outbox_rows(LANE_EVENTS) == 0
    link.connected = True
    delivery.tick(int(clock.time_s()))
    assert store.pending_stats(LANE_EVENTS)[0] == 0
    assert store.outbox_rows(LANE_EVENTS) == 1  # one message of the three events
    delivery.pump()
    assert [len(decoded(p)["events"]) for _, s, p, _ in link.sent if s.startswith("up/")] == [3]


def test_a_completed_cycle_is_formed_at_once_in_the_table_form(tmp_path: Path) -> None:
    cycle = PollCycle({"M1": 60.0, "M2": 60.0}, forming.TABLE_LINGER_S)
    store, link, clock, delivery = setup(tmp_path, cycle=cycle)
    with store.tx():
        for meter in ("M1", "M2"):
            r = Reading(meter, T0, {"import_wh": 1})
            store.add_pending(LANE_READINGS, forming.reading_item(r), r.t, r.meter)
            cycle.reading(meter, T0)
    assert cycle.complete()
    delivery.cycle_complete()
    [row] = store.outbox_next(set(), 10)
    assert row.lane == LANE_READINGS and "table" in decoded(row.payload)


def test_a_stuck_link_restarts_the_client_not_the_store(tmp_path: Path) -> None:
    store, link, clock, delivery = setup(tmp_path, puback_timeout_s=5)
    events(store, 3)
    form(store, clock)
    delivery.pump()
    clock.advance(4)
    assert delivery.check_stuck() is False
    clock.advance(2)
    assert delivery.check_stuck() is True
    assert link.restarts == 1 and not delivery.inflight
    assert store.backlog()[0] == 3  # nothing lost, nothing reopened
    delivery.on_disconnected()
    delivery.on_connected()
    delivery.pump()
    assert link.seqs() == [1, 2, 3, 1, 2, 3]


def test_the_birth_and_the_periodic_state(tmp_path: Path) -> None:
    status = {"boot": 1, "version": "9.9", "started": T0, "meters": [
        {"id": "M1", "online": True, "errors": {"polls": 200, "ok": 190}},
        {"id": "M2", "online": False, "errors": {}}]}
    store, link, clock, delivery = setup(tmp_path, status=lambda: status)
    events(store, 2, t=T0 - 50)
    delivery.pump()
    [(_, topic, payload, retain)] = link.sent
    state = json.loads(payload)
    assert topic == "state" and retain
    # the 2 events are not yet in a message: the backlog counts them (CONTRACT 3)
    assert state == {"online": True, "version": "9.9", "boot": 1, "started": T0, "meters": 2,
                     "meters_online": 1, "meters_failing": 2, "polls": 200, "failed": 10,
                     "backlog": 2, "backlog_items": 2, "backlog_bytes": state["backlog_bytes"],
                     "oldest_s": 50, "reconnects": 2, "restarts": 0,
                     "drops": {"stripped_readings": 0, "dropped_readings": 0,
                               "dropped_messages": 0},
                     "meter_errors": {"M1": {"polls": 200, "failed": 10, "rate_pm": 50,
                                             "online": True},
                                      "M2": {"polls": 0, "failed": 0, "rate_pm": 0,
                                             "online": False}},
                     "disk": "normal"}
    clock.advance(59)
    delivery.pump()
    assert len(link.sent) == 1
    clock.advance(1)
    delivery.pump()
    assert len(link.sent) == 2 and link.sent[1][1] == "state"
    delivery.on_connected()  # every connect: a birth at once
    delivery.pump()
    assert link.sent[2][1] == "state"


def test_health_lists_a_meter_only_while_it_is_offline_or_failing(tmp_path: Path) -> None:
    """After the birth a report names only the meters that are offline or failed a poll
    since the report before; the totals stand for the rest (a healthy gateway of 250
    meters sends a few hundred bytes a minute, not a line per meter)."""
    meters = {"M1": [True, 100, 100], "M2": [True, 100, 97], "M3": [False, 100, 90]}

    def status() -> dict[str, Any]:
        return {"boot": 1, "meters": [
            {"id": k, "online": on, "errors": {"polls": polls, "ok": ok}}
            for k, (on, polls, ok) in meters.items()]}

    _, link, clock, delivery = setup(tmp_path, status=status)
    delivery.pump()
    birth = json.loads(link.sent[-1][2])
    assert sorted(birth["meter_errors"]) == ["M2", "M3"]  # every failure this boot
    assert (birth["polls"], birth["failed"], birth["meters_online"]) == (300, 13, 2)
    meters["M3"][0] = True  # back online, no new failures anywhere
    clock.advance(60)
    delivery.pump()
    quiet = json.loads(link.sent[-1][2])
    assert quiet["meter_errors"] == {} and quiet["meters_failing"] == 0
    assert quiet["meters_online"] == 3 and quiet["failed"] == 13
    meters["M1"] = [True, 110, 108]  # two new failures
    clock.advance(60)
    delivery.pump()
    assert json.loads(link.sent[-1][2])["meter_errors"] == {
        "M1": {"polls": 110, "failed": 2, "rate_pm": 18, "online": True}}
    delivery.on_disconnected()
    delivery.on_connected()  # a new birth names every failure of the boot again
    delivery.pump()
    assert sorted(json.loads(link.sent[-1][2])["meter_errors"]) == ["M1", "M2", "M3"]


def test_health_names_at_most_max_meter_errors_meters_offline_first() -> None:
    n = MAX_METER_ERRORS + 10
    meters = [{"id": f"M{i:03d}", "online": i % 2 == 0, "errors": {"polls": 10, "ok": 10 - i % 5}}
              for i in range(n)]
    body = json.loads(state_payload({"boot": 1, "meters": meters},
                                    backlog={"total": 0, "items": 0, "bytes": 0, "oldest_s": 0},
                                    drops={}, link={}))
    listed = body["meter_errors"]
    offline = [m["id"] for m in meters if not m["online"]]
    assert len(listed) == MAX_METER_ERRORS and set(offline) <= set(listed)
    assert body["meters_failing"] == len(offline) + sum(
        1 for i in range(n) if i % 2 == 0 and i % 5)


def test_state_payload_is_compact_json() -> None:
    body = state_payload({"boot": 3, "meters": []}, backlog={"total": 1, "items": 2,
                                                            "bytes": 3, "oldest_s": 4},
                         drops={"dropped_readings": 5}, link={"reconnects": 6})
    assert b" " not in body and json.loads(body)["boot"] == 3
