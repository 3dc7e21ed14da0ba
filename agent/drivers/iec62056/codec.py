"""IEC 62056-21 (ed. 1.0, 2002) protocol mode C, data readout, sans-IO.

Implements, of IEC 62056-21:2002:
  6.3.1  request message          ``/ ? [device address] ! CR LF``
  6.3.2  identification message   ``/ XXX Z [\\W ...] identification CR LF``
         (XXX manufacturer, Z the highest baud rate the meter offers)
  6.3.3  acknowledgement/option select ``ACK V Z Y CR LF`` (V protocol control
         '0' normal, Z the chosen baud rate, Y mode '0' data readout)
  6.3.5  data message             ``STX data-block ! CR LF ETX BCC``
  6.3.14 block check character    XOR of every byte after STX up to and
                                  including ETX
  6.3.13 break                    ``SOH B 0 ETX BCC`` (server side: ends a session)
  6.4.3  protocol mode C flow, with Table 1's baud rate characters
         ('0' 300 ... '6' 19200 baud)
  6.5    data sets ``address(value*unit)``; a data line may hold several,
         and a set may carry further ``(value)`` groups
This module does no I/O: bytes in through ``receive_data``, events out of
``next_event`` (the h11 pattern), messages to bytes with the ``encode_*``
functions. Quantities in contract units come from ``obis.py``.

Resync. Every reader keeps one buffer and hunts for a message's first
character ('/', ACK, SOH, STX); bytes before it are dropped
(``skipped_bytes``). A candidate that is not a valid message drops ONE byte
and hunting goes on (the real message may start inside it). A data message
whose BCC fails counts in ``checksum_failures`` and is dropped the same way;
``IecChecksumError`` is raised once the line has been silent
(``receive_data(b"")``) or the caller's deadline passed, because until then
a good copy may still follow. Bytes after a taken message are never parsed
(``trailing_data``).

Bounds (and what happens at them): an identification line longer than
``MAX_IDENT_BYTES``, a data block longer than ``MAX_DATA_BYTES`` and a request
longer than ``MAX_REQUEST_BYTES`` are no candidates (one byte dropped);
more than ``MAX_SKIPPED_BYTES`` dropped raises ``IecProtocolError`` (a flooded
line).

Invariant (fuzzed in the tests): whatever bytes arrive, ``next_event``
returns an event or NEED_DATA, or raises ``IecProtocolError`` (or a
subclass) - nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, NoReturn

from agent.drivers.sansio import NEED_DATA, NeedData
from agent.errors import ChecksumError, ProtocolError

SOH: Final = 0x01
STX: Final = 0x02
ETX: Final = 0x03
ACK: Final = 0x06
NAK: Final = 0x15
CRLF: Final = b"\r\n"

# Table 1, protocol mode C: baud rate character -> baud rate.
BAUD_RATES: Final = {"0": 300, "1": 600, "2": 1200, "3": 2400, "4": 4800, "5": 9600, "6": 19200}
INITIAL_BAUD: Final = 300  # 6.4.3: every mode C session starts at 300 baud

MAX_ADDRESS_CHARS: Final = 32  # 6.3.1: device address, at most 32 characters
MAX_IDENT_BYTES: Final = 64  # '/', XXX, Z, escapes and identification (16 per the standard)
MAX_REQUEST_BYTES: Final = 40
MAX_DATA_BYTES: Final = 16_384  # a readout of a few hundred data sets; beyond it: not ours
MAX_SKIPPED_BYTES: Final = 4_096
MAX_FIELD_CHARS: Final = 128  # address, value or unit of one data set

__all__ = [
    "BAUD_RATES",
    "NEED_DATA",
    "Break",
    "DataMessage",
    "DataSet",
    "DataReader",
    "IdentificationReader",
    "Identification",
    "IecChecksumError",
    "IecIncompleteError",
    "IecProtocolError",
    "OptionSelect",
    "RequestReader",
    "SignOn",
    "baud_char",
    "bcc",
    "encode_ack",
    "encode_break",
    "encode_data_message",
    "encode_identification",
    "encode_request",
    "parse_data_block",
]


class IecProtocolError(ProtocolError):
    """Bytes that are not a valid IEC 62056-21 message for what was expected."""


class IecChecksumError(IecProtocolError, ChecksumError):
    """A data message whose BCC does not match."""


class IecIncompleteError(IecProtocolError):
    """Nothing, or only part of a message, arrived before the deadline."""




@dataclass(frozen=True, slots=True)
class SignOn:
    """6.3.1 request message; ``address`` "" addresses whoever listens."""

    address: str


@dataclass(frozen=True, slots=True)
class OptionSelect:
    """6.3.3 acknowledgement/option select."""

    protocol: str  # V: '0' normal
    baud: str  # Z: a BAUD_RATES key
    mode: str  # Y: '0' data readout, '1' programming


@dataclass(frozen=True, slots=True)
class Break:
    """6.3.13 break: the session ends, the meter returns to its initial speed."""


@dataclass(frozen=True, slots=True)
class Identification:
    """6.3.2: ``manufacturer`` XXX, ``baud`` Z, ``escapes`` the \\W sequences."""

    manufacturer: str
    baud: str
    ident: str
    escapes: str = ""

    @property
    def baudrate(self) -> int:
        return BAUD_RATES[self.baud]


@dataclass(frozen=True, slots=True)
class DataSet:
    """One data set: ``address`` as sent (OBIS, maybe ``A-B:`` and ``*F``) and its
    ``(value, unit)`` groups; most sets have exactly one."""

    address: str
    groups: tuple[tuple[str, str], ...]

    @property
    def value(self) -> str:
        return self.groups[0][0]

    @property
    def unit(self) -> str:
        return self.groups[0][1]


@dataclass(frozen=True, slots=True)
class DataMessage:
    datasets: tuple[DataSet, ...]


def bcc(data: bytes) -> int:
    """6.3.14: XOR of the bytes (pass those after STX up to and including ETX)."""
    value = 0
    for byte in data:
        value ^= byte
    return value


def baud_char(baudrate: int) -> str:
    for char, rate in BAUD_RATES.items():
        if rate == baudrate:
            return char
    raise ValueError(f"{baudrate} baud has no mode C baud rate character")


def _printable(text: str, forbidden: str = "") -> bool:
    return all(0x20 <= ord(c) <= 0x7E and c not in forbidden for c in text)


def encode_request(address: str = "") -> bytes:
    if len(address) > MAX_ADDRESS_CHARS or not _printable(address, "/!?"):
        raise ValueError(f"invalid device address {address!r}")
    return b"/?" + address.encode("ascii") + b"!" + CRLF


def encode_ack(baud: str, mode: str = "0", protocol: str = "0") -> bytes:
    if baud not in BAUD_RATES or mode not in "0123456789" or protocol not in "012":
        raise ValueError(f"invalid option select {protocol!r} {baud!r} {mode!r}")
    return bytes([ACK]) + (protocol + baud + mode).encode("ascii") + CRLF


def encode_break() -> bytes:
    body = b"B0" + bytes([ETX])
    return bytes([SOH]) + body + bytes([bcc(body)])


def encode_identification(ident: Identification) -> bytes:
    if (len(ident.manufacturer) != 3 or not ident.manufacturer.isalpha()
            or ident.baud not in BAUD_RATES or not _printable(ident.ident, "/!")):
        raise ValueError(f"invalid identification {ident!r}")
    text = "/" + ident.manufacturer + ident.baud + ident.escapes + ident.ident
    return text.encode("ascii") + CRLF


def encode_data_message(datasets: tuple[DataSet, ...] | list[DataSet]) -> bytes:
    lines = []
    for ds in datasets:
        groups = "".join(f"({v}*{u})" if u else f"({v})" for v, u in ds.groups)
        lines.append(f"{ds.address}{groups}\r\n")
    body = ("".join(lines) + "!\r\n").encode("ascii") + bytes([ETX])
    return bytes([STX]) + body + bytes([bcc(body)])


def parse_data_block(block: bytes) -> tuple[DataSet, ...]:
    """6.5: the data block between STX and '!' CR LF, as data sets."""
    try:
        text = block.decode("ascii")
    except UnicodeDecodeError as exc:
        raise IecProtocolError("data block: non-ASCII byte") from exc
    datasets: list[DataSet] = []
    for line in text.split("\r\n"):
        pos = 0
        while pos < len(line):
            pos = _parse_dataset(line, pos, datasets)
    return tuple(datasets)


def _parse_dataset(line: str, pos: int, out: list[DataSet]) -> int:
    """One ``address(value*unit)(...)`` from ``pos``; returns where the next starts."""
    open_at = line.find("(", pos)
    if open_at < 0:
        raise IecProtocolError(f"data line {line[:40]!r}: text without '(value)'")
    address = line[pos:open_at]
    if len(address) > MAX_FIELD_CHARS or not _printable(address, "()/!"):
        raise IecProtocolError(f"data set address {address[:40]!r} is invalid")
    groups: list[tuple[str, str]] = []
    while open_at < len(line) and line[open_at] == "(":
        close_at = line.find(")", open_at)
        if close_at < 0:
            raise IecProtocolError(f"data set {address!r}: '(' without ')'")
        inner = line[open_at + 1 : close_at]
        value, _, unit = inner.partition("*")
        if (len(inner) > MAX_FIELD_CHARS or not _printable(inner, "()/!")
                or "*" in unit):
            raise IecProtocolError(f"data set {address!r}: invalid value {inner[:40]!r}")
        groups.append((value, unit))
        open_at = close_at + 1
    if not address and out:
        # A line of bare "(value)" groups continues the previous set (6.5 profiles).
        prev = out.pop()
        out.append(DataSet(prev.address, prev.groups + tuple(groups)))
    elif not address:
        raise IecProtocolError("data block starts with a value without an address")
    else:
        out.append(DataSet(address, tuple(groups)))
    return open_at


class _Reader:
    """The buffer every reader hunts in; silence and bounds as in the module doc."""

    _STARTS: bytes = b""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._silent = False
        self._trailing = b""
        self._done = False
        self.skipped_bytes = 0
        self.checksum_failures = 0
        self.invalid_candidates = 0
        self.bytes_received = 0

    @property
    def trailing_data(self) -> bytes:
        return self._trailing

    @property
    def in_message(self) -> bool:
        """True while a candidate has started and is not complete."""
        return not self._done and len(self._buf) > 0

    def receive_data(self, data: bytes) -> None:
        """Feed bytes; ``b""`` says the line is silent now."""
        if self._done:
            self._trailing += data
            return
        self.bytes_received += len(data)
        if data:
            self._buf += data
        else:
            self._silent = True

    def _hunt(self) -> None:
        starts = [i for i in (self._buf.find(c) for c in self._STARTS) if i >= 0]
        self._drop(min(starts) if starts else len(self._buf))

    def _drop(self, n: int) -> None:
        del self._buf[:n]
        self.skipped_bytes += n
        if self.skipped_bytes > MAX_SKIPPED_BYTES:
            raise IecProtocolError(f"{self.skipped_bytes} bytes without a message")

    def _reject(self) -> None:
        self.invalid_candidates += 1
        self._drop(1)

    def _take(self, n: int) -> bytes:
        frame = bytes(self._buf[:n])
        self._trailing = bytes(self._buf[n:])
        self._buf.clear()
        self._done = True
        return frame

    def _after_wait(self, what: str) -> NeedData:
        if self._silent:
            self._silent = False
            if self.checksum_failures and not self._buf:
                self._raise_checksum(what)
        return NEED_DATA

    def _raise_checksum(self, what: str) -> NoReturn:
        raise IecChecksumError(f"{what}: BCC mismatch ({self.checksum_failures} candidates)")

    def deadline_passed(self, what: str = "answer") -> NoReturn:
        """The caller gives up: raise what went wrong (checksum, incomplete, garbage)."""
        if self._done:
            raise IecProtocolError("deadline_passed() after the message was taken")
        if self.checksum_failures:
            self._raise_checksum(what)
        if self.bytes_received == 0:
            raise IecIncompleteError(f"{what}: no answer")
        if self._buf:
            raise IecIncompleteError(f"{what}: part of a message, then silence")
        raise IecProtocolError(f"{what}: {self.bytes_received} bytes, none formed a message")


class IdentificationReader(_Reader):
    """Client side: the meter's identification message (6.3.2)."""

    _STARTS = b"/"

    def next_event(self) -> Identification | NeedData:
        while not self._done:
            self._hunt()
            end = self._buf.find(CRLF)
            if end < 0:
                if len(self._buf) > MAX_IDENT_BYTES:
                    self._reject()
                    continue
                return self._after_wait("identification")
            ident = _parse_identification(bytes(self._buf[:end]))
            if ident is None:
                self._reject()
                continue
            self._take(end + 2)
            return ident
        raise IecProtocolError("identification already taken")


