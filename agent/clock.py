"""The one source of time.

Everything that needs "now" takes a ``Clock``; production uses ``SystemClock``,
tests and the simulator use ``SimClock`` which only moves when told to.
Wall time (``time_s``) is Unix seconds UTC and may jump (NTP, RTC loss);
``monotonic_s`` never goes backwards and is used for timeouts and intervals.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def time_s(self) -> float:
        """Wall-clock Unix time in seconds (may jump)."""
        ...

    def monotonic_s(self) -> float:
        """Seconds on a clock that never goes backwards."""
        ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def time_s(self) -> float:
        return time.time()

    def monotonic_s(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class SimClock:
    """A clock that advances only by ``advance``/``sleep``; thread-safe."""

    def __init__(self, start_s: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00Z
        self._lock = threading.Lock()
        self._wall_s = start_s
        self._mono_s = 0.0

    def time_s(self) -> float:
        with self._lock:
            return self._wall_s

    def monotonic_s(self) -> float:
        with self._lock:
            return self._mono_s

    def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, "monotonic time cannot go backwards"
        with self._lock:
            self._wall_s += seconds
            self._mono_s += seconds

    def jump_wall(self, seconds: float) -> None:
        """Move only the wall clock (an NTP step or a lost RTC); may be negative."""
        with self._lock:
            self._wall_s += seconds
