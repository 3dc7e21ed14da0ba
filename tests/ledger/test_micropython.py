"""agent/ledger's pure rules under real MicroPython 1.27 (WebAssembly, under Node.js):
scripts/micropython-test.sh runs tests/ledger/mpy_program.py with CPython and with
MicroPython and requires identical output. test_portability.py is the static half
(imports); this is the proof that the code actually runs there."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "micropython-test.sh"


@pytest.mark.skipif(shutil.which("node") is None,
                    reason="node is not installed: MicroPython (WebAssembly) runs under Node.js")
@pytest.mark.timeout(300)  # the first run installs the npm package
def test_ledger_rules_give_identical_results_under_micropython() -> None:
    done = subprocess.run(["sh", str(SCRIPT)], cwd=ROOT, capture_output=True, text=True,
                          timeout=280)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "identical under CPython and micropython (1, 27)" in done.stdout
