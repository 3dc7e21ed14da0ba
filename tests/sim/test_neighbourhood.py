"""The neighbourhood simulation (sim/neighbourhood, docs/simulation.md).

CI runs a few short seeds (each well under 10 s); ``SOAK=1`` (``make soak``) runs
many long ones: ``SOAK_SEEDS`` (default 20) seeds of ``SOAK_METERS`` x ``SOAK_DAYS``
(default 50 x 30) starting at ``SOAK_FIRST`` (default 1000).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.neighbourhood import Options, RunResult, run
from sim.neighbourhood import report as report_mod
from sim.neighbourhood.checks import classify, pro_rata
from sim.neighbourhood.plot import render
from sim.neighbourhood.png import SIGNATURE, Canvas, read_png
from sim.neighbourhood.world import REGISTER_MOD_WH, energy_mp, register_wh

ROOT = Path(__file__).resolve().parents[2]
SOAK = os.environ.get("SOAK") == "1"

# Agent bugs the simulation found that are reported and not fixed yet: a CI seed may
# show these (each line of a violation is matched against the patterns) and still
# pass; anything else fails. Empty this list when the bug is fixed.
# Agent bugs the simulation found and that are not fixed yet (shown, not failed). The
# last one, an open relay intent from before a restart executed without a new decision,
# is fixed (the runtime's start_ledger decides again); seeds 4 and 19 at 40 meters x 14 days,
# which found it, pass.
KNOWN_BUGS: tuple[str, ...] = ()

CI_SEEDS = (1, 2, 3)
# The seeds that find each planted bug first (re-derived by test_planted_bugs_soak).
PLANTED = {"duty": (1, 10, 3), "holiday": (3, 30, 10)}  # bug: (seed, meters, days)


def _run(seed: int, meters: int = 20, days: int = 7, **kw: object) -> RunResult:
    return run(Options(seed=seed, meters=meters, days=days, jobs=1, **kw))  # type: ignore[arg-type]


def _unexpected(result: RunResult) -> list[str]:
    return [v for v in result.violations if not any(k in v for k in KNOWN_BUGS)]


def _ci_seed(seed: int) -> tuple[int, list[str], list[str], str]:
    result = _run(seed)
    return seed, _unexpected(result), result.violations, result.options.replay_command()


# -- the pieces ---------------------------------------------------------------------------
def test_png_written_by_hand_is_a_valid_png() -> None:
    canvas = Canvas(40, 12)
    canvas.line(0, 0, 39, 11, (255, 0, 0))
    canvas.rect(30, 2, 35, 4, (0, 0, 255))
    canvas.text(1, 3, "RS 0", (0, 0, 0))
    data = canvas.png()
    assert data.startswith(SIGNATURE)
    width, height, rows = read_png(data)
    assert (width, height) == (40, 12)
    assert rows[0][0:3] == b"\xff\x00\x00" and rows[11][39 * 3:40 * 3] == b"\xff\x00\x00"
    assert rows[3][30 * 3:31 * 3] == b"\x00\x00\xff"
    assert rows[4][1 * 3:2 * 3] == b"\x00\x00\x00"  # the R's stem
    # IDAT holds exactly one filter byte (0) per row
    raw = zlib.decompress(data[data.index(b"IDAT") + 4:data.index(b"IEND") - 8])
    assert len(raw) == height * (1 + 3 * width) and raw[0] == 0
    broken = bytearray(data)
    broken[40] ^= 1
    with pytest.raises(ValueError, match="CRC"):
        read_png(bytes(broken))


def test_tariff_matches_the_worked_bill() -> None:
    # ../shared/data/tariffs/up-lmv1-urban.toml: 420 kWh -> 250,500 paise, duty 12,525
    mp = energy_mp(420_000)
    assert mp // 1000 == 250_500
    assert mp * 500 // 10_000_000 == 12_525
    assert energy_mp(0) == 0 and energy_mp(150_000) == 150_000 * 550


@given(st.integers(0, 10**9), st.lists(st.integers(0, 10**7), min_size=1, max_size=40))
def test_pro_rata_parts_add_up(amount: int, weights: list[int]) -> None:
    parts = pro_rata(amount, weights)
    assert sum(parts) == amount and all(p >= 0 for p in parts)


@given(st.integers(0, REGISTER_MOD_WH - 1))
def test_register_quantisation_is_close_and_monotonic(wh: int) -> None:
    read = register_wh(wh)
    assert abs(read - wh) <= 4  # float32 kWh near the top of the register: 7.8 Wh steps
    assert register_wh(min(wh + 8, REGISTER_MOD_WH - 1)) >= read


def test_delta_classes() -> None:
    assert classify(1000, 1500, 1800, "1", "1") == "ok"
    assert classify(1000, 900, 1800, "1", "1") == "negative"
    assert classify(1000, 900_000, 60, "1", "1") == "implausible"
    assert classify(1000, 10, 1800, "1", "2") == "replaced"
    assert classify(REGISTER_MOD_WH - 100, 200, 1800, "1", "1") == "rollover"


# -- whole runs ---------------------------------------------------------------------------
def test_ci_seeds_pass_every_check() -> None:
    with ProcessPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(_ci_seed, CI_SEEDS))
    for seed, unexpected, everything, replay in outcomes:
        for line in everything:
            print(f"seed {seed}: {line}")  # known agent bugs are shown, not hidden
        assert not unexpected, f"seed {seed} failed; replay: {replay}\n" + "\n".join(unexpected)


@pytest.mark.parametrize("protocols", ["modbus", "mixed"])
def test_same_seed_same_bytes(tmp_path: Path, protocols: str) -> None:
    """Two runs of a seed: the same report JSON and the same uplink bytes; in another
    process, with another hash seed and the gateways in parallel workers, too; with
    the Modbus buses and with the mixed ones (Modbus, IEC 62056-21, DLMS)."""
    first = _run(5, meters=10, days=3, gateways=2, protocols=protocols)
    second = _run(5, meters=10, days=3, gateways=2, protocols=protocols)
    a, b = report_mod.build(first), report_mod.build(second)
    assert report_mod.to_json(a) == report_mod.to_json(b)
    assert len(a["message_sha256"]) == 2 and a["message_sha256"] == b["message_sha256"]
    out = tmp_path / "rep"
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=str(ROOT))
    extra = ["--protocols", protocols] if protocols != "modbus" else []
    subprocess.run([sys.executable, "-m", "sim.neighbourhood", "--meters", "10", "--days", "3",
                    "--seed", "5", "--gateways", "2", "--jobs", "2", "--report", str(out),
                    *extra], cwd=ROOT, env=env, capture_output=True, timeout=120, check=False)
    assert (out / "report.json").read_text() == report_mod.to_json(a)
    best = min(first.gateways, key=lambda g: (-int(g.plot["opens"]), g.id))
    assert (out / "household.png").read_bytes() == render(best.plot, first.plan.emergency_credit)
    data = json.loads((out / "report.json").read_text())
    assert not _floats(data), "the report must hold no floats (same bytes everywhere)"


def _floats(value: object) -> list[object]:
    if isinstance(value, float):
        return [value]
    if isinstance(value, dict):
        return [f for v in value.values() for f in _floats(v)]
    if isinstance(value, list):
        return [f for v in value for f in _floats(v)]
    return []


@pytest.mark.parametrize("protocols", ["modbus", "mixed"])
def test_the_real_codec_gives_the_same_world(protocols: str) -> None:
    """The codec bus (real ModbusMeter, frames, CRCs; with mixed, the real IecMeter too)
    and the direct bus see one world: the same readings, so the same messages byte for
    byte."""
    direct = _run(4, meters=10, days=3, protocols=protocols)
    codec = _run(4, meters=10, days=3, mode="codec", protocols=protocols)
    assert not _unexpected(codec), codec.violations
    assert [g.message_sha256 for g in direct.gateways] == \
        [g.message_sha256 for g in codec.gateways]


def test_mixed_protocols_pass_every_check() -> None:
    """--protocols mixed: each gateway's meters on a Modbus, an IEC 62056-21 and a DLMS
    bus, every one read and switched (DLMS meters by their disconnect control, IEC
    meters by a coil on the Modbus bus), and the checks unchanged all pass."""
    result = _run(2, meters=30, days=7, protocols="mixed")
    assert not _unexpected(result), result.violations
    assert "--protocols mixed" in result.options.replay_command()
    data = report_mod.build(result)
    assert data["protocols"] == ["modbus", "iec62056-21", "dlms"]
    assert "protocols" not in report_mod.build(_run(2, meters=3, days=1))  # modbus: as before


def test_mixed_households_and_board() -> None:
    """The mixed plan: households drawn as for Modbus, their meters split over three
    buses as a real mixed board's (board_configs/sim-mixed.toml), each relay of its kind."""
    import random
    import tempfile

    from sim.neighbourhood.agentcfg import write_config
    from sim.neighbourhood.plan import make_households, make_world

    plan = make_world(7, 12, 3, gateways=1, poll_s=1800, mode="direct", plant="",
                      protocols="mixed")
    spec = plan.gateways[0]
    modbus = make_households(spec, random.Random(spec.seed), plan.start_s)
    mixed = make_households(spec, random.Random(spec.seed), plan.start_s, "mixed")
    assert [(h.account, h.seed, h.reg_ws, h.serial) for h in modbus] == \
        [(h.account, h.seed, h.reg_ws, h.serial) for h in mixed]
    assert [h.protocol for h in mixed[:3]] == ["modbus", "iec62056-21", "dlms"]
    with tempfile.TemporaryDirectory() as tmp:
        cfg, _cmd, _token = write_config(plan, spec, mixed, Path(tmp))
    assert [(b.name, b.protocol, b.parity) for b in cfg.buses] == [
        ("rs485-0", "modbus", "N"), ("rs485-1", "iec62056-21", "E"), ("rs485-2", "dlms", "N")]
    by_protocol = {b.name: b.protocol for b in cfg.buses}
    for m in cfg.meters:
        protocol = by_protocol[m.bus]
        spec_ = m.relay_spec
        if protocol == "dlms":
            assert (m.model, spec_.kind, m.client) == ("dlms-is15959", "meter", 0x20)
            assert m.ek_file is not None and m.ak_file is not None
        elif protocol == "iec62056-21":
            assert (m.model, spec_.kind, spec_.bus) == ("iec62056-21", "modbus-coil", "rs485-0")
        else:
            assert (m.model, spec_.kind, spec_.bus) == ("eastron-sdm120", "modbus-coil", None)
    coils = [(m.relay_spec.unit, m.relay_spec.coil) for m in cfg.meters
             if m.relay_spec.kind == "modbus-coil"]
    assert len(coils) == len(set(coils)) == 8


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_planted_bug_is_found(bug: str) -> None:
    seed, meters, days = PLANTED[bug]
    result = _run(seed, meters=meters, days=days, plant=bug)
    expected = {"duty": "energy:", "holiday": "holiday:"}[bug]
    found = [v for v in result.violations if expected in v]
    assert found, f"--plant-bug {bug} not found by seed {seed}: {result.violations}"
    print(f"--plant-bug {bug}: found by seed {seed} ({meters} meters x {days} days): "
          f"{found[0]}")


