"""An MQTT broker in memory and the ``MqttLink`` stand-in the runtime publishes through.

The runtime builds a ``SimLink`` through ``link_factory`` and uses only the real
link's surface: ``connected``, ``publish(suffix, payload, retain=False) -> mid |
None``, ``start()``, ``stop()``, ``restart()``, ``cmd_topic``, ``headend_topic``,
``reconnects``, ``dropped_messages``. Connection changes, PUBACKs and messages
reach the runtime as ``LinkEvent``s in its inbox, as paho's callbacks post them.

What the broker does, as mosquitto with the agent's settings would:
- a persistent session (clean_session false): commands published while the agent
  is away are queued, at most ``SESSION_MAX`` (mosquitto's max_queued_messages),
  and delivered on reconnect;
- QoS 1 inbound: with ``manual_ack`` (as the runtime asks) a command stays
  unacknowledged until the runtime calls ``ack(event)`` after committing its reply;
  what was not acknowledged when a connection ends is sent again on the next one
  (without ``manual_ack``, paho's default, it is acknowledged once in the inbox, and a
  crash before it is handled loses it: the head-end's retry recovers it);
- retained messages: the head-end's state, delivered on every (re)connect;
- the agent's Last Will when its process dies;
- faults (``runner``): an outage (connection down, reconnect with paho's 1..10 s
  back-off after it ends), a *stuck* connection (up, but nothing acknowledged until
  the client reconnects) and an *ack loss* (a message reaches the head-end, its
  PUBACK does not, the connection drops: the resend is a duplicate to dedupe).
"""

from __future__ import annotations

import json
import queue
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Protocol

from agent.config import Config
from agent.uplink.mqtt import LinkEvent

SESSION_MAX: Final = 1000
RECONNECT_MIN_S: Final = 1
RECONNECT_MAX_S: Final = 10


class Host(Protocol):
    """What the broker needs from the simulation."""

    @property
    def now(self) -> int: ...
    def at(self, t: int, fn: Callable[[], None]) -> None: ...
    def randint(self, lo: int, hi: int) -> int: ...
    def on_link(self, kind: str, t: int) -> None: ...
    def on_delivered(self, topic: str, payload: bytes, t: int) -> None: ...


class HeadEndSide(Protocol):
    def on_up(self, topic: str, payload: bytes, t: int) -> None: ...
    def on_agent_state(self, payload: bytes, t: int) -> None: ...


class SimLink:
    def __init__(self, broker: Broker, cfg: Config, boot: int, inbox: queue.Queue[Any], *,
                 manual_ack: bool = False, **_options: Any) -> None:
        self.broker = broker
        self.inbox = inbox
        self.boot = boot
        self.manual_ack = manual_ack
        self.gen = 0  # the connection (acks go back on the one a message came on)
        self.restarts = 0
        self.attempts = 0
        self.base = f"{cfg.mqtt.prefix}/{cfg.gateway.id}"
        self.cmd_topic = f"{self.base}/cmd"
        self.headend_topic = f"{cfg.mqtt.prefix}/headend/state"
        self.connected = False
        self.reconnects = 0
        self.dropped_messages = 0
        self.dead = False  # the process died (crash): nothing reaches its inbox any more
        self._mid = 0
        self.published = 0
        self.before_publish: Callable[[], None] | None = None  # the simulation's crash point

    # -- the MqttLink surface -------------------------------------------------------
    def start(self) -> None:
        self.broker.attach(self)

    def stop(self) -> None:
        self.broker.detach(self, clean=True)

    def restart(self) -> None:
        """The runtime found the connection stuck: drop it, paho reconnects."""
        self.restarts += 1
        self.broker.drop(self, "restart")
        self.broker.reconnect_later(self)

    def publish(self, suffix: str, payload: bytes, *, retain: bool = False) -> int | None:
        if self.before_publish is not None:
            self.before_publish()
        if not self.connected:
            return None
        self._mid = self._mid % 65535 + 1
        self.published += 1
        self.broker.from_agent(self, f"{self.base}/{suffix}", payload, retain, self._mid)
        return self._mid

    def ack(self, event: LinkEvent) -> None:
        if self.manual_ack and event.kind == "message" and event.qos > 0 \
                and event.gen == self.gen and self.connected:
            self.broker.acked(self, event.payload)

    def status(self) -> dict[str, Any]:
        return {"connected": self.connected, "reconnects": self.reconnects,
                "restarts": self.restarts, "attempts": self.attempts,
                "dropped_commands": self.dropped_messages, "last_error": ""}

    # -- from the broker ----------------------------------------------------------------
    def post(self, event: LinkEvent) -> None:
        if self.dead:
            return
        try:
            self.inbox.put_nowait(event)
        except queue.Full as exc:
            if event.kind != "message":
                raise AssertionError("inbox full of link events: the runtime stopped "
                                     "draining") from exc
            self.dropped_messages += 1


