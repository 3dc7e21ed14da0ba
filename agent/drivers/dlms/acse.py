"""ACSE APDUs of an LN association without ciphering, sans-IO.

Implements, after the DLMS UA Green Book (IEC 62056-5-3:2017) §9.4.2 and its
Annex A (the ACSE abstract syntax, BER-encoded): AARQ [APPLICATION 0] and AARE
[APPLICATION 1] with the fields an LN, no-ciphering association uses:
application-context-name (2.16.756.5.8.1.1), sender-acse-requirements,
mechanism-name (LLS is 2.16.756.5.8.2.1), calling-authentication-value (the
password, GraphicString [0]), result, result-source-diagnostic, and
user-information carrying the xDLMS InitiateRequest / InitiateResponse (or a
confirmedServiceError); RLRQ [APPLICATION 2] / RLRE [APPLICATION 3] with their
reason. The 24-bit conformance block (§9.4.6.1) is an int, bit 0 (the MSB)
first. BER fields the parser does not need (calling-AP-title,
protocol-version, implementation-information...) are read past, so a client
that sends them (dlms-cosem sends a calling-AP-title) still parses. A
ciphered InitiateRequest (glo-initiate) raises ``DlmsProtocolError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from agent.drivers.dlms.axdr import decode_length, encode_length
from agent.drivers.dlms.errors import DlmsProtocolError

CONTEXT_LN: Final = bytes.fromhex("60857405080101")  # 2.16.756.5.8.1.1 LN, no ciphering
CONTEXT_SN: Final = bytes.fromhex("60857405080102")  # 2.16.756.5.8.1.2 SN, no ciphering
_MECHANISM_PREFIX: Final = bytes.fromhex("608574050802")  # 2.16.756.5.8.2.x
MECHANISM_LLS: Final = 1

# Conformance bits (Green Book §9.4.6.1), bit 0 being the MSB of 24.
GET: Final = 1 << (23 - 19)
SET: Final = 1 << (23 - 20)
SELECTIVE_ACCESS: Final = 1 << (23 - 21)
ACTION: Final = 1 << (23 - 23)
BLOCK_TRANSFER_WITH_GET: Final = 1 << (23 - 11)
MULTIPLE_REFERENCES: Final = 1 << (23 - 14)  # GET/SET/ACTION-With-List

# AARE result and result-source-diagnostic values (Green Book §9.4.2, Table "AARE").
ACCEPTED: Final = 0
REJECTED_PERMANENT: Final = 1
REJECTED_TRANSIENT: Final = 2
DIAG_NULL: Final = 0
DIAG_NO_REASON: Final = 1
DIAG_CONTEXT_NOT_SUPPORTED: Final = 2
DIAG_MECHANISM_NOT_RECOGNISED: Final = 11
DIAG_MECHANISM_REQUIRED: Final = 12
DIAG_AUTHENTICATION_FAILURE: Final = 13
SOURCE_SERVICE_USER: Final = 1
SOURCE_SERVICE_PROVIDER: Final = 2

def _tlv(tag: int, value: bytes) -> bytes:
    return bytes((tag,)) + encode_length(len(value)) + value


def _ber_fields(data: bytes, offset: int, end: int) -> dict[int, bytes]:
    """The [tag, length, value] fields between offset and end (last wins on repeats)."""
    fields: dict[int, bytes] = {}
    while offset < end:
        tag = data[offset]
        length, offset = decode_length(data, offset + 1)
        if offset + length > end:
            raise DlmsProtocolError(f"BER field {tag:#04x} runs past its parent")
        fields[tag] = data[offset : offset + length]
        offset += length
    return fields


def _apdu_body(data: bytes, tag: int, name: str) -> dict[int, bytes]:
    if not data or data[0] != tag:
        raise DlmsProtocolError(f"not an {name}")
    length, offset = decode_length(data, 1)
    if offset + length != len(data):
        raise DlmsProtocolError(f"{name} length {length} does not match {len(data) - offset}")
    return _ber_fields(data, offset, len(data))


def _context(fields: dict[int, bytes], name: str) -> bytes:
    raw = fields.get(0xA1)
    if raw is None or len(raw) < 2 or raw[0] != 0x06 or raw[1] != len(raw) - 2:
        raise DlmsProtocolError(f"{name} without an application-context-name")
    return raw[2:]


def _ber_integer(raw: bytes, name: str) -> int:
    if len(raw) < 3 or raw[0] != 0x02 or raw[1] != len(raw) - 2:
        raise DlmsProtocolError(f"{name}: INTEGER expected, got {raw.hex()}")
    return int.from_bytes(raw[2:], "big")


def _user_information(fields: dict[int, bytes], name: str) -> bytes:
    raw = fields.get(0xBE)
    if raw is None or len(raw) < 2 or raw[0] != 0x04:
        raise DlmsProtocolError(f"{name} without user-information")
    length, offset = decode_length(raw, 1)
    if offset + length != len(raw):
        raise DlmsProtocolError(f"{name}: user-information length mismatch")
    return raw[offset:]


def _conformance(data: bytes, offset: int) -> int:
    if data[offset : offset + 4] != b"\x5f\x1f\x04\x00" or len(data) < offset + 7:
        raise DlmsProtocolError("conformance block [APPLICATION 31] expected")
    return int.from_bytes(data[offset + 4 : offset + 7], "big")


@dataclass(frozen=True, slots=True)
class Aarq:
    """An association request. ``mechanism`` None: no authentication; 1: LLS with ``password``."""

    conformance: int
    max_pdu_size: int
    mechanism: int | None = None
    password: bytes | None = None
    dlms_version: int = 6
    context: bytes = CONTEXT_LN

    def to_bytes(self) -> bytes:
        out = _tlv(0xA1, _tlv(0x06, self.context))
        if self.mechanism is not None:
            out += _tlv(0x8A, b"\x07\x80")  # sender-acse-requirements: authentication
            out += _tlv(0x8B, _MECHANISM_PREFIX + bytes((self.mechanism,)))
            if self.password is not None:
                out += _tlv(0xAC, _tlv(0x80, self.password))
        initiate = (
            b"\x01\x00\x00\x00"  # InitiateRequest; no dedicated key, response-allowed, QoS
            + bytes((self.dlms_version,))
            + b"\x5f\x1f\x04\x00"
            + self.conformance.to_bytes(3, "big")
            + self.max_pdu_size.to_bytes(2, "big")
        )
        out += _tlv(0xBE, _tlv(0x04, initiate))
        return _tlv(0x60, out)

    @classmethod
    def from_bytes(cls, data: bytes) -> Aarq:
        fields = _apdu_body(data, 0x60, "AARQ")
        context = _context(fields, "AARQ")
        mechanism: int | None = None
        raw = fields.get(0x8B)
        if raw is not None:
            if len(raw) != 7 or raw[:6] != _MECHANISM_PREFIX:
                raise DlmsProtocolError(f"AARQ: unknown mechanism-name {raw.hex()}")
            mechanism = raw[6]
        password: bytes | None = None
        raw = fields.get(0xAC)
        if raw is not None:
            if len(raw) < 2 or raw[0] != 0x80:
                raise DlmsProtocolError("AARQ: calling-authentication-value is no charstring")
            length, offset = decode_length(raw, 1)
            if offset + length != len(raw):
                raise DlmsProtocolError("AARQ: authentication value length mismatch")
            password = raw[offset:]
        initiate = _user_information(fields, "AARQ")
        if len(initiate) < 14 or initiate[0] != 0x01:
            raise DlmsProtocolError(f"AARQ: no InitiateRequest (ciphered?) in {initiate.hex()}")
        offset = 1
        for optional in range(3):  # dedicated-key, response-allowed, proposed-QoS
            if offset >= len(initiate):
                raise DlmsProtocolError("AARQ: InitiateRequest truncated")
            present = initiate[offset]
            offset += 1
            if present:
                if optional == 0:
                    size, offset = decode_length(initiate, offset)
                    offset += size
                else:
                    offset += 1
        if len(initiate) != offset + 10:
            raise DlmsProtocolError("AARQ: InitiateRequest has the wrong length")
        version = initiate[offset]
        conformance = _conformance(initiate, offset + 1)
        max_pdu = int.from_bytes(initiate[offset + 8 : offset + 10], "big")
        return cls(conformance, max_pdu, mechanism, password, version, context)


@dataclass(frozen=True, slots=True)
class Aare:
    """An association response. ``initiate_error`` set: user-information is a
    confirmedServiceError (initiate) instead of an InitiateResponse."""

    result: int
    diagnostic: int = DIAG_NULL
    source: int = SOURCE_SERVICE_USER
    conformance: int = 0
    max_pdu_size: int = 0
    dlms_version: int = 6
    initiate_error: int | None = None
    context: bytes = CONTEXT_LN

    @property
    def accepted(self) -> bool:
        return self.result == ACCEPTED

    def to_bytes(self) -> bytes:
        out = _tlv(0xA1, _tlv(0x06, self.context))
        out += _tlv(0xA2, _tlv(0x02, bytes((self.result,))))
        out += _tlv(0xA3, _tlv(0xA0 | self.source, _tlv(0x02, bytes((self.diagnostic,)))))
        if self.initiate_error is not None:
            info = bytes((0x0E, 0x01, 0x06, self.initiate_error))
        else:
            info = (
                b"\x08\x00"  # InitiateResponse, no negotiated-quality-of-service
                + bytes((self.dlms_version,))
                + b"\x5f\x1f\x04\x00"
                + self.conformance.to_bytes(3, "big")
                + self.max_pdu_size.to_bytes(2, "big")
                + b"\x00\x07"  # vaa-name: 0x0007 for LN referencing
            )
        out += _tlv(0xBE, _tlv(0x04, info))
        return _tlv(0x61, out)

    @classmethod
    def from_bytes(cls, data: bytes) -> Aare:
        fields = _apdu_body(data, 0x61, "AARE")
        context = _context(fields, "AARE")
        if 0xA2 not in fields or 0xA3 not in fields:
            raise DlmsProtocolError("AARE without result or diagnostic")
        result = _ber_integer(fields[0xA2], "AARE result")
        diag = fields[0xA3]
        if len(diag) < 2 or diag[0] not in (0xA1, 0xA2) or diag[1] != len(diag) - 2:
            raise DlmsProtocolError(f"AARE: bad result-source-diagnostic {diag.hex()}")
        diagnostic = _ber_integer(diag[2:], "AARE diagnostic")
        source = diag[0] & 0x0F
        if 0xBE not in fields:
            if result == ACCEPTED:
                raise DlmsProtocolError("AARE accepted without user-information")
            return cls(result, diagnostic, source, context=context)
        info = _user_information(fields, "AARE")
        if info[:1] == b"\x0e":
            if len(info) != 4:
                raise DlmsProtocolError(f"AARE: bad confirmedServiceError {info.hex()}")
            return cls(result, diagnostic, source, initiate_error=info[3], context=context)
        if len(info) < 4 or info[0] != 0x08:
            raise DlmsProtocolError(f"AARE: no InitiateResponse (ciphered?) in {info.hex()}")
        offset = 3 if info[1] else 2  # past the negotiated-quality-of-service, if present
        if len(info) != offset + 12:
            raise DlmsProtocolError("AARE: InitiateResponse has the wrong length")
        version = info[offset]
        conformance = _conformance(info, offset + 1)
        max_pdu = int.from_bytes(info[offset + 8 : offset + 10], "big")
        return cls(result, diagnostic, source, conformance, max_pdu, version, None, context)


@dataclass(frozen=True, slots=True)
class ReleaseRequest:
    reason: int | None = 0  # 0 normal; None: no reason field

    def to_bytes(self) -> bytes:
        body = b"" if self.reason is None else _tlv(0x80, bytes((self.reason,)))
        return _tlv(0x62, body)


@dataclass(frozen=True, slots=True)
class ReleaseResponse:
    reason: int | None = 0

    def to_bytes(self) -> bytes:
        body = b"" if self.reason is None else _tlv(0x80, bytes((self.reason,)))
        return _tlv(0x63, body)


def release_reason(data: bytes, tag: int, name: str) -> int | None:
    fields = _apdu_body(data, tag, name)
    raw = fields.get(0x80)
    if raw is None:
        return None
    if len(raw) != 1:
        raise DlmsProtocolError(f"{name}: reason is one byte")
    return raw[0]
