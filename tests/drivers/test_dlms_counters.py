"""Durable DLMS invocation counters (agent/drivers/dlms/counters.py).

The kill -9 tests run a child process that takes counters as fast as it can and
prints each one once it may be sent, and SIGKILL it at a random moment; the next
process must start above every value the dead one printed. Power loss is the
module docstring's argument (fsync of the file and of the directory around the
rename), which a test cannot pull the plug on.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent.drivers.dlms.ciphered import IC_MAX
from agent.drivers.dlms.counters import IC_BLOCK, MAX_KEYS, InvocationCounters
from agent.drivers.dlms.errors import DlmsSecurityError

ROOT = Path(__file__).resolve().parents[2]
TITLE = bytes.fromhex("4D4D4D0000BC614E")

CHILD = """
import sys
from pathlib import Path
from agent.drivers.dlms.counters import InvocationCounters

counters = InvocationCounters(Path(sys.argv[1]), "M1", block=int(sys.argv[2]))
while True:
    value = counters.next_client("k1")
    sys.stdout.write(f"{value}\\n")
    sys.stdout.flush()  # printed = sent on the wire
"""


def _file(tmp_path: Path) -> Path:
    return tmp_path / "M1.ic.json"


def test_counters_start_at_1_and_are_reserved_a_block_at_a_time(tmp_path: Path) -> None:
    counters = InvocationCounters(tmp_path, "M1", block=10)
    assert counters.durable
    values = [counters.next_client("k1") for _ in range(25)]
    assert values == list(range(1, 26))
    assert counters.writes == 3  # reservations 11, 21, 31
    doc = json.loads(_file(tmp_path).read_text())
    assert doc == {"version": 1, "client": {"k1": 31}, "server": {}}
    assert stat.S_IMODE(_file(tmp_path).stat().st_mode) == 0o600
    assert not list(tmp_path.glob("*.tmp"))
    # a restart resumes at the reservation: 26..30 are skipped, never reused
    again = InvocationCounters(tmp_path, "M1", block=10)
    assert again.next_client("k1") == 31
    assert again.next_client("k2") == 1  # another key, its own counter


def test_a_reservation_is_on_disk_before_its_first_value_is_used(tmp_path: Path) -> None:
    counters = InvocationCounters(tmp_path, "M1", block=5)
    for _ in range(12):
        value = counters.next_client("k1")
        on_disk = json.loads(_file(tmp_path).read_text())["client"]["k1"]
        assert value < on_disk  # what a crash right now would resume at


@pytest.mark.parametrize("block", [1, 7, IC_BLOCK])
def test_kill_9_never_reuses_a_counter(tmp_path: Path, block: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    highest = 0
    for round_ in range(3):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(block)],
                                 stdout=subprocess.PIPE, env=env, text=True)
        assert child.stdout is not None
        printed = [int(child.stdout.readline()) for _ in range(50 + 37 * round_)]
        os.kill(child.pid, signal.SIGKILL)
        rest = child.stdout.read()  # whatever it printed before the signal landed
        child.wait(10)
        assert child.returncode == -signal.SIGKILL
        printed += [int(line) for line in rest.splitlines() if line.strip()]
        assert printed == sorted(printed) and printed[0] > highest
        highest = printed[-1]
    after = InvocationCounters(tmp_path, "M1", block=block)
    assert after.next_client("k1") > highest


def test_the_meters_counter_survives_a_restart(tmp_path: Path) -> None:
    counters = InvocationCounters(tmp_path, "M1")
    assert counters.last_server("k1", TITLE) == -1
    counters.see_server("k1", TITLE, 500)
    counters.see_server("k1", TITLE, 400)  # a lower one does not move it back
    assert counters.last_server("k1", TITLE) == 500
    assert counters.writes == 0  # seen, not yet written
    counters.persist()
    counters.persist()  # unchanged: no second write
    assert counters.writes == 1
    again = InvocationCounters(tmp_path, "M1")
    assert again.last_server("k1", TITLE) == 500
    assert again.last_server("k1", bytes(8)) == -1  # another meter title, another counter
    assert again.last_server("k2", TITLE) == -1  # another key


def test_a_reservation_carries_the_meters_counter_along(tmp_path: Path) -> None:
    counters = InvocationCounters(tmp_path, "M1")
    counters.see_server("k1", TITLE, 77)
    counters.next_client("k1")  # writes the reservation, and the 77 with it
    assert InvocationCounters(tmp_path, "M1").last_server("k1", TITLE) == 77


def test_the_counter_stops_below_2_to_the_32(tmp_path: Path) -> None:
    _file(tmp_path).write_text(json.dumps(
        {"version": 1, "client": {"k1": IC_MAX - 2}, "server": {}}))
    counters = InvocationCounters(tmp_path, "M1")
    assert counters.next_client("k1") == IC_MAX - 2
    assert counters.next_client("k1") == IC_MAX - 1
    assert json.loads(_file(tmp_path).read_text())["client"]["k1"] == IC_MAX
    for _ in range(2):
        with pytest.raises(DlmsSecurityError, match="a new key is needed") as err:
            counters.next_client("k1")
        assert err.value.why == "counter_exhausted"
    assert InvocationCounters(tmp_path, "M1").next_client("k2") == 1  # a new key is fine


@pytest.mark.parametrize("content", [
    b"", b"{", b"\xff\xfe", b"[]", b'{"version": 2, "client": {}, "server": {}}',
    b'{"version": 1, "client": {"k1": -1}, "server": {}}',
    b'{"version": 1, "client": {"k1": 4294967296}, "server": {}}',
    b'{"version": 1, "client": {"k1": true}, "server": {}}',
    b'{"version": 1, "client": {"k1": 5}, "server": {"k:t": "9"}}',
    b'{"version": 1, "client": {}}',
    b" " * (64 * 1024 + 1),
])
def test_a_damaged_file_refuses_to_send(tmp_path: Path, content: bytes) -> None:
    _file(tmp_path).write_bytes(content)
    counters = InvocationCounters(tmp_path, "M1")
    with pytest.raises(DlmsSecurityError, match="cannot be proven") as err:
        counters.next_client("k1")
    assert err.value.why == "counter_exhausted"
    assert _file(tmp_path).read_bytes() == content  # left for a person to look at


def test_a_file_that_cannot_be_written_refuses_to_send(tmp_path: Path) -> None:
    (tmp_path / "M1.ic.json.tmp").mkdir()  # the temp file cannot be opened (root too)
    counters = InvocationCounters(tmp_path, "M1")
    with pytest.raises(DlmsSecurityError, match="cannot record") as err:
        counters.next_client("k1")
    assert err.value.why == "counter_exhausted"
    with pytest.raises(DlmsSecurityError):
        counters.next_client("k1")  # still nothing: the value was never handed out
    (tmp_path / "M1.ic.json.tmp").rmdir()
    assert counters.next_client("k1") == 1  # 1 was never used, so it still may be
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(DlmsSecurityError, match="cannot read") as err:
        InvocationCounters(blocker / "dlms", "M1").next_client("k1")
    assert err.value.why == "counter_exhausted"


def test_the_number_of_keys_is_bounded(tmp_path: Path) -> None:
    counters = InvocationCounters(tmp_path, "M1", block=1)
    for i in range(MAX_KEYS):
        counters.next_client(f"k{i}")
        counters.see_server(f"k{i}", TITLE, 1)
    with pytest.raises(DlmsSecurityError, match=f"{MAX_KEYS} keys"):
        counters.next_client("one-more")
    with pytest.raises(DlmsSecurityError, match=f"{MAX_KEYS} meter counters"):
        counters.see_server("one-more", TITLE, 1)
    assert counters.next_client("k0") == 2  # the known keys go on


def test_memory_only_counters_write_nothing(tmp_path: Path) -> None:
    counters = InvocationCounters(None, "M1")
    assert not counters.durable
    assert [counters.next_client("k") for _ in range(3)] == [1, 2, 3]
    counters.see_server("k", TITLE, 9)
    counters.persist()
    assert counters.writes == 0 and counters.last_server("k", TITLE) == 9


def test_names_and_values_are_checked() -> None:
    for bad in ("", "../x", "a/b", "x" * 65):
        with pytest.raises(ValueError):
            InvocationCounters(None, bad)
    with pytest.raises(ValueError):
        InvocationCounters(None, "M1", block=0)
    with pytest.raises(ValueError):
        InvocationCounters(None, "M1").see_server("k", TITLE, IC_MAX + 1)
