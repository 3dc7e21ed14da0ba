"""The portable records: real frozen dataclasses on CPython, the FIELDS fallback elsewhere."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.ledger.record import portable_dataclass

LEDGER = Path(__file__).resolve().parents[2] / "agent" / "ledger"
MODULES = sorted(p.stem for p in LEDGER.glob("*.py") if p.stem != "__init__")


def ledger_records() -> list[type]:
    found = []
    for name in MODULES:
        module = importlib.import_module("agent.ledger." + name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and dataclasses.is_dataclass(cls):
                found.append(cls)
    return found


def test_every_record_lists_its_fields_for_micropython() -> None:
    records = ledger_records()
    assert {c.__name__ for c in records} >= {
        "Slab",
        "TodWindow",
        "Tariff",
        "Policy",
        "MonthAccrual",
        "PolicyInputs",
        "TokenState",
        "TokenGate",
        "Decision",
    }
    for cls in records:
        params = cls.__dataclass_params__  # type: ignore[attr-defined]
        assert params.frozen, cls
        assert cls.FIELDS == tuple(f.name for f in dataclasses.fields(cls)), cls  # type: ignore[attr-defined]


@pytest.mark.parametrize("freeze", [True, False])
def test_fallback_behaves_like_a_frozen_dataclass(freeze: bool) -> None:
    calls = []

    class Point:
        FIELDS = ("x", "y", "label")
        x: int
        y: int = 0
        label: str = "p"

        def __post_init__(self) -> None:
            calls.append(self.x)

        @property
        def total(self) -> int:
            return self.x + self.y

    Built = portable_dataclass(frozen=True, slots=True, freeze=freeze)(Point)
    a = Built(x=1, y=2)
    assert (a.x, a.y, a.label, a.total) == (1, 2, "p", 3)
    assert Built(1, 2) == a and Built(1) != a and hash(Built(1, 2)) == hash(a)
    assert Built(1, label="q").label == "q"
    assert repr(a) == "Point(x=1, y=2, label='p')"
    assert calls == [1, 1, 1, 1, 1]  # __post_init__ once per construction
    assert len({a, Built(1, 2), Built(3)}) == 2
    bad_calls: list[Callable[[], object]] = [
        lambda: Built(),
        lambda: Built(1, z=2),
        lambda: Built(1, x=1),
        lambda: Built(1, 2, 3, 4),
    ]
    for bad in bad_calls:
        with pytest.raises(TypeError):
            bad()
    if freeze:
        with pytest.raises(AttributeError):
            a.x = 5
        with pytest.raises(AttributeError):
            del a.x


def test_fallback_needs_fields_in_order() -> None:
    class NoFields:
        x: int

    class Misordered:
        FIELDS = ("x", "y")
        x: int = 0
        y: int

    for cls in (NoFields, Misordered):
        with pytest.raises(TypeError):
            portable_dataclass()(cls)


# Exercises every ledger module; run once as is, once with `dataclasses` unimportable
# (as on MicroPython) so every record is built by the fallback: the output must agree.
SCENARIO = r"""
from agent.ledger import record
from agent.ledger.alerts import crossed_levels, rearmed_levels
from agent.ledger.billing import charge, fixed_dates_due, validate_delta
from agent.ledger.policy import Policy, PolicyInputs, decide_disconnect, next_allowed_local_s
from agent.ledger.tariff import Slab, Tariff, TodWindow
from agent.ledger.tokens import TokenGate, TokenState, enter_token, issue_token

out = [record.dataclass.__module__]
t = Tariff(name="x", fixed_per_day=733, slabs=(Slab(rate=550, upto_kwh=150), Slab(rate=700)),
           duty_bp=500, tod=(TodWindow(from_min=600, to_min=960, pct=80),))
acc = None
for i in range(1, 60):
    c = charge(t, acc, 997 * i, 1_774_900_000 + 7_000 * (i - 1), 1_774_900_000 + 7_000 * i)
    acc = c.accrual
    out.append(repr(c))
out.append(repr(validate_delta(99_950, 100, 60, 14_400, 100_000, "A", "A")))
out.append(repr(fixed_dates_due("2026-02-27", "2026-03-02")))
p = Policy(holidays=("2026-01-26",))
i = PolicyInputs(balance=-40_000, local_s=1_772_445_600, clock_trusted=True, moratorium_until=None,
                 now_s=1_772_425_800, headend_online=True, payments_ok=None, headend_heard_s=None,
                 alerts_raised=frozenset({30, 10}), zero_alert_at_s=None, disconnects_last_hour=0,
                 policy=p)
out.append(repr(decide_disconnect(i)))
out.append(repr(next_allowed_local_s(1_772_445_600, p)))
out.append(repr(crossed_levels((30, 10, 0), 100_000, 40_000, -1, frozenset({30}))))
out.append(repr(sorted(rearmed_levels(5_000, 5_000, frozenset({30, 0})))))
state, gate = TokenState(), TokenGate()
key = bytes(range(32))
for digits in [issue_token(key, "ACC-1", 50_000, 2), issue_token(key, "ACC-1", 100, 1),
               issue_token(key, "ACC-1", 100, 1), "1234 5678 9012 3456 7890"]:
    result, gate = enter_token(key, "ACC-1", digits, state, gate, 1_800_000_000)
    state = result.new_state
    out.append(repr(result) + " " + repr(gate))
assert Slab(rate=1) == Slab(rate=1) and len({Slab(rate=1), Slab(rate=1)}) == 1
try:
    t.name = "y"
except AttributeError:
    out.append("frozen")
print("\n".join(out))
"""


def run_scenario(block_dataclasses: bool) -> list[str]:
    prelude = "import sys\nsys.modules['dataclasses'] = None\n" if block_dataclasses else ""
    result = subprocess.run(
        [sys.executable, "-c", prelude + SCENARIO],
        cwd=LEDGER.parents[1],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_ledger_runs_the_same_without_dataclasses() -> None:
    real, fallback = run_scenario(False), run_scenario(True)
    assert real[0] == "dataclasses" and fallback[0] == "agent.ledger.record"
    assert real[1:] == fallback[1:]
    assert real[-1] == "frozen" and len(real) > 60
