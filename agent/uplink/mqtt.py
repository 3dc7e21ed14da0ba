"""The MQTT link (paho-mqtt 2.x): one thread of ours connects, runs paho's network
loop, and reconnects with exponential backoff and jitter.

paho's own reconnect has no jitter (a thousand gateways behind one broker that
restarts would come back in lock-step), and paho keeps its session in memory,
so this thread manages both:

    attempt n:  new paho client -> connect (TCP, TLS; ``CONNECT_TIMEOUT_S``)
                -> CONNACK within ``connack_timeout_s`` -> loop until the
                connection is lost, ``restart()`` is asked, or ``stop()``
    then wait   backoff_delay(n): min(max, min * 2**n), half fixed, half random
                ("equal jitter"); n goes back to 0 after a connection that
                lasted ``STABLE_S``; but when the broker's host refused the TCP
                connection (nothing listens: the broker is restarting), at most
                REFUSED_RETRY_MIN_S..MAX_S, so the link is back within about a
                second of the broker (a refusal costs the broker nothing; a broker
                that answers and then fails, or stays silent, gets the full back-off)

A new client per connection: nothing from a dead connection (unacknowledged
publishes, half-read packets) lives on in paho's memory; the outbox in the store
is the only session we keep, and Delivery sends again what was not acknowledged
(at-least-once; the head-end dedupes by seq). The broker keeps the other half:
our subscription and the commands queued while we were away (3.1.1:
clean_session=false; 5: clean_start=false with the Session Expiry Interval set
explicitly from ``mqtt.session_expiry_s``).

paho's callbacks run on this thread and do nothing but post a ``LinkEvent`` into
the runtime's inbox; the runtime thread alone touches the store. ``publish`` is
called from the runtime thread: paho queues the packet and wakes this thread,
which writes it (``on_socket_register_write`` is set so paho never writes from
the caller's thread).

Bounds: the inbox is bounded; when it is full an incoming command is dropped
and counted (with ``manual_ack`` it is not acknowledged either, so the broker
sends it again after the next reconnect; without it the head-end retries the
same id and gets one reply). PUBACK and connection events are never dropped:
the runtime keeps at most a window of publishes outstanding, far below the
inbox size.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import Config
from agent.supervisor import guarded

log = logging.getLogger("agent.mqtt")

BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 60.0  # at most this long between two attempts (before jitter halves it)
CONNECT_TIMEOUT_S = 10.0  # TCP connect + TLS handshake; then the attempt has failed
CONNACK_TIMEOUT_S = 15.0  # CONNECT sent, no CONNACK: the attempt has failed
STABLE_S = 30.0  # a connection up this long resets the backoff to its minimum
REFUSED_RETRY_MIN_S = 0.5  # a refused connection is tried again after a random time in
REFUSED_RETRY_MAX_S = 1.5  # this range, whatever the back-off has grown to
LOOP_S = 0.2  # the longest this thread waits before looking at restart/stop
STOP_DRAIN_S = 2.0  # stop(): time for DISCONNECT to leave before the socket is cut


def backoff_delay(attempt: int, rng: random.Random, min_s: float = BACKOFF_MIN_S,
                  max_s: float = BACKOFF_MAX_S, *, refused: bool = False) -> float:
    """Seconds to wait before attempt ``attempt + 1``: exponential, capped, with half of
    it random, so gateways that lost the broker together come back spread out; after a
    refused TCP connection no more than REFUSED_RETRY_MAX_S (see the module doc)."""
    ceiling = min(max_s, min_s * 2 ** min(attempt, 32))
    delay = float(ceiling / 2 + rng.uniform(0, ceiling / 2))
    if refused:
        delay = min(delay, rng.uniform(REFUSED_RETRY_MIN_S, REFUSED_RETRY_MAX_S))
    return delay


@dataclass(frozen=True, slots=True)
class LinkEvent:
    kind: str  # connected | disconnected | puback | message
    mid: int = 0
    topic: str = ""
    payload: bytes = b""
    retain: bool = False
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    qos: int = 0
    gen: int = 0  # the connection it came on (acks go back on that one only)


class MqttLink:
    def __init__(self, cfg: Config, boot: int, inbox: queue.Queue[Any], *,
                 manual_ack: bool = False, backoff_min_s: float = BACKOFF_MIN_S,
                 backoff_max_s: float = BACKOFF_MAX_S,
                 connack_timeout_s: float = CONNACK_TIMEOUT_S,
                 rng: random.Random | None = None) -> None:
        """``manual_ack``: an incoming command is acknowledged to the broker only when
        the runtime calls ``ack(event)`` (after the command's reply is committed), so a
        crash before that gets it delivered again."""
        self.cfg = cfg
        self.boot = boot
        self.inbox = inbox
        self.base = f"{cfg.mqtt.prefix}/{cfg.gateway.id}"
        self.cmd_topic = f"{self.base}/cmd"
        self.headend_topic = f"{cfg.mqtt.prefix}/headend/state"
        self.v5 = cfg.mqtt.protocol == "5"
        self.manual_ack = manual_ack
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.connack_timeout_s = connack_timeout_s
        self.rng = rng or random.Random()
        # Counters for the health report (read from other threads; ints are atomic).
        self.dropped_messages = 0
        self.reconnects = 0  # connections lost after CONNACK
        self.restarts = 0  # restarts asked for (a connection up but not acknowledging)
        self.attempts = 0
        self.last_error = ""
        self.connected = False
        self.gen = 0
        self._client: mqtt.Client | None = None
        self._stop = threading.Event()
        self._restart = threading.Event()
        self._refused = False  # the last attempt's TCP connection was refused
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> None:
        assert self._thread is None or not self._thread.is_alive(), "already started"
        self._thread = threading.Thread(target=guarded("mqtt", self._run), name="mqtt",
                                        daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        """Its thread runs (the supervisor starts it again when it does not)."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """A clean stop (DISCONNECT: no Last Will); the runtime publishes its own
        offline state first."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=CONNECT_TIMEOUT_S + STOP_DRAIN_S + 2 * LOOP_S)

    def restart(self) -> None:
        """Drop a connection that is up but not acknowledging, and connect again (after
        the backoff). The store is not touched: what was in flight is sent again."""
        self.restarts += 1
        log.warning("event=mqtt_restart reason=no_puback")
        self._restart.set()

    # -- called from the runtime thread ---------------------------------------
    def publish(self, suffix: str, payload: bytes, *, retain: bool = False) -> int | None:
        """Publish at QoS 1; the ``mid`` to match its PUBACK, or None if not sent now."""
        client = self._client
        if client is None or not self.connected:
            return None
        info = client.publish(f"{self.base}/{suffix}", payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return None
        return int(info.mid)

    def ack(self, event: LinkEvent) -> None:
        """With ``manual_ack``: tell the broker a message is handled (no-op otherwise, and
        for a message that came on an earlier connection: the broker sends that again)."""
        client = self._client
        if self.manual_ack and event.kind == "message" and event.qos > 0 \
                and client is not None and event.gen == self.gen:
            client.ack(event.mid, event.qos)

    def status(self) -> dict[str, Any]:
        return {"connected": self.connected, "reconnects": self.reconnects,
                "restarts": self.restarts, "attempts": self.attempts,
                "dropped_commands": self.dropped_messages, "last_error": self.last_error}

    # -- this link's thread -------------------------------------------------------
    def _new_client(self) -> mqtt.Client:
        m = self.cfg.mqtt
        gw = self.cfg.gateway.id
        if self.v5:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=gw,
                                 protocol=mqtt.MQTTv5, reconnect_on_failure=False,
                                 manual_ack=self.manual_ack)
        else:
            # clean_session=False: the broker queues commands while we are away.
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=gw,
                                 protocol=mqtt.MQTTv311, clean_session=False,
                                 reconnect_on_failure=False, manual_ack=self.manual_ack)
        client.will_set(f"{self.base}/state", json.dumps({"online": False, "boot": self.boot}),
                        qos=1, retain=True)
        if m.username is not None:
            client.username_pw_set(m.username, m.password)
        if m.tls:
            client.tls_set(ca_certs=str(m.ca_file) if m.ca_file else None,
                           certfile=str(m.cert_file) if m.cert_file else None,
                           keyfile=str(m.key_file) if m.key_file else None,
                           tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.connect_timeout = CONNECT_TIMEOUT_S
        # Bound: paho's queue is never the buffer; the outbox is. The runtime keeps a
        # small window in flight, so paho never holds more than that.
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_socket_register_write = lambda *_: None  # see the module docstring
        return client

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            self._restart.clear()
            self._refused = False
            up_s = self._session()
            if self._stop.is_set():
                break
            if up_s >= STABLE_S:
                attempt = 0
            delay = backoff_delay(attempt, self.rng, self.backoff_min_s, self.backoff_max_s,
                                  refused=self._refused)
            attempt += 1
            log.info("event=mqtt_backoff attempt=%d delay_s=%.2f error=%s", attempt, delay,
                     self.last_error)
            self._stop.wait(delay)

    def _session(self) -> float:
        """One connection attempt and, if it succeeds, its life; seconds it was up."""
        m = self.cfg.mqtt
        client = self._new_client()
        self.attempts += 1
        try:
            if self.v5:
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = m.session_expiry_s
                client.connect(m.host, m.port, m.keepalive_s, clean_start=False,
                               properties=props)
            else:
                client.connect(m.host, m.port, m.keepalive_s)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self._refused = isinstance(exc, ConnectionRefusedError)
            self.last_error = f"connect: {exc}"
            log.warning("event=mqtt_connect_failed host=%s port=%d error=%s", m.host, m.port,
                        exc)
            return 0.0
        self._client = client
        started = time.monotonic()
        up_at: float | None = None
        try:
            while True:
                rc = client.loop(LOOP_S)
                if self.connected and up_at is None:
                    up_at = time.monotonic()
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    if up_at is None and not self.last_error.startswith("refused"):
                        self.last_error = f"connection closed before CONNACK: " \
                                          f"{mqtt.error_string(rc)}"
                    break
                if self._stop.is_set():
                    self._disconnect(client)
                    break
                if self._restart.is_set():
                    break
                if up_at is None and time.monotonic() - started > self.connack_timeout_s:
                    self.last_error = f"no CONNACK within {self.connack_timeout_s} s"
                    log.warning("event=mqtt_connack_timeout timeout_s=%s",
                                self.connack_timeout_s)
                    break
        finally:
            self._cut(client)
            self._client = None
        return 0.0 if up_at is None else time.monotonic() - up_at

    def _disconnect(self, client: mqtt.Client) -> None:
        """Send DISCONNECT and give it ``STOP_DRAIN_S`` to leave."""
        client.disconnect()
        deadline = time.monotonic() + STOP_DRAIN_S
        while client.socket() is not None and time.monotonic() < deadline:
            client.loop(LOOP_S)

    def _cut(self, client: mqtt.Client) -> None:
        """End the connection now, whatever state it is in (a stuck broker never reads
        what we write, so DISCONNECT cannot be relied on)."""
        sock = client.socket()
        if isinstance(sock, socket.socket):  # an SSLSocket is one too
            if client.want_write():
                client.loop(0)  # what is queued (an ack, say) leaves if the socket takes it
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already gone
            client.loop(0)  # paho sees the end, closes the socket, calls on_disconnect
        self._down("closed")

    def _down(self, reason: str) -> None:
        if self.connected:
            self.connected = False
            self.reconnects += 1
            self._post(LinkEvent("disconnected", reason=reason, gen=self.gen))

    # -- paho callbacks (this link's thread): only post events -------------------------
    def _post(self, event: LinkEvent) -> None:
        try:
            self.inbox.put_nowait(event)
        except queue.Full:
            if event.kind == "message":
                self.dropped_messages += 1
                log.warning("event=inbox_full dropped=command topic=%s", event.topic)
            else:  # never drop link events; block this thread briefly instead
                self.inbox.put(event, timeout=5)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        if reason_code.is_failure:
            self.last_error = f"refused: {reason_code}"
            log.warning("event=mqtt_refused reason=%s", reason_code)
            return
        self.gen += 1
        self.connected = True
        self.last_error = ""
        client.subscribe([(self.cmd_topic, 1), (self.headend_topic, 1)])
        session = bool(getattr(flags, "session_present", False))
        log.info("event=mqtt_up gen=%d session_present=%s", self.gen, session)
        self._post(LinkEvent("connected", extra={"session_present": session}, gen=self.gen))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        self._down(str(reason_code))

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any,
                    properties: Any) -> None:
        self._post(LinkEvent("puback", mid=mid, gen=self.gen))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._post(LinkEvent("message", mid=int(msg.mid), topic=msg.topic,
                             payload=bytes(msg.payload), retain=bool(msg.retain),
                             qos=int(msg.qos), gen=self.gen))
