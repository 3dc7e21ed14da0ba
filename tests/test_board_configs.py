"""The shipped board configs: each passes check-config, is written for a technician and
for flash.sh, and a broken copy is refused with the key named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main
from agent.config import load_config

ROOT = Path(__file__).resolve().parents[1]
BOARDS = sorted(p for p in (ROOT / "board_configs").glob("*.toml")
                if not p.stem.startswith("sim"))  # sim*.toml: simulated gateways, no boards
# (text replaced once, its replacement, the key path check-config must name, a fragment)
BREAKAGES = [
    ("address = 1\n", "adress = 1\n", "meter[0].adress", "unknown key"),
    ("baudrate = 9600\n", 'baudrate = "9600"\n', "bus[0].baudrate", "an integer"),
    ('parity = "N"', 'parity = "X"', "bus[0].parity", "N | E | O"),
    ('model = "eastron-sdm', 'model = "acme-', "meter[0].model", "unknown model"),
    ('timezone = "Asia/Kolkata"', 'timezone = "Asia/Calcutta-ish"', "gateway.timezone",
     "unknown time zone"),
]


def test_the_three_boards_are_there() -> None:
    assert [p.stem for p in BOARDS] == ["generic-linux-usb-rs485", "rpi-zero2w-usb-rs485",
                                        "rpi4-rs485-hat"]


@pytest.mark.parametrize("board", sorted((ROOT / "board_configs").glob("*.toml")),
                         ids=lambda p: p.stem)
def test_board_passes_check_config(board: Path, capsys: pytest.CaptureFixture[str],
                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_config import write_meter_keys

    monkeypatch.chdir(tmp_path)
    write_meter_keys(board)
    assert main(["check-config", str(board)]) == 0
    assert ": ok (gateway " in capsys.readouterr().out


@pytest.mark.parametrize("board", BOARDS, ids=lambda p: p.stem)
def test_board_is_ready_for_flash_and_explained(board: Path) -> None:
    cfg = load_config(board)
    text = board.read_text()
    # What flash.sh overrides is already where flash.sh puts it, so the file reads true.
    assert str(cfg.gateway.data_dir) == "/var/lib/meter-agent"
    assert str(cfg.security.command_key_file) == "/etc/meter-agent/keys/command.key"
    assert str(cfg.security.token_key_file) == "/etc/meter-agent/keys/token.key"
    assert cfg.buses[0].port == "/dev/rs485-0"  # the name the udev rule gives the adapter
    # Written for a technician: what the board is, the port, the baud rate, how to flash.
    assert text.startswith("# Board: ")
    for words in ("Port: /dev/rs485-0", "baud", f"./flash.sh --board {board.stem}",
                  "check-config"):
        assert words in text, words
    # Safe defaults: the status page never off loopback without a password.
    if cfg.local.http_port and cfg.local.bind != "127.0.0.1":
        assert cfg.local.password_file is not None
    assert cfg.policy.protected_hours and not cfg.policy.disconnect_on_tamper


@pytest.mark.parametrize("board", BOARDS, ids=lambda p: p.stem)
@pytest.mark.parametrize(("old", "new", "key", "fragment"), BREAKAGES,
                         ids=[b[2] for b in BREAKAGES])
def test_a_broken_copy_names_the_key(board: Path, old: str, new: str, key: str, fragment: str,
                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = board.read_text()
    if old not in text:
        pytest.skip(f"{board.name} has no {old.strip()!r}")
    broken = tmp_path / board.name
    broken.write_text(text.replace(old, new, 1))
    assert main(["check-config", str(broken)]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert any(line.startswith(f"{key}: ") and fragment in line for line in errors), errors


def test_the_installed_command_exits_2_with_the_key_on_stderr(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    text = (ROOT / "board_configs/rpi4-rs485-hat.toml").read_text()
    broken.write_text(text.replace("address = 3\n", "address = 300\n", 1))
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "check-config", str(broken)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "meter[2].address: must be 1..247"
