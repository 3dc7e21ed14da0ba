"""The parts of flash.sh that are easier to get right in Python (standard library only).

Runs on the technician's machine, or on the board itself for ``--host`` (Python
3.11+, as the agent needs). Every command prints what flash.sh reports and exits
2 with a one-line reason on bad input.

  render-config BOARD OUT --gateway-id ID --mqtt-host H --mqtt-port P
      The board config with the per-gateway overrides, comments kept. Prints
      ``web-password`` when the config asks for a status-page password file, and
      ``tls`` when it turned TLS on (port 8883, no tls key in the board config).
  render-udev TEMPLATE OUT --board NAME --kind usb|hat
  key-new PATH / key-check PATH / key-fingerprint PATH
  password-new PATH
  wheel-id WHEEL            content identity: SHA-256 of the wheel's RECORD
  boot-config CONFIG_TXT CMDLINE_TXT [--dry-run]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import secrets
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

DATA_DIR = "/var/lib/meter-agent"
KEY_DIR = "/etc/meter-agent/keys"
COMMAND_KEY = f"{KEY_DIR}/command.key"
TOKEN_KEY = f"{KEY_DIR}/token.key"
WEB_PASSWORD = f"{KEY_DIR}/web.password"
KEY_BYTES = 32
LOOPBACK = ("127.0.0.1", "::1", "localhost")
MQTTS_PORT = 8883
# Printed once when created; no look-alike characters (0/O, 1/l/I) for a phone keyboard.
PASSWORD_ALPHABET = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
PASSWORD_CHARS = 20
BOOT_MARKER = "# meter-agent (flash.sh): RS-485 HAT on the PL011 UART, Bluetooth off"
_SERIAL_CONSOLE = re.compile(r"^console=(serial0|ttyAMA0|ttyS0),\d+$")


class Fail(Exception):
    """A one-line reason; exit 2."""


# -- config ------------------------------------------------------------------------
def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _edit(lines: list[str], table: str, key: str, value: object) -> list[str]:
    """Set ``key`` in the plain table ``[table]``: replace its line, or add one."""
    header = re.compile(r"^\s*\[\s*" + re.escape(table) + r"\s*\]\s*(#.*)?$")
    any_header = re.compile(r"^\s*\[")
    key_line = re.compile(r"^\s*" + re.escape(key) + r"\s*=")
    new = f"{key} = {_toml_value(value)}  # set by flash.sh"
    start = next((i for i, line in enumerate(lines) if header.match(line)), None)
    if start is None:
        return [*lines, "", f"[{table}]", new]
    end = next((i for i in range(start + 1, len(lines)) if any_header.match(lines[i])),
               len(lines))
    for i in range(start + 1, end):
        if key_line.match(lines[i]):
            return [*lines[:i], new, *lines[i + 1:]]
    return [*lines[:start + 1], new, *lines[start + 1:]]


def render_config(board: Path, gateway_id: str, mqtt_host: str, mqtt_port: int
                  ) -> tuple[str, list[str]]:
    """The board file with the overrides, and flags for flash.sh: ``web-password`` (the
    config wants a status-page password file), ``tls`` (turned on for port 8883)."""
    text = board.read_text(encoding="utf-8")
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise Fail(f"{board}: not valid TOML: {exc}") from exc
    overrides: list[tuple[str, str, object]] = [
        ("gateway", "id", gateway_id), ("gateway", "data_dir", DATA_DIR),
        ("mqtt", "host", mqtt_host), ("mqtt", "port", mqtt_port),
        ("security", "command_key_file", COMMAND_KEY), ("security", "token_key_file", TOKEN_KEY),
    ]
    local = data.get("local") if isinstance(data.get("local"), dict) else {}
    assert isinstance(local, dict)
    web = bool(local.get("http_port")) and (
        "password_file" in local or local.get("bind", "127.0.0.1") not in LOOPBACK)
    flags = []
    if web:
        overrides.append(("local", "password_file", WEB_PASSWORD))
        flags.append("web-password")
    mqtt = data.get("mqtt") if isinstance(data.get("mqtt"), dict) else {}
    assert isinstance(mqtt, dict)
    if mqtt_port == MQTTS_PORT and "tls" not in mqtt:
        # 8883 is MQTT over TLS (IANA): a plain connection there can only fail.
        overrides.append(("mqtt", "tls", True))
        flags.append("tls")
    lines = [f"# Written by flash.sh from board_configs/{board.name} for gateway {gateway_id}.",
             "# To change it: edit here, run `meter-agent check-config`, then",
             "# `systemctl restart meter-agent`. flash.sh rewrites it on the next run.",
             "", *text.splitlines()]
    expected = data
    for table, key, value in overrides:
        lines = _edit(lines, table, key, value)
        section = expected.setdefault(table, {})
        if not isinstance(section, dict):
            raise Fail(f"{board}: {table} must be a table")
        section[key] = value
    out = "\n".join(lines) + "\n"
    # The edit is textual (to keep the technician's comments); prove it meant what we set.
    if tomllib.loads(out) != expected:
        raise Fail(f"{board}: cannot apply the overrides by text edit (unusual layout "
                   f"of [gateway], [mqtt], [security] or [local]); simplify those tables")
    return out, flags


def render_udev(template: Path, board: str, kind: str) -> str:
    out = []
    for line in template.read_text(encoding="utf-8").splitlines():
        if line.startswith("#HAT"):  # the HAT's own lines: kept (uncommented) for a HAT
            if kind != "hat":
                continue
            line = line[len("#HAT"):].removeprefix(" ")
        out.append(line.replace("@BOARD@", board)
                   .replace("@USB_NAME@", "rs485-1" if kind == "hat" else "rs485-0"))
    return "\n".join(out) + "\n"


# -- keys and passwords ------------------------------------------------------------
def read_key(path: Path) -> bytes:
    try:
        digits = "".join(path.read_text(encoding="ascii").split())
    except (OSError, UnicodeDecodeError) as exc:
        raise Fail(f"{path}: cannot read key file: {exc}") from exc
    if len(digits) != 2 * KEY_BYTES:
        raise Fail(f"{path}: a key file holds {2 * KEY_BYTES} hex digits ({KEY_BYTES} bytes), "
                   f"found {len(digits)} characters")
    try:
        return bytes.fromhex(digits)
    except ValueError as exc:
        raise Fail(f"{path}: a key file holds only hex digits 0-9 a-f") from exc


def fingerprint(key: bytes) -> str:
    """What a head-end compares: the first 16 hex digits of SHA-256 over the 32 key bytes."""
    return hashlib.sha256(key).hexdigest()[:16]


def _create_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never overwrite
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")


# -- wheel and boot files ----------------------------------------------------------
def wheel_id(path: Path) -> str:
    """Two builds of the same source differ in zip timestamps, never in RECORD."""
    with zipfile.ZipFile(path) as z:
        records = [n for n in z.namelist() if n.endswith(".dist-info/RECORD")]
        if len(records) != 1:
            raise Fail(f"{path}: not a wheel (no single .dist-info/RECORD)")
        return hashlib.sha256(z.read(records[0])).hexdigest()[:16]


def boot_config(config_txt: Path, cmdline_txt: Path, dry_run: bool) -> list[str]:
    """Raspberry Pi: UART on, Bluetooth off the PL011, no kernel console on the bus."""
    changes = []
    text = config_txt.read_text(encoding="utf-8")
    if BOOT_MARKER not in text:
        changes.append(f"{config_txt.name}: enable_uart=1, dtoverlay=disable-bt")
        if not dry_run:
            block = f"\n{BOOT_MARKER}\n[all]\nenable_uart=1\ndtoverlay=disable-bt\n"
            config_txt.write_text(text.rstrip("\n") + "\n" + block, encoding="utf-8")
    words = cmdline_txt.read_text(encoding="utf-8").split()
    kept = [w for w in words if not _SERIAL_CONSOLE.match(w)]
    if kept != words:
        # A kernel console on the UART would write boot messages onto the meters' bus.
        changes.append(f"{cmdline_txt.name}: removed " +
                       " ".join(w for w in words if _SERIAL_CONSOLE.match(w)))
        if not dry_run:
            cmdline_txt.write_text(" ".join(kept) + "\n", encoding="utf-8")
    return changes


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="flash_helper")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("render-config")
    c.add_argument("board", type=Path)
    c.add_argument("out", type=Path)
    c.add_argument("--gateway-id", required=True)
    c.add_argument("--mqtt-host", required=True)
    c.add_argument("--mqtt-port", type=int, required=True)
    u = sub.add_parser("render-udev")
    u.add_argument("template", type=Path)
    u.add_argument("out", type=Path)
    u.add_argument("--board", required=True)
    u.add_argument("--kind", choices=["usb", "hat"], required=True)
    for name in ("key-new", "key-check", "key-fingerprint", "password-new", "wheel-id"):
        sub.add_parser(name).add_argument("path", type=Path)
    b = sub.add_parser("boot-config")
    b.add_argument("config_txt", type=Path)
    b.add_argument("cmdline_txt", type=Path)
    b.add_argument("--dry-run", action="store_true")
    args = p.parse_args(argv)
    try:
        if args.cmd == "render-config":
            text, flags = render_config(args.board, args.gateway_id, args.mqtt_host,
                                        args.mqtt_port)
            args.out.write_text(text, encoding="utf-8")
            for flag in flags:
                print(flag)
        elif args.cmd == "render-udev":
            args.out.write_text(render_udev(args.template, args.board, args.kind),
                                encoding="utf-8")
        elif args.cmd == "key-new":
            _create_secret(args.path, secrets.token_bytes(KEY_BYTES).hex())
            print(fingerprint(read_key(args.path)))
        elif args.cmd in ("key-check", "key-fingerprint"):
            print(fingerprint(read_key(args.path)))
        elif args.cmd == "password-new":
            password = "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(PASSWORD_CHARS))
            _create_secret(args.path, password)
            print(password)
        elif args.cmd == "wheel-id":
            print(wheel_id(args.path))
        elif args.cmd == "boot-config":
            for change in boot_config(args.config_txt, args.cmdline_txt, args.dry_run):
                print(change)
    except (Fail, OSError) as exc:
        print(f"flash.sh: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