class Broker:
    """One gateway's view of the broker (the head-end side is ``HeadEndSide``)."""

    def __init__(self, host: Host, headend: HeadEndSide, prefix: str, gw: str) -> None:
        self.host = host
        self.headend = headend
        self.prefix = prefix
        self.gw = gw
        self.up = True
        self.stuck = False
        self.ackloss = 0  # armed ack losses
        self.link: SimLink | None = None
        self.session: deque[bytes] = deque()
        self.unacked: list[bytes] = []  # commands delivered on this connection, not acked
        self.session_dropped = 0
        self.headend_state = json.dumps({"online": True, "payments": True}).encode()
        self.delivered: list[tuple[int, int, str]] = []  # (t, boot, topic) to the agent
        self.connects = 0

    # -- the agent's connection ---------------------------------------------------------
    def attach(self, link: SimLink) -> None:
        self.link = link
        if self.up:
            self.host.at(self.host.now + 1, lambda: self._connect(link))

    def detach(self, link: SimLink, *, clean: bool) -> None:
        if self.link is link:
            self.drop(link, "stop" if clean else "crash")
            self.link = None
        link.dead = True
        if not clean:  # the Last Will
            self.headend.on_agent_state(json.dumps({"online": False, "boot": link.boot}).encode(),
                                        self.host.now)

    def _connect(self, link: SimLink) -> None:
        if link is not self.link or link.connected or not self.up or link.dead:
            return
        link.connected = True
        link.gen += 1
        link.attempts += 1
        self.stuck = False  # a new connection is a new TCP session
        self.connects += 1
        self.host.on_link("connected", self.host.now)
        link.post(LinkEvent("connected", extra={"session_present": True}, gen=link.gen))
        self._deliver(link, link.headend_topic, self.headend_state, retain=True)
        while self.session and link.connected:
            self._deliver(link, link.cmd_topic, self.session.popleft())

    def drop(self, link: SimLink, reason: str) -> None:
        if not link.connected:
            return
        # QoS 1: what was delivered and not acknowledged is sent again next time
        self.session.extendleft(reversed(self.unacked))
        self.unacked = []
        link.connected = False
        link.reconnects += 1
        self.host.on_link("disconnected", self.host.now)
        link.post(LinkEvent("disconnected", reason=reason))

    def reconnect_later(self, link: SimLink) -> None:
        delay = self.host.randint(RECONNECT_MIN_S, RECONNECT_MAX_S)
        self.host.at(self.host.now + delay, lambda: self._connect(link))

    def set_up(self, up: bool) -> None:
        self.up = up
        link = self.link
        if link is None:
            return
        if not up:
            self.drop(link, "outage")
        else:
            self.reconnect_later(link)

    def _deliver(self, link: SimLink, topic: str, payload: bytes, retain: bool = False) -> None:
        self.delivered.append((self.host.now, link.boot, topic))
        self.host.on_delivered(topic, payload, self.host.now)
        if topic == link.cmd_topic and link.manual_ack:
            self.unacked.append(payload)
        link.post(LinkEvent("message", topic=topic, payload=payload, retain=retain, qos=1,
                            gen=link.gen))

    def acked(self, link: SimLink, payload: bytes) -> None:
        if payload in self.unacked:
            self.unacked.remove(payload)

    # -- traffic ------------------------------------------------------------------------
    def from_agent(self, link: SimLink, topic: str, payload: bytes, retain: bool,
                   mid: int) -> None:
        if self.stuck:
            return  # a half-open connection: nothing arrives, nothing is acknowledged
        if topic.endswith("/state"):
            self.headend.on_agent_state(payload, self.host.now)
        else:
            self.headend.on_up(topic, payload, self.host.now)
        if self.ackloss:
            self.ackloss -= 1
            self.drop(link, "ack lost")
            self.reconnect_later(link)
            return
        link.post(LinkEvent("puback", mid=mid, gen=link.gen))

    def command(self, payload: bytes) -> None:
        """The head-end publishes a command (QoS 1) to the agent's cmd topic."""
        link = self.link
        if link is not None and link.connected and not self.stuck:
            self._deliver(link, link.cmd_topic, payload)
        elif len(self.session) < SESSION_MAX:
            self.session.append(payload)
        else:
            self.session_dropped += 1

    def publish_headend_state(self, payload: bytes) -> None:
        self.headend_state = payload
        link = self.link
        if link is not None and link.connected and not self.stuck:
            self._deliver(link, link.headend_topic, payload, retain=False)
