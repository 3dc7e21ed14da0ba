"""A broken store stops the real CLI with one line and exit 2, and is left as it was:
truncated, garbled, emptied, or a read-only data_dir (docs/technician.md, 'Recovering
a broken store')."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.buffer.store import DB_NAME, Store
from tests.e2e.harness import ROOT, make_config


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:  # stopped by its pid, whatever happened
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _spoil(path: Path, fault: str) -> None:
    data = path.read_bytes()
    if fault == "truncated":
        path.write_bytes(data[: len(data) // 3])
    elif fault == "empty":
        path.write_bytes(b"")
    elif fault == "garbled":
        path.write_bytes(bytes(range(256)) * 16)
    for extra in ("-wal", "-shm"):
        Path(f"{path}{extra}").unlink(missing_ok=True)
    if fault == "read-only":
        path.parent.chmod(0o555)


@pytest.mark.parametrize("fault", ["truncated", "empty", "garbled", "read-only"])
@pytest.mark.parametrize("command", [["run"], ["ledger", "ACC-0001"]])
def test_a_broken_store_stops_the_cli_with_one_line(tmp_path: Path, fault: str,
                                                    command: list[str]) -> None:
    config = make_config(tmp_path, 1, meters=1)
    data_dir = tmp_path / "data"
    Store(data_dir).close()
    db = data_dir / DB_NAME
    _spoil(db, fault)
    before = db.read_bytes()
    names = sorted(p.name for p in data_dir.iterdir())
    try:
        done = cli(*command, "-c", str(config))
    finally:
        data_dir.chmod(0o755)
    if fault == "read-only" and command[0] == "ledger":  # a good store read, not written
        # (this store has no accounts yet: set up by the running agent, which never ran)
        assert done.stderr == "meter-agent: unknown account 'ACC-0001'\n", done.stderr
        assert db.read_bytes() == before
        return
    lines = done.stderr.splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"meter-agent: store {db} ") and "Recovering" in lines[0]
    assert db.read_bytes() == before
    assert sorted(p.name for p in data_dir.iterdir()) == names
