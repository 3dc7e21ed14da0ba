"""The runtime's inbox turn (Runtime._drain_inbox): a poll cycle's readings share one
transaction, everything else is handled on its own, in arrival order, within the bounds."""

from __future__ import annotations

import collections
import queue
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast

from agent import runtime
from agent.drivers.events import BusEvent, MeterOffline, MeterOnline, ReadingTaken, RelaySwitched
from agent.drivers.reading import Reading
from agent.runtime import Runtime

T = TypeVar("T")


class _Store:
    def __init__(self) -> None:
        self.depth = 0
        self.transactions = 0

    @contextmanager
    def tx(self) -> Iterator[None]:
        if self.depth == 0:
            self.transactions += 1
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1


class _Turn:
    """Runtime's inbox methods over a queue and a store that counts transactions."""

    _inbox_events = Runtime._inbox_events
    _drain_inbox = Runtime._drain_inbox
    _handle_readings = Runtime._handle_readings
    _handle_one = Runtime._handle_one
    _contained_tx = Runtime._contained_tx
    _readings_tx = Runtime._readings_tx

    def __init__(self) -> None:
        self.inbox: queue.Queue[Any] = queue.Queue()
        self._carried: collections.deque[Any] = collections.deque()
        self.store = _Store()
        self.seen: list[tuple[str, int, int]] = []  # (what, in a transaction, which one)

    def _with_room(self, call: Callable[[], T], what: str) -> tuple[bool, T | None]:
        return True, call()  # the disk has room (buffer/room.py has its own tests)

    def _handle(self, event: BusEvent) -> None:
        what = event.reading.meter if isinstance(event, ReadingTaken) else type(event).__name__
        self.seen.append((what, self.store.depth, self.store.transactions))


def reading(meter: str) -> ReadingTaken:
    return ReadingTaken(meter, Reading(meter, 1_770_000_000, {"import_wh": 1}))


def drained(events: list[BusEvent]) -> _Turn:
    """One inbox turn over ``events``."""
    turn = _Turn()
    for event in events:
        turn.inbox.put(event)
    # _Turn has only what the turn uses of a Runtime (its inbox methods, a queue, a store)
    Runtime._drain_inbox(cast(Runtime, turn))
    return turn


def test_consecutive_readings_share_a_transaction_and_order_is_kept() -> None:
    turn = drained([reading("A"), reading("B"), RelaySwitched("A", None, "", "failed"),
                    reading("C"), MeterOffline("D", ""), MeterOnline("D"), reading("E")])
    assert turn.seen == [("A", 1, 1), ("B", 1, 1), ("RelaySwitched", 0, 1), ("C", 1, 2),
                         ("MeterOffline", 0, 2), ("MeterOnline", 0, 2), ("E", 1, 3)]


def test_a_transaction_holds_at_most_readings_per_tx(monkeypatch: Any) -> None:
    monkeypatch.setattr(runtime, "READINGS_PER_TX", 3)
    turn = drained([reading(f"M{i}") for i in range(7)])
    assert [tx for _, _, tx in turn.seen] == [1, 1, 1, 2, 2, 2, 3]


def test_a_turn_takes_at_most_max_events_per_turn(monkeypatch: Any) -> None:
    monkeypatch.setattr(runtime, "MAX_EVENTS_PER_TURN", 4)
    turn = drained([reading(f"M{i}") for i in range(6)])
    assert len(turn.seen) == 4 and turn.inbox.qsize() == 2


def test_the_stop_wake_up_is_handled_as_nothing() -> None:
    """stop() puts a wake-up into the inbox so the loop's wait ends at once; the turn
    that takes it skips it, wherever it lies."""
    turn = _Turn()
    turn._carried.append(runtime._WAKE)
    for event in [reading("A"), runtime._WAKE, reading("B")]:
        turn.inbox.put(event)
    Runtime._drain_inbox(cast(Runtime, turn))
    assert turn.seen == [("A", 1, 1), ("B", 1, 1)]


class _Idle:
    _idle_s = Runtime._idle_s

    def __init__(self, mono: float) -> None:
        self._relays_dirty = False
        self._next_tick = self._next_status = self._next_relay_check = mono + 100.0
        self._next_cleanup = mono + 3600.0


def test_the_loop_waits_until_the_next_periodic_work_and_at_most_a_tick() -> None:
    idle = _Idle(50.0)
    assert Runtime._idle_s(cast(Runtime, idle), 50.0) == runtime.TICK_S  # capped
    idle._next_status = 50.25
    assert Runtime._idle_s(cast(Runtime, idle), 50.0) == 0.25  # the status file is due
    idle._next_tick = 49.0
    assert Runtime._idle_s(cast(Runtime, idle), 50.0) == 0.0  # overdue: no wait
    idle = _Idle(50.0)
    idle._relays_dirty = True  # a relay to bring in line: no wait
    assert Runtime._idle_s(cast(Runtime, idle), 50.0) == 0.0
