"""sd_notify(3) without libsystemd: one AF_UNIX datagram to ``$NOTIFY_SOCKET``.

The unit (deploy/meter-agent.service) is ``Type=notify`` with ``WatchdogSec``:
systemd waits for ``READY=1`` before it counts the agent as started, and
restarts it when ``WATCHDOG=1`` stops arriving. The watchdog must be fed from
the runtime's own loop, never from a helper thread, so that a loop that hangs
(a stuck SQLite write, a deadlock) is exactly what stops the pings.

Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op returning False,
so the agent runs the same by hand, in tests and in the demo. A failed send is
logged once and never raised: supervision must not be able to stop metering.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("agent.sdnotify")

# A STATUS= text longer than this is cut: it is one line in `systemctl status`,
# and the whole datagram must stay far below the socket's buffer.
STATUS_MAX_CHARS = 200
# Feed the watchdog this many times per WatchdogSec, so one late loop turn is not
# a restart (systemd's own advice is "at least twice").
WATCHDOG_PINGS_PER_INTERVAL = 4


def _socket_address(raw: str) -> str | None:
    """``$NOTIFY_SOCKET`` as a connectable address: a path, or ``@name`` (abstract)."""
    if raw.startswith("@"):
        return "\0" + raw[1:]  # Linux abstract namespace
    if raw.startswith("/"):
        return raw
    return None  # vsock and other forms are not used on a gateway


class Notifier:
    """The service manager's notification socket, if there is one."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env: Mapping[str, str] = os.environ if environ is None else environ
        self.address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval_s = _watchdog_interval_s(env)
        self._last_ping_s: float | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=value`` fields in one datagram; True when it was sent."""
        if self.address is None:
            return False
        payload = "\n".join(f.replace("\n", " ") for f in fields).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(payload, self.address)
        except OSError as exc:
            if not self._warned:  # once: a broken socket would otherwise log every turn
                log.warning("event=sd_notify_failed error=%s", exc)
                self._warned = True
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        fields = ["READY=1"]
        if status:
            fields.append("STATUS=" + status[:STATUS_MAX_CHARS])
        return self.notify(*fields)

    def status(self, text: str) -> bool:
        return self.notify("STATUS=" + text[:STATUS_MAX_CHARS])

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def maybe_watchdog(self, monotonic_s: float) -> bool:
        """Feed the watchdog if a ping is due; call it every loop turn (cheap otherwise)."""
        if self.address is None or self.watchdog_interval_s is None:
            return False
        every_s = self.watchdog_interval_s / WATCHDOG_PINGS_PER_INTERVAL
        if self._last_ping_s is not None and monotonic_s - self._last_ping_s < every_s:
            return False
        self._last_ping_s = monotonic_s
        return self.watchdog()


def _watchdog_interval_s(env: Mapping[str, str]) -> float | None:
    """``WatchdogSec`` as systemd passes it, if it is meant for this process."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None  # inherited from a parent: the watchdog is not ours
    return int(usec) / 1_000_000
