"""agent/meters.py: the registry's lookups and its list of the meters with a relay."""

from __future__ import annotations

from agent.meters import MeterRegistry
from tests.drivers.test_bus import meter


def test_the_relayed_meters_are_those_with_a_relay_by_id_and_follow_replace() -> None:
    registry = MeterRegistry([meter("M3", 3, "meter"), meter("M1", 1), meter("M2", 2, "meter")])
    assert [m.id for m in registry.relayed()] == ["M2", "M3"]
    assert registry.get("M1") == meter("M1", 1) and registry.get("X") is None
    assert "M1" in registry and "X" not in registry
    registry.replace([meter("M1", 1, "meter"), meter("M2", 2)])
    assert [m.id for m in registry.relayed()] == ["M1"]
    assert list(registry) == ["M1", "M2"] and registry.version == 1