def _parse_identification(line: bytes) -> Identification | None:
    if len(line) < 5 or len(line) > MAX_IDENT_BYTES or line[:1] != b"/":
        return None
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        return None
    manufacturer, baud, rest = text[1:4], text[4], text[5:]
    if not manufacturer.isalpha() or baud not in BAUD_RATES:
        return None
    escapes = ""
    while rest.startswith("\\") and len(rest) >= 2:
        escapes, rest = escapes + rest[:2], rest[2:]
    if not rest or not _printable(rest, "/!"):
        return None
    return Identification(manufacturer, baud, rest, escapes)


class DataReader(_Reader):
    """Client side: the data message (6.3.5) that answers a data readout ACK."""

    _STARTS = bytes([STX])

    def next_event(self) -> DataMessage | NeedData:
        while not self._done:
            self._hunt()
            etx = self._buf.find(ETX)
            if etx < 0:
                if len(self._buf) > MAX_DATA_BYTES:
                    self._reject()
                    continue
                return self._after_wait("data message")
            if etx > MAX_DATA_BYTES:
                self._reject()
                continue
            if len(self._buf) < etx + 2:
                return self._after_wait("data message")  # the BCC is still coming
            body = bytes(self._buf[1 : etx + 1])
            if bcc(body) != self._buf[etx + 1]:
                self.checksum_failures += 1
                self._drop(1)
                continue
            self._take(etx + 2)
            block = body[:-1]
            if not block.endswith(b"!" + CRLF):
                raise IecProtocolError("data message does not end with '!' CR LF")
            return DataMessage(parse_data_block(block[:-3]))
        raise IecProtocolError("data message already taken")


