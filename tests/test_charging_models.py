"""Every protocol's meters take the same accounting path (issue: an IEC or DLMS meter
crashed the agent at its second reading), and the register-reset rule (DOMAIN
"Billing": three consistent readings below the baseline rebase the meter)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.drivers.models import catalogue, model, models_for
from agent.errors import DriverError
from agent.ledger.billing import RESET_READINGS
from tests.ledger.rig import Rig


def test_every_protocol_has_models_and_each_model_a_rating() -> None:
    assert {m.protocol for m in catalogue().values()} == {"modbus", "iec62056-21", "dlms"}
    for m in catalogue().values():
        assert m.phases in (1, 3) and m.max_current_a > 0 and m.max_power_w > 0
        assert m.register_max_wh is None or m.register_max_wh > 0
    assert models_for("iec62056-21") == ("iec62056-21",)
    assert models_for("dlms") == ("dlms-is15959",)
    assert "eastron-sdm120" in models_for("modbus")
    with pytest.raises(DriverError, match="unknown meter model 'nope'"):
        model("nope")


@pytest.mark.parametrize("name", sorted(catalogue()))
def test_the_second_reading_of_every_model_charges(tmp_path: Path, name: str) -> None:
    rig = Rig(tmp_path, models=[name])
    rig.read("M1", 1_000_000, "S1")
    rig.advance(900)
    rig.read("M1", 1_000_500, "S1")  # 500 Wh in 15 minutes: 2 kW, plausible for any meter
    energy = [e for e in rig.entries() if e.kind == "energy"]
    assert [e.amt for e in energy] == [-(500 * 550 // 1000)]  # the UP table's first slab
    assert rig.meter().base_wh == 1_000_500
    assert not rig.events("bad_reading")
    rig.close()


def test_a_delta_beyond_the_models_rating_is_implausible(tmp_path: Path) -> None:
    rig = Rig(tmp_path, models=["dlms-is15959"])  # 1 phase x 60 A x 300 V = 18 kW
    rig.read("M1", 1_000_000, "S1")
    rig.advance(3600)
    rig.read("M1", 1_000_000 + 18_000 + 11, "S1")
    assert [e["detail"]["why"] for e in rig.events("bad_reading")] == ["implausible"]
    rig.read("M1", 1_000_000 + 18_000, "S1")
    assert rig.meter().base_wh == 1_018_000
    rig.close()


def _whys(rig: Rig) -> list[str]:
    return [e["detail"]["why"] for e in rig.events("bad_reading")]


def test_three_consistent_readings_below_the_baseline_rebase_the_meter(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.read("M1", 5_000_000, "S1")
    values = [120, 320, 700]  # the register restarted near 0 and climbs
    for value in values:
        rig.advance(1800)
        rig.read("M1", value, "S1")
    assert _whys(rig) == ["negative"] * (RESET_READINGS - 1) + ["register_reset"]
    reset = rig.events("bad_reading")[-1]["detail"]
    assert reset["baseline_wh"] == 5_000_000 and reset["import_wh"] == 700
    assert reset["reset_wh"] == 120 and reset["rebased"] is True
    # nothing for the jump; what the register counted since the first low reading: billed
    assert [e.amt for e in rig.entries() if e.kind == "energy"] == [-(580 * 550 // 1000)]
    assert rig.meter().base_wh == 700 and rig.meter().reset_count == 0
    rig.advance(1800)
    rig.read("M1", 900, "S1")
    assert rig.meter().base_wh == 900  # billed on as usual
    rig.close()


def test_a_glitch_below_the_baseline_keeps_it(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.read("M1", 5_000_000, "S1")
    for value in (10, 20, 5_000_100, 30, 40):  # two low, one good, two low: never three
        rig.advance(600)
        rig.read("M1", value, "S1")
    assert _whys(rig) == ["negative", "negative", "negative", "negative"]
    assert rig.meter().base_wh == 5_000_100 and rig.meter().reset_count == 2
    rig.close()


def test_readings_below_the_baseline_that_disagree_start_the_count_again(
        tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.read("M1", 5_000_000, "S1")
    # 300 then 100 goes back; 100 -> 100 + 50_000 in 10 minutes is beyond 13.5 kW
    for value in (300, 100, 50_100, 50_200, 50_300):
        rig.advance(600)
        rig.read("M1", value, "S1")
    assert _whys(rig) == ["negative"] * 4 + ["register_reset"]
    assert rig.events("bad_reading")[-1]["detail"]["reset_wh"] == 50_100
    rig.close()


def test_the_reset_watch_survives_a_restart(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.read("M1", 5_000_000, "S1")
    rig.advance(600)
    rig.read("M1", 100, "S1")
    rig.advance(600)
    rig.read("M1", 200, "S1")
    rig.restart()
    rig.advance(600)
    rig.read("M1", 300, "S1")
    assert _whys(rig)[-1] == "register_reset" and rig.meter().base_wh == 300
    rig.close()


def test_a_new_serial_is_a_replacement_not_a_reset(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.read("M1", 5_000_000, "S1")
    rig.advance(600)
    rig.read("M1", 100, "S2")
    assert _whys(rig) == ["replaced"] and rig.meter().base_wh == 100
    rig.close()