@pytest.mark.skipif(not SOAK, reason="SOAK=1: scans seeds for each planted bug")
@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_planted_bugs_soak(bug: str) -> None:
    _seed, meters, days = PLANTED[bug]
    expected = {"duty": "energy:", "holiday": "holiday:"}[bug]
    for seed in range(1, 9):  # "within a handful of seeds"
        result = _run(seed, meters=meters, days=days, plant=bug)
        if any(expected in v for v in result.violations):
            print(f"--plant-bug {bug}: first found by seed {seed}")
            return
    pytest.fail(f"--plant-bug {bug} not found in 8 seeds")


@pytest.mark.skipif(not SOAK, reason="SOAK=1 runs the long campaign")
def test_soak() -> None:
    first = int(os.environ.get("SOAK_FIRST", "1000"))
    count = int(os.environ.get("SOAK_SEEDS", "20"))
    meters = int(os.environ.get("SOAK_METERS", "50"))
    days = int(os.environ.get("SOAK_DAYS", "30"))
    failed = []
    for seed in range(first, first + count):
        result = run(Options(seed=seed, meters=meters, days=days))
        bad = _unexpected(result)
        print(f"seed {seed}: {len(result.violations)} violations, {len(bad)} unexpected, "
              f"{result.wall_s:.0f} s")
        if bad:
            failed.append(f"{result.options.replay_command()}: {bad[0]}")
    assert not failed, "\n".join(failed)
