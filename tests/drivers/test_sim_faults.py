"""Simulator faults: the seeded line-fault injector, meter faults through the control
socket (in-process and through ``python -m sim.faults``), and the protocol registry."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.clock import SimClock
from agent.drivers.modbus.client import ModbusClient
from agent.drivers.modbus.codec import Request
from agent.drivers.modbus.device import ModbusMeter
from agent.drivers.transport import SerialTransport
from agent.errors import TimeoutError_
from sim.faults import FaultInjector, FaultRates, apply_control
from sim.meters import builder
from sim.modbus_device import SimSDM120
from tests.drivers.simbus import board

ROOT = Path(__file__).resolve().parents[2]
FRAME = bytes(range(1, 40))


def test_injector_is_seeded_and_does_what_each_rate_says() -> None:
    rates = FaultRates(corrupt=0.3, silent=0.2, slow=0.2, slow_ms=50, noise=0.2)
    first = FaultInjector(rates, seed=4).plan(FRAME)
    a, b = FaultInjector(rates, seed=4), FaultInjector(rates, seed=4)
    plans = [a.plan(FRAME) for _ in range(500)]
    assert plans == [b.plan(FRAME) for _ in range(500)]  # a seed replays a run exactly
    assert plans[0] == first
    dropped = [p for p in plans if p.frame is None]
    changed = [p for p in plans if p.frame is not None and p.frame != FRAME]
    for plan in changed:  # exactly one bit flipped
        assert plan.frame is not None
        diff = [x ^ y for x, y in zip(plan.frame, FRAME, strict=True) if x != y]
        assert len(diff) == 1 and bin(diff[0]).count("1") == 1
    assert 0.15 < len(dropped) / 500 < 0.25
    assert a.counts["corrupt"] == len(changed) and a.counts["silent"] == len(dropped)
    assert {p.delay_s for p in plans if p.frame is not None} == {0.0, 0.05}
    assert all(1 <= len(p.noise) <= 8 for p in plans if p.noise)
    with pytest.raises(ValueError):
        FaultRates(corrupt=1.5)


class Tamperable:
    def __init__(self) -> None:
        self.log: list[str] = []

    def tamper(self, kind: str) -> None:
        self.log.append(kind)


def test_control_messages_change_the_meter() -> None:
    meter = SimSDM120(1, clock=SimClock(), serial=12_345_678, seed=1, speed=0.0,
                      import_wh=500_000)
    dlms_like = Tamperable()
    meters: dict[str, Any] = {"M1": meter, "D1": dlms_like}

    def control(message: Any) -> dict[str, Any]:
        return apply_control(message, meters, lambda _m: contextlib.nullcontext())

    assert control({"meter": "M1", "fault": "reset_register"}) == {"ok": True, "meter": "M1"}
    assert meter.import_wh == 0 and meter.serial == 12_345_678
    reply = control({"meter": "M1", "fault": "replace"})
    assert reply["ok"] and reply["serial"] == meter.serial != 12_345_678
    assert 0 <= meter.import_wh <= 50 and 10_000_000 <= meter.serial < 100_000_000
    assert control({"meter": "M1", "silent": True})["silent"] is True and meter.silent
    assert meter.handle(Request(1, 4, 0, 2)) is None  # silent: no answer
    assert "no event log" in control({"meter": "M1", "tamper": "magnet"})["error"]
    assert control({"meter": "D1", "tamper": "magnet"}) == {"ok": True, "meter": "D1"}
    assert dlms_like.log == ["magnet"]
    assert not control({"meter": "D1", "tamper": "gremlins"})["ok"]
    assert not control({"meter": "nope", "silent": True})["ok"]
    assert not control(["not", "an", "object"])["ok"]
    assert not control({"meter": "M1", "fault": "explode"})["ok"]


def test_the_registry_names_what_is_missing() -> None:
    assert builder("modbus").__module__ == "sim.modbus_line"
    assert builder("iec62056-21").__module__ == "sim.iec_line"
    with pytest.raises(ValueError, match="no simulator"):
        builder("mbus")
    if importlib.util.find_spec("sim.dlms_line") is None:
        with pytest.raises(ValueError, match="sim/dlms_line.py"):
            builder("dlms")


@contextlib.contextmanager
def sim_process(config: Path, *extra: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-m", "sim.meters", "-c", str(config), *extra],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)


def faults_cli(sock: Path, *args: str) -> tuple[int, list[dict[str, Any]]]:
    done = subprocess.run([sys.executable, "-m", "sim.faults", "--control", str(sock), *args],
                          cwd=ROOT, capture_output=True, timeout=20, check=False)
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines()]


def wait_for(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def test_control_socket_through_the_cli(tmp_path: Path) -> None:
    config = board(tmp_path, addresses=(1,))
    sock, state = tmp_path / "sim.sock", tmp_path / "state.json"
    with sim_process(tmp_path / "board.toml", "--speed", "0", "--control", str(sock),
                     "--state-file", str(state), "--extra-meter", "bus-0:9"):
        wait_for(sock.exists)
        wait_for(state.exists)
        meters = json.loads(state.read_text())["meters"]
        assert set(meters) == {"M1", "extra-bus-0-9"}
        assert meters["M1"]["import_wh"] > 1000
        assert faults_cli(sock, "--meter", "M1", "--fault", "reset_register") == (
            0, [{"ok": True, "meter": "M1"}])
        wait_for(lambda: json.loads(state.read_text())["meters"]["M1"]["import_wh"] == 0)
        code, replies = faults_cli(sock, '{"meter": "M1", "fault": "replace"}',
                                   '{"meter": "M1", "tamper": "cover_open"}', '{"stats": true}')
        assert code == 1 and [r["ok"] for r in replies] == [True, False, True]
        new_serial = str(replies[0]["serial"])
        transport = SerialTransport(config.buses[0].port, 9600)
        try:
            client = ModbusClient(transport)
            assert ModbusMeter(client, 1, "eastron-sdm120").read("M1", 0).serial == new_serial
            assert faults_cli(sock, "--meter", "M1", "--silent", "on")[0] == 0
            with pytest.raises(TimeoutError_):
                ModbusMeter(client, 1, "eastron-sdm120").read("M1", 0, timeout_s=0.1)
            assert ModbusMeter(client, 9, "eastron-sdm120").read("x", 0).serial is not None
        finally:
            transport.close()
    assert not sock.exists()  # the simulator removes its socket


def test_serve_refuses_an_unknown_extra_bus(tmp_path: Path) -> None:
    from sim.meters import serve

    config = board(tmp_path, addresses=(1,))
    with pytest.raises(ValueError, match="extra-meter"):
        serve(config, stop_event=threading.Event(), extra=["nobus:3"])
