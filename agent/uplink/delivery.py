"""Delivery of outbox rows over the MQTT link: in-flight window, PUBACKs, stuck links.

The outbox owns delivery (STYLE rule 6): a row is published at QoS 1 and
deleted only when its PUBACK arrives. paho's session lives in memory only, so
on every (re)connect everything unacknowledged is simply sent again from the
store (at-least-once; the head-end dedupes by ``(gw, seq)``).

Bounds: at most ``MAX_INFLIGHT`` publishes unacknowledged; a row in flight
for ``PUBACK_TIMEOUT_S`` while the link claims to be up means the connection
is stuck: the MQTT client is restarted (never the store).
"""

from __future__ import annotations

import logging

from agent.buffer.store import Store
from agent.clock import Clock
from agent.uplink.mqtt import MqttLink

log = logging.getLogger("agent.delivery")

MAX_INFLIGHT = 32
PUBACK_TIMEOUT_S = 30.0


class Delivery:
    def __init__(self, store: Store, link: MqttLink, clock: Clock) -> None:
        self.store = store
        self.link = link
        self.clock = clock
        self.inflight: dict[int, tuple[int, float]] = {}  # mid -> (seq, sent at monotonic)
        self.acked = 0

    def on_connected(self) -> None:
        self.inflight.clear()  # resend everything unacknowledged from the store

    def on_disconnected(self) -> None:
        self.inflight.clear()

    def on_puback(self, mid: int) -> None:
        sent = self.inflight.pop(mid, None)
        if sent is not None:
            self.store.ack(sent[0])
            self.acked += 1

    def pump(self) -> None:
        """Publish rows (by lane priority, then seq) while the window has room."""
        if not self.link.connected:
            return
        room = MAX_INFLIGHT - len(self.inflight)
        if room <= 0:
            return
        busy = {seq for seq, _ in self.inflight.values()}
        for row in self.store.outbox_next(busy, room):
            mid = self.link.publish(row.topic, row.payload)
            if mid is None:
                return
            self.inflight[mid] = (row.seq, self.clock.monotonic_s())

    def check_stuck(self) -> None:
        if not self.inflight or not self.link.connected:
            return
        oldest = min(sent for _, sent in self.inflight.values())
        if self.clock.monotonic_s() - oldest > PUBACK_TIMEOUT_S:
            self.inflight.clear()
            self.link.restart()
