"""Delivery of outbox rows over the MQTT link: message forming, in-flight window, PUBACKs,
stuck links, and the gateway's health on the retained ``state`` topic.

Delivery is the runtime's one caller of forming (forming.py): the runtime tells it that
time passed (``tick``, once a second) or that a poll cycle completed (``cycle_complete``,
the table form, in the same loop turn), and it forms what is due; ``pump`` publishes it.

The outbox owns delivery (STYLE rule 6): a row is published at QoS 1 and
deleted only when its PUBACK arrives. paho keeps no session across connections
(mqtt.py), so on every (re)connect everything unacknowledged is simply sent
again from the store (at-least-once; the head-end dedupes by ``(gw, seq)``).

Order: rows go out by lane (replies, events, ledger, live readings, backlog
readings) and by seq within a lane, so a live reading waits at most for one
PUBACK of a backlog drain. While backlog readings are pending and the link is
up, ``pump`` forms ``BACKLOG_AHEAD`` messages ahead of the window (forming.py).

Bounds: at most ``MAX_INFLIGHT`` publishes and ``MAX_INFLIGHT_BYTES`` of them
unacknowledged (at least one is always allowed). A row in flight for
``PUBACK_TIMEOUT_S`` while the link claims to be up means the connection is
stuck: the MQTT client is restarted (never the store), and the window is sent
again on the next connection. PUBACKs are deleted in one transaction per pump
(a crash before it only means those rows are sent again).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from agent import __version__
from agent.buffer.cycle import PollCycle
from agent.buffer.store import LANE_BACKLOG, Store
from agent.clock import Clock
from agent.config import StoreConfig
from agent.uplink import forming
from agent.uplink.mqtt import MqttLink

log = logging.getLogger("agent.delivery")

MAX_INFLIGHT = 32
MAX_INFLIGHT_BYTES = 512 * 1024
PUBACK_TIMEOUT_S = 30.0
STATE_EVERY_S = 60.0  # the retained health report (also sent at every connect)
MAX_METER_ERRORS = 32  # meters listed by name in one health report (the rest counted)


def meter_health(status: Mapping[str, Any]) -> dict[str, tuple[int, int, Any]]:
    """Each meter's (polls, failed polls, online) since this boot, from a status map."""
    health: dict[str, tuple[int, int, Any]] = {}
    for meter in status.get("meters", []):
        errors = meter.get("errors") or {}
        polls = int(errors.get("polls", 0))
        health[str(meter["id"])] = (polls, polls - int(errors.get("ok", polls)),
                                    meter.get("online"))
    return health


