"""A broken store stops the real CLI with one line and exit 2, and is left as it was:
truncated, garbled, emptied, or a read-only data_dir (docs/technician.md, 'Recovering
a broken store')."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.buffer.store import DB_NAME, Store
from sim.broker import find_mosquitto
from tests.e2e.harness import ROOT, Gateway, make_config, wait_until


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


def test_store_init_refuses_a_store_that_exists_and_bad_numbers(tmp_path: Path) -> None:
    config = make_config(tmp_path, 1, meters=1)
    data_dir = tmp_path / "data"
    done = cli("store-init", "-c", str(config), "--after-seq", "-1")
    assert done.returncode == 2 and "must be >= 0" in done.stderr, done.stderr
    assert not (data_dir / DB_NAME).exists()
    Store(data_dir).close()
    before = (data_dir / DB_NAME).read_bytes()
    done = cli("store-init", "-c", str(config), "--after-seq", "10")
    assert done.returncode == 2 and done.stderr.startswith(
        f"meter-agent: store {data_dir / DB_NAME} exists"), done.stderr
    assert (data_dir / DB_NAME).read_bytes() == before


@pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed")
def test_a_replaced_store_numbers_on_above_what_the_headend_saw(tmp_path: Path) -> None:
    """The store is lost; a new one made with ``store-init --after-seq/--after-boot``
    from the head-end's last seq and boot: the new messages are not taken for
    duplicates, seq goes on from there and the birth says the next boot."""
    g = Gateway(tmp_path, meters=2)
    try:
        g.start_agent()
        wait_until(lambda: len(g.headend.messages(g.gw, "readings")) >= 2, 30,
                   "readings from the first store")
        assert g.agent is not None
        g.agent.stop()
        seen = max(g.headend.raw_seqs(g.gw))
        state = g.headend.state(g.gw)
        assert state is not None
        data_dir = Path(g.raw["gateway"]["data_dir"])
        (data_dir / "broken").mkdir()
        for name in (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm"):
            if (data_dir / name).exists():
                (data_dir / name).rename(data_dir / "broken" / name)
        done = cli("store-init", "-c", str(g.config), "--after-seq", str(seen),
                   "--after-boot", str(state["boot"]), "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["first_seq"] == seen + 1
        before = len(g.headend.messages(g.gw, "readings"))
        g.start_agent()
        wait_until(lambda: len(g.headend.messages(g.gw, "readings")) >= before + 2, 30,
                   "readings from the new store")
        new = [s for s in g.headend.raw_seqs(g.gw) if s > seen]
        assert min(new) == seen + 1
        birth = g.headend.state(g.gw)
        assert birth is not None and birth["boot"] == state["boot"] + 1
    finally:
        g.close()
