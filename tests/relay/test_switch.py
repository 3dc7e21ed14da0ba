"""switch_and_confirm, the one loop that switches a relay and reads it back, with its
one try count (RELAY_TRIES), and the bus's backends behind the Relay protocol: a
meter's own breaker (relay/meter.py) and a Modbus coil module (relay/modbus_coil.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from agent.clock import SimClock
from agent.drivers.modbus.client import ModbusClient
from agent.errors import ChecksumError, PortError, RelayError, SecurityError, TimeoutError_
from agent.relay.base import RELAY_TRIES, Relay, switch_and_confirm
from agent.relay.meter import MeterRelay, meter_relay
from agent.relay.modbus_coil import ModbusCoilRelay
from sim.modbus_device import SimCoilModule, SimSDM120
from tests.drivers.simbus import SimBusTransport
from tests.relay.fakes import FakeRelay

ROOT = Path(__file__).resolve().parents[2]


def test_wire_errors_are_retried_up_to_relay_tries() -> None:
    assert RELAY_TRIES == 3
    relay = FakeRelay("coil")
    relay.wire_errors = [TimeoutError_("no answer")] * (RELAY_TRIES - 1)
    assert switch_and_confirm(relay, False) == "open"  # the last try gets through
    assert relay.switches == [False] * RELAY_TRIES
    relay = FakeRelay("coil")
    relay.wire_errors = [TimeoutError_("no answer")] * (RELAY_TRIES - 1) + [
        ChecksumError("CRC mismatch")]
    with pytest.raises(RelayError, match="^CRC mismatch$"):  # the last attempt's error
        switch_and_confirm(relay, False)
    assert relay.switches == [False] * RELAY_TRIES and relay.state == "closed"


def test_a_read_back_that_disagrees_is_retried_then_fails() -> None:
    relay = FakeRelay("coil", state="closed")
    relay.stuck = True
    with pytest.raises(RelayError, match="^read back closed$"):
        switch_and_confirm(relay, False)
    assert len(relay.switches) == RELAY_TRIES
    armed = FakeRelay("dlms", state="armed")
    armed.stuck = True
    assert switch_and_confirm(armed, True) == "armed"  # all a remote reconnect does
    assert armed.switches == [True]


@pytest.mark.parametrize("error", [PortError("port gone"), SecurityError("wrong key", "auth")])
def test_port_and_security_errors_are_not_retried(error: Exception) -> None:
    relay = FakeRelay("meter")
    relay.wire_errors = [error]  # type: ignore[list-item]
    with pytest.raises(type(error)):
        switch_and_confirm(relay, False)
    assert relay.switches == [False]


def test_a_backend_that_refuses_is_not_retried() -> None:
    relay = FakeRelay("gpio:17")
    relay.fail = True
    with pytest.raises(RelayError, match="driver refused"):
        switch_and_confirm(relay, False)
    assert relay.switches == [False]


class BreakerDriver:
    """A meter driver with a DLMS-style disconnect control in mode 2."""

    def __init__(self) -> None:
        self.state = "closed"
        self.timeouts: list[float | None] = []

    def read(self, meter_id: str, now_s: int, *, timeout_s: float | None = None) -> object:
        raise AssertionError("a relay never reads the meter")

    def read_serial(self, *, timeout_s: float | None = None) -> str:
        return "S1"

    def relay_set(self, connected: bool, *, timeout_s: float | None = None) -> None:
        self.timeouts.append(timeout_s)
        self.state = "armed" if connected else "open"

    def relay_state(self, *, timeout_s: float | None = None) -> str:
        self.timeouts.append(timeout_s)
        return self.state


def test_a_meter_breaker_is_a_relay_through_its_driver() -> None:
    driver = BreakerDriver()
    relay: Relay = meter_relay(driver, "M1", timeout_s=0.7)  # type: ignore[arg-type]
    assert isinstance(relay, MeterRelay) and relay.name == "M1"
    assert switch_and_confirm(relay, False) == "open"
    assert switch_and_confirm(relay, True) == "armed"
    assert driver.timeouts == [0.7] * 4  # the bus's timeout on every frame
    relay.close()


def test_a_meter_without_a_relay_driver_has_no_meter_relay() -> None:
    clock = SimClock()
    transport = SimBusTransport(clock, {})
    from agent.drivers.modbus.device import ModbusMeter

    sdm = ModbusMeter(ModbusClient(transport, clock), 1, "eastron-sdm120")
    with pytest.raises(RelayError, match=r"has no relay \(relay kind 'meter'\)"):
        meter_relay(sdm, "M1")


def gated(meter: SimSDM120) -> bool:
    return meter.connected


def test_a_modbus_coil_is_a_relay_and_gates_its_meter() -> None:
    clock = SimClock()
    meter = SimSDM120(1, clock=clock, serial=1, seed=1, speed=0.0)
    coils = SimCoilModule(10)
    coils.attach(3, meter)
    transport = SimBusTransport(clock, {1: meter, 10: coils})
    relay: Relay = ModbusCoilRelay(ModbusClient(transport, clock), 10, 3, timeout_s=0.2)
    assert relay.name == "modbus-coil:10:3" and relay.read() == "closed"
    assert switch_and_confirm(relay, False) == "open"
    assert coils.coil(3) is False and not gated(meter)
    assert switch_and_confirm(relay, True) == "closed" and gated(meter)
    meter.silent = True  # the module is a separate device: its meter's silence is not its
    assert switch_and_confirm(relay, False) == "open"
    del transport.devices[10]
    with pytest.raises(RelayError):  # a module that does not answer: RELAY_TRIES timeouts
        switch_and_confirm(relay, True)


def test_nothing_shipped_has_a_fake_relay() -> None:
    for folder in ("agent", "sim"):
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text(), str(path))
            names = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
            names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                      for a in n.names}
            assert "FakeRelay" not in names, path
