"""The MQTT link against a real mosquitto: backoff with jitter, reconnects, the CONNECT
it sends (MQTT 3.1.1 and 5, session expiry set explicitly), TLS with a client
certificate and a password (certificates made here, never committed), manual acks of
commands, and a broker that stops acknowledging (SIGSTOP): the client is restarted,
the store never is."""

from __future__ import annotations

import datetime
import ipaddress
import queue
import random
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.buffer.store import LANE_EVENTS
from agent.config import Config
from agent.events import MeterOnline
from agent.uplink import forming
from agent.uplink.commands import make_command
from agent.uplink.mqtt import (
    BACKOFF_MAX_S,
    REFUSED_RETRY_MAX_S,
    REFUSED_RETRY_MIN_S,
    LinkEvent,
    MqttLink,
    backoff_delay,
)
from sim.broker import Mosquitto, find_mosquitto, free_port
from sim.headend import HeadEnd
from tests.e2e.uplink_helpers import GW, Pipeline, config_for, paused, wait

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed")
KEY = bytes(range(32))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path / "broker")
    b.start()
    try:
        yield b
    finally:
        b.stop()


def events(inbox: queue.Queue[Any], kind: str, timeout_s: float = 10) -> LinkEvent:
    """The next event of ``kind`` (others are skipped)."""
    return wait(lambda: _next(inbox, kind), timeout_s, f"a {kind} event")  # type: ignore[no-any-return]


def _next(inbox: queue.Queue[Any], kind: str) -> LinkEvent | None:
    try:
        event = inbox.get(timeout=0.05)
    except queue.Empty:
        return None
    return event if event.kind == kind else None


def link_for(cfg: Config, **kw: Any) -> tuple[MqttLink, queue.Queue[Any]]:
    inbox: queue.Queue[Any] = queue.Queue()
    kw.setdefault("backoff_min_s", 0.1)
    kw.setdefault("backoff_max_s", 0.5)
    return MqttLink(cfg, 1, inbox, **kw), inbox


def test_backoff_grows_caps_and_jitters() -> None:
    rng = random.Random(5)
    delays = [backoff_delay(n, rng) for n in range(12)]
    for n, d in enumerate(delays):
        ceiling = min(BACKOFF_MAX_S, 2.0**n)
        assert ceiling / 2 <= d <= ceiling
    assert max(delays) <= BACKOFF_MAX_S
    # gateways that lost the broker together do not come back together
    spread = {round(backoff_delay(4, random.Random(seed)), 3) for seed in range(50)}
    assert len(spread) > 40 and max(spread) - min(spread) > 3


def test_a_refused_connection_is_tried_again_within_a_second_or_so() -> None:
    """The broker restarting (nothing listens: the TCP connection is refused) costs it
    nothing: the link tries again within REFUSED_RETRY_MIN_S..MAX_S however long the
    back-off has grown, so it is back about a second after the broker; spread out."""
    for n in range(12):
        d = backoff_delay(n, random.Random(n), refused=True)
        assert REFUSED_RETRY_MIN_S <= d <= REFUSED_RETRY_MAX_S or d <= 2.0**n
        assert d <= REFUSED_RETRY_MAX_S
    spread = {round(backoff_delay(8, random.Random(seed), refused=True), 3)
              for seed in range(50)}
    assert len(spread) > 40 and min(spread) >= REFUSED_RETRY_MIN_S


def test_the_link_comes_back_fast_after_a_refused_connection(broker: Mosquitto,
                                                            tmp_path: Path) -> None:
    """Long after the back-off has grown (here: to its 60 s ceiling), a broker that
    refused connections and listens again is reached within REFUSED_RETRY_MAX_S."""
    cfg = config_for(broker.port, tmp_path)
    broker.stop()
    link, inbox = link_for(cfg, backoff_min_s=30.0, backoff_max_s=60.0)
    link.start()
    try:
        wait(lambda: link.attempts >= 3, 10, "refused attempts")
        broker.start()
        started = time.monotonic()
        wait(lambda: link.connected, 10, "the link after the broker came back")
        assert time.monotonic() - started <= REFUSED_RETRY_MAX_S + 1.0
    finally:
        link.stop()


def test_publish_puback_and_reconnect_after_a_broker_restart(broker: Mosquitto,
                                                            tmp_path: Path) -> None:
    link, inbox = link_for(config_for(broker.port, tmp_path))
    link.start()
    try:
        assert events(inbox, "connected").gen == 1
        mid = link.publish("up/events", b"\xa0")
        assert mid is not None and events(inbox, "puback").mid == mid
        broker.stop()  # down until started again below, however slow this machine is
        events(inbox, "disconnected")
        assert link.publish("up/events", b"\xa0") is None  # down: nothing sent
        broker.start()
        assert events(inbox, "connected").gen == 2
        assert link.reconnects == 1 and link.attempts >= 2 and link.connected
    finally:
        link.stop()
    assert not link.connected


