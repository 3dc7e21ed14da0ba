"""Sans-IO rule (STYLE 1): codecs, register maps and the bus schedule import no serial,
time or socket."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"serial", "time", "socket", "select", "os", "threading", "asyncio"}
PURE = [
    ROOT / "agent" / "drivers" / "modbus" / "codec.py",
    ROOT / "agent" / "drivers" / "modbus" / "maps.py",
    ROOT / "agent" / "drivers" / "iec62056" / "codec.py",
    ROOT / "agent" / "drivers" / "iec62056" / "obis.py",
    ROOT / "agent" / "drivers" / "schedule.py",  # the bus's policy: the thread does the I/O
    ROOT / "agent" / "drivers" / "events.py",
    ROOT / "agent" / "drivers" / "actions.py",
    ROOT / "agent" / "drivers" / "sansio.py",
]
# The codec needs nothing but bytes handling and the error tree.
CODEC_ALLOWED = {"__future__", "struct", "dataclasses", "typing", "agent.errors",
                 "agent.drivers.sansio"}


def test_every_reader_answers_the_one_need_data() -> None:
    """One sentinel for the three protocols' readers (agent/drivers/sansio.py)."""
    from agent.drivers import sansio
    from agent.drivers.dlms import reader
    from agent.drivers.iec62056 import codec as iec
    from agent.drivers.modbus import codec as modbus

    assert modbus.NEED_DATA is iec.NEED_DATA is sansio.NEED_DATA
    assert reader.FrameReader().next_event() is sansio.NEED_DATA
    assert modbus.RequestReader().next_event() is sansio.NEED_DATA
    assert imported_modules(ROOT / "agent" / "drivers" / "sansio.py") <= {"__future__", "typing"}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: relative import"
            names.add(node.module or "")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
            raise AssertionError(f"{path.name}: dynamic import")
    return names


@pytest.mark.parametrize("path", PURE, ids=[p.name for p in PURE])
def test_no_io_imports(path: Path) -> None:
    tops = {name.split(".")[0] for name in imported_modules(path)}
    assert not tops & FORBIDDEN, f"{path.name} imports {sorted(tops & FORBIDDEN)}"


def test_codec_imports_only_struct_and_the_error_tree() -> None:
    assert imported_modules(PURE[0]) <= CODEC_ALLOWED


def test_iec_codec_imports_only_the_error_tree() -> None:
    assert imported_modules(PURE[2]) <= CODEC_ALLOWED
    assert imported_modules(PURE[3]) <= CODEC_ALLOWED | {"decimal",
                                                         "agent.drivers.iec62056.codec"}
