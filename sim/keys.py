"""Key files for the simulator, the demo and tests: random bytes as hex, mode 0600 (32
bytes for the command and token keys, 16 for a DLMS meter's encryption and
authentication keys)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any


def write_key(path: Path, size: int = 32) -> bytes:
    """Create ``path`` with a fresh key of ``size`` bytes unless it exists; the key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    key = secrets.token_bytes(size)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
    return key


DLMS_KEY_BYTES = 16  # security suite 0: AES-128


def repoint_meter_keys(raw: dict[str, Any], keys_dir: Path) -> None:
    """Every ``[[meter]]`` key file of a config being prepared (the demo, tests) made
    anew under ``keys_dir`` and the config pointed at it: the agent and the simulated
    meter then share the meter's keys, as a utility's key centre would give them."""
    for meter in raw.get("meter", []):
        for key in ("ek_file", "ak_file"):
            if key in meter:
                path = keys_dir / f"{meter['id']}.{key.split('_')[0]}"
                write_key(path, DLMS_KEY_BYTES)
                meter[key] = str(path)
