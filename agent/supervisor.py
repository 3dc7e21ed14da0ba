"""Every thread of the agent, watched from the runtime's loop: the one place that
catches ``Exception`` (STYLE.md rule 8).

    guarded(name, target)     the body of every subsystem thread (buses, the MQTT link,
                              the control socket, the status page): an exception that
                              escapes ``target`` is logged with its traceback and kept
                              in ``crashes``; the thread then ends
    Supervisor.check(now_s)   the runtime thread, once a tick: a subsystem whose thread
                              has ended without being asked to stop is reported dead
                              (``on_dead``: a bus posts ``meter_offline`` for its meters)
                              and started again (``restart``) after its back-off
    Supervisor.healthy(now_s) whether to feed the systemd watchdog: not once a subsystem
                              has been dead, or silent (no heartbeat), for longer than
                              ``DEAD_LIMIT_S``; systemd then restarts the whole agent
    contain(call)             one unit of work whose bug must not end the agent (a
                              reading's charge): the exception, logged, or None

Bounds (and what happens at them):
- restart back-off: ``RESTART_MIN_S`` doubling to ``RESTART_MAX_S``; it starts again from
  the minimum once a subsystem has stayed up for ``STABLE_S``;
- ``DEAD_LIMIT_S`` down or silent: the watchdog is no longer fed (systemd's
  ``WatchdogSec`` then restarts the agent; without systemd the agent goes on as it is);
- ``MAX_CRASHES`` tracebacks kept for ``status`` (the oldest forgotten).
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar

log = logging.getLogger("agent.supervisor")

RESTART_MIN_S: Final = 1.0
RESTART_MAX_S: Final = 60.0
STABLE_S: Final = 300.0
DEAD_LIMIT_S: Final = 120.0
MAX_CRASHES: Final = 32

T = TypeVar("T")

# (thread name, exception text) of the last crashes, newest last (any thread appends)
crashes: deque[tuple[str, str]] = deque(maxlen=MAX_CRASHES)


def guarded(name: str, target: Callable[[], None]) -> Callable[[], None]:
    """``target`` as a thread body that logs and keeps what escapes it."""

    def body() -> None:
        try:
            target()
        except Exception as exc:  # noqa: BLE001 - the supervisor's boundary (module doc)
            crashes.append((name, f"{type(exc).__name__}: {exc}"))
            log.error("event=thread_crashed thread=%s error=%s\n%s", name, exc,
                      traceback.format_exc())

    return body


def contain(call: Callable[[], T], what: str,
            passthrough: tuple[type[Exception], ...] = ()) -> tuple[T | None, Exception | None]:
    """(result, None), or (None, the exception) if ``call`` raised one, logged with its
    traceback: a bug in one unit of work is reported, and the agent goes on. Exceptions
    of the ``passthrough`` types are the caller's to handle: they propagate."""
    try:
        return call(), None
    except passthrough:
        raise
    except Exception as exc:  # noqa: BLE001 - the supervisor's boundary (module doc)
        log.error("event=contained what=%s error=%s\n%s", what, exc, traceback.format_exc())
        return None, exc


@dataclass
class Subsystem:
    name: str
    alive: Callable[[], bool]  # its thread runs
    restart: Callable[[], None]  # start it again (a new thread)
    on_dead: Callable[[], None] = lambda: None  # just found dead, before the back-off
    heartbeat_s: Callable[[], float | None] = lambda: None  # monotonic s of its last turn
    silent_after_s: float = DEAD_LIMIT_S  # no heartbeat for this long: unhealthy
    dead_since_s: float | None = None
    restart_at_s: float = 0.0
    backoff_s: float = RESTART_MIN_S
    up_since_s: float = 0.0
    restarts: int = 0
    state: str = "up"  # up | dead


class Supervisor:
    def __init__(self) -> None:
        self.subsystems: dict[str, Subsystem] = {}
        self._lock = threading.Lock()

    def add(self, subsystem: Subsystem, now_s: float) -> None:
        subsystem.up_since_s = now_s
        with self._lock:
            self.subsystems[subsystem.name] = subsystem

    def remove(self, name: str) -> None:
        with self._lock:
            self.subsystems.pop(name, None)

    def check(self, now_s: float) -> None:
        with self._lock:
            subsystems = list(self.subsystems.values())
        for s in subsystems:
            if s.state == "up":
                if s.alive():
                    if now_s - s.up_since_s >= STABLE_S:
                        s.backoff_s = RESTART_MIN_S
                    continue
                s.state, s.dead_since_s = "dead", now_s
                s.restart_at_s = now_s + s.backoff_s
                log.error("event=subsystem_dead name=%s restart_in_s=%.0f", s.name, s.backoff_s)
                s.on_dead()
            if s.state == "dead" and now_s >= s.restart_at_s:
                s.backoff_s = min(RESTART_MAX_S, s.backoff_s * 2)
                s.restarts += 1
                log.warning("event=subsystem_restart name=%s restarts=%d", s.name, s.restarts)
                _, failed = contain(s.restart, f"restart {s.name}")
                if failed is None and s.alive():
                    s.state, s.dead_since_s, s.up_since_s = "up", None, now_s
                else:
                    s.restart_at_s = now_s + s.backoff_s

    def unhealthy(self, now_s: float) -> list[str]:
        """Subsystems down, or silent, for longer than their limit."""
        out = []
        with self._lock:
            subsystems = list(self.subsystems.values())
        for s in subsystems:
            if s.dead_since_s is not None and now_s - s.dead_since_s > DEAD_LIMIT_S:
                out.append(f"{s.name}: down {now_s - s.dead_since_s:.0f} s")
                continue
            beat = s.heartbeat_s()
            if s.state == "up" and beat is not None and now_s - beat > s.silent_after_s:
                out.append(f"{s.name}: silent {now_s - beat:.0f} s")
        return out

    def healthy(self, now_s: float) -> bool:
        return not self.unhealthy(now_s)

    def status(self, now_s: float) -> dict[str, object]:
        with self._lock:
            subsystems = list(self.subsystems.values())
        return {"subsystems": {s.name: {"state": s.state, "restarts": s.restarts}
                               for s in subsystems},
                "unhealthy": self.unhealthy(now_s),
                "crashes": [{"thread": name, "error": error} for name, error in crashes]}
