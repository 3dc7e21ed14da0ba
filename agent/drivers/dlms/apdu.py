"""xDLMS APDUs for logical-name referencing without ciphering, sans-IO.

Implements the DLMS UA Green Book (IEC 62056-5-3:2017) §9.3 xDLMS services in
their A-XDR encoding: GET-Request-Normal (C0 01), GET-Request-Next (C0 02),
GET-Request-With-List (C0 03), GET-Response-Normal (C4 01),
GET-Response-With-Datablock (C4 02), GET-Response-With-List (C4 03),
ACTION-Request-Normal (C3 01), ACTION-Response-Normal (C7 01),
ExceptionResponse (D8, with the expected invocation counter when its service
error is invocation-counter-error), confirmedServiceError (0E); ``decode_apdu``
also dispatches the ACSE APDUs of ``acse.py`` and the ciphered APDUs of
``ciphered.py`` (glo-, ded-, general-glo/ded-ciphering, returned still
ciphered: deciphering needs the keys, ``security.py``). The
invoke-id-and-priority byte is kept whole (``invoke``), so a server echoes it
exactly. SET, ACTION-With-List and selective access in a list are not
implemented: they raise ``DlmsProtocolError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeAlias

from agent.drivers.dlms.acse import (
    ACCEPTED,
    ACTION,
    BLOCK_TRANSFER_WITH_GET,
    CONTEXT_LN,
    CONTEXT_LN_CIPHERED,
    CONTEXT_SN,
    DIAG_AUTHENTICATION_FAILURE,
    DIAG_AUTHENTICATION_REQUIRED,
    DIAG_CONTEXT_NOT_SUPPORTED,
    DIAG_MECHANISM_NOT_RECOGNISED,
    DIAG_MECHANISM_REQUIRED,
    DIAG_NO_REASON,
    DIAG_NULL,
    GENERAL_PROTECTION,
    GET,
    MECHANISM_HLS_GMAC,
    MECHANISM_LLS,
    MULTIPLE_REFERENCES,
    REJECTED_PERMANENT,
    REJECTED_TRANSIENT,
    SELECTIVE_ACCESS,
    SET,
    SOURCE_SERVICE_PROVIDER,
    SOURCE_SERVICE_USER,
    Aare,
    Aarq,
    InitiateRequest,
    InitiateResponse,
    ReleaseRequest,
    ReleaseResponse,
    release_reason,
)
from agent.drivers.dlms.axdr import Data, decode_length, decode_prefix, encode_length
from agent.drivers.dlms.ciphered import CipheredApdu, is_ciphered
from agent.drivers.dlms.errors import DlmsProtocolError
from agent.drivers.dlms.obis import Obis

__all__ = [
    "ACCEPTED", "ACTION", "BLOCK_TRANSFER_WITH_GET", "CONTEXT_LN", "CONTEXT_LN_CIPHERED",
    "CONTEXT_SN", "DIAG_AUTHENTICATION_FAILURE", "DIAG_AUTHENTICATION_REQUIRED",
    "DIAG_CONTEXT_NOT_SUPPORTED", "DIAG_MECHANISM_NOT_RECOGNISED", "DIAG_MECHANISM_REQUIRED",
    "DIAG_NO_REASON", "DIAG_NULL", "GENERAL_PROTECTION", "GET", "INVOKE_HIGH_CONFIRMED",
    "MAX_LIST", "MECHANISM_HLS_GMAC", "MECHANISM_LLS", "MULTIPLE_REFERENCES",
    "REJECTED_PERMANENT", "REJECTED_TRANSIENT", "SELECTIVE_ACCESS", "SERVICE_DECIPHERING",
    "SERVICE_INVOCATION_COUNTER", "SET", "SOURCE_SERVICE_PROVIDER", "SOURCE_SERVICE_USER",
    "Aare", "Aarq", "ActionRequest", "ActionResponse", "Apdu", "Attribute", "CipheredApdu",
    "ConfirmedServiceError", "ExceptionResponse", "GetRequest", "GetRequestList",
    "GetRequestNext", "GetResponse", "GetResponseBlock", "GetResponseList", "InitiateRequest",
    "InitiateResponse", "Obis", "ReleaseRequest", "ReleaseResponse", "decode_apdu",
    "decode_results", "encode_results",
]

MAX_LIST: Final = 32  # attributes in one GET-Request-With-List (ours, and what we accept)
INVOKE_HIGH_CONFIRMED: Final = 0xC0  # priority high | confirmed service
# ExceptionResponse service-error values for protected APDUs (Green Book §9.5 ASN.1).
SERVICE_DECIPHERING: Final = 5  # deciphering-error: the tag did not verify
SERVICE_INVOCATION_COUNTER: Final = 6  # invocation-counter-error, with the expected counter


def _obis_at(data: bytes, offset: int) -> tuple[int, Obis, int]:
    if len(data) < offset + 9:
        raise DlmsProtocolError("APDU ends inside a COSEM attribute/method descriptor")
    class_id = int.from_bytes(data[offset : offset + 2], "big")
    return class_id, Obis.from_bytes(data[offset + 2 : offset + 8]), data[offset + 8]


def _data_at(data: bytes, offset: int, name: str) -> Data:
    value, end = decode_prefix(data, offset)
    if end != len(data):
        raise DlmsProtocolError(f"{name}: {len(data) - end} bytes after the data")
    return value


@dataclass(frozen=True, slots=True)
class GetRequest:
    """GET-Request-Normal of one attribute, without selective access."""

    class_id: int
    obis: Obis
    attribute: int
    invoke: int = INVOKE_HIGH_CONFIRMED | 1
    access_selection: bool = False  # parsed only, so a server can refuse it

    def to_bytes(self) -> bytes:
        head = bytes((0xC0, 0x01, self.invoke)) + self.class_id.to_bytes(2, "big")
        return head + self.obis.to_bytes() + bytes((self.attribute, int(self.access_selection)))


@dataclass(frozen=True, slots=True)
class GetRequestNext:
    block_number: int
    invoke: int = INVOKE_HIGH_CONFIRMED | 1

    def to_bytes(self) -> bytes:
        return bytes((0xC0, 0x02, self.invoke)) + self.block_number.to_bytes(4, "big")


@dataclass(frozen=True, slots=True)
class GetResponse:
    """GET-Response-Normal: ``data``, or ``error`` (a data-access-result)."""

    invoke: int
    data: Data | None = None
    error: int | None = None

    def to_bytes(self) -> bytes:
        head = bytes((0xC4, 0x01, self.invoke))
        if self.error is not None:
            return head + bytes((0x01, self.error))
        assert self.data is not None
        return head + b"\x00" + self.data.to_bytes()


Attribute = tuple[int, Obis, int]  # class id, logical name, attribute index


@dataclass(frozen=True, slots=True)
class GetRequestList:
    """GET-Request-With-List: several attributes in one request, no selective access."""

    attributes: tuple[Attribute, ...]
    invoke: int = INVOKE_HIGH_CONFIRMED | 1

    def __post_init__(self) -> None:
        if not 1 <= len(self.attributes) <= MAX_LIST:
            raise ValueError(f"1..{MAX_LIST} attributes per list")

    def to_bytes(self) -> bytes:
        out = bytes((0xC0, 0x03, self.invoke)) + encode_length(len(self.attributes))
        for class_id, obis, attribute in self.attributes:
            out += class_id.to_bytes(2, "big") + obis.to_bytes() + bytes((attribute, 0))
        return out


@dataclass(frozen=True, slots=True)
class GetResponseList:
    """GET-Response-With-List: per attribute, its ``Data`` or a data-access-result (int)."""

    invoke: int
    results: tuple[Data | int, ...]

    def to_bytes(self) -> bytes:
        return bytes((0xC4, 0x03, self.invoke)) + encode_results(self.results)


def encode_results(results: tuple[Data | int, ...]) -> bytes:
    """SEQUENCE OF Get-Data-Result: a count, then 00 data | 01 data-access-result each."""
    out = encode_length(len(results))
    for result in results:
        out += bytes((0x01, result)) if isinstance(result, int) else b"\x00" + result.to_bytes()
    return out


def decode_results(data: bytes, offset: int = 0) -> tuple[Data | int, ...]:
    """The inverse of ``encode_results``; all of ``data`` from ``offset`` must be used."""
    count, offset = decode_length(data, offset)
    if count > MAX_LIST:
        raise DlmsProtocolError(f"{count} results in a list (at most {MAX_LIST})")
    results: list[Data | int] = []
    for _ in range(count):
        if offset + 2 > len(data) or data[offset] not in (0, 1):
            raise DlmsProtocolError("Get-Data-Result: 00 data or 01 result expected")
        if data[offset] == 1:
            results.append(data[offset + 1])
            offset += 2
        else:
            value, offset = decode_prefix(data, offset + 1)
            results.append(value)
    if offset != len(data):
        raise DlmsProtocolError(f"{len(data) - offset} bytes after the result list")
    return tuple(results)


@dataclass(frozen=True, slots=True)
class GetResponseBlock:
    """GET-Response-With-Datablock: ``raw`` (a part of the encoded data) or ``error``."""

    invoke: int
    last: bool
    block_number: int
    raw: bytes = b""
    error: int | None = None

    def to_bytes(self) -> bytes:
        head = bytes((0xC4, 0x02, self.invoke, int(self.last)))
        head += self.block_number.to_bytes(4, "big")
        if self.error is not None:
            return head + bytes((0x01, self.error))
        return head + b"\x00" + encode_length(len(self.raw)) + self.raw


@dataclass(frozen=True, slots=True)
class ActionRequest:
    class_id: int
    obis: Obis
    method: int
    data: Data | None = None
    invoke: int = INVOKE_HIGH_CONFIRMED | 1

    def to_bytes(self) -> bytes:
        head = bytes((0xC3, 0x01, self.invoke)) + self.class_id.to_bytes(2, "big")
        head += self.obis.to_bytes() + bytes((self.method,))
        if self.data is None:
            return head + b"\x00"
        return head + b"\x01" + self.data.to_bytes()


@dataclass(frozen=True, slots=True)
class ActionResponse:
    """ACTION-Response-Normal: ``result`` (action-result), optional return data or error."""

    invoke: int
    result: int
    data: Data | None = None
    error: int | None = None

    def to_bytes(self) -> bytes:
        head = bytes((0xC7, 0x01, self.invoke, self.result))
        if self.error is not None:
            return head + bytes((0x01, 0x01, self.error))
        if self.data is not None:
            return head + b"\x01\x00" + self.data.to_bytes()
        return head + b"\x00"


@dataclass(frozen=True, slots=True)
class ExceptionResponse:
    state_error: int  # 1 service-not-allowed, 2 service-unknown
    # 1 operation-not-possible, 2 service-not-supported, 3 other-reason, 4 pdu-too-long,
    # 5 deciphering-error, 6 invocation-counter-error (then ``invocation_counter``)
    service_error: int
    invocation_counter: int | None = None  # the lowest the server will accept

    def to_bytes(self) -> bytes:
        head = bytes((0xD8, self.state_error, self.service_error))
        if self.invocation_counter is None:
            return head
        return head + self.invocation_counter.to_bytes(4, "big")


@dataclass(frozen=True, slots=True)
class ConfirmedServiceError:
    service: int  # which service failed (1 initiateError, 5 read, ...)
    error_class: int
    error: int

    def to_bytes(self) -> bytes:
        return bytes((0x0E, self.service, self.error_class, self.error))


Apdu: TypeAlias = (
    Aarq
    | Aare
    | ReleaseRequest
    | ReleaseResponse
    | GetRequest
    | GetRequestNext
    | GetRequestList
    | GetResponse
    | GetResponseBlock
    | GetResponseList
    | ActionRequest
    | ActionResponse
    | ExceptionResponse
    | ConfirmedServiceError
    | CipheredApdu
)


def decode_apdu(data: bytes) -> Apdu:
    """Any supported APDU (DlmsProtocolError for anything else)."""
    if len(data) < 2:
        raise DlmsProtocolError(f"APDU too short: {data.hex()}")
    tag, kind = data[0], data[1]
    if tag == 0x60:
        return Aarq.from_bytes(data)
    if tag == 0x61:
        return Aare.from_bytes(data)
    if tag == 0x62:
        return ReleaseRequest(release_reason(data, 0x62, "RLRQ"))
    if tag == 0x63:
        return ReleaseResponse(release_reason(data, 0x63, "RLRE"))
    if tag == 0xD8 and len(data) == 3:
        return ExceptionResponse(data[1], data[2])
    if tag == 0xD8 and len(data) == 7 and data[2] == SERVICE_INVOCATION_COUNTER:
        return ExceptionResponse(data[1], data[2], int.from_bytes(data[3:7], "big"))
    if is_ciphered(data):
        return CipheredApdu.from_bytes(data)
    if tag == 0x0E and len(data) == 4:
        return ConfirmedServiceError(data[1], data[2], data[3])
    if len(data) < 3:
        raise DlmsProtocolError(f"APDU too short: {data.hex()}")
    invoke = data[2]
    if tag == 0xC0 and kind == 0x01:
        class_id, obis, attribute = _obis_at(data, 3)
        if len(data) < 13:
            raise DlmsProtocolError("GET-Request-Normal without access-selection flag")
        if data[12] == 0 and len(data) != 13:
            raise DlmsProtocolError("GET-Request-Normal: bytes after the descriptor")
        return GetRequest(class_id, obis, attribute, invoke, data[12] != 0)
    if tag == 0xC0 and kind == 0x02:
        if len(data) != 7:
            raise DlmsProtocolError("GET-Request-Next is 7 bytes")
        return GetRequestNext(int.from_bytes(data[3:7], "big"), invoke)
    if tag == 0xC4 and kind == 0x01:
        return _get_response(data, invoke)
    if tag == 0xC4 and kind == 0x02:
        return _get_response_block(data, invoke)
    if tag == 0xC0 and kind == 0x03:
        return _get_request_list(data, invoke)
    if tag == 0xC4 and kind == 0x03:
        return GetResponseList(invoke, decode_results(data, 3))
    if tag == 0xC3 and kind == 0x01:
        class_id, obis, method = _obis_at(data, 3)
        if len(data) < 13 or (data[12] == 0 and len(data) != 13):
            raise DlmsProtocolError("ACTION-Request-Normal: bad parameter flag")
        value = _data_at(data, 13, "ACTION-Request") if data[12] else None
        return ActionRequest(class_id, obis, method, value, invoke)
    if tag == 0xC7 and kind == 0x01:
        return _action_response(data, invoke)
    raise DlmsProtocolError(f"unsupported APDU {tag:#04x} {kind:#04x}")


def _get_response(data: bytes, invoke: int) -> GetResponse:
    if len(data) < 5:
        raise DlmsProtocolError("GET-Response-Normal too short")
    if data[3] == 0x01:
        if len(data) != 5:
            raise DlmsProtocolError("GET-Response-Normal: bytes after the error")
        return GetResponse(invoke, error=data[4])
    if data[3] != 0x00:
        raise DlmsProtocolError(f"GET-Response-Normal: result choice {data[3]}")
    return GetResponse(invoke, _data_at(data, 4, "GET-Response"))


def _get_request_list(data: bytes, invoke: int) -> GetRequestList:
    count, offset = decode_length(data, 3)
    if not 1 <= count <= MAX_LIST or len(data) != offset + 10 * count:
        raise DlmsProtocolError(f"GET-Request-With-List of {count}: bad length")
    attributes = []
    for _ in range(count):
        class_id, obis, attribute = _obis_at(data, offset)
        if data[offset + 9] != 0:
            raise DlmsProtocolError("GET-Request-With-List: selective access not supported")
        attributes.append((class_id, obis, attribute))
        offset += 10
    return GetRequestList(tuple(attributes), invoke)


def _get_response_block(data: bytes, invoke: int) -> GetResponseBlock:
    if len(data) < 10:
        raise DlmsProtocolError("GET-Response-With-Datablock too short")
    last, number, choice = data[3] != 0, int.from_bytes(data[4:8], "big"), data[8]
    if choice == 0x01:
        if len(data) != 10:
            raise DlmsProtocolError("GET-Response-With-Datablock: bytes after the error")
        return GetResponseBlock(invoke, last, number, error=data[9])
    if choice != 0x00:
        raise DlmsProtocolError(f"GET-Response-With-Datablock: result choice {choice}")
    length, offset = decode_length(data, 9)
    if offset + length != len(data):
        raise DlmsProtocolError("GET-Response-With-Datablock: raw-data length mismatch")
    return GetResponseBlock(invoke, last, number, bytes(data[offset:]))


def _action_response(data: bytes, invoke: int) -> ActionResponse:
    if len(data) < 5:
        raise DlmsProtocolError("ACTION-Response-Normal too short")
    result = data[3]
    if data[4] == 0x00:
        if len(data) != 5:
            raise DlmsProtocolError("ACTION-Response-Normal: bytes after the result")
        return ActionResponse(invoke, result)
    if data[4] != 0x01 or len(data) < 7:
        raise DlmsProtocolError("ACTION-Response-Normal: bad return-parameters")
    if data[5] == 0x01:
        if len(data) != 7:
            raise DlmsProtocolError("ACTION-Response-Normal: bytes after the error")
        return ActionResponse(invoke, result, error=data[6])
    if data[5] != 0x00:
        raise DlmsProtocolError(f"ACTION-Response-Normal: result choice {data[5]}")
    return ActionResponse(invoke, result, _data_at(data, 6, "ACTION-Response"))