def _connect_packet(cfg: Config) -> bytes:
    """The CONNECT the link sends, caught by a socket that is not a broker."""
    server = socket.socket()
    server.bind(("127.0.0.1", cfg.mqtt.port))
    server.listen(1)
    got: list[bytes] = []

    def accept() -> None:
        conn, _ = server.accept()
        conn.settimeout(5)
        got.append(conn.recv(4096))
        conn.close()

    thread = threading.Thread(target=accept)
    thread.start()
    link, _ = link_for(cfg, connack_timeout_s=1)
    link.start()
    thread.join(10)
    link.stop()
    server.close()
    return got[0]


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        value |= (data[i] & 0x7F) << shift
        shift += 7
        i += 1
        if not data[i - 1] & 0x80:
            return value, i


def test_connect_v5_sets_clean_start_false_and_the_session_expiry(tmp_path: Path) -> None:
    cfg = config_for(free_port(), tmp_path, mqtt={"protocol": "5", "session_expiry_s": 86400})
    packet = _connect_packet(cfg)
    assert packet[0] == 0x10
    _, i = _varint(packet, 1)
    assert packet[i:i + 7] == b"\x00\x04MQTT\x05"
    flags = packet[i + 7]
    assert not flags & 0x02, "clean start must be false: the broker keeps our session"
    assert flags & 0x04, "a Last Will is set"
    length, j = _varint(packet, i + 10)
    props = packet[j:j + length]
    assert props[0] == 0x11 and int.from_bytes(props[1:5], "big") == 86400


def test_connect_v311_keeps_the_session(tmp_path: Path) -> None:
    packet = _connect_packet(config_for(free_port(), tmp_path))
    _, i = _varint(packet, 1)
    assert packet[i:i + 7] == b"\x00\x04MQTT\x04"
    assert not packet[i + 7] & 0x02, "clean session must be false"


# -- TLS and passwords ------------------------------------------------------------------
def _certs(where: Path) -> dict[str, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    paths: dict[str, Path] = {}

    def issue(name: str, key: Any, issuer: x509.Name, issuer_key: Any, ca: bool,
              san: list[x509.GeneralName] | None = None) -> x509.Certificate:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), True))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), False)
        cert = builder.sign(issuer_key, hashes.SHA256())
        paths[name] = where / f"{name}.pem"
        paths[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[name + ".key"] = where / f"{name}.key"
        paths[name + ".key"].write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        return cert

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-ca")])
    issue("test-ca", ca_key, ca_name, ca_key, True)
    issue("broker", ec.generate_private_key(ec.SECP256R1()), ca_name, ca_key, False,
          [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    issue(GW, ec.generate_private_key(ec.SECP256R1()), ca_name, ca_key, False)
    return paths


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, dict[str, Path]]]:
    certs = _certs(tmp_path)
    passwd = tmp_path / "passwd"
    passwd.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), GW, "s3cret"], check=True)
    b = Mosquitto(tmp_path / "broker")
    b.conf.write_text(b.conf.read_text().replace("allow_anonymous true\n", "") + (
        "allow_anonymous false\n"
        f"password_file {passwd}\n"
        f"cafile {certs['test-ca']}\ncertfile {certs['broker']}\nkeyfile {certs['broker.key']}\n"
        "require_certificate true\ntls_version tlsv1.2\n"))
    b.start()
    try:
        yield b, certs
    finally:
        b.stop()


@pytest.mark.skipif(subprocess.run(["which", "mosquitto_passwd"], capture_output=True)
                    .returncode != 0, reason="mosquitto_passwd not installed")
def test_tls_with_a_client_certificate_and_a_password(
        tls_broker: tuple[Mosquitto, dict[str, Path]], tmp_path: Path) -> None:
    broker, certs = tls_broker
    tls = {"tls": True, "ca_file": str(certs["test-ca"]), "cert_file": str(certs[GW]),
           "key_file": str(certs[GW + ".key"]), "username": GW}
    good, inbox = link_for(config_for(broker.port, tmp_path / "a",
                                      mqtt={**tls, "password": "s3cret"}))
    good.start()
    try:
        events(inbox, "connected")
        mid = good.publish("up/events", b"\xa0")
        assert events(inbox, "puback").mid == mid
    finally:
        good.stop()
    bad_password, _ = link_for(config_for(broker.port, tmp_path / "b",
                                          mqtt={**tls, "password": "wrong"}))
    no_cert = {k: v for k, v in tls.items() if k not in ("cert_file", "key_file")}
    no_client_cert, _ = link_for(config_for(broker.port, tmp_path / "c",
                                            mqtt={**no_cert, "password": "s3cret"}))
    for link, why in ((bad_password, "refused"), (no_client_cert, "connect")):
        link.start()
        try:
            wait(lambda: link.attempts >= 2, 10, "two attempts")  # noqa: B023
            assert not link.connected and link.gen == 0
            assert why in link.last_error, link.last_error
        finally:
            link.stop()


