"""A month's bill through the real agent (Store + Journal + the ledger, simulated clock):
the hand-worked UP LMV-1 bill of ../shared/data/tariffs/up-lmv1-urban.toml, to the paisa,
at 1-minute, 15-minute and 1-hour reading cadences (DOMAIN invariant 5); and tariff
versions (the `tariff` command)."""

from __future__ import annotations

import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from agent.buffer.journal import Journal
from agent.buffer.store import Store
from agent.errors import CommandError
from agent.meters import MeterRegistry
from agent.uplink import forming
from agent.wiring import wire_ledger
from tests.ledger.helpers import UP_TOML
from tests.ledger.rig import UP_TABLE, Rig, make_config, unix

# The worked check in the tariff file: 420 kWh in a 30-day month.
HAND_ENERGY = 150 * 550 + 150 * 600 + 120 * 650  # 250,500 paise
HAND_DUTY = HAND_ENERGY * 5 // 100  # 12,525
HAND_FIXED = 30 * 733  # 21,990
HAND_TOTAL = 285_015
assert HAND_ENERGY + HAND_DUTY + HAND_FIXED == HAND_TOTAL

# A household's day, hour by hour (relative weights): night low, morning and evening peaks.
HOURLY = [3, 2, 2, 2, 2, 3, 6, 9, 8, 5, 4, 4, 5, 4, 4, 4, 5, 7, 10, 12, 11, 9, 6, 4]
DAY_WH = 14_000  # 14 kWh a day, 420 kWh in 30 days
REGISTER_START_WH = 8_765_432  # an installed meter's register is never 0


def cumulative_wh(second_of_day: int) -> int:
    """Wh used since midnight by ``second_of_day`` (exact integers; DAY_WH at 86,400)."""
    hour, into = divmod(second_of_day, 3600)
    weighted = sum(HOURLY[:hour]) * 3600 + (HOURLY[hour] * into if hour < 24 else 0)
    return DAY_WH * weighted // (sum(HOURLY) * 3600)


def register_at(t_from_start: int) -> int:
    day, second = divmod(t_from_start, 86_400)
    return REGISTER_START_WH + day * DAY_WH + cumulative_wh(second)


def test_the_tariff_file_is_the_one_the_rig_uses() -> None:
    if not UP_TOML.exists():
        pytest.skip("../shared/data/tariffs/up-lmv1-urban.toml is not beside this checkout")
    with UP_TOML.open("rb") as f:
        assert tomllib.load(f)["tariff"]["up-lmv1-urban"] == UP_TABLE


@pytest.mark.parametrize("cadence_s", [60, 900, 3600], ids=["1min", "15min", "1h"])
def test_a_month_through_the_agent_matches_the_hand_worked_bill(tmp_path: Path,
                                                                cadence_s: int) -> None:
    start = unix(2026, 4, 1)  # April 2026: 30 days, Asia/Kolkata midnight
    end = unix(2026, 5, 1)
    # A prepaid household with credit all month: the relay rules stay out of the way.
    rig = Rig(tmp_path, now_s=start, fast=True)
    rig.topup("A1", 1_000_000, "opening-credit")
    rig.read("M1", register_at(0))
    while rig.now < end:
        rig.advance(cadence_s)
        rig.read("M1", register_at(rig.now - start))
        if rig.now < end and (rig.now - start) % 3600 == 0:
            rig.tick()  # the runtime ticks every second; hourly is enough for dates
    assert register_at(end - start) - register_at(0) == 420_000
    by_kind: Counter[str] = Counter()
    for entry in rig.entries():
        by_kind[entry.kind] += entry.amt
        if entry.kind in ("energy", "duty"):
            assert entry.ref == "M1/2026-04/dom@1"
    assert by_kind == {"topup": 1_000_000, "energy": -HAND_ENERGY, "duty": -HAND_DUTY,
                       "fixed": -HAND_FIXED}
    assert rig.account().balance == 1_000_000 - HAND_TOTAL
    acct = rig.account()
    assert (acct.month, acct.consumed_wh, acct.energy_mp) == ("2026-04", 420_000,
                                                              HAND_ENERGY * 1000)
    fixed_dates = [e.ref.split("/")[0] for e in rig.entries() if e.kind == "fixed"]
    assert fixed_dates == [f"2026-04-{d:02d}" for d in range(1, 31)]
    assert not rig.events("bad_reading")
    rig.close()


# --- tariff versions ----------------------------------------------------------------------
FLAT_100: dict[str, Any] = {"fixed_per_day": 0, "slabs": [{"upto_kwh": 1, "rate": 100},
                                                            {"rate": 200}], "duty_bp": 0}


