"""The storage bound: what the store may hold for the uplink, and what goes first.

The bound (``enforce_bounds``, called by uplink/forming.py before it forms): the
bytes held for the uplink may not exceed ``[store] max_bytes``, and while free disk
is under ``min_free_bytes`` they may not grow past what they were when it got there
(SQLite reuses freed pages, so a store that does not grow takes no more disk).
Over the bound, in this order:
  1. strip the instantaneous values (p_w, v_dv, i_ma, f_chz, pf_milli) from the
     oldest pending readings, a run at a time: the energy registers stay;
  2. drop the oldest readings whole: pending items, or formed readings messages
     (oldest data first); a dropped message's seq becomes a gap that the event
     names in ``detail.seqs``.
Ledger entries, events and replies are never dropped. Each pass that drops
reports it as ``data_dropped`` events ({what: instantaneous | readings, count}).
Under the floor the store may still hold ``FLOOR_ROOM_BYTES`` whatever its size was:
room for the live readings of a few minutes to be formed and sent (SQLite reuses
their pages once they are acknowledged), so a full disk does not stop the readings.

A full disk (a write found no room, disk.py): ``make_room`` drops the oldest readings
whole, pending or formed, until the readings held are ``1/FULL_KEEP_SHARE`` of what
they were, and holds the store at that size while the disk stays under its floor.
Reported as ``data_dropped`` {what: readings, count, ..., reason: disk_full}.

The bound is store policy, so it lives here; the forms of the items it thins or adds
(a run without its instantaneous values, the bytes of a ``data_dropped`` record of
agent/events.py) are uplink/forming.py's, handed in as ``Items``: buffer/ does not
know the wire format.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from agent.buffer.connection import disk_free_bytes
from agent.buffer.store import LANE_EVENTS, PendingRow, Store
from agent.config import StoreConfig
from agent.events import DataDropped
from agent.vocab import INSTANTANEOUS

log = logging.getLogger("agent.outbox")

BOUND_CHUNK = 64  # runs (up to RUN_MAX readings each) stripped or dropped per round
BOUND_ROUNDS = 64  # rounds per call; what is left over is done at the next call
FLOOR_ROOM_BYTES = 64 * 1024  # under the free-disk floor the store may hold at least this
FULL_KEEP_SHARE = 2  # a full disk: the readings held are cut to 1/this of their bytes


class Items(Protocol):
    """The item forms the bound needs (uplink/forming.py's ``ITEMS``)."""

    def strip_run(self, run: bytes) -> bytes:
        """The run without its instantaneous values (``INSTANTANEOUS``)."""
        ...

    def event_item(self, t: int, event: DataDropped) -> bytes:
        """An event item (CONTRACT 5)."""
        ...


@dataclass(frozen=True, slots=True)
class Drops:
    """What one enforce_bounds call took away."""

    stripped: int = 0  # readings that lost their instantaneous values
    readings: int = 0  # readings dropped whole (pending or in dropped messages)
    seqs: tuple[int, ...] = ()  # formed messages dropped


def store_cap(store: Store, limits: StoreConfig, free_bytes: int) -> int:
    """The byte cap now: ``max_bytes``, or while the disk is under its free floor the
    store's size when it got there (kept in meta so a restart keeps it)."""
    frozen = store.meta("frozen_bytes")
    if free_bytes < limits.min_free_bytes:
        if not frozen:
            frozen = max(1, store.size_bytes())
            store.set_meta("frozen_bytes", frozen)
            log.warning("event=disk_floor free=%d floor=%d frozen_bytes=%d", free_bytes,
                        limits.min_free_bytes, frozen)
        return min(limits.max_bytes, max(frozen, FLOOR_ROOM_BYTES))
    if frozen:
        store.set_meta("frozen_bytes", 0)
    return limits.max_bytes


def enforce_bounds(store: Store, limits: StoreConfig, now_s: int, items: Items, *,
                   free_bytes: int | None = None) -> Drops:
    """Bring the uplink's bytes under the cap (see the module docstring for the order);
    the drops and their data_dropped events commit together."""
    free = disk_free_bytes(store.path.parent) if free_bytes is None else free_bytes
    stripped: list[PendingRow] = []
    with store.tx():
        cap = store_cap(store, limits, free)
        size = store.size_bytes()
        rounds = 0
        while size > cap and rounds < BOUND_ROUNDS:
            rounds += 1
            rows = store.oldest_readings(BOUND_CHUNK, unstripped=True)
            if not rows:
                break
            for row in rows:
                new = items.strip_run(row.item)
                store.replace_item(row.id, new)
                size += len(new) - row.size
                stripped.append(row)
                if size <= cap:
                    break
        dropped, size = _drop_oldest(store, size, cap, BOUND_ROUNDS - rounds)
        if size > cap:
            log.warning("event=store_over_cap bytes=%d cap=%d (only what is never dropped, "
                        "or more next time)", size, cap)
        drops = Drops(sum(r.n for r in stripped), dropped.readings, dropped.seqs)
        if drops.stripped:
            store.count("stripped_readings", drops.stripped)
            ts = [r.t for r in stripped]
            store.add_pending(LANE_EVENTS, items.event_item(now_s, DataDropped(
                what="instantaneous", count=drops.stripped, quantities=INSTANTANEOUS,
                from_s=min(ts), to_s=max(ts))), now_s)
        _report_dropped(store, items, dropped, now_s)
    if drops.stripped or drops.readings:
        log.warning("event=data_dropped stripped=%d readings=%d seqs=%s cap=%d",
                    drops.stripped, drops.readings, list(drops.seqs), cap)
    return drops


@dataclass(frozen=True, slots=True)
class _Dropped:
    readings: int = 0  # readings dropped whole (pending or in dropped messages)
    seqs: tuple[int, ...] = ()  # formed messages dropped
    times: tuple[int, ...] = ()  # the first reading's time of each row or message dropped


def _drop_oldest(store: Store, size: int, cap: int, rounds: int) -> tuple[_Dropped, int]:
    """Whole readings, oldest first (pending runs, or formed readings messages: oldest
    data first), until ``size`` is at most ``cap`` or ``rounds`` are done; what was
    dropped and the size left. Inside the caller's transaction."""
    dropped: list[PendingRow] = []
    seqs: list[int] = []
    in_messages = 0
    times: list[int] = []
    while size > cap and rounds > 0:
        rounds -= 1
        oldest_pending = store.oldest_readings(BOUND_CHUNK)
        message = store.oldest_reading_message()
        if message is not None and (not oldest_pending or message[2] <= oldest_pending[0].t):
            seq, items, t0 = message
            before = store.size_bytes()
            store.drop_message(seq)
            size -= before - store.size_bytes()
            seqs.append(seq)
            in_messages += items
            times.append(t0)
            continue
        if not oldest_pending:
            break
        chosen: list[PendingRow] = []
        for row in oldest_pending:
            chosen.append(row)
            size -= row.size
            if size <= cap:
                break
        store.delete_pending([r.id for r in chosen])
        dropped += chosen
    return _Dropped(sum(r.n for r in dropped) + in_messages, tuple(seqs),
                    tuple(times + [r.t for r in dropped])), size


def _report_dropped(store: Store, items: Items, dropped: _Dropped, now_s: int,
                    reason: str | None = None) -> None:
    """The counters and the data_dropped event of readings dropped whole."""
    if not dropped.readings:
        return
    store.count("dropped_readings", dropped.readings)
    store.count("dropped_messages", len(dropped.seqs))
    store.add_pending(LANE_EVENTS, items.event_item(now_s, DataDropped(
        what="readings", count=dropped.readings, from_s=min(dropped.times),
        to_s=max(dropped.times), reason=reason, seqs=tuple(sorted(dropped.seqs)))), now_s)


def make_room(store: Store, now_s: int, items: Items) -> Drops:
    """A write found the disk full (disk.py): drop the oldest readings whole until those
    held are 1/FULL_KEEP_SHARE of their bytes, and hold the store at the size left while
    the disk is under its floor. The drops and their event commit together (in room the
    reserve has just given); StoreFullError if even that found none."""
    with store.tx():
        size = store.size_bytes()
        cap = size - store.reading_bytes() // FULL_KEEP_SHARE
        dropped, size = _drop_oldest(store, size, cap, 1 << 30)
        _report_dropped(store, items, dropped, now_s, "disk_full")
        if store.meta("frozen_bytes"):  # its event included
            store.set_meta("frozen_bytes", max(1, store.size_bytes()))
    if dropped.readings:
        log.warning("event=data_dropped reason=disk_full readings=%d seqs=%s bytes_left=%d",
                    dropped.readings, list(dropped.seqs), size)
    return Drops(0, dropped.readings, dropped.seqs)
