"""DLMS key files: a 16-byte suite-0 key (encryption or authentication) as 32 hex digits.

A key file must be readable by its owner only (mode 0600 or stricter): a group- or
world-readable one is refused, so a copied board with loose permissions fails its
``check-config`` instead of leaking the meter's keys. Whitespace around the digits
is ignored. ``KeyFileError`` says what is wrong with the file and never contains the
key or any part of it; the config loader puts the key path in front of it.
"""

from __future__ import annotations

import os
import stat
import string
from pathlib import Path
from typing import Final

KEY_BYTES: Final = 16
MAX_KEY_FILE_BYTES: Final = 256  # 32 digits and some whitespace; more is not a key file
TITLE_BYTES: Final = 8


class KeyFileError(ValueError):
    """A key file that cannot be used (the message never holds key material)."""


def read_key_file(path: Path) -> bytes:
    """The key in ``path``; KeyFileError if it is missing, loose or malformed."""
    try:
        with path.open("rb") as f:
            mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
            raw = f.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    if mode & 0o077:
        raise KeyFileError(f"must not be readable by group or others (mode {mode:04o}); "
                           f"chmod 600 {path}")
    if len(raw) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{path} is over {MAX_KEY_FILE_BYTES} bytes: not a key file")
    try:
        digits = "".join(raw.decode("ascii").split())
    except UnicodeDecodeError:
        raise KeyFileError(f"{path} holds only hex digits 0-9 a-f") from None
    if len(digits) != 2 * KEY_BYTES:
        raise KeyFileError(f"{path} must hold {2 * KEY_BYTES} hex digits ({KEY_BYTES} bytes), "
                           f"found {len(digits)} characters")
    try:
        return bytes.fromhex(digits)
    except ValueError:
        raise KeyFileError(f"{path} holds only hex digits 0-9 a-f") from None


def parse_system_title(text: str) -> bytes:
    """16 hex digits -> 8 bytes; ValueError with the reason otherwise."""
    digits = text.strip()
    if len(digits) != 2 * TITLE_BYTES:
        raise ValueError(f"must be {2 * TITLE_BYTES} hex digits ({TITLE_BYTES} bytes)")
    if not all(c in string.hexdigits for c in digits):
        raise ValueError(f"must be {2 * TITLE_BYTES} hex digits 0-9 a-f")
    return bytes.fromhex(digits)

