"""flash.sh on a temp dir standing in for a board's SD card: what it installs, that the
units pass `systemd-analyze verify`, that a second run and --dry-run change nothing; and
the sd_notify client the unit's Type=notify and WatchdogSec rely on."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import load_config
from agent.sdnotify import Notifier

ROOT = Path(__file__).resolve().parents[1]
FLASH = ROOT / "flash.sh"
SOURCES = ("pyproject.toml", "README.md", "agent")
HAT_ARGS = ["--board", "rpi4-rs485-hat", "--gateway-id", "gw-test-01",
            "--broker", "mqtt.example.net:8883"]
STEP = re.compile(r"^  (created|updated|unchanged|removed|skipped|would create|would update|"
                  r"would check)"
                  r"\s+(\S+)")


def flash(*args: str, check: bool = True, env: dict[str, str] | None = None
          ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["bash", str(FLASH), *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHON": sys.executable,
                                            **(env or {})})
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def steps(output: str) -> dict[str, str]:
    """{target path: status} for every step line of flash.sh's output."""
    found = {}
    for line in output.splitlines():
        m = STEP.match(line)
        if m:
            found[m.group(2)] = m.group(1)
    return found


def tree_hash(root: Path) -> str:
    """Every entry under root: path, type, mode, mtime, and content or link target."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath, name)
            st = path.lstat()
            h.update(f"{path.relative_to(root)}|{st.st_mode:o}|{st.st_mtime_ns}|".encode())
            if stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(path).encode())
            elif stat.S_ISREG(st.st_mode):
                h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def sources_hash() -> str:
    h = hashlib.sha256()
    for name in SOURCES:
        p = ROOT / name
        for f in sorted(p.rglob("*.py") if p.is_dir() else [p]):
            h.update(f.read_bytes())
    return h.hexdigest()


class Flashed:
    def __init__(self, rootfs: Path, first: str, second: str, hashes: tuple[str, str],
                 same_sources: bool) -> None:
        self.rootfs, self.first, self.second = rootfs, first, second
        self.hashes, self.same_sources = hashes, same_sources


@pytest.fixture(scope="module")
def flashed() -> Iterator[Flashed]:
    """An SD card's root with a Pi boot partition and an earlier agent's state, flashed twice."""
    with tempfile.TemporaryDirectory(prefix="rootfs-") as tmp:
        # Each run builds the wheel from the checkout; if someone edits agent/
        # between the two builds the second run rightly updates it, so try again.
        for attempt in range(2):
            rootfs = Path(tmp, f"attempt-{attempt}")
            boot = rootfs / "boot" / "firmware"
            boot.mkdir(parents=True)
            (boot / "config.txt").write_text("[pi4]\narm_boost=1\n\n[all]\n")
            (boot / "cmdline.txt").write_text(
                "console=serial0,115200 console=tty1 root=PARTUUID=1234-02 rootwait\n")
            state = rootfs / "var" / "lib" / "meter-agent"
            state.mkdir(parents=True)
            (state / "store.db").write_bytes(b"the ledger of an earlier version")
            before = sources_hash()
            first = flash(*HAT_ARGS, "--rootfs", str(rootfs)).stdout
            h1 = tree_hash(rootfs)
            second = flash(*HAT_ARGS, "--rootfs", str(rootfs)).stdout
            h2 = tree_hash(rootfs)
            if sources_hash() == before:
                break
        yield Flashed(rootfs, first, second, (h1, h2), sources_hash() == before)


def test_first_run_installs_the_agent_config_keys_unit_and_udev_rule(flashed: Flashed) -> None:
    r = flashed.rootfs
    done = steps(flashed.first)
    for path in ("/opt/meter-agent/bin/meter-agent-setup", "/usr/local/bin/meter-agent",
                 "/etc/sysusers.d/meter-agent.conf", "/etc/tmpfiles.d/meter-agent.conf",
                 "/etc/meter-agent/keys/command.key", "/etc/meter-agent/keys/token.key",
                 "/etc/meter-agent/keys/web.password", "/etc/meter-agent/agent.toml",
                 "/etc/systemd/system/meter-agent.service",
                 "/etc/systemd/system/meter-agent-setup.service",
                 "/etc/systemd/system/multi-user.target.wants/meter-agent.service",
                 "/etc/udev/rules.d/99-meter-agent-rs485.rules"):
        assert done.get(path) == "created", (path, flashed.first)
    [wheel] = (r / "opt/meter-agent/wheels").glob("meter_agent-*-py3-none-any.whl")
    modes = {"etc/meter-agent/keys": 0o750, "etc/meter-agent/keys/command.key": 0o600,
             "etc/meter-agent/keys/token.key": 0o600, "etc/meter-agent/keys/web.password": 0o600,
             "etc/meter-agent/agent.toml": 0o640, "opt/meter-agent/bin/meter-agent-setup": 0o755,
             "etc/systemd/system/meter-agent.service": 0o644}
    for rel, mode in modes.items():
        assert stat.S_IMODE((r / rel).stat().st_mode) == mode, rel
    # The written config: the board's, with the overrides, comments kept, valid.
    text = (r / "etc/meter-agent/agent.toml").read_text()
    assert "# Board: Raspberry Pi 4" in text
    cfg = load_config(r / "etc/meter-agent/agent.toml")
    assert cfg.gateway.id == "gw-test-01"
    assert str(cfg.gateway.data_dir) == "/var/lib/meter-agent"
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.tls) == ("mqtt.example.net", 8883, True)
    assert str(cfg.security.command_key_file) == "/etc/meter-agent/keys/command.key"
    assert str(cfg.security.token_key_file) == "/etc/meter-agent/keys/token.key"
    assert str(cfg.local.password_file) == "/etc/meter-agent/keys/web.password"
    # Keys: 32 random bytes as hex; the fingerprints printed are SHA-256 of those bytes.
    for name, label in (("command", "command key"), ("token", "token key")):
        key = bytes.fromhex((r / f"etc/meter-agent/keys/{name}.key").read_text().strip())
        assert len(key) == 32
        assert f"{label:<12} {hashlib.sha256(key).hexdigest()[:16]}" in flashed.first
    password = (r / "etc/meter-agent/keys/web.password").read_text().strip()
    assert len(password) == 20
    assert f"password (shown once; it is in /etc/meter-agent/keys/web.password): {password}" \
        in flashed.first
    # udev: the HAT's UART is rs485-0, USB adapters rs485-1, FTDI latency 1 ms.
    rules = (r / "etc/udev/rules.d/99-meter-agent-rs485.rules").read_text()
    assert 'KERNEL=="ttyAMA0", SUBSYSTEM=="tty", SYMLINK+="rs485-0"' in rules
    assert 'ATTRS{idVendor}=="0403", SYMLINK+="rs485-1"' in rules
    assert 'DRIVER=="ftdi_sio", ATTR{latency_timer}="1"' in rules
    assert "#HAT" not in rules and "@" not in rules
    # The Pi's boot partition: UART on, Bluetooth off it, no kernel console on the bus.
    assert "enable_uart=1\ndtoverlay=disable-bt" in (r / "boot/firmware/config.txt").read_text()
    assert "console=serial0" not in (r / "boot/firmware/cmdline.txt").read_text()
    assert os.readlink(r / "etc/systemd/system/multi-user.target.wants/meter-agent.service") \
        == "/etc/systemd/system/meter-agent.service"
    # The agent's state from before is untouched.
    assert (r / "var/lib/meter-agent/store.db").read_bytes() == b"the ledger of an earlier version"
    assert wheel.stat().st_size > 10_000
    with zipfile.ZipFile(wheel) as whl:  # the agent alone: no simulator on a board
        tops = {name.split("/")[0] for name in whl.namelist()}
    assert "agent" in tops and "sim" not in tops, tops


def test_a_second_run_changes_nothing(flashed: Flashed) -> None:
    if not flashed.same_sources:
        pytest.skip("agent/ changed between the two runs (someone is editing them)")
    assert flashed.hashes[0] == flashed.hashes[1]
    done = steps(flashed.second)
    assert len(done) >= 15 and set(done.values()) == {"unchanged"}, flashed.second
    assert "done: 0 changed" in flashed.second
    assert "kept, fingerprint" in flashed.second and "shown once" not in flashed.second


def test_dry_run_changes_nothing_and_prints_every_step(flashed: Flashed, tmp_path: Path) -> None:
    before = tree_hash(flashed.rootfs)
    out = flash(*HAT_ARGS, "--rootfs", str(flashed.rootfs), "--dry-run").stdout
    assert tree_hash(flashed.rootfs) == before
    assert "dry run: nothing is changed" in out
    planned = steps(out)
    # A dry run builds no wheel: it can only say it would compare the installed one.
    assert planned.pop(next(p for p in planned if "/wheels/" in p)) == "would check"
    assert set(planned.values()) == {"unchanged"}, out
    empty = tmp_path / "card"
    empty.mkdir()
    out = flash("--board", "rpi-zero2w-usb-rs485", "--gateway-id", "gw-test-02",
                "--broker", "10.0.0.5", "--rootfs", str(empty), "--dry-run").stdout
    assert list(empty.iterdir()) == []
    planned = steps(out)
    for path in ("/etc/meter-agent/agent.toml", "/etc/meter-agent/keys/command.key",
                 "/etc/meter-agent/keys/token.key", "/etc/systemd/system/meter-agent.service",
                 "/etc/udev/rules.d/99-meter-agent-rs485.rules",
                 "/etc/sysusers.d/meter-agent.conf"):
        assert planned.get(path) == "would create", (path, out)
    assert "would build" in out and "check-config  ok" in out


def test_units_pass_systemd_analyze_verify_after_first_boot_setup(flashed: Flashed,
                                                                  tmp_path: Path) -> None:
    for tool in ("systemd-analyze", "systemd-sysusers", "systemd-tmpfiles"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian's systemd package)")
    board = tmp_path / "board"
    shutil.copytree(flashed.rootfs, board, symlinks=True)
    # What meter-agent-setup does at first boot, on the copy: user, ownership, venv. pip
    # is offline here, and the agent's dependencies are in this interpreter already.
    env = {**os.environ, "METER_AGENT_ROOT": str(board), "PYTHON": sys.executable,
           "METER_AGENT_PIP_OPTS": "--no-deps --no-index"}
    setup = board / "opt/meter-agent/bin/meter-agent-setup"
    out = subprocess.run([str(setup)], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "venv built: meter-agent" in out.stdout
    assert (board / "opt/meter-agent/venv/bin/meter-agent").exists()
    passwd = (board / "etc/passwd").read_text()
    assert re.search(r"^meter-agent:x:\d+:\d+:.*:/var/lib/meter-agent:", passwd, re.M)
    assert re.search(r"^dialout:x:\d+:meter-agent$", (board / "etc/group").read_text(), re.M)
    # The agent as installed from the wheel reads the config flash.sh wrote.
    check = subprocess.run([str(board / "opt/meter-agent/venv/bin/meter-agent"), "check-config",
                            str(board / "etc/meter-agent/agent.toml")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "ok (gateway gw-test-01" in check.stdout, check.stderr
    again = subprocess.run([str(setup)], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "venv unchanged" in again.stdout, again.stderr
    # verify --root needs the system's own units (multi-user.target, ...) inside the root.
    shutil.copytree("/lib/systemd/system", board / "usr/lib/systemd/system", symlinks=True)
    proc = subprocess.run(["systemd-analyze", "verify", f"--root={board}",
                           "/etc/systemd/system/meter-agent.service",
                           "/etc/systemd/system/meter-agent-setup.service"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    unit = (board / "etc/systemd/system/meter-agent.service").read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=always", "ProtectSystem=strict",
                 "ReadWritePaths=/var/lib/meter-agent", "NoNewPrivileges=yes",
                 "PrivateTmp=yes", "User=meter-agent", "SupplementaryGroups=dialout"):
        assert re.search(rf"^{line}", unit, re.M), line


def test_given_keys_are_installed_and_fingerprinted(flashed: Flashed, tmp_path: Path) -> None:
    keys = tmp_path / "from-headend"
    keys.mkdir()
    cmd, tok = keys / "cmd.key", keys / "tok.key"
    cmd.write_text("11" * 32 + "\n")
    tok.write_text("22" * 32 + "\n")
    card = tmp_path / "card"
    card.mkdir()
    [wheel] = (flashed.rootfs / "opt/meter-agent/wheels").glob("meter_agent-*.whl")
    args = ["--board", "generic-linux-usb-rs485", "--gateway-id", "gw-test-03", "--broker",
            "[fd00::5]:1883", "--rootfs", str(card), "--command-key", str(cmd),
            "--token-key", str(tok), "--wheel", str(wheel)]
    out = flash(*args).stdout
    assert (card / "etc/meter-agent/keys/command.key").read_text() == cmd.read_text()
    assert (card / "etc/meter-agent/keys/token.key").read_text() == tok.read_text()
    assert hashlib.sha256(b"\x11" * 32).hexdigest()[:16] in out
    assert hashlib.sha256(b"\x22" * 32).hexdigest()[:16] in out
    assert not (card / "etc/meter-agent/keys/web.password").exists()  # loopback page
    cfg = load_config(card / "etc/meter-agent/agent.toml")
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.tls) == ("fd00::5", 1883, False)
    rules = (card / "etc/udev/rules.d/99-meter-agent-rs485.rules").read_text()
    assert "ttyAMA0" not in rules and 'SYMLINK+="rs485-0"' in rules
    assert set(steps(flash(*args).stdout).values()) == {"unchanged"}
    # A different given key replaces the installed one, and says so.
    cmd.write_text("33" * 32 + "\n")
    again = flash(*args)
    assert steps(again.stdout)["/etc/meter-agent/keys/command.key"] == "updated"
    assert "the head-end must hold the new key" in again.stderr


@pytest.mark.parametrize(("change", "message"), [
    ({"--gateway-id": "bad id!"}, "--gateway-id: must match"),
    ({"--broker": "mqtt.example.net:99999"}, "port must be 1..65535"),
    ({"--board": "no-such-board"}, "--board: no "),
    ({"--command-key": "__SHORT_KEY__"}, "a key file holds 64 hex digits"),
    ({"--host": "pi@192.0.2.7"}, "exactly one of --host USER@HOST or --rootfs DIR"),
])
def test_bad_input_exits_2_and_touches_nothing(tmp_path: Path, change: dict[str, str],
                                               message: str) -> None:
    short = tmp_path / "short.key"
    short.write_text("abcd\n")
    card = tmp_path / "card"
    card.mkdir()
    args = {"--board": "rpi4-rs485-hat", "--gateway-id": "gw-1", "--broker": "h",
            "--rootfs": str(card)}
    args.update({k: str(short) if v == "__SHORT_KEY__" else v for k, v in change.items()})
    proc = flash(*[x for kv in args.items() for x in kv], "--dry-run", check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert list(card.iterdir()) == []


def test_a_board_config_failing_check_config_stops_before_any_change(tmp_path: Path) -> None:
    board = tmp_path / "broken-board.toml"
    text = (ROOT / "board_configs/rpi-zero2w-usb-rs485.toml").read_text()
    board.write_text(text.replace("address = 2\n", "adress = 2\n", 1))
    card = tmp_path / "card"
    card.mkdir()
    proc = flash("--board", str(board), "--gateway-id", "gw-1", "--broker", "h",
                 "--rootfs", str(card), check=False)
    assert proc.returncode == 2
    assert "meter[1].adress: unknown key" in proc.stderr
    assert "nothing was changed" in proc.stderr
    assert list(card.iterdir()) == []


def test_host_dry_run_prints_the_plan_without_connecting(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    called = tmp_path / "ssh-called"
    for tool in ("ssh", "scp"):
        (fake / tool).write_text(f"#!/bin/sh\ntouch {called}\nexit 1\n")
        (fake / tool).chmod(0o755)
    proc = flash("--board", "rpi-zero2w-usb-rs485", "--gateway-id", "gw-0043", "--broker",
                 "mqtt.example.net", "--host", "pi@192.0.2.7", "--dry-run",
                 env={"PATH": f"{fake}:{os.environ['PATH']}"})
    assert not called.exists()
    assert "target: host pi@192.0.2.7 (over ssh)" in proc.stdout
    assert "would copy" in proc.stdout
    assert "sudo bash ./flash.sh --rootfs / --board board_configs/rpi-zero2w-usb-rs485.toml" \
        " --gateway-id gw-0043 --broker mqtt.example.net" in proc.stdout


def test_rendered_config_of_every_board_keeps_comments_and_passes(tmp_path: Path) -> None:
    boards = [p for p in sorted((ROOT / "board_configs").glob("*.toml"))
              if not p.stem.startswith("sim")]  # the simulated gateways are no boards
    assert len(boards) == 3
    for board in boards:
        out = tmp_path / f"{board.stem}.toml"
        proc = subprocess.run([sys.executable, str(ROOT / "deploy/flash_helper.py"),
                               "render-config", str(board), str(out), "--gateway-id", "gw-9",
                               "--mqtt-host", "broker.lan", "--mqtt-port", "1883"],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        original = board.read_text()
        comments = [line for line in original.splitlines() if line.startswith("#")]
        rendered = out.read_text()
        assert all(c in rendered for c in comments)
        data = tomllib.loads(rendered)
        assert data["gateway"]["id"] == "gw-9" and data["mqtt"]["host"] == "broker.lan"
        assert "tls" not in data["mqtt"]
        load_config(out)


# -- sd_notify ----------------------------------------------------------------------
@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    try:
        yield sock, path
    finally:
        sock.close()


def test_sd_notify_ready_status_and_watchdog(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000",
                  "WATCHDOG_PID": str(os.getpid())})
    assert n.enabled and n.watchdog_interval_s == 2.0
    assert n.ready("polling 3 meters\non 1 bus")
    assert sock.recv(4096) == b"READY=1\nSTATUS=polling 3 meters on 1 bus"
    assert n.status("x" * 500)
    assert sock.recv(4096) == b"STATUS=" + b"x" * 200
    # Fed every loop turn, pinged at most 4 times per WatchdogSec.
    sent = [n.maybe_watchdog(t) for t in (100.0, 100.1, 100.4, 100.5, 100.9, 101.0)]
    assert sent == [True, False, False, True, False, True]
    assert [sock.recv(64) for _ in range(3)] == [b"WATCHDOG=1"] * 3
    assert n.stopping() and sock.recv(64) == b"STOPPING=1"


def test_sd_notify_abstract_socket_and_no_socket() -> None:
    name = f"meter-agent-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).watchdog()
        assert sock.recv(64) == b"WATCHDOG=1"
    off = Notifier({})
    assert not off.enabled and not off.ready() and not off.maybe_watchdog(1.0)
    # Someone else's watchdog (an inherited WATCHDOG_PID) is not ours to feed.
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "5000000",
                     "WATCHDOG_PID": "1"}).watchdog_interval_s is None


def test_sd_notify_never_raises_when_the_socket_is_gone(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert n.ready() is False and n.watchdog() is False


def test_check_config_needs_only_the_standard_library() -> None:
    """flash.sh validates on the target before the agent's dependencies exist there."""
    proc = subprocess.run([sys.executable, "-S", "-m", "agent.cli", "check-config",
                           str(ROOT / "board_configs/rpi4-rs485-hat.toml")],
                          capture_output=True, text=True, timeout=60, cwd="/",
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