# -- commands ---------------------------------------------------------------------------
def test_a_command_not_acknowledged_comes_again_after_a_reconnect(broker: Mosquitto,
                                                                 tmp_path: Path) -> None:
    cfg = config_for(broker.port, tmp_path)
    link, inbox = link_for(cfg, manual_ack=True)
    link.start()
    headend = HeadEnd("127.0.0.1", broker.port, "gw", KEY, client_id="he-ack")
    headend.start()
    def command_event(timeout_s: float = 10) -> LinkEvent | None:
        """The next command message; the retained head-end state is acknowledged and
        skipped (it comes again at every subscription)."""
        def take() -> LinkEvent | None:
            event = _next(inbox, "message")
            if event is not None and event.topic != link.cmd_topic:
                link.ack(event)
                return None
            return event
        try:
            return wait(take, timeout_s, "a command")  # type: ignore[no-any-return]
        except AssertionError:
            return None

    try:
        events(inbox, "connected")
        # "connected" comes when SUBSCRIBE is sent, not acknowledged: the retained state
        # arriving shows the subscription is in place before the command is sent.
        headend.publish_state(True, True)

        def state_arrived() -> bool:
            event = _next(inbox, "message")
            if event is None:
                return False
            link.ack(event)
            return event.topic == link.headend_topic

        wait(state_arrived, 10, "the retained head-end state")
        command = make_command(KEY, "ping", {}, id="c-1", now_s=1)
        headend.send_raw(GW, command)
        first = command_event()
        assert first is not None and first.payload == command and first.qos == 1
        link.restart()  # as if we crashed before committing the reply
        events(inbox, "connected")
        again = command_event()
        assert again is not None and again.payload == command  # the broker sent it again
        link.ack(again)
        # The PUBACK leaves from paho's network thread: a restart right after the ack
        # could cut it off, and the command would rightly come again (the dispatcher
        # answers a repeated id with its stored reply). Let it leave first.
        time.sleep(0.5)
        link.restart()
        events(inbox, "connected")
        assert command_event(timeout_s=1.0) is None  # acknowledged: not sent again
    finally:
        headend.stop()
        link.stop()


# -- a broker that stops acknowledging --------------------------------------------------
def test_a_broker_that_stops_acknowledging_restarts_the_client_not_the_store(
        broker: Mosquitto, tmp_path: Path) -> None:
    cfg = config_for(broker.port, tmp_path / "data")
    pipe = Pipeline(cfg, puback_timeout_s=1.5, connack_timeout_s=1.0, backoff_max_s=0.4)
    headend = HeadEnd("127.0.0.1", broker.port, "gw", KEY, client_id="he-stuck")
    headend.start()
    pipe.start()
    try:
        pipe.run_until(lambda: pipe.link.connected and pipe.delivery.up, 10, "the link")
        store_before = pipe.store
        emit(pipe, 5)
        pipe.run_until(lambda: len(headend.raw_seqs(GW)) >= 5, 10, "five messages")
        with paused(broker):
            emit(pipe, 5)
            pipe.run_until(lambda: pipe.link.restarts >= 1, 10, "the stuck link to restart")
            pipe.run_until(lambda: pipe.link.attempts >= 3, 10, "reconnect attempts")
            assert pipe.store is store_before and pipe.store.backlog()[0] == 5
        pipe.run_until(pipe.drained, 20, "the rest to be delivered")
        assert sorted(set(headend.raw_seqs(GW))) == list(range(1, 11))
        assert not headend.violations()
    finally:
        pipe.stop()
        headend.stop()


def emit(pipe: Pipeline, n: int) -> None:
    """``n`` events, one message each (so that several are in flight at once)."""
    for i in range(n):
        with pipe.store.tx():
            pipe.store.add_pending(LANE_EVENTS, forming.event_item(1, MeterOnline(f"M{i}", None)),
                                  1)
        forming.form_messages(pipe.store, GW, pipe.boot, 1, True)
