"""Work that finds the disk full, run again once room is made (for the runtime's loop).

A unit of work (a poll cycle's readings, a command, a tick's fixed charges, a PUBACK
batch) whose write finds no room raises ``StoreFullError`` with its transaction undone
(store.py), so running it again is running it once. ``Room.run`` does that:

  1. the reserve is released (disk.py: cut to what it keeps, or all of it on the
     last try), SQLite's WAL is held small (``store.WAL_PAGES_FULL``), and the oldest
     buffered readings are dropped (``bounds.make_room``, reported as data_dropped);
  2. the work runs again, at most ``FULL_RETRIES`` times;
  3. work that never finds room is lost and counted (``lost``); logged at most once
     per ``LOST_LOG_EVERY_S`` (an SD card). A lost reading costs no money: its energy
     is charged with the next reading that fits, whose delta starts at the same
     durable baseline; a fixed charge is tried again next tick; a command is answered
     when it comes again.

``open_store``: a start on a full disk. The store is opened once more after the
whole reserve is released; StoreFullError if even that finds no room.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

from agent.buffer import bounds
from agent.buffer.disk import DiskGuard
from agent.buffer.store import WAL_PAGES_FULL, Store
from agent.clock import Clock
from agent.errors import StoreFullError

log = logging.getLogger("agent.room")

FULL_RETRIES: Final = 2  # work that found the disk full runs again after room is made
LOST_LOG_EVERY_S: Final = 300.0  # work lost for want of room: logged at most this often

T = TypeVar("T")


class Room:
    """The runtime thread's: the store it makes room in is set once it is open."""

    def __init__(self, guard: DiskGuard, clock: Clock, items: bounds.Items) -> None:
        """``items``: the forms of what the bound drops and reports (forming.ITEMS)."""
        self.guard = guard
        self.clock = clock
        self.items = items
        self.store: Store | None = None
        self.lost = 0  # units of work that found no room even after room was made
        self._lost_logged_s: float | None = None

    def open_store(self, data_dir: Path, opener: Callable[[Path], Store] = Store
                   ) -> tuple[Store, int]:
        """The store and this start's boot (counted in it). On a full disk the reserve is
        released and the store opened once more (the agent then runs degraded)."""
        for attempt in range(2):
            store = None
            try:
                store = opener(data_dir)
                boot = store.next_boot()
            except StoreFullError:
                if store is not None:
                    store.close()
                released = self.guard.full(int(self.clock.time_s()), "start-up: the store",
                                           release_all=True)
                if attempt or not released:
                    raise
                continue
            self.store = store
            return store, boot
        raise AssertionError("unreachable")

    def run(self, call: Callable[[], T], what: str) -> tuple[bool, T | None]:
        """``call()``, run again after room is made while it finds the disk full (see the
        module docstring); (done, what it returned)."""
        for attempt in range(FULL_RETRIES + 1):
            try:
                return True, call()
            except StoreFullError as exc:
                if attempt == FULL_RETRIES:
                    self._lost(what, exc)
                    break
                self.make(what, release_all=attempt > 0)
        return False, None

    def make(self, what: str, *, release_all: bool) -> None:
        """Room for the next write: the reserve, a small WAL, the oldest readings."""
        now = int(self.clock.time_s())
        self.guard.full(now, what, release_all=release_all)
        if self.store is None:
            return
        try:
            self.store.wal_pages(WAL_PAGES_FULL)  # reuse the WAL rather than grow it
            bounds.make_room(self.store, now, self.items)
        except StoreFullError as exc:  # no room even to drop: the retry says what is lost
            log.debug("event=make_room_failed error=%s", exc)

    def _lost(self, what: str, exc: StoreFullError) -> None:
        self.lost += 1
        mono = self.clock.monotonic_s()
        if self._lost_logged_s is None or mono - self._lost_logged_s >= LOST_LOG_EVERY_S:
            self._lost_logged_s = mono
            log.error("event=store_full_lost what=%s lost=%d error=%s", what, self.lost, exc)
