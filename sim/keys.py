"""Key files for the simulator, the demo and tests: 32 random bytes as hex, mode 0600."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_key(path: Path) -> bytes:
    """Create ``path`` with a fresh key unless it exists; return the key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
    return key
