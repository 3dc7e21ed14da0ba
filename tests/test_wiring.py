"""The house rules the split of the ledger keeps (review F8): the runtime alone wires the
parts, the config reader is imported by its public names, and the meter registry is one
object whose per-account index follows its contents."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from agent.meters import MeterRegistry
from tests.ledger.rig import Rig

AGENT = Path(__file__).resolve().parents[1] / "agent"
# The ledger's parts and the command side: made in runtime.py only. (MeterRegistry is
# made by its owner, provisioning.py.)
PARTS = {"EventLog", "LocalTime", "Tariffs", "PolicyOverlay", "Actuation", "Disconnection",
         "BalanceAlerts", "Charging", "Credit", "Ops", "Dispatcher", "Ledger"}


def _modules() -> list[tuple[str, ast.Module]]:
    return [(str(p.relative_to(AGENT.parent)), ast.parse(p.read_text(encoding="utf-8")))
            for p in sorted(AGENT.rglob("*.py"))]


def test_only_the_runtime_makes_the_ledger_parts() -> None:
    made = sorted({(path, node.func.id) for path, tree in _modules()
                   for node in ast.walk(tree) if isinstance(node, ast.Call)
                   and isinstance(node.func, ast.Name) and node.func.id in PARTS})
    assert {path for path, _ in made} == {"agent/runtime.py"}, made


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
