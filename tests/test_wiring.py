"""The house rules the split of the ledger keeps (review F8): the runtime's wiring alone
(agent/wiring.py) makes the parts, the config reader is imported by its public names,
and the meter registry is one object whose per-account index follows its contents."""

from __future__ import annotations

import ast
import dataclasses
import time
from pathlib import Path
from typing import Any, cast

from agent.config import BusConfig, MeterConfig
from agent.drivers.bus import BusScheduler
from agent.meters import MeterRegistry
from agent.runtime import Runtime
from tests.ledger.rig import Rig
from tests.test_supervisor import _config, _IdleBus

AGENT = Path(__file__).resolve().parents[1] / "agent"
# The ledger's parts and the command side: made in wiring.py (the runtime's wiring) only.
# (MeterRegistry is made by its owner, provisioning.py.)
PARTS = {"EventLog", "LocalTime", "Tariffs", "PolicyOverlay", "Actuation", "Disconnection",
         "BalanceAlerts", "Charging", "Credit", "Ops", "Dispatcher", "Ledger"}


def _modules() -> list[tuple[str, ast.Module]]:
    return [(str(p.relative_to(AGENT.parent)), ast.parse(p.read_text(encoding="utf-8")))
            for p in sorted(AGENT.rglob("*.py"))]


def test_only_the_runtimes_wiring_makes_the_ledger_parts() -> None:
    made = sorted({(path, node.func.id) for path, tree in _modules()
                   for node in ast.walk(tree) if isinstance(node, ast.Call)
                   and isinstance(node.func, ast.Name) and node.func.id in PARTS})
    assert {path for path, _ in made} == {"agent/wiring.py"}, made


def test_the_config_reader_is_imported_by_its_public_names() -> None:
    """What reads config tables (the tariff and policy commands too) imports the public
    reader, never config's private names."""
    private = [(path, node.module, alias.name) for path, tree in _modules()
               for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               and node.module in ("agent.config", "agent.config_reader")
               for alias in node.names if alias.name.startswith("_")]
    assert private == []


def test_the_registry_indexes_accounts_in_order_and_forgets_on_replace(tmp_path: Path) -> None:
    rig = Rig(tmp_path, meters=3)
    m1, m2, m3 = rig.cfg.meters
    shared = dataclasses.replace(m3, id="M9", account="A1")  # a second meter of A1
    registry = MeterRegistry([m1, m2, shared])
    assert [m.id for m in registry.of_account("A1")] == ["M1", "M9"]
    assert list(registry) == ["M1", "M2", "M9"] and len(registry) == 3 and "M2" in registry
    registry.replace([m2, m3])
    assert registry.of_account("A1") == [] and [m.id for m in registry.of_account("A3")] == ["M3"]
    assert registry.get("M1") is None and registry["M3"] is m3
    rig.close()


class _Bus(_IdleBus):
    def set_meters(self, meters: list[MeterConfig], relayed: list[MeterConfig]) -> None:
        self.meters = {m.id: m for m in meters}


def _bus(bus: BusConfig, meters: list[MeterConfig], post: Any, **_: Any) -> BusScheduler:
    return cast(BusScheduler, _Bus(bus, meters, post))  # a stand-in, as idle_bus


def test_meter_add_and_remove_through_the_runtime_reach_every_part(tmp_path: Path) -> None:
    rt = Runtime(_config(tmp_path, meters=1), bus_factory=_bus, control=False)
    now = int(time.time())
    table = {"id": "M9", "bus": "rs485-0", "address": 9, "model": "eastron-sdm120",
             "account": "A1"}
    with rt.store.tx():
        assert rt.on_meter_change("meter_add", table, now) == {"meters": 2}
    assert rt.meters is rt.provisioning.registry is rt.ledger.relays.meters
    assert rt.meters is rt.ledger.actuation.meters is rt.dispatcher.ops.meters
    assert [m.id for m in rt.meters.of_account("A1")] == ["M1", "M9"]
    assert list(rt.buses["rs485-0"].meters) == ["M1", "M9"]
    with rt.store.tx():
        assert rt.on_meter_change("meter_remove", {"meter": "M1"}, now) == {"meters": 1}
    assert list(rt.meters) == ["M9"] and list(rt.buses["rs485-0"].meters) == ["M9"]
    assert [m.id for m in rt.meters.of_account("A1")] == ["M9"]
    rt.store.close()
