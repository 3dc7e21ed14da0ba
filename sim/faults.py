"""Faults and tamper for the simulated meters (see sim/README.md).

Line faults hit any protocol's replies, drawn per reply from one seeded
random stream (``--seed``), in this order:
    silent   the reply is dropped (the meter did not answer)
    corrupt  one bit of one byte of the reply is flipped (CRC/BCC must catch it)
    slow     the reply starts ``slow_ms`` later than the turnaround
    noise    1..8 random bytes arrive just before the reply
Meter faults come through the control socket (``--control PATH``): one JSON
object per line, one JSON reply per line::

    {"meter": "SDM-0001", "fault": "reset_register"}   register restarts at 0
    {"meter": "SDM-0001", "fault": "replace"}          new serial, register near 0
    {"meter": "SDM-0001", "tamper": "magnet"}          into the meter's event log
    {"meter": "SDM-0001", "silent": true}              stops answering (false: back)
    {"meter": "D-01", "fault": "wrong_key", "on": true}  DLMS with keys: other keys
    {"meter": "D-01", "fault": "replay_counter"}       DLMS with keys: reuses its counter
    {"stats": true}                                    line fault counters

Send them with ``python -m sim.faults --control PATH '{"meter": ...}' ...`` or
``python -m sim.faults --control PATH --meter ID (--fault F | --tamper K | --silent on|off)``.
Tamper needs a meter with an event log (``tamper(kind)``, the DLMS meters);
Eastron Modbus and IEC readout meters have none, and the reply says so.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from agent.vocab import TAMPER_KINDS

log = logging.getLogger("sim.faults")

MAX_NOISE_BYTES: Final = 8
MAX_LINE_BYTES: Final = 4096  # a control line longer than this is refused
ACCEPT_POLL_S: Final = 0.2


@dataclass(frozen=True)
class FaultRates:
    corrupt: float = 0.0
    silent: float = 0.0
    slow: float = 0.0
    slow_ms: float = 200.0
    noise: float = 0.0

    def __post_init__(self) -> None:
        for name in ("corrupt", "silent", "slow", "noise"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"--{name}-rate must be within 0..1")
        if self.slow_ms < 0:
            raise ValueError("--slow-ms must be >= 0")


@dataclass(frozen=True)
class ReplyPlan:
    frame: bytes | None  # None: dropped
    delay_s: float = 0.0
    noise: bytes = b""


@dataclass
class FaultInjector:
    rates: FaultRates
    seed: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("replies", "silent", "corrupt", "slow", "noise"), 0))

    def __post_init__(self) -> None:
        self._rng = random.Random(f"faults:{self.seed}")
        self._lock = threading.Lock()

    def plan(self, frame: bytes) -> ReplyPlan:
        """What happens to this reply (thread-safe: one stream for every bus)."""
        rates, rng = self.rates, self._rng
        with self._lock:
            self.counts["replies"] += 1
            if rates.silent and rng.random() < rates.silent:
                self.counts["silent"] += 1
                return ReplyPlan(None)
            if rates.corrupt and frame and rng.random() < rates.corrupt:
                self.counts["corrupt"] += 1
                i = rng.randrange(len(frame))
                frame = frame[:i] + bytes([frame[i] ^ (1 << rng.randrange(8))]) + frame[i + 1:]
            delay_s = 0.0
            if rates.slow and rng.random() < rates.slow:
                self.counts["slow"] += 1
                delay_s = rates.slow_ms / 1000
            noise = b""
            if rates.noise and rng.random() < rates.noise:
                self.counts["noise"] += 1
                noise = rng.randbytes(rng.randint(1, MAX_NOISE_BYTES))
            return ReplyPlan(frame, delay_s, noise)


def apply_control(
    message: Any,
    meters: dict[str, Any],
    locked: Callable[[str], Any],
    injector: FaultInjector | None = None,
) -> dict[str, Any]:
    """Apply one control message; ``locked(meter_id)`` is a context manager (the bus lock)."""
    if not isinstance(message, dict):
        return {"ok": False, "error": "expected a JSON object"}
    if message.get("stats"):
        return {"ok": True, "counts": dict(injector.counts) if injector else {}}
    meter_id = message.get("meter")
    if not isinstance(meter_id, str) or meter_id not in meters:
        return {"ok": False, "error": f"no simulated meter {meter_id!r}"}
    meter = meters[meter_id]
    with locked(meter_id):
        if "fault" in message:
            fault = message["fault"]
            if fault == "reset_register" and hasattr(meter, "reset_register"):
                meter.reset_register()
                return {"ok": True, "meter": meter_id}
            if fault == "replace" and hasattr(meter, "replace"):
                return {"ok": True, "meter": meter_id, "serial": meter.replace()}
            if fault in ("wrong_key", "replay_counter") and getattr(meter, "security", None):
                setattr(meter, fault, message.get("on", True) is not False)
                return {"ok": True, "meter": meter_id, fault: getattr(meter, fault)}
            return {"ok": False, "error": f"fault {fault!r} is not reset_register|replace|"
                                          f"wrong_key|replay_counter, or {meter_id} cannot "
                                          "do it"}
        if "tamper" in message:
            kind = message["tamper"]
            if kind not in TAMPER_KINDS:
                return {"ok": False, "error": f"tamper must be one of {TAMPER_KINDS}"}
            if not hasattr(meter, "tamper"):
                return {"ok": False, "error": f"{meter_id} has no event log "
                                              "(only DLMS meters record tamper)"}
            meter.tamper(kind)
            return {"ok": True, "meter": meter_id}
        if "silent" in message and isinstance(message["silent"], bool):
            meter.silent = message["silent"]
            return {"ok": True, "meter": meter_id, "silent": meter.silent}
    return {"ok": False, "error": "expected one of fault, tamper, silent (bool), stats"}


class ControlServer(threading.Thread):
    """The unix socket at ``path``; one JSON line in, one JSON line out."""

    def __init__(self, path: str | Path, handle: Callable[[Any], dict[str, Any]],
                 stop: threading.Event) -> None:
        super().__init__(name="sim-control", daemon=True)
        self.path = Path(path)
        self._handle = handle
        self._stopping = stop
        if self.path.exists() or self.path.is_symlink():
            if not self.path.is_socket():
                raise FileExistsError(f"{self.path} exists and is not a socket; refusing")
            self.path.unlink()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(self.path))
        os.chmod(self.path, 0o600)
        self._sock.listen(4)
        self._sock.settimeout(ACCEPT_POLL_S)

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    conn, _ = self._sock.accept()
                except TimeoutError:
                    continue
                with conn:
                    self._serve(conn)
        finally:
            self._sock.close()
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5.0)
        with conn.makefile("rb") as rfile, conn.makefile("wb") as wfile:
            for raw in rfile:
                if len(raw) > MAX_LINE_BYTES:
                    reply: dict[str, Any] = {"ok": False, "error": "line too long"}
                else:
                    try:
                        reply = self._handle(json.loads(raw))
                    except ValueError as exc:
                        reply = {"ok": False, "error": f"bad JSON: {exc}"}
                log.info("control %s -> %s", raw.strip()[:200], reply)
                wfile.write(json.dumps(reply).encode() + b"\n")
                wfile.flush()


def send(path: str | Path, messages: list[dict[str, Any]], timeout_s: float = 5.0) -> list[
        dict[str, Any]]:
    """Send control messages to a running simulator; its replies, in order."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(path))
        replies = []
        with sock.makefile("rb") as rfile:
            for message in messages:
                sock.sendall(json.dumps(message).encode() + b"\n")
                replies.append(json.loads(rfile.readline()))
        return replies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.faults",
                                     description="send faults to a running sim.meters")
    parser.add_argument("--control", required=True, help="the simulator's --control socket")
    parser.add_argument("messages", nargs="*", help="JSON objects, one per argument")
    parser.add_argument("--meter")
    parser.add_argument("--fault", choices=("reset_register", "replace"))
    parser.add_argument("--tamper", choices=TAMPER_KINDS)
    parser.add_argument("--silent", choices=("on", "off"))
    parser.add_argument("--stats", action="store_true")
    args = parser.parse_args(argv)
    try:
        messages: list[dict[str, Any]] = [json.loads(m) for m in args.messages]
    except ValueError as exc:
        print(f"sim.faults: bad JSON: {exc}", file=sys.stderr)
        return 2
    if args.meter:
        one: dict[str, Any] = {"meter": args.meter}
        if args.fault:
            one["fault"] = args.fault
        elif args.tamper:
            one["tamper"] = args.tamper
        elif args.silent:
            one["silent"] = args.silent == "on"
        messages.append(one)
    if args.stats:
        messages.append({"stats": True})
    if not messages:
        print("sim.faults: nothing to send", file=sys.stderr)
        return 2
    try:
        replies = send(args.control, messages)
    except OSError as exc:
        print(f"sim.faults: {args.control}: {exc}", file=sys.stderr)
        return 2
    for reply in replies:
        print(json.dumps(reply))
    return 0 if all(r.get("ok") for r in replies) else 1


if __name__ == "__main__":
    sys.exit(main())
