"""The storage bound (bounds.enforce_bounds): the drop order, the data_dropped events
that say what went (seqs included), the free-disk floor, and what is never dropped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import vocab
from agent.buffer import bounds
from agent.buffer.journal import Journal
from agent.buffer.store import LANE_EVENTS, LANE_LEDGER, LANE_READINGS, Store
from agent.config import StoreConfig
from agent.drivers.reading import Reading
from agent.events import MeterOnline
from agent.uplink import cbor, forming, wire

T0 = 1_767_225_600
FULL = {"import_wh": 1000, "export_wh": 3, "p_w": 1500, "v_dv": 2301, "i_ma": 6500,
        "f_chz": 4998, "pf_milli": 950}
HUGE = 10**12



def enforce(store: Store, limits: StoreConfig, now_s: int, *, free_bytes: int) -> bounds.Drops:
    return bounds.enforce_bounds(store, limits, now_s, forming.ITEMS, free_bytes=free_bytes)


def fill(store: Store, hours: int, meters: int = 4, start: int = T0) -> list[Reading]:
    readings = [Reading(f"M{m}", start + 900 * i, {**FULL, "import_wh": 1000 + i})
                for i in range(hours * 4) for m in range(meters)]
    with store.tx():
        for r in readings:
            store.add_pending(LANE_READINGS, forming.reading_item(r), r.t, r.meter)
    return readings


def pending_readings(store: Store) -> list[Any]:
    out = []
    for row in store.oldest_readings(10_000):
        out += cbor2.loads(b"\x9f" + row.item + b"\xff")
    return out


def dropped_events(store: Store) -> list[dict[str, Any]]:
    events = [wire.check_events({"v": 1, "gw": "g", "boot": 1, "seq": 1,
                                 "events": [cbor.loads(item)]})["events"][0]
              for item in store.pending_items(LANE_EVENTS)]
    return [e["detail"] for e in events if e["type"] == "data_dropped"]


def test_under_the_cap_nothing_happens(tmp_path: Path) -> None:
    store = Store(tmp_path)
    fill(store, 24)
    drops = enforce(store, StoreConfig(HUGE, 0), T0, free_bytes=HUGE)
    assert drops == bounds.Drops() and not dropped_events(store)


def test_instantaneous_values_go_first_oldest_first(tmp_path: Path) -> None:
    store = Store(tmp_path)
    fill(store, 24)
    size = store.size_bytes()
    drops = enforce(store, StoreConfig(size - 1000, 0), T0, free_bytes=HUGE)
    assert drops.stripped > 0 and drops.readings == 0
    assert store.size_bytes() <= size - 1000 + 200  # + the data_dropped event
    items = pending_readings(store)
    assert len(items) == 24 * 4 * 4  # no reading went
    stripped = [i for i in items if i[4:] == [None] * 5]
    assert stripped and all(i[2:4] == [1000 + n, 3] for n, i in
                            ((i[2] - 1000, i) for i in items))  # energy registers stay
    # oldest first, a run at a time (a run: up to RUN_MAX readings of one meter)
    flags = [r[0] for r in store.conn.execute(
        "SELECT stripped FROM pending WHERE lane = ? ORDER BY id", (LANE_READINGS,))]
    assert flags == sorted(flags, reverse=True) and 0 in flags
    [event] = dropped_events(store)
    assert event["what"] == "instantaneous" and event["count"] == drops.stripped
    assert event["quantities"] == list(vocab.INSTANTANEOUS)
    assert store.counters()["stripped_readings"] == drops.stripped


def test_then_whole_readings_oldest_first_and_formed_messages_are_named(tmp_path: Path
                                                                      ) -> None:
    store = Store(tmp_path)
    fill(store, 6)
    # The link was up for a moment: the first six hours became backlog messages.
    forming.form_backlog(store, "gw", 1, T0 + 7 * 3600, 100)
    formed = [r.seq for r in store.outbox_next(set(), 100)]
    assert formed
    fill(store, 6, start=T0 + 8 * 3600)
    with store.tx():
        journal = Journal(store, forming.entry_item)
        journal.ensure_account("A", "domestic")
        journal.topup("A", 500, "t1", T0)
        store.add_pending(LANE_EVENTS, forming.event_item(T0, MeterOnline("M1", None)), T0)
    ledger_and_events = store.conn.execute(
        "SELECT SUM(n) FROM pending WHERE lane IN (?, ?)", (LANE_EVENTS, LANE_LEDGER)
    ).fetchone()[0]
    drops = enforce(store, StoreConfig(1 << 20, 0), T0, free_bytes=HUGE)
    assert drops == bounds.Drops()
    drops = enforce(store, StoreConfig(1000, 0), T0 + 13 * 3600,
                                  free_bytes=HUGE)
    assert set(drops.seqs) == set(formed)  # the oldest data first: the formed messages
    assert drops.readings == 24 * 4 * 2 - len(pending_readings(store))
    events = dropped_events(store)
    assert [e["what"] for e in events] == ["instantaneous", "readings"]
    assert events[1]["seqs"] == sorted(formed) and events[1]["count"] == drops.readings
    assert events[1]["from"] == T0
    assert store.outbox_next(set(), 100) == []
    remaining = pending_readings(store)
    assert all(i[4:] == [None] * 5 for i in remaining)  # everything left was stripped first
    # never dropped: the ledger entry and the event (and the two data_dropped events)
    assert store.conn.execute("SELECT SUM(n) FROM pending WHERE lane IN (?, ?)",
                              (LANE_EVENTS, LANE_LEDGER)).fetchone()[0] == \
        ledger_and_events + 2
    assert store.counters() == {"stripped_readings": events[0]["count"],
                                "dropped_readings": drops.readings,
                                "dropped_messages": len(formed)}


def test_the_free_disk_floor_freezes_the_store_at_its_size(tmp_path: Path) -> None:
    store = Store(tmp_path)
    fill(store, 240)  # 10 days of 4 meters: over FLOOR_ROOM_BYTES
    size = store.size_bytes()
    assert size > bounds.FLOOR_ROOM_BYTES
    limits = StoreConfig(HUGE, min_free_bytes=1 << 30)
    assert enforce(store, limits, T0, free_bytes=1 << 29) == bounds.Drops()
    assert store.meta("frozen_bytes") == size
    fill(store, 4, start=T0 + 240 * 3600)  # more readings: over the frozen size now
    drops = enforce(store, limits, T0, free_bytes=1 << 29)
    assert drops.stripped > 0 and store.size_bytes() <= size + 200
    # The disk has room again (someone freed it): the cap is max_bytes once more.
    enforce(store, limits, T0, free_bytes=1 << 31)
    assert store.meta("frozen_bytes") == 0


def test_under_the_floor_a_small_store_still_has_room_for_live_readings(tmp_path: Path
                                                                         ) -> None:
    """Frozen at a few bytes (everything had been delivered when the disk filled), the
    store may still hold FLOOR_ROOM_BYTES: live readings are formed and sent, not dropped
    before they could go."""
    store = Store(tmp_path)
    limits = StoreConfig(HUGE, min_free_bytes=1 << 30)
    assert enforce(store, limits, T0, free_bytes=0) == bounds.Drops()
    assert store.meta("frozen_bytes") == 1
    fill(store, 2)  # a few minutes of readings at a short poll
    assert store.size_bytes() < bounds.FLOOR_ROOM_BYTES
    assert enforce(store, limits, T0, free_bytes=0) == bounds.Drops()
    fill(store, 240, start=T0 + 2 * 3600)  # but not more than that
    drops = enforce(store, limits, T0, free_bytes=0)
    assert drops.stripped > 0 and store.size_bytes() <= bounds.FLOOR_ROOM_BYTES


def test_only_what_is_never_dropped_is_left_over_the_cap(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with store.tx():
        journal = Journal(store, forming.entry_item)
        journal.ensure_account("A", "domestic")
        for i in range(50):
            journal.topup("A", 100, f"t{i}", T0 + i)
    drops = enforce(store, StoreConfig(10, 0), T0, free_bytes=HUGE)
    assert drops == bounds.Drops()
    assert len(journal.entries("A")) == 50


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 6), st.booleans()), min_size=1, max_size=8),
       st.integers(500, 40_000))
def test_drop_order_holds_whatever_the_mix(tmp_path_factory: Any,
                                           plan: list[tuple[int, bool]], cap: int) -> None:
    """After any mix of pending runs and formed messages: under the cap (or only what is
    never dropped is left); a reading was dropped whole only once every remaining one
    had been stripped; counts add up."""
    store = Store(tmp_path_factory.mktemp("bounds"))
    t = T0
    total = 0
    for hours, form in plan:
        total += len(fill(store, hours, meters=2, start=t))
        t += hours * 3600 + 3600
        if form:
            forming.form_backlog(store, "gw", 1, t, 100)
    drops = enforce(store, StoreConfig(cap, 0), t, free_bytes=HUGE)
    events = store.conn.execute("SELECT COALESCE(SUM(size), 0) FROM pending WHERE lane = ?",
                                (LANE_EVENTS,)).fetchone()[0]
    # over the cap by no more than the data_dropped events of this pass, or nothing but
    # those is left
    assert store.size_bytes() <= cap + events
    remaining = pending_readings(store)
    if drops.readings:
        assert all(i[4:] == [None] * 5 for i in remaining)
    in_messages = sum(len(wire.decode_readings(cbor.loads(r.payload, max_bytes=1 << 20)))
                      for r in store.outbox_next(set(), 1000))
    assert len(remaining) + in_messages + drops.readings == total