class RequestReader(_Reader):
    """Server side: sign-on, option select and break, one after another.

    A complete but invalid candidate drops one byte and is counted; the
    stream goes on (a meter ignores what it cannot read).
    """

    _STARTS = bytes([ord("/"), ACK, SOH])

    def next_event(self) -> SignOn | OptionSelect | Break | NeedData:
        while True:
            self._hunt()
            if not self._buf:
                self._silent = False
                return NEED_DATA
            if self._buf[0] == SOH:
                if len(self._buf) < 5:
                    return self._wait()
                if bytes(self._buf[:5]) == encode_break():
                    del self._buf[:5]
                    return Break()
                self._reject()
                continue
            end = self._buf.find(CRLF)
            if end < 0:
                if len(self._buf) > MAX_REQUEST_BYTES:
                    self._reject()
                    continue
                return self._wait()
            event = _parse_request(bytes(self._buf[:end]))
            if event is None:
                self._reject()
                continue
            del self._buf[: end + 2]
            return event

    def _wait(self) -> NeedData:
        if self._silent:  # no message spans a silence: give the candidate up
            self._silent = False
            self._reject()
        return NEED_DATA


def _parse_request(line: bytes) -> SignOn | OptionSelect | None:
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        return None
    if text.startswith("/?") and text.endswith("!"):
        address = text[2:-1]
        if len(address) <= MAX_ADDRESS_CHARS and _printable(address, "/!?"):
            return SignOn(address)
        return None
    if len(text) == 4 and text[0] == chr(ACK) and text[2] in BAUD_RATES:
        if text[1] in "012" and text[3].isdigit():
            return OptionSelect(text[1], text[2], text[3])
    return None
