"""COSE_Mac0 with HMAC 256/256, the envelope of every command (CONTRACT 7).

RFC 9052 section 6.2 (structure) and 6.3 (how the MAC is computed); RFC 9053 section
3.1 (HMAC 256/256: alg 5, HMAC-SHA256, full 256-bit tag):

    COSE_Mac0 = #6.17([ protected: bstr .cbor {1: 5}, unprotected: {},
                        payload: bstr, tag: bstr .size 32 ])
    MAC input = CBOR(["MAC0", protected, external_aad = h'', payload])

The protected header is checked as bytes: it must be exactly ``a10105`` ({1: 5}), so
no other algorithm, extra protected parameter or non-deterministic spelling of {1: 5}
is ever accepted (an alg swap is refused before any MAC is computed). The unprotected
map is not covered by the MAC and is ignored beyond its type. The CONTRACT 7 codes:
``malformed`` for anything that is not that four-array under tag 17, ``bad_mac`` for
a wrong protected header or a tag that does not verify.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from agent.errors import AgentError, CommandError, ConfigError
from agent.uplink import cbor

COSE_MAC0_TAG = 17
ALG_HMAC_256_256 = 5
HEADER_ALG = 1
PROTECTED_HMAC_256: Mapping[int, object] = MappingProxyType({HEADER_ALG: ALG_HMAC_256_256})
PROTECTED_HMAC_256_BYTES = bytes.fromhex("a10105")  # cbor.dumps({1: 5})
TAG_BYTES = 32
KEY_BYTES = 32  # our key files hold 32 random bytes; RFC 9053 3.1: no shorter than the hash


@dataclass(frozen=True, slots=True)
class Mac0:
    """A COSE_Mac0 whose shape is right; its MAC is not checked yet."""

    protected: bytes
    unprotected: dict[Any, Any]
    payload: bytes
    tag: bytes


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) < KEY_BYTES:
        raise AgentError(f"an HMAC 256/256 key must be at least {KEY_BYTES} bytes")


def mac_input(protected: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    """ToBeMaced: the MAC_structure of RFC 9052 6.3 for a COSE_Mac0."""
    return cbor.dumps(["MAC0", protected, external_aad, payload])


def compute_tag(key: bytes, protected: bytes, payload: bytes) -> bytes:
    _check_key(key)
    return hmac.new(key, mac_input(protected, payload), hashlib.sha256).digest()


def sign_mac0(key: bytes, payload: bytes,
              protected: Mapping[int, object] = PROTECTED_HMAC_256) -> bytes:
    """The tagged COSE_Mac0 of ``payload``. ``protected`` other than {1: 5} is only for
    tests and vectors: the verifier refuses it."""
    protected_bytes = cbor.dumps(dict(protected))
    tag = compute_tag(key, protected_bytes, payload)
    return cbor.dumps(cbor.Tag(COSE_MAC0_TAG, [protected_bytes, {}, payload, tag]))


def decode_mac0(data: bytes) -> Mac0:
    """The four parts of a tagged COSE_Mac0; CommandError("malformed") otherwise."""
    try:
        item = cbor.loads(data, max_bytes=cbor.MAX_COMMAND_BYTES)
    except cbor.CborError as exc:
        raise CommandError("malformed", f"not a COSE_Mac0: {exc}") from exc
    if not isinstance(item, cbor.Tag) or item.tag != COSE_MAC0_TAG:
        found = f"tag {item.tag}" if isinstance(item, cbor.Tag) else type(item).__name__
        raise CommandError("malformed", f"not a COSE_Mac0: expected CBOR tag 17, got {found}")
    parts = item.value
    if not isinstance(parts, list) or len(parts) != 4:
        raise CommandError("malformed", "a COSE_Mac0 is an array of 4 items")
    protected, unprotected, payload, tag = parts
    if not (isinstance(protected, bytes) and isinstance(unprotected, dict)
            and isinstance(payload, bytes) and isinstance(tag, bytes)):
        # A nil payload (detached content, RFC 9052 4.1) is malformed here too.
        raise CommandError("malformed", "a COSE_Mac0 is [bstr, map, bstr, bstr]")
    return Mac0(protected, unprotected, payload, tag)


def check_mac0(key: bytes, msg: Mac0) -> None:
    """CommandError("bad_mac") unless the header is {1: 5} and the tag verifies."""
    if msg.protected != PROTECTED_HMAC_256_BYTES:
        raise CommandError("bad_mac", "protected header must be exactly {1: 5} (HMAC 256/256)")
    expected = compute_tag(key, msg.protected, msg.payload)
    if not hmac.compare_digest(expected, msg.tag):
        raise CommandError("bad_mac", "the MAC does not verify")


def verify_mac0(key: bytes, data: bytes) -> bytes:
    """The payload of a COSE_Mac0 that verifies under ``key``; CommandError otherwise."""
    msg = decode_mac0(data)
    check_mac0(key, msg)
    return msg.payload


def read_hex_key(path: str | Path) -> bytes:
    """A 32-byte key from a file of 64 hex digits (whitespace ignored); ConfigError
    naming the file otherwise. The key itself is never put in a message."""
    p = Path(path)
    try:
        text = p.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([(str(p), f"cannot read key file: {reason}")]) from exc
    digits = "".join(text.split())
    if len(digits) != 2 * KEY_BYTES:
        raise ConfigError([(str(p), f"a key file holds {2 * KEY_BYTES} hex digits "
                                    f"({KEY_BYTES} bytes), found {len(digits)} characters")])
    try:
        return bytes.fromhex(digits)
    except ValueError as exc:
        raise ConfigError([(str(p), "a key file holds only hex digits 0-9 a-f")]) from exc
