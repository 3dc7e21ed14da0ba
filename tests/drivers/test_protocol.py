"""The protocol registry (agent/drivers/protocol.py): what each protocol is to the rest
of the agent, written once; nobody else compares a protocol's name; and config's
imports from the drivers are leaves that never lead back to config."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import pytest

from agent.clock import SimClock
from agent.config import MeterConfig
from agent.drivers.bus import DISCOVERY_TIMEOUT_S, probe_cost_s
from agent.drivers.modbus.client import ModbusClient
from agent.drivers.protocol import REGISTRY, protocol_spec
from agent.drivers.transport import frame_time_s
from agent.errors import DriverError
from agent.relay_spec import parse_relay
from agent.vocab import PROTOCOLS
from tests.drivers.simbus import SimBusTransport
from tests.drivers.test_bus import BUS

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "agent"


def meter(meter_id: str, address: int) -> MeterConfig:
    return MeterConfig(meter_id, "b0", address, "eastron-sdm120", "ACC", "none",
                       parse_relay("none"))


def test_the_registry_names_the_contracts_protocols_in_order() -> None:
    assert tuple(REGISTRY) == PROTOCOLS
    assert all(protocol_spec(name).name == name for name in PROTOCOLS)
    with pytest.raises(DriverError, match="unknown protocol 'mbus'; known: modbus, "
                                          "iec62056-21, dlms"):
        protocol_spec("mbus")


def test_line_settings_client_and_relay_modules() -> None:
    assert {n: s.bytesize for n, s in REGISTRY.items()} == {
        "modbus": 8, "iec62056-21": 7, "dlms": 8}  # IEC 62056-21 6.2: 7E1
    assert [n for n, s in REGISTRY.items() if s.coil_modules] == ["modbus"]
    clock = SimClock()
    transport = SimBusTransport(clock, {})
    assert isinstance(protocol_spec("modbus").client(transport, clock), ModbusClient)
    assert protocol_spec("iec62056-21").client(transport, clock) is None
    assert protocol_spec("dlms").client(transport, clock) is None
    assert REGISTRY["dlms"].meter_keys == ("password_file", "client", "system_title",
                                           "ek_file", "ak_file", "security")
    assert REGISTRY["modbus"].meter_keys == REGISTRY["iec62056-21"].meter_keys == ()


def test_make_driver_knows_its_protocols() -> None:
    clock = SimClock()
    transport = SimBusTransport(clock, {})
    assert type(protocol_spec("modbus").make_driver(transport, meter("A", 1))).__name__ == \
        "ModbusMeter"
    assert type(protocol_spec("iec62056-21").make_driver(transport, meter("A", 1))).__name__ \
        == "IecMeter"
    assert all(spec.available for spec in REGISTRY.values())


def test_probe_cost_is_the_timeout_and_the_probes_line_time() -> None:
    for baud in (300, 2400, 9600, 115200):
        for name in ("modbus", "dlms"):
            cost = DISCOVERY_TIMEOUT_S + frame_time_s(8 + 9, baud) + 0.01
            assert protocol_spec(name).probe_cost_s(baud, DISCOVERY_TIMEOUT_S) == cost
            assert probe_cost_s(replace(BUS, baudrate=baud, protocol=name)) == cost
        # IEC 62056-21 mode C signs on at 300 baud, whatever the bus then switches to
        cost = DISCOVERY_TIMEOUT_S + frame_time_s(8, 300)
        assert probe_cost_s(replace(BUS, baudrate=baud, protocol="iec62056-21")) == cost


# -- the import graph ---------------------------------------------------------------------
def _runtime_imports(path: Path) -> set[str]:
    """Every agent.* module ``path`` imports at run time, at its top or in a function
    (not under ``if TYPE_CHECKING``); ``from pkg import name`` counts pkg.name when
    that is a module."""
    tree = ast.parse(path.read_text(), str(path))
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only |= {id(n) for n in ast.walk(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            for alias in node.names:
                if _path(f"{node.module}.{alias.name}") is not None:
                    found.add(f"{node.module}.{alias.name}")
    return {m for m in found if m == "agent" or m.startswith("agent.")}


def _path(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _closure(start: set[str]) -> set[str]:
    """``start`` and everything it imports at run time, transitively; a protocol's
    driver modules count as imported by the registry (it loads them by name)."""
    loaded = {f"{s.package}.{name}" for s in REGISTRY.values()
              for name in ("device", "client", "params") if _path(f"{s.package}.{name}")}
    seen: set[str] = set()
    todo = list(start)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _path(module)
        if path is None:
            continue
        todo += _runtime_imports(path)
        if module == "agent.drivers.protocol":
            todo += loaded
    return seen


def test_config_imports_only_leaves_of_the_drivers_and_none_leads_back() -> None:
    from_drivers = {m for m in _runtime_imports(AGENT / "config.py")
                    if m.startswith("agent.drivers")}
    assert from_drivers <= {"agent.drivers", "agent.drivers.protocol", "agent.drivers.models",
                            "agent.drivers.dlms", "agent.drivers.dlms.keys"}, from_drivers
    reached = _closure(from_drivers)
    assert "agent.config" not in reached, "config -> drivers -> config: a cycle"
    assert "agent.drivers.protocol" in reached and "agent.drivers.dlms.device" in reached


def test_no_module_outside_the_registry_compares_a_protocols_name() -> None:
    for name in ("config.py", "drivers/bus.py", "drivers/driver.py", "drivers/scan.py",
                 "drivers/schedule.py", "drivers/models.py", "runtime.py", "buses.py",
                 "cli.py"):
        tree = ast.parse((AGENT / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                consts = [n.value for n in ast.walk(node) if isinstance(n, ast.Constant)]
                assert not set(consts) & set(PROTOCOLS), (name, ast.unparse(node))