def state_payload(status: Mapping[str, Any], *, backlog: Mapping[str, Any],
                  drops: Mapping[str, int], link: Mapping[str, Any],
                  reported: Mapping[str, int] | None = None) -> bytes:
    """The retained ``state`` JSON (birth and health), docs/mqtt-api.md. ``status`` is
    the runtime's status map (agent/status.py: health() or report()); the rest comes
    from the store and the link.

    ``meter_errors`` lists only the meters worth a look: offline, or with failed polls
    since the last report (``reported``: each meter's failed count then; none at the
    birth, so a meter that failed at all this boot is listed). Gateway totals stand
    for the rest. At most ``MAX_METER_ERRORS`` are listed, offline first, then the
    most new failures; ``meters_failing`` counts all of them."""
    health = meter_health(status)
    before = reported or {}
    failing = [(mid, polls, failed, online) for mid, (polls, failed, online) in health.items()
               if online is False or failed != before.get(mid, 0)]
    failing.sort(key=lambda m: (m[3] is not False, -(m[2] - before.get(m[0], 0)), m[0]))
    meters = {mid: {"polls": polls, "failed": failed,
                    "rate_pm": (failed * 1000 // polls) if polls else 0,  # per mille
                    "online": online}
              for mid, polls, failed, online in failing[:MAX_METER_ERRORS]}
    body = {
        "online": True,
        "version": status.get("version", __version__),
        "boot": status["boot"],
        "started": status.get("started"),
        "meters": len(health),
        "meters_online": sum(1 for _, _, online in health.values() if online is True),
        "meters_failing": len(failing),
        "polls": sum(polls for polls, _, _ in health.values()),
        "failed": sum(failed for _, failed, _ in health.values()),
        "backlog": backlog["total"],  # Backlog.total: messages + items not yet formed
        "backlog_items": backlog["items"],
        "backlog_bytes": backlog["bytes"],
        "oldest_s": backlog["oldest_s"],
        "drops": dict(drops),
        "reconnects": link.get("reconnects", 0),
        "restarts": link.get("restarts", 0),
        "meter_errors": meters,
        "disk": status.get("disk_mode", "normal"),  # degraded: found full (buffer/disk.py)
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


class Delivery:
    def __init__(self, store: Store, link: MqttLink, clock: Clock, *,
                 gw: str, boot: int,
                 limits: StoreConfig | None = None,
                 cycle: PollCycle | None = None,
                 status: Callable[[], Mapping[str, Any]] | None = None,
                 max_inflight: int = MAX_INFLIGHT,
                 max_inflight_bytes: int = MAX_INFLIGHT_BYTES,
                 puback_timeout_s: float = PUBACK_TIMEOUT_S) -> None:
        """``gw``/``boot``: whose messages are formed (forming.py). ``limits``: the
        storage bound enforced before each tick's forming (none: not enforced).
        ``cycle``: live readings go in the table form. ``status``: the runtime's
        health(); with it the birth and the periodic state are published from here."""
        self.store = store
        self.link = link
        self.clock = clock
        self.gw = gw
        self.boot = boot
        self.limits = limits
        self.cycle = cycle
        self.status = status
        self.max_inflight = max_inflight
        self.max_inflight_bytes = max_inflight_bytes
        self.puback_timeout_s = puback_timeout_s
        self.inflight: dict[int, tuple[int, float, int]] = {}  # mid -> (seq, sent at, bytes)
        self.acked_seqs: list[int] = []  # PUBACKed, deleted at the next pump
        self.acked = 0
        self.up = False  # between our on_connected and on_disconnected
        self.next_state_s = 0.0
        self.reported: dict[str, int] = {}  # each meter's failed polls in the last report

    # -- link events ---------------------------------------------------------------
    def on_connected(self) -> None:
        self.flush_acks()
        self.inflight.clear()  # send everything unacknowledged again, from the store
        self.up = True
        self.next_state_s = 0.0  # the birth goes out at the next pump
        self.reported = {}  # and lists every meter that failed a poll this boot

    def on_disconnected(self) -> None:
        self.flush_acks()
        self.inflight.clear()
        self.up = False

    def on_puback(self, mid: int) -> None:
        sent = self.inflight.pop(mid, None)
        if sent is not None:
            self.acked_seqs.append(sent[0])
            self.acked += 1

    def flush_acks(self) -> None:
        if self.acked_seqs:
            self.store.ack_many(self.acked_seqs)
            self.acked_seqs = []

    # -- the loop --------------------------------------------------------------------
    def tick(self, now_s: int) -> None:
        """Time passed (the runtime's tick): form what is due, then see whether the link
        is stuck."""
        self.form(now_s)
        self.check_stuck()

    def cycle_complete(self) -> None:
        """A poll cycle completed (the table form): its table is formed now, in the loop
        turn that completed it, not at the next tick."""
        self.form(int(self.clock.time_s()))

    def form(self, now_s: int) -> int:
        """Pending items into messages, as far as they are due (forming.form_messages,
        the storage bound first); how many were formed. ``pump`` publishes them."""
        return forming.form_messages(self.store, self.gw, self.boot, now_s,
                                     self.link.connected, limits=self.limits,
                                     cycle=self.cycle)

    def pump(self) -> None:
        """Publish rows (by lane priority, then seq) while the window has room."""
        self.flush_acks()
        if not (self.up and self.link.connected):
            return
        self._maybe_state()
        room = self.max_inflight - len(self.inflight)
        if room <= 0:
            return
        if self.store.outbox_rows(LANE_BACKLOG) < room + forming.BACKLOG_AHEAD // 2:
            forming.form_backlog(self.store, self.gw, self.boot, int(self.clock.time_s()),
                                 forming.BACKLOG_AHEAD)
        busy = {seq for seq, _, _ in self.inflight.values()}
        in_bytes = sum(n for _, _, n in self.inflight.values())
        for row in self.store.outbox_next(busy, room):
            if self.inflight and in_bytes + len(row.payload) > self.max_inflight_bytes:
                return
            mid = self.link.publish(row.topic, row.payload)
            if mid is None:
                return
            self.inflight[mid] = (row.seq, self.clock.monotonic_s(), len(row.payload))
            in_bytes += len(row.payload)

    def check_stuck(self) -> bool:
        """Restart the MQTT client when the oldest publish waits too long for its
        PUBACK; True if it did."""
        if not self.inflight or not self.link.connected:
            return False
        oldest = min(sent for _, sent, _ in self.inflight.values())
        if self.clock.monotonic_s() - oldest <= self.puback_timeout_s:
            return False
        log.warning("event=stuck_link inflight=%d oldest_wait_s=%.1f", len(self.inflight),
                    self.clock.monotonic_s() - oldest)
        self.inflight.clear()
        self.link.restart()
        return True

    # -- health ----------------------------------------------------------------------
    def state_payload(self, status: Mapping[str, Any]) -> bytes:
        """The birth / periodic ``state`` for ``status`` (agent/status.py's health() or
        report())."""
        summary = self.store.backlog_summary()
        now = int(self.clock.time_s())
        backlog = {"total": summary.total, "items": summary.items, "bytes": summary.bytes,
                   "oldest_s": 0 if summary.oldest_t is None else max(0, now - summary.oldest_t)}
        return state_payload(status, backlog=backlog, drops=self.store.counters(),
                             link=self.link.status(), reported=self.reported)

    def _maybe_state(self) -> None:
        if self.status is None:
            return
        mono = self.clock.monotonic_s()
        if mono < self.next_state_s:
            return
        status = self.status()
        if self.link.publish("state", self.state_payload(status), retain=True) is not None:
            self.next_state_s = mono + STATE_EVERY_S
            self.reported = {mid: failed for mid, (_, failed, _) in meter_health(status).items()}
