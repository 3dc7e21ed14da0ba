"""Live readings in the table form (``[mqtt] live_readings = "table"``): when a poll cycle
is complete (cycle.py) and each bound of the outbox (linger, readings, bytes), the
message itself (one table of every meter, decoded as docs/mqtt-api.md says), a backlog
still in series, and the series form unchanged without a cycle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.buffer.cycle import PollCycle
from agent.buffer.store import LANE_BACKLOG, LANE_READINGS, Store
from agent.drivers.reading import Reading
from agent.uplink import cbor, forming, table, wire

T0 = 1_767_225_600
GW = "gw1"
METERS = ("SDM-0001", "SDM-0002", "SDM-0003")


def reading(meter: str, t: int, wh: int) -> Reading:
    return Reading(meter, t, {"import_wh": wh, "p_w": 300 + wh % 7, "v_dv": 2300 - wh % 5})


def add(store: Store, cycle: PollCycle | None, readings: list[Reading]) -> None:
    with store.tx():
        for r in readings:
            store.add_pending(LANE_READINGS, forming.reading_item(r), r.t, r.meter)
    if cycle is not None:
        for r in readings:
            cycle.reading(r.meter, r.t)


def form(store: Store, now: int, cycle: PollCycle | None, *, link_up: bool = True) -> int:
    return forming.form_messages(store, GW, 1, now, link_up, cycle=cycle)


def sent(store: Store) -> list[dict[str, Any]]:
    """The formed up/readings messages, decoded, in seq order (acknowledged on the way)."""
    out = []
    for row in store.outbox_next(set(), 10_000):
        assert row.topic == "up/readings"
        message = cbor.loads(row.payload, max_bytes=1 << 20)
        assert isinstance(message, dict)
        out.append(message)
        store.ack(row.seq)
    return out


def rows_of(message: dict[str, Any]) -> list[tuple[str, int, dict[str, int]]]:
    return table.decode_table(message)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path)


def cycle_of(*meters: str, interval_s: float = 900.0) -> PollCycle:
    return PollCycle({m: interval_s for m in meters}, forming.TABLE_LINGER_S)


# -- the poll cycle ----------------------------------------------------------------------
def test_a_cycle_is_complete_when_every_meter_has_read_or_failed() -> None:
    cycle = cycle_of(*METERS)
    assert not cycle.complete()  # nothing reported: nothing to send
    cycle.reading("SDM-0001", T0)
    assert cycle.waiting_for() == ["SDM-0002", "SDM-0003"] and not cycle.complete()
    cycle.reading("SDM-0002", T0 + 1)
    cycle.watch("SDM-0003", 0, T0 + 1)  # no failure seen: still waited for
    assert not cycle.complete()
    cycle.watch("SDM-0003", 1, T0 + 2)  # a poll that gave no reading
    assert cycle.complete()
    cycle.sent()
    assert not cycle.complete()  # a new cycle starts with the next report
    cycle.watch("SDM-0003", 1, T0 + 3)  # the same count again: no new failure
    assert not cycle.complete()


def test_a_failed_poll_after_a_reading_counts_again() -> None:
    cycle = cycle_of("A", interval_s=5)
    cycle.watch("A", 2, T0)
    cycle.sent()
    cycle.watch("A", 0, T0 + 5)  # read again (the reading itself comes as an event)
    cycle.watch("A", 1, T0 + 10)
    assert cycle.complete()


def test_an_offline_meter_is_not_waited_for() -> None:
    cycle = cycle_of(*METERS)
    cycle.set_offline(["SDM-0003"])
    cycle.reading("SDM-0001", T0)
    cycle.reading("SDM-0002", T0)
    assert cycle.complete()


def test_a_meter_of_a_slower_bus_is_waited_for_only_in_its_own_cycles() -> None:
    cycle = PollCycle({"FAST": 60.0, "SLOW": 900.0}, forming.TABLE_LINGER_S)
    assert cycle.linger_s == forming.TABLE_LINGER_S
    cycle.reading("FAST", T0)
    assert cycle.waiting_for() == ["SLOW"]  # never heard of since the start: due
    cycle.reading("SLOW", T0 + 1)
    cycle.sent()
    cycle.reading("FAST", T0 + 60)  # SLOW is due at T0 + 901: not in this cycle
    assert cycle.complete()
    cycle.sent()
    cycle.reading("FAST", T0 + 900)  # ... but in this one
    assert cycle.waiting_for() == ["SLOW"]


def test_the_linger_bound_is_at_most_the_shortest_poll_interval() -> None:
    assert PollCycle({"A": 2.0, "B": 900.0}, 30).linger_s == 2.0
    cycle = PollCycle({}, 30)
    assert cycle.linger_s == 30
    cycle.set_meters({"A": 5.0})
    assert cycle.linger_s == 5.0


# -- the outbox's bounds -----------------------------------------------------------------
def test_a_complete_cycle_goes_at_once_as_one_table(store: Store) -> None:
    cycle = cycle_of(*METERS)
    add(store, cycle, [reading("SDM-0001", T0, 1000), reading("SDM-0002", T0, 2000)])
    assert form(store, T0 + 1, cycle) == 0  # SDM-0003 is due and not heard from
    add(store, cycle, [reading("SDM-0003", T0 + 1, 3000)])
    assert form(store, T0 + 1, cycle) == 1  # complete: no linger
    [message] = sent(store)
    assert set(message) == {"v", "gw", "boot", "seq", "table"}
    assert message["table"]["bn"] == "SDM-000" and message["table"]["m"] == ["1", "2", "3"]
    assert rows_of(message) == [(r.meter, r.t, dict(r.values)) for r in (
        reading("SDM-0001", T0, 1000), reading("SDM-0002", T0, 2000),
        reading("SDM-0003", T0 + 1, 3000))]
    assert wire.check_message("readings", message) == message
    assert store.pending_stats(LANE_READINGS) == (0, None)


def test_an_incomplete_cycle_goes_when_the_linger_bound_expires(store: Store) -> None:
    cycle = cycle_of(*METERS)
    add(store, cycle, [reading("SDM-0001", T0, 1000)])
    add(store, cycle, [reading("SDM-0002", T0 + 3, 2000)])
    for now in range(T0, T0 + forming.TABLE_LINGER_S):
        assert form(store, now, cycle) == 0, now - T0
    assert form(store, T0 + forming.TABLE_LINGER_S, cycle) == 1
    [message] = sent(store)
    assert [m for m, _, _ in rows_of(message)] == ["SDM-0001", "SDM-0002"]
    # the late meter's reading completes the cycle: the others are due again only at
    # their next poll
    add(store, cycle, [reading("SDM-0003", T0 + 31, 3000)])
    assert form(store, T0 + 31, cycle) == 1
    assert [m for m, _, _ in rows_of(sent(store)[0])] == ["SDM-0003"]


def test_the_linger_bound_follows_a_short_poll_interval(store: Store) -> None:
    cycle = cycle_of("A", "B", interval_s=2)
    add(store, cycle, [reading("A", T0, 1)])
    assert form(store, T0 + 1, cycle) == 0
    assert form(store, T0 + 2, cycle) == 1  # within one poll cycle, whatever B does


def test_a_full_batch_of_readings_goes_at_once(store: Store,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forming, "TABLE_MAX_READINGS", 10)
    meters = [f"M{i:03d}" for i in range(25)]
    cycle = cycle_of(*meters)
    add(store, cycle, [reading(m, T0, 100 + i) for i, m in enumerate(meters[:24])])
    assert form(store, T0, cycle) == 2  # two full batches; the last 4 wait for M024
    assert [len(rows_of(m)) for m in sent(store)] == [10, 10]
    add(store, cycle, [reading("M024", T0 + 1, 1)])
    assert form(store, T0 + 1, cycle) == 1
    assert [m for m, _, _ in rows_of(sent(store)[0])] == meters[20:]


def test_a_full_batch_of_bytes_goes_at_once(store: Store,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    size = len(forming.reading_item(reading("M000", T0, 100)))
    monkeypatch.setattr(forming, "TABLE_MAX_ITEM_BYTES", 5 * size)
    meters = [f"M{i:03d}" for i in range(12)]
    cycle = cycle_of(*meters, "LATE")
    add(store, cycle, [reading(m, T0, 100 + i) for i, m in enumerate(meters)])
    assert form(store, T0, cycle) == 2  # 5 + 5 stored items' bytes; the last 2 wait
    assert [len(rows_of(m)) for m in sent(store)] == [5, 5]
    assert store.pending_stats(LANE_READINGS)[0] == 2


def test_a_table_over_the_message_bound_goes_as_two_at_once(store: Store,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    meters = [f"M{i:03d}" for i in range(40)]
    cycle = cycle_of(*meters)
    add(store, cycle, [reading(m, T0, 100 + i) for i, m in enumerate(meters)])
    whole = len(cbor.dumps(table.table_message(GW, 1, 1, [
        reading(m, T0, 100 + i) for i, m in enumerate(meters)])))
    monkeypatch.setattr(forming, "MAX_MESSAGE_BYTES", whole - 1)
    assert form(store, T0, cycle) == 2  # halved, and the other half at once
    assert [len(rows_of(m)) for m in sent(store)] == [20, 20]
    assert not cycle.complete()


def test_nothing_is_formed_while_the_link_is_down_and_the_cycle_waits(store: Store) -> None:
    cycle = cycle_of("A")
    add(store, cycle, [reading("A", T0, 1)])
    assert cycle.complete()
    assert form(store, T0, cycle, link_up=False) == 0 and store.meta("next_seq") == 1
    assert cycle.complete()  # not reset: nothing went
    assert form(store, T0 + 1, cycle) == 1
    assert not cycle.complete()


def test_a_backlog_still_goes_as_series(store: Store) -> None:
    cycle = cycle_of("A", "B")
    old = [reading(m, T0 + 900 * i, 10 * i) for i in range(12) for m in ("A", "B")]
    add(store, cycle, old)
    now = T0 + 4 * 3600
    assert form(store, now, cycle) == store.outbox_rows(LANE_BACKLOG) >= 1
    messages = sent(store)
    assert all("readings" in m and "table" not in m for m in messages)
    assert sorted((r.meter, r.t) for m in messages for r in wire.decode_readings(m)) == \
        sorted((r.meter, r.t) for r in old)


def test_a_table_message_is_the_deterministic_cbor_of_its_map(store: Store) -> None:
    cycle = cycle_of(*METERS)
    readings = [reading(m, T0 + i, 50 * i) for i, m in enumerate(METERS)]
    add(store, cycle, readings)
    assert form(store, T0 + 2, cycle) == 1
    [row] = store.outbox_next(set(), 10)
    assert row.payload == cbor.dumps(table.table_message(GW, 1, row.seq, readings))
    assert Store(store.path.parent).outbox_next(set(), 10)[0].payload == row.payload


def test_without_a_cycle_live_readings_stay_series(store: Store) -> None:
    add(store, None, [reading("A", T0, 1)])
    assert form(store, T0 + forming.LIVE_FLUSH_S, None) == 1
    [message] = sent(store)
    assert message["readings"] == [{"m": "A", "t": [T0], "import_wh": [1], "p_w": [301],
                                    "v_dv": [2299]}]
