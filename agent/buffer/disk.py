"""The disk under ``gateway.data_dir``: a reserve file that holds room for the ledger,
and the agent's disk mode (normal or degraded).

A full disk must not stop metering, billing or relay control, and must never cost
a ledger entry; readings are bulky and may go (they are reported when they do). So:

- ``reserve`` in data_dir is preallocated (``posix_fallocate``: real blocks, not a
  sparse file) to ``RESERVE_BYTES`` at start, when the disk has room for it and
  ``RESUME_FREE_BYTES`` more.
- When a write finds no room (SQLite's SQLITE_FULL, or ENOSPC: ``full()``), the
  reserve is cut to ``RESERVE_KEEP_BYTES``: the rest goes to the store at once, so the
  transaction that failed (a charge, a top-up) can be written again; the runtime then
  drops the oldest buffered readings to make room inside the store (bounds.make_room,
  reported as ``data_dropped``) and runs the work again.
- If the work fails again, or the store cannot even be opened at start-up on a full
  disk, the last ``RESERVE_KEEP_BYTES`` are released too (``full(release_all=True)``).
- While degraded the runtime has SQLite checkpoint its WAL every ``WAL_PAGES_FULL``
  pages (store.py), so the WAL is reused from its start rather than grown.
- While degraded, every ``CHECK_EVERY_S`` the free space is looked at; once there is
  room for the whole reserve and ``RESUME_FREE_BYTES`` more, the reserve is made
  again and the mode is normal. Every change of mode is logged once (``event=disk_full``
  / ``event=disk_ok``), never per failed write: the disk is an SD card.

The modes, as a table (``_MOVES``): an event that is not in it is a bug and raises.

    normal   --full-->  degraded      a write found no room (or start-up did)
    degraded --full-->  degraded      again: more of the reserve goes, if any is left
    degraded --room-->  normal        the reserve is whole again
    normal   --room-->  normal

Bounds: the reserve is at most ``RESERVE_BYTES``; free space is read at most once per
``CHECK_EVERY_S`` while degraded (a statvfs, no write).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from agent.buffer.connection import disk_free_bytes

log = logging.getLogger("agent.disk")

RESERVE_NAME: Final = "reserve"
RESERVE_BYTES: Final = 4 * 1024 * 1024  # held for the ledger while the disk has room
RESERVE_KEEP_BYTES: Final = 1024 * 1024  # kept at the first full write, for the next one
RESUME_FREE_BYTES: Final = 2 * 1024 * 1024  # free beyond the reserve before it is remade
CHECK_EVERY_S: Final = 10.0  # while degraded: how often free space is looked at

HELP: Final = "docs/technician.md#a-full-disk"  # in the log line a technician reads

NORMAL: Final = "normal"
DEGRADED: Final = "degraded"
_MOVES: Final = {
    (NORMAL, "full"): DEGRADED,
    (DEGRADED, "full"): DEGRADED,
    (DEGRADED, "room"): NORMAL,
    (NORMAL, "room"): NORMAL,
}


def is_enospc(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


class DiskGuard:
    """The reserve and the mode; used by the runtime thread only."""

    def __init__(self, data_dir: Path, *, reserve_bytes: int = RESERVE_BYTES,
                 keep_bytes: int = RESERVE_KEEP_BYTES,
                 resume_free_bytes: int = RESUME_FREE_BYTES,
                 check_every_s: float = CHECK_EVERY_S,
                 free_bytes: Callable[[Path], int] = disk_free_bytes) -> None:
        assert 0 <= keep_bytes <= reserve_bytes, (keep_bytes, reserve_bytes)
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / RESERVE_NAME
        self.reserve_bytes = reserve_bytes
        self.keep_bytes = keep_bytes
        self.resume_free_bytes = resume_free_bytes
        self.check_every_s = check_every_s
        self._free_bytes = free_bytes
        self.state = NORMAL
        self.reason = ""  # what found the disk full (the store, status.json, start-up)
        self.since_s: int | None = None  # when the mode became degraded (Unix s)
        self.fulls = 0  # writes that found no room since start
        self._next_check_s = 0.0
        self._grow_error: str | None = None  # why the reserve could not be made, last time

    def _move(self, event: str) -> None:
        self.state = _MOVES[(self.state, event)]

    # -- the reserve ---------------------------------------------------------------
    def held_bytes(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def free(self) -> int:
        try:
            return self._free_bytes(self.data_dir)
        except OSError:
            return 0

    def _grow(self) -> bool:
        """The reserve made whole again, if the disk has room for it and
        ``resume_free_bytes`` more; False (the reserve as it was) if not."""
        held = self.held_bytes()
        if held >= self.reserve_bytes:
            return True
        if self.free() < self.reserve_bytes - held + self.resume_free_bytes:
            return False
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.reserve_bytes)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:  # taken meanwhile by someone else: back to what it was
            if exc.strerror != self._grow_error:  # logged on change (an SD card)
                log.warning("event=reserve_failed path=%s error=%s", self.path, exc.strerror)
            self._grow_error = exc.strerror
            self._cut(held)
            return False
        self._grow_error = None
        return True

    def _cut(self, keep: int) -> int:
        """The reserve cut to ``keep`` bytes (0: removed); the bytes released."""
        held = self.held_bytes()
        if held <= keep:
            return 0
        try:
            if keep == 0:
                self.path.unlink()
            else:
                os.truncate(self.path, keep)
        except OSError as exc:
            log.error("event=reserve_release_failed path=%s error=%s", self.path, exc.strerror)
            return 0
        return held - keep

    # -- the mode ------------------------------------------------------------------
    def start(self, now_s: int) -> None:
        """After the store has opened: make (or keep) the reserve, or start degraded."""
        if self.state == DEGRADED or not self._grow():
            self.full(now_s, "start-up: no room for the reserve", release=False)
            return
        log.info("event=disk_ok reserve=%d free=%d", self.held_bytes(), self.free())

    def full(self, now_s: int, where: str, *, release: bool = True,
             release_all: bool = False) -> int:
        """A write found no room (``where``: what wrote). The reserve is cut to
        ``keep_bytes`` (``release_all``: removed); returns the bytes released."""
        self.fulls += 1
        released = 0
        if release:
            released = self._cut(0 if release_all else self.keep_bytes)
            if not released and not release_all:
                released = self._cut(0)  # what was kept is all there is left to give
        was = self.state
        self._move("full")
        if was != DEGRADED or released:
            log.warning("event=disk_full mode=degraded where=%s released=%d reserve=%d "
                        "free=%d help=%s", where, released, self.held_bytes(), self.free(),
                        HELP)
        if was != DEGRADED:
            self.reason, self.since_s = where, now_s
        return released

    def check(self, mono_s: float, now_s: int) -> bool:
        """While degraded, at most once per ``check_every_s``: has room come back? Then
        the reserve is made again and the mode is normal (True, once)."""
        if self.state != DEGRADED or mono_s < self._next_check_s:
            return False
        self._next_check_s = mono_s + self.check_every_s
        if not self._grow():
            return False
        self._move("room")
        log.info("event=disk_ok mode=normal reserve=%d free=%d degraded_s=%d",
                 self.held_bytes(), self.free(), now_s - (self.since_s or now_s))
        self.reason, self.since_s = "", None
        return True

    def status(self) -> dict[str, Any]:
        """For status.json, ``meter-agent status`` and the health report."""
        return {"mode": self.state, "reason": self.reason, "since": self.since_s,
                "free_bytes": self.free(), "reserve_bytes": self.held_bytes(),
                "fulls": self.fulls}
