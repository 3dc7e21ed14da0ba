"""Helpers for the uplink tests (issue 5): the agent with the uplink wiring of issue 5,
an in-process pipeline (store -> outbox -> delivery -> MQTT) driven like the runtime's
loop, and small broker tools (a config for one, pausing one with SIGSTOP).

``WiredRuntime`` is the runtime as ``agent.cli run`` builds it; run it as
``python -m tests.e2e.uplink_helpers -c FILE`` to set the uplink tests' knobs
(``UPLINK_TEST_LIVE_FLUSH_S``, ``UPLINK_TEST_FLOOR_ROOM_BYTES``) in the agent's process.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import signal
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent.buffer import bounds
from agent.buffer.store import LANE_READINGS, Store
from agent.clock import Clock, SystemClock
from agent.config import Config, parse_config
from agent.drivers.reading import Reading
from agent.runtime import Runtime
from agent.uplink import forming
from agent.uplink.delivery import Delivery
from agent.uplink.mqtt import LinkEvent, MqttLink
from sim.broker import Mosquitto
from tests.e2e.harness import ROOT, SIM_CONFIG, Gateway, Proc, wait_until

GW = "gw-demo-01"


class WiredRuntime(Runtime):
    """The runtime as ``agent.cli run`` builds it (manual command acks, backlog forming,
    the health state and the storage bound are wired in runtime.py); kept as a name so
    the uplink tests can run the agent with their test knobs (see ``main``)."""


def main(argv: list[str] | None = None) -> int:
    from agent.config import load_config

    parser = argparse.ArgumentParser(prog="python -m tests.e2e.uplink_helpers")
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    # Test knob: how long live readings wait to share a message (the crash campaign
    # kills the agent every second or so; 5 s would leave every reading to the end).
    flush = os.environ.get("UPLINK_TEST_LIVE_FLUSH_S")
    if flush is not None:
        forming.LIVE_FLUSH_S = int(flush)
    # Test knob: the room a store under the free-disk floor keeps for live readings
    # (64 KiB: one gateway's readings would take minutes to fill it, so a drop test
    # sets it to 1 byte and drops start at the first tick).
    room = os.environ.get("UPLINK_TEST_FLOOR_ROOM_BYTES")
    if room is not None:
        bounds.FLOOR_ROOM_BYTES = int(room)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(message)s")
    runtime = WiredRuntime(load_config(args.config))
    signal.signal(signal.SIGTERM, lambda *_: runtime.stop())
    runtime.run()
    return 0


class WiredGateway(Gateway):
    """The harness's gateway, with the agent run as ``WiredRuntime``; ``env`` is added
    to the agent's environment."""

    env: dict[str, str] = {}

    def start_agent(self) -> Proc:
        self.agent_runs += 1
        old = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            self.agent = Proc([sys.executable, "-m", "tests.e2e.uplink_helpers", "-c",
                               str(self.config), "--log-level", "INFO"],
                              self.workdir / f"agent-{self.agent_runs}.log")
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return self.agent

    def data_dir(self) -> Path:
        return Path(self.raw["gateway"]["data_dir"])

    def status_or_none(self) -> dict[str, Any] | None:
        try:
            return self.status()
        except (OSError, ValueError):
            return None


# -- brokers ----------------------------------------------------------------------------
def config_for(port: int, data_dir: Path, **sections: dict[str, Any]) -> Config:
    """The sim board config pointed at a broker on ``port``, data in ``data_dir``;
    ``sections`` are merged into the TOML tables (``mqtt={"protocol": "5"}``)."""
    with open(SIM_CONFIG, "rb") as f:
        raw: dict[str, Any] = tomllib.load(f)
    raw["gateway"]["data_dir"] = str(data_dir)
    raw["mqtt"].update(host="127.0.0.1", port=port, keepalive_s=30)
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return parse_config(raw)


@contextmanager
def paused(broker: Mosquitto) -> Iterator[None]:
    """The broker process stopped (SIGSTOP): its sockets stay open and accept bytes,
    but nothing is read or acknowledged; continued (SIGCONT) on the way out."""
    assert broker.proc is not None
    os.kill(broker.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)


def wait(predicate: Callable[[], Any], timeout_s: float, what: str,
         step: Callable[[], None] | None = None) -> Any:
    return wait_until(predicate, timeout_s, what, step, poll_s=0.05)


# -- the pipeline in this process -------------------------------------------------------
class Pipeline:
    """Store -> outbox -> Delivery -> MqttLink, stepped by ``turn()`` the way the
    runtime's loop does it (inbox events, forming once a 'second', pump, stuck check),
    with the time of ``clock`` (a SimClock runs hours of readings in a moment)."""

    def __init__(self, cfg: Config, *, clock: Clock | None = None,
                 puback_timeout_s: float = 30.0, backoff_max_s: float = 1.0,
                 connack_timeout_s: float = 15.0, max_inflight: int = 32) -> None:
        self.cfg = cfg
        self.clock = clock or SystemClock()
        self.store = Store(cfg.gateway.data_dir)
        self.boot = self.store.next_boot()
        self.inbox: queue.Queue[Any] = queue.Queue(maxsize=10_000)
        self.link = MqttLink(cfg, self.boot, self.inbox, backoff_min_s=0.2,
                             backoff_max_s=backoff_max_s, connack_timeout_s=connack_timeout_s)
        self.delivery = Delivery(self.store, self.link, self.clock, gw=cfg.gateway.id,
                                 boot=self.boot, limits=cfg.store,
                                 puback_timeout_s=puback_timeout_s, max_inflight=max_inflight)
        self.events: list[LinkEvent] = []
        self.next_form = 0.0

    def start(self) -> None:
        self.link.start()

    def stop(self) -> None:
        self.link.stop()
        self.store.close()

    def add(self, readings: list[Reading]) -> None:
        with self.store.tx():
            for r in readings:
                self.store.add_pending(LANE_READINGS, forming.reading_item(r), r.t, r.meter)

    def turn(self, wait_s: float = 0.02) -> None:
        try:
            event = self.inbox.get(timeout=wait_s)
        except queue.Empty:
            event = None
        while event is not None:
            self.events.append(event)
            if event.kind == "puback":
                self.delivery.on_puback(event.mid)
            elif event.kind == "connected":
                self.delivery.on_connected()
            elif event.kind == "disconnected":
                self.delivery.on_disconnected()
            try:
                event = self.inbox.get_nowait()
            except queue.Empty:
                event = None
        mono = time.monotonic()
        if mono >= self.next_form:
            self.next_form = mono + 0.2
            self.delivery.tick(int(self.clock.time_s()))  # forms, sees whether stuck
        self.delivery.pump()

    def drained(self) -> bool:
        return self.store.size_bytes() == 0 and not self.delivery.inflight

    def run_until(self, predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
        return wait(predicate, timeout_s, what, step=self.turn)


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["ROOT", "GW", "Pipeline", "WiredGateway", "WiredRuntime", "config_for", "paused",
           "wait"]