def test_a_new_version_prices_energy_used_from_then_on(tmp_path: Path) -> None:
    rig = Rig(tmp_path, tariff=FLAT_100)
    rig.topup("A1", 100_000, "t")
    rig.read("M1", 1_000_000)
    rig.advance(3600)
    rig.read("M1", 1_000_800)  # 800 Wh at 100 paise/kWh: 80 paise, version 1
    rig.advance(1800)
    version = rig.ledger.tariffs.apply("dom", {"name": "dom", "fixed_per_day": 0, "slabs": [
        {"upto_kwh": 1, "rate": 300}, {"rate": 400}]}, rig.now)
    assert version == 2
    rig.advance(1800)
    # 400 Wh over an hour, half of it before the change, half after, pro rata by time:
    # 200 Wh at v1 (C 800 -> 1000: 100 p/kWh = 20 p) and 200 Wh at v2 on the same C
    # (1000 -> 1200, in v2's second slab: 400 p/kWh = 80 p).
    rig.read("M1", 1_001_200)
    energy = [(e.amt, e.ref) for e in rig.entries() if e.kind == "energy"]
    assert energy == [(-80, "M1/2026-03/dom@1"), (-20, "M1/2026-03/dom@1"),
                      (-80, "M1/2026-03/dom@2")]
    assert rig.account().consumed_wh == 1200  # the month's accrual carried on
    rig.restart()  # the version is durable
    rig.advance(3600)
    rig.read("M1", 1_001_300)
    assert rig.entries()[-1].ref == "M1/2026-03/dom@2" and rig.entries()[-1].amt == -40
    rig.close()


def test_fixed_charge_uses_the_version_in_force_on_that_date(tmp_path: Path) -> None:
    rig = Rig(tmp_path, tariff={**FLAT_100, "fixed_per_day": 500})
    rig.ledger.tariffs.apply("dom", {**FLAT_100, "fixed_per_day": 900}, rig.now)
    rig.advance(86_400)
    rig.tick()
    fixed = [(e.amt, e.ref) for e in rig.entries() if e.kind == "fixed"]
    assert fixed == [(-500, "2026-03-02/dom@1"), (-900, "2026-03-03/dom@2")]
    rig.close()


def test_an_edited_config_is_a_new_version_and_a_command_survives_restarts(
        tmp_path: Path) -> None:
    rig = Rig(tmp_path, tariff=FLAT_100)
    rig.ledger.tariffs.apply("dom", {**FLAT_100, "duty_bp": 100}, rig.now)
    rig.restart()
    assert rig.ledger.tariffs.tariff_at("dom", rig.now).duty_bp == 100  # the command still holds
    rig.close()
    rig.cfg = make_config(tmp_path, tariff={**FLAT_100, "duty_bp": 700})
    rig.advance(60)
    rig._open()
    rig.setup()
    tariff = rig.ledger.tariffs.tariff_at("dom", rig.now)
    assert (tariff.version, tariff.duty_bp) == (3, 700)
    assert [v.source for v in rig.journal.tariff_versions()] == ["config", "command", "config"]
    rig.close()


@pytest.mark.parametrize(("table", "key"), [
    ({"slabs": [{"upto_kwh": 100, "rate": 5}]}, "slabs"),
    ({"slabs": [{"rate": -1}]}, "slabs[0].rate"),
    ({"slabs": [{"rate": 1}], "duty_bp": 20_000}, "duty_bp"),
    ({"slabs": [{"rate": 1}], "bogus": 1}, "bogus"),
    ({"slabs": [{"rate": 1}], "tod": [{"from": "10:00", "to": "16:00", "pct": 80},
                                      {"from": "12:00", "to": "13:00", "pct": 90}]}, "tod"),
])
def test_an_invalid_tariff_command_names_the_key_and_changes_nothing(
        tmp_path: Path, table: dict[str, Any], key: str) -> None:
    rig = Rig(tmp_path)
    before = rig.journal.tariff_versions()
    with pytest.raises(CommandError) as err:
        rig.ledger.tariffs.apply("dom", table, rig.now)
    assert err.value.code == "invalid_args" and key in str(err.value)
    assert rig.journal.tariff_versions() == before
    rig.close()


def test_the_ledger_before_setup_prices_with_the_config_tariff(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    store = Store(cfg.gateway.data_dir)
    ledger = wire_ledger(cfg, store, Journal(store, forming.entry_item), MeterRegistry(cfg.meters),
                         clock_synchronised=None)
    assert ledger.tariffs.tariff_at("dom", 0).version == 1 and not ledger.relays.clock_trusted
    store.close()
