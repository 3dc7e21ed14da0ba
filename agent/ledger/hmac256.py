"""HMAC-SHA256 (RFC 2104 with SHA-256, as in RFC 4231) on ``hashlib.sha256`` alone.

MicroPython has ``hashlib.sha256`` but no ``hmac`` module, so the ledger carries
these few lines; the tests check them against CPython's ``hmac`` module.
"""

from __future__ import annotations

import hashlib

BLOCK_SIZE = 64  # SHA-256 block, bytes
DIGEST_SIZE = 32
_IPAD = 0x36
_OPAD = 0x5C


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    if len(key) > BLOCK_SIZE:
        key = hashlib.sha256(key).digest()
    key = key + bytes(BLOCK_SIZE - len(key))
    inner_key = bytes(b ^ _IPAD for b in key)
    outer_key = bytes(b ^ _OPAD for b in key)
    # One digest() per hash object: MicroPython finalises it on digest().
    inner = hashlib.sha256(inner_key + message).digest()
    return hashlib.sha256(outer_key + inner).digest()


def equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison (no hmac.compare_digest on MicroPython)."""
    if len(a) != len(b):
        return False
    diff = 0
    for i in range(len(a)):
        diff |= a[i] ^ b[i]
    return diff == 0
