"""ACSE APDUs of an LN association, with or without ciphering, sans-IO.

Implements, after the DLMS UA Green Book (IEC 62056-5-3:2017) §9.4.2 and its
Annex A (the ACSE abstract syntax, BER-encoded): AARQ [APPLICATION 0] and AARE
[APPLICATION 1] with the fields an LN association uses:
application-context-name (2.16.756.5.8.1.1, or .3 with ciphering),
calling-AP-title / responding-AP-title (the system titles, OCTET STRING [4]),
sender- / responder-acse-requirements, mechanism-name (LLS is
2.16.756.5.8.2.1, HLS-GMAC 2.16.756.5.8.2.5), calling-authentication-value
(the LLS password or the HLS client-to-server challenge, GraphicString [0]),
responding-authentication-value (the server-to-client challenge), result,
result-source-diagnostic, and user-information carrying the xDLMS
InitiateRequest / InitiateResponse (§9.4.6.1, A-XDR), a confirmedServiceError,
or, with ciphering, their glo-initiateRequest / glo-initiateResponse form as
bytes (``ciphered.py`` reads them, ``ciphering.py`` deciphers them); RLRQ
[APPLICATION 2] / RLRE [APPLICATION 3] with their reason. The 24-bit
conformance block is an int, bit 0 (the MSB) first. BER fields the parser does
not need (protocol-version, implementation-information...) are read past.
Challenges are 8..64 bytes (Green Book §9.2.7.4); a title is 8 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from agent.drivers.dlms.axdr import decode_length, encode_length
from agent.drivers.dlms.errors import DlmsProtocolError

CONTEXT_LN: Final = bytes.fromhex("60857405080101")  # 2.16.756.5.8.1.1 LN, no ciphering
CONTEXT_SN: Final = bytes.fromhex("60857405080102")  # 2.16.756.5.8.1.2 SN, no ciphering
CONTEXT_LN_CIPHERED: Final = bytes.fromhex("60857405080103")  # 2.16.756.5.8.1.3 LN, ciphering
_MECHANISM_PREFIX: Final = bytes.fromhex("608574050802")  # 2.16.756.5.8.2.x
MECHANISM_LLS: Final = 1
MECHANISM_HLS_GMAC: Final = 5
# Bytes of an HLS challenge (Green Book: 8..64). Ours is DEFAULT_CHALLENGE_BYTES
# (security.py); a meter's StoC outside the bounds is a DlmsProtocolError there.
CHALLENGE_MIN: Final = 8
CHALLENGE_MAX: Final = 64
TITLE_BYTES: Final = 8

# Conformance bits (Green Book §9.4.6.1), bit 0 being the MSB of 24.
GENERAL_PROTECTION: Final = 1 << (23 - 1)  # general-glo/ded-ciphering allowed
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
DIAG_AUTHENTICATION_REQUIRED: Final = 14  # accepted, HLS passes 3 and 4 to follow
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


def _octets(raw: bytes, tag: int, name: str) -> bytes:
    """The value of a BER [tag] that wraps one primitive (OCTET STRING 04, or [0] 80)."""
    if len(raw) < 2 or raw[0] != tag:
        raise DlmsProtocolError(f"{name}: {tag:#04x} expected, got {raw[:1].hex()}")
    length, offset = decode_length(raw, 1)
    if offset + length != len(raw):
        raise DlmsProtocolError(f"{name}: length mismatch")
    return raw[offset:]


def _title(raw: bytes | None, name: str) -> bytes | None:
    if raw is None:
        return None
    title = _octets(raw, 0x04, name)
    if len(title) != TITLE_BYTES:
        raise DlmsProtocolError(f"{name} of {len(title)} bytes (a system title is 8)")
    return title


def _mechanism(raw: bytes | None, name: str) -> int | None:
    if raw is None:
        return None
    if len(raw) != 7 or raw[:6] != _MECHANISM_PREFIX:
        raise DlmsProtocolError(f"{name}: unknown mechanism-name {raw.hex()}")
    return raw[6]


@dataclass(frozen=True, slots=True)
class InitiateRequest:
    """xDLMS InitiateRequest (§9.4.6.1): carried plain in an AARQ, or ciphered (with a
    ``dedicated_key`` only ciphered: the Green Book forbids it in clear)."""

    conformance: int
    max_pdu_size: int
    dlms_version: int = 6
    dedicated_key: bytes | None = None

    def to_bytes(self) -> bytes:
        key = b"\x00" if self.dedicated_key is None else (
            b"\x01" + encode_length(len(self.dedicated_key)) + self.dedicated_key)
        return (b"\x01" + key + b"\x00\x00"  # response-allowed default, no QoS
                + bytes((self.dlms_version,)) + b"\x5f\x1f\x04\x00"
                + self.conformance.to_bytes(3, "big") + self.max_pdu_size.to_bytes(2, "big"))

    @classmethod
    def from_bytes(cls, data: bytes) -> InitiateRequest:
        if len(data) < 14 or data[0] != 0x01:
            raise DlmsProtocolError(f"no InitiateRequest in {data[:4].hex()}")
        offset, key = 1, None
        for optional in range(3):  # dedicated-key, response-allowed, proposed-QoS
            if offset >= len(data):
                raise DlmsProtocolError("InitiateRequest truncated")
            present = data[offset]
            offset += 1
            if present and optional == 0:
                size, offset = decode_length(data, offset)
                key, offset = bytes(data[offset : offset + size]), offset + size
            elif present:
                offset += 1
        if len(data) != offset + 10:
            raise DlmsProtocolError("InitiateRequest has the wrong length")
        version = data[offset]
        conformance = _conformance(data, offset + 1)
        max_pdu = int.from_bytes(data[offset + 8 : offset + 10], "big")
        return cls(conformance, max_pdu, version, key)


@dataclass(frozen=True, slots=True)
class InitiateResponse:
    conformance: int
    max_pdu_size: int
    dlms_version: int = 6

    def to_bytes(self) -> bytes:
        return (b"\x08\x00"  # InitiateResponse, no negotiated-quality-of-service
                + bytes((self.dlms_version,)) + b"\x5f\x1f\x04\x00"
                + self.conformance.to_bytes(3, "big") + self.max_pdu_size.to_bytes(2, "big")
                + b"\x00\x07")  # vaa-name: 0x0007 for LN referencing

    @classmethod
    def from_bytes(cls, data: bytes) -> InitiateResponse:
        if len(data) < 4 or data[0] != 0x08:
            raise DlmsProtocolError(f"no InitiateResponse in {data[:4].hex()}")
        offset = 3 if data[1] else 2  # past the negotiated-quality-of-service, if present
        if len(data) != offset + 12:
            raise DlmsProtocolError("InitiateResponse has the wrong length")
        version = data[offset]
        conformance = _conformance(data, offset + 1)
        max_pdu = int.from_bytes(data[offset + 8 : offset + 10], "big")
        return cls(conformance, max_pdu, version)


@dataclass(frozen=True, slots=True)
class Aarq:
    """An association request. ``mechanism`` None: no authentication; 1: LLS with
    ``password``; 5: HLS-GMAC with ``password`` the client-to-server challenge.
    ``ciphered_initiate`` (a glo-initiateRequest) replaces the plain InitiateRequest
    built from ``conformance``, ``max_pdu_size`` and ``dlms_version`` (then 0)."""

    conformance: int
    max_pdu_size: int
    mechanism: int | None = None
    password: bytes | None = None
    dlms_version: int = 6
    context: bytes = CONTEXT_LN
    calling_title: bytes | None = None
    ciphered_initiate: bytes | None = None

    def to_bytes(self) -> bytes:
        out = _tlv(0xA1, _tlv(0x06, self.context))
        if self.calling_title is not None:
            out += _tlv(0xA6, _tlv(0x04, self.calling_title))
        if self.mechanism is not None:
            out += _tlv(0x8A, b"\x07\x80")  # sender-acse-requirements: authentication
            out += _tlv(0x8B, _MECHANISM_PREFIX + bytes((self.mechanism,)))
            if self.password is not None:
                out += _tlv(0xAC, _tlv(0x80, self.password))
        info = self.ciphered_initiate
        if info is None:
            info = InitiateRequest(self.conformance, self.max_pdu_size,
                                   self.dlms_version).to_bytes()
        out += _tlv(0xBE, _tlv(0x04, info))
        return _tlv(0x60, out)

    @classmethod
    def from_bytes(cls, data: bytes) -> Aarq:
        fields = _apdu_body(data, 0x60, "AARQ")
        context = _context(fields, "AARQ")
        title = _title(fields.get(0xA6), "AARQ calling-AP-title")
        mechanism = _mechanism(fields.get(0x8B), "AARQ")
        raw = fields.get(0xAC)
        password = None if raw is None else _octets(
            raw, 0x80, "AARQ calling-authentication-value")
        info = _user_information(fields, "AARQ")
        if info[:1] == b"\x21":  # glo-initiateRequest: deciphered by the server
            return cls(0, 0, mechanism, password, 0, context, title, info)
        initiate = InitiateRequest.from_bytes(info)
        if initiate.dedicated_key is not None:
            raise DlmsProtocolError("AARQ: a dedicated key in a plain InitiateRequest")
        return cls(initiate.conformance, initiate.max_pdu_size, mechanism, password,
                   initiate.dlms_version, context, title)


@dataclass(frozen=True, slots=True)
class Aare:
    """An association response. ``initiate_error`` set: user-information is a
    confirmedServiceError (initiate) instead of an InitiateResponse;
    ``ciphered_initiate`` set: it is a glo-initiateResponse (conformance,
    max_pdu_size and dlms_version are then 0 until it is deciphered). HLS adds
    ``responding_title``, ``mechanism`` and ``challenge`` (server to client)."""

    result: int
    diagnostic: int = DIAG_NULL
    source: int = SOURCE_SERVICE_USER
    conformance: int = 0
    max_pdu_size: int = 0
    dlms_version: int = 6
    initiate_error: int | None = None
    context: bytes = CONTEXT_LN
    responding_title: bytes | None = None
    mechanism: int | None = None
    challenge: bytes | None = None
    ciphered_initiate: bytes | None = None

    @property
    def accepted(self) -> bool:
        return self.result == ACCEPTED

    def to_bytes(self) -> bytes:
        out = _tlv(0xA1, _tlv(0x06, self.context))
        out += _tlv(0xA2, _tlv(0x02, bytes((self.result,))))
        out += _tlv(0xA3, _tlv(0xA0 | self.source, _tlv(0x02, bytes((self.diagnostic,)))))
        if self.responding_title is not None:
            out += _tlv(0xA4, _tlv(0x04, self.responding_title))
        if self.mechanism is not None:
            out += _tlv(0x88, b"\x07\x80")  # responder-acse-requirements: authentication
            out += _tlv(0x89, _MECHANISM_PREFIX + bytes((self.mechanism,)))
        if self.challenge is not None:
            out += _tlv(0xAA, _tlv(0x80, self.challenge))
        if self.initiate_error is not None:
            info = bytes((0x0E, 0x01, 0x06, self.initiate_error))
        elif self.ciphered_initiate is not None:
            info = self.ciphered_initiate
        else:
            info = InitiateResponse(self.conformance, self.max_pdu_size,
                                    self.dlms_version).to_bytes()
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
        title = _title(fields.get(0xA4), "AARE responding-AP-title")
        mechanism = _mechanism(fields.get(0x89), "AARE")
        raw = fields.get(0xAA)
        challenge = None if raw is None else _octets(
            raw, 0x80, "AARE responding-authentication-value")
        conformance = max_pdu = 0
        version, error, ciphered = 6, None, None
        if 0xBE not in fields:
            if result == ACCEPTED:
                raise DlmsProtocolError("AARE accepted without user-information")
        else:
            info = _user_information(fields, "AARE")
            if info[:1] == b"\x0e":
                if len(info) != 4:
                    raise DlmsProtocolError(f"AARE: bad confirmedServiceError {info.hex()}")
                error = info[3]
            elif info[:1] == b"\x28":  # glo-initiateResponse: the client deciphers it
                version, ciphered = 0, info
            else:
                initiate = InitiateResponse.from_bytes(info)
                conformance, max_pdu = initiate.conformance, initiate.max_pdu_size
                version = initiate.dlms_version
        return cls(result, diagnostic, source, conformance, max_pdu, version, error, context,
                   title, mechanism, challenge, ciphered)


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
