"""The MQTT link (paho-mqtt 2.x): connection, Last Will, subscriptions, publish.

paho runs its own network thread (``loop_start``). Its callbacks do nothing but
post a ``LinkEvent`` into the runtime's inbox; the runtime thread alone
touches the store, decides what to publish, and maps PUBACKs (by ``mid``) to
outbox rows. paho keeps its session only in memory, so delivery is owned by
the outbox: on every (re)connect the runtime forgets what was in flight and
sends it again from the store (at-least-once; the head-end dedupes by seq).

Bounds: the inbox is bounded; when it is full an incoming command is dropped
and counted (the broker already has it acknowledged; the head-end retries the
same id and gets one reply). PUBACK and connection events are never dropped:
the runtime keeps at most ``max_inflight`` publishes outstanding, far below the
inbox size.
"""

from __future__ import annotations

import json
import logging
import queue
import ssl
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import Config

log = logging.getLogger("agent.mqtt")


@dataclass(frozen=True, slots=True)
class LinkEvent:
    kind: str  # connected | disconnected | puback | message
    mid: int = 0
    topic: str = ""
    payload: bytes = b""
    retain: bool = False
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class MqttLink:
    def __init__(self, cfg: Config, boot: int, inbox: queue.Queue[Any]) -> None:
        self.cfg = cfg
        self.inbox = inbox
        self.base = f"{cfg.mqtt.prefix}/{cfg.gateway.id}"
        self.cmd_topic = f"{self.base}/cmd"
        self.headend_topic = f"{cfg.mqtt.prefix}/headend/state"
        self.dropped_messages = 0
        self.reconnects = 0
        self.connected = False
        m = cfg.mqtt
        self.v5 = m.protocol == "5"
        if self.v5:
            self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cfg.gateway.id,
                                      protocol=mqtt.MQTTv5)
        else:
            # clean_session=False: the broker queues commands while we are away.
            self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cfg.gateway.id,
                                      protocol=mqtt.MQTTv311, clean_session=False)
        self.client.will_set(f"{self.base}/state",
                             json.dumps({"online": False, "boot": boot}), qos=1, retain=True)
        if m.username is not None:
            self.client.username_pw_set(m.username, m.password)
        if m.tls:
            self.client.tls_set(
                ca_certs=str(m.ca_file) if m.ca_file else None,
                certfile=str(m.cert_file) if m.cert_file else None,
                keyfile=str(m.key_file) if m.key_file else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        # Bound: paho's own queue is never the buffer; the outbox is. The runtime
        # keeps fewer than this in flight, so paho never queues behind the socket.
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> None:
        m = self.cfg.mqtt
        props = None
        if self.v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = m.session_expiry_s
            self.client.connect_async(m.host, m.port, m.keepalive_s, clean_start=False,
                                      properties=props)
        else:
            self.client.connect_async(m.host, m.port, m.keepalive_s)
        self.client.loop_start()

    def stop(self) -> None:
        """A clean stop: the retained state stays as last published by the runtime."""
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()

    def restart(self) -> None:
        """Drop a connection that is up but not acknowledging; paho reconnects."""
        log.warning("event=mqtt_restart reason=no_puback")
        self.client.reconnect()

    # -- publishing (runtime thread) ----------------------------------------
    def publish(self, suffix: str, payload: bytes, *, retain: bool = False) -> int | None:
        """Publish at QoS 1; the ``mid`` to match its PUBACK, or None if not sent now."""
        if not self.connected:
            return None
        info = self.client.publish(f"{self.base}/{suffix}", payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return None
        return int(info.mid)

    # -- paho callbacks (network thread): only post events ---------------------
    def _post(self, event: LinkEvent) -> None:
        try:
            self.inbox.put_nowait(event)
        except queue.Full:
            if event.kind == "message":
                self.dropped_messages += 1
                log.warning("event=inbox_full dropped=command topic=%s", event.topic)
            else:  # never drop link events; block the network thread briefly instead
                self.inbox.put(event, timeout=5)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        if reason_code.is_failure:
            log.warning("event=mqtt_refused reason=%s", reason_code)
            return
        self.connected = True
        client.subscribe([(self.cmd_topic, 1), (self.headend_topic, 1)])
        self._post(LinkEvent("connected", extra={"session_present":
                                                 bool(getattr(flags, "session_present", False))}))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        was = self.connected
        self.connected = False
        if was:
            self.reconnects += 1
        self._post(LinkEvent("disconnected", reason=str(reason_code)))

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any,
                    properties: Any) -> None:
        self._post(LinkEvent("puback", mid=mid))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._post(LinkEvent("message", topic=msg.topic, payload=bytes(msg.payload),
                             retain=bool(msg.retain)))
