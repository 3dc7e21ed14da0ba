"""The runtime's inbox turn (Runtime._drain_inbox): a poll cycle's readings share one
transaction, everything else is handled on its own, in arrival order, within the bounds."""

from __future__ import annotations

import collections
import queue
import threading
import time
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
    _gather_readings = Runtime._gather_readings
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


def test_a_reading_that_wakes_the_loop_waits_for_the_cycle_polled_after_it(
        monkeypatch: Any) -> None:
    """The loop woken by a reading gathers what the buses post in the next
    READINGS_GATHER_S (here readings 5 ms apart, as a bus polls them back to back, within
    READINGS_GAP_S of each other) and charges them in one transaction, not a commit a
    reading; another kind of event ends the wait."""
    monkeypatch.setattr(runtime, "READINGS_GAP_S", 1.0)  # a busy test machine's gaps
    turn = _Turn()

    def bus() -> None:
        for i in range(1, 6):
            time.sleep(0.005)
            turn.inbox.put(reading(f"M{i}"))
        turn.inbox.put(MeterOffline("M9", ""))
        turn.inbox.put(reading("M6"))

    poster = threading.Thread(target=bus)
    poster.start()
    started = time.monotonic()
    Runtime._gather_readings(cast(Runtime, turn), reading("M0"))
    poster.join()
    assert time.monotonic() - started < runtime.READINGS_GATHER_S + 0.5
    readings = [(what, depth, tx) for what, depth, tx in turn.seen if what.startswith("M")]
    assert readings[:6] == [(f"M{i}", 1, 1) for i in range(6)]  # one transaction
    assert ("MeterOffline", 0, 1) in turn.seen


def test_the_gathering_wait_is_bounded(monkeypatch: Any) -> None:
    """A reading that comes alone waits READINGS_GAP_S for a next one, no longer; readings
    that keep coming are gathered READINGS_GATHER_S at the most."""
    turn = _Turn()
    started = time.monotonic()
    Runtime._gather_readings(cast(Runtime, turn), reading("M0"))  # nothing follows
    waited = time.monotonic() - started
    assert runtime.READINGS_GAP_S - 0.01 <= waited < runtime.READINGS_GAP_S + 0.5
    assert turn.seen == [("M0", 1, 1)]

    monkeypatch.setattr(runtime, "READINGS_GAP_S", 1.0)  # a busy test machine's gaps
    turn = _Turn()
    stop = threading.Event()

    def bus() -> None:  # a reading every 5 ms, for longer than the gathering lasts
        i = 0
        while not stop.is_set():
            i += 1
            turn.inbox.put(reading(f"N{i}"))
            time.sleep(0.005)

    poster = threading.Thread(target=bus)
    poster.start()
    started = time.monotonic()
    try:
        Runtime._gather_readings(cast(Runtime, turn), reading("M0"))
        waited = time.monotonic() - started
    finally:
        stop.set()
        poster.join()
    assert runtime.READINGS_GATHER_S - 0.01 <= waited < runtime.READINGS_GATHER_S + 0.5
