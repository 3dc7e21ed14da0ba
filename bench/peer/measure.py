"""What the peer benchmark reads off the machine: CPU time from /proc, publications on
the broker, and the processes it starts.

- ``tree_cpu_s(pid)``: user + system seconds of a process, its threads (the kernel
  sums them into the process's own ``utime``/``stime``), its children it has waited
  for (``cutime``/``cstime``) and every live descendant (their own times).
- ``BrokerCounter``: one MQTT client subscribed to ``#`` on the private broker, with a
  persistent session (so what is published while it reconnects after a broker restart
  is queued for it by the broker) and its own fast reconnect loop (every 20 ms: the
  benchmark times other clients' reconnects, so it must be back first). Every
  publication is kept with its monotonic arrival time; retained replays (the broker's
  stored messages sent on a new subscription) are marked, and left out by the sides.
  The broker's own resends to the counter (DUP set, after a broker restart: the
  counter's PUBACK was lost with the old broker) are dropped when the counter already
  has the same topic and bytes among the last ``RECENT`` messages: they are the
  counter's duplicates, not the publisher's. (A publisher's resend reaches the counter
  as a new delivery, DUP clear, and is kept.)
- ``Proc``: a child in its own session, stopped by pid (TERM, then KILL) — and what is
  left of its process group, by that group's id.
- ``publish_overhead``: the MQTT 3.1.1 PUBLISH framing beyond topic and payload.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

CLK_TCK = os.sysconf("SC_CLK_TCK")
RECONNECT_EVERY_S = 0.02
RECENT = 4096  # messages remembered to recognise the broker's resends to the counter
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class StatTimes:
    """The fields of /proc/<pid>/stat that the benchmark uses (clock ticks)."""

    ppid: int
    utime: int
    stime: int
    cutime: int
    cstime: int


def parse_stat(text: str) -> StatTimes:
    """/proc/<pid>/stat: ``pid (comm) state ppid ...``; comm may hold spaces and ')',
    so the fields are counted from the last ')'. proc(5): ppid is field 4, utime 14,
    stime 15, cutime 16, cstime 17."""
    rest = text.rsplit(")", 1)[1].split()
    return StatTimes(ppid=int(rest[1]), utime=int(rest[11]), stime=int(rest[12]),
                     cutime=int(rest[13]), cstime=int(rest[14]))


def _stat(pid: int) -> StatTimes | None:
    try:
        return parse_stat(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, IndexError, ValueError):
        return None  # gone between listing and reading


def descendants(pid: int) -> list[int]:
    """Live descendants of ``pid`` (one pass over /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                children.setdefault(st.ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` with its threads, waited-for children and live descendants."""
    own = _stat(pid)
    if own is None:
        raise ProcessLookupError(pid)
    ticks = own.utime + own.stime + own.cutime + own.cstime
    for child in descendants(pid):
        st = _stat(child)
        if st is not None:
            ticks += st.utime + st.stime
    return ticks / CLK_TCK


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise KeyError("VmRSS")


def publish_overhead(topic: str, payload_len: int, qos: int = 1) -> int:
    """Bytes of an MQTT 3.1.1 PUBLISH beyond topic and payload: the fixed header (1 byte
    and the remaining length, a 1-4 byte varint), the topic's 2-byte length, and the
    packet id (QoS > 0). MQTT 5 adds at least a property-length byte."""
    remaining = 2 + len(topic.encode()) + (2 if qos else 0) + payload_len
    varint = 1 if remaining < 128 else 2 if remaining < 16_384 else 3 if remaining < 2_097_152 \
        else 4
    return 1 + varint + 2 + (2 if qos else 0)


@dataclass(frozen=True, slots=True)
class Publish:
    at_s: float  # time.monotonic() when the counter received it
    topic: str
    payload: bytes
    qos: int
    retain: bool  # True: a retained message replayed to a new subscription


class BrokerCounter:
    """Everything published on the broker, with arrival times (see the module doc)."""

    def __init__(self, port: int, client_id: str = "bench-peer-counter") -> None:
        self.port = port
        self._lock = threading.Lock()
        self._got: list[Publish] = []
        self._connected = threading.Event()
        self._stop = threading.Event()
        self.connects: list[float] = []  # monotonic time of each CONNACK
        self.resent_to_me = 0  # the broker's resends of what the counter already had
        self._recent: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                   protocol=mqtt.MQTTv311, clean_session=False)
        self._client.max_inflight_messages_set(1000)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._thread = threading.Thread(target=self._run, name="broker-counter", daemon=True)

    def start(self, timeout_s: float = 10.0) -> None:
        self._thread.start()
        if not self._connected.wait(timeout_s):
            raise TimeoutError(f"counter: no connection to 127.0.0.1:{self.port}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        try:
            self._client.disconnect()
        except OSError:
            pass

    def publish_retained(self, topic: str, payload: bytes, timeout_s: float = 5.0) -> None:
        """One retained QoS 1 message, acknowledged by the broker (the counter's own
        network loop sends it)."""
        info = self._client.publish(topic, payload, qos=1, retain=True)
        info.wait_for_publish(timeout_s)
        if not info.is_published():
            raise TimeoutError(f"no PUBACK for {topic} within {timeout_s} s")

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    def messages(self, since_s: float = 0.0, until_s: float = float("inf")) -> list[Publish]:
        with self._lock:
            return [p for p in self._got if since_s <= p.at_s < until_s]

    def _run(self) -> None:
        first = True
        while not self._stop.is_set():
            if not self._connected.is_set():
                try:
                    if first:
                        self._client.connect("127.0.0.1", self.port, keepalive=30)
                        first = False
                    else:
                        self._client.reconnect()
                except OSError:
                    self._stop.wait(RECONNECT_EVERY_S)
                    continue
                # The CONNACK comes in loop(): keep looping until it does or fails.
                deadline = time.monotonic() + 2.0
                while (not self._connected.is_set() and not self._stop.is_set()
                       and time.monotonic() < deadline):
                    if self._client.loop(timeout=0.01) != mqtt.MQTT_ERR_SUCCESS:
                        break
                continue
            if self._client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                self._connected.clear()

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags,
                    reason_code: object, properties: object) -> None:
        self.connects.append(time.monotonic())
        if not flags.session_present:
            client.subscribe("#", qos=1)
        self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object,
                       reason_code: object, properties: object) -> None:
        self._connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        pub = Publish(time.monotonic(), msg.topic, bytes(msg.payload), int(msg.qos),
                      bool(msg.retain))
        key = (pub.topic, pub.payload)
        with self._lock:
            if msg.dup and key in self._recent:
                self.resent_to_me += 1
                return
            self._recent[key] = None
            if len(self._recent) > RECENT:
                self._recent.popitem(last=False)
            self._got.append(pub)


class Proc:
    """A child in its own session, its output in ``log``; ``stop()`` by pid."""

    def __init__(self, args: list[str], log: Path, *, cwd: Path,
                 env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log = log
        self._f = open(log, "ab")
        # Taken just before the fork; Popen returns once the child has exec'd.
        self.started_s = time.monotonic()
        self.proc = subprocess.Popen(args, stdout=self._f, stderr=subprocess.STDOUT, cwd=cwd,
                                     env=env, start_new_session=True)
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                os.kill(self.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    os.kill(self.pid, signal.SIGKILL)
                    self.proc.wait()
            try:  # anything it started in its session (its group id is its pid)
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        finally:
            self._f.close()

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""
