"""Modbus RTU framing, sans-IO.

Implements MODBUS over Serial Line V1.02 §2.5.1 (RTU frame: address, PDU,
CRC-16 low byte first; §2.5.1.2 and Appendix B for the CRC) and the PDUs of
MODBUS Application Protocol V1.1b3 §6.1-6.6, §6.11, §6.12 (function codes
1, 2, 3, 4, 5, 6, 15, 16) and §7 (exception responses, function | 0x80).
This module does no I/O: bytes in through ``receive_data``, frames out of
``next_event`` (the h11 pattern), frames to bytes with ``to_bytes``.

Frame lengths. RTU has no length field: a real master ends a frame on a
3.5-character silence. We instead derive the length from the bytes, which
makes the reader independent of timing:
  request fn 1-6            8 bytes
  request fn 15/16          9 + byte count (byte 6)
  response fn 1-4           5 + byte count (byte 2); the byte count must be
                            the one the request implies, else it is no candidate
  response fn 5/6/15/16     8 bytes
  exception (fn | 0x80)     5 bytes

Resync (how garbage is skipped). Both readers keep one buffer and repeat:
  1. Hunt: find the first offset whose header can start a frame. For the
     ``ResponseReader`` that is the request's unit followed by its function
     or function | 0x80; for the ``RequestReader`` a unit 0..247 followed by
     a supported function code. Bytes before it are dropped (``skipped_bytes``).
  2. Length: read the length from the header as in the table above. A header
     whose byte count is impossible is no frame: drop one byte, go to 1.
  3. Wait: fewer bytes than that length -> NEED_DATA (nothing is dropped).
  4. CRC: over the candidate. On a mismatch drop ONE byte (not the whole
     candidate: the real frame may start inside it), count the failure in
     ``checksum_failures``, go to 1. Nothing is raised yet, because a
     corrupted frame cannot be told from noise that happens to look like a
     header until the line has gone quiet.
  5. Match: a frame with a good CRC is taken. Content that contradicts the
     request (a write echo with another address or value, an exception code
     0) raises ``ModbusProtocolError``: the device itself sent it.
Bytes after the taken frame are never looked at (``trailing_data``), so
trailing garbage cannot corrupt the frame. Memory is bounded: the buffer only
holds bytes from a candidate's start, and a candidate is at most 256 bytes.

Silence and giving up. ``receive_data(b"")`` says the line is silent now
(the caller saw no byte for longer than an inter-character gap). No frame
spans a silence, so a waiting candidate is abandoned one byte at a time (a
shorter frame may start inside it); if a candidate had failed its CRC,
``next_event`` then raises ``ModbusChecksumError``: that was the answer, and
it was corrupted. Otherwise reading goes on (a late answer is still taken).
When the caller's timeout passes it calls ``deadline_passed()``, which
raises ``ModbusChecksumError`` (a candidate failed its CRC),
``ModbusIncompleteError`` (nothing arrived, or a frame started and never
finished) or ``ModbusProtocolError`` (bytes came, none could start a frame:
noise, wrong baud rate, another unit). Bound: a ``ResponseReader`` that has
skipped more than ``MAX_SKIPPED_BYTES`` raises ``ModbusProtocolError`` at
once (a flooded line).

Invariant (fuzzed in the tests): whatever bytes arrive, ``next_event``
returns a frame or NEED_DATA, or raises ``ModbusProtocolError`` (or a
subclass) - nothing else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final, NoReturn

from agent.drivers.sansio import NEED_DATA, NeedData
from agent.errors import ChecksumError, ProtocolError

__all__ = [
    "NEED_DATA",
    "ModbusChecksumError",
    "ModbusIncompleteError",
    "ModbusProtocolError",
    "Request",
    "RequestReader",
    "Response",
    "ResponseReader",
    "crc16",
    "encode_exception",
    "encode_response",
    "response_length",
]


class ModbusProtocolError(ProtocolError):
    """Bytes that are not a valid Modbus RTU frame for what was expected."""


class ModbusChecksumError(ModbusProtocolError, ChecksumError):
    """A frame whose CRC-16 does not match."""


class ModbusIncompleteError(ModbusProtocolError):
    """The line went quiet inside a frame, or before any byte arrived."""



READ_COILS: Final = 1
READ_DISCRETE_INPUTS: Final = 2
READ_HOLDING_REGISTERS: Final = 3
READ_INPUT_REGISTERS: Final = 4
WRITE_SINGLE_COIL: Final = 5
WRITE_SINGLE_REGISTER: Final = 6
WRITE_MULTIPLE_COILS: Final = 15
WRITE_MULTIPLE_REGISTERS: Final = 16

_BIT_READS: Final = frozenset({READ_COILS, READ_DISCRETE_INPUTS})
_WORD_READS: Final = frozenset({READ_HOLDING_REGISTERS, READ_INPUT_REGISTERS})
_SINGLE_WRITES: Final = frozenset({WRITE_SINGLE_COIL, WRITE_SINGLE_REGISTER})
_MULTI_WRITES: Final = frozenset({WRITE_MULTIPLE_COILS, WRITE_MULTIPLE_REGISTERS})
FUNCTIONS: Final = _BIT_READS | _WORD_READS | _SINGLE_WRITES | _MULTI_WRITES

# Quantity limits per function, Application Protocol V1.1b3 §6: they keep
# every ADU within the 256 bytes of Serial Line V1.02 §2.5.1.
MAX_COUNT: Final = {1: 2000, 2: 2000, 3: 125, 4: 125, 5: 1, 6: 1, 15: 1968, 16: 123}
MAX_UNIT: Final = 247  # 0 is broadcast; 248-255 are reserved
MAX_ADU_BYTES: Final = 256
# A ResponseReader that has dropped this many bytes without a frame gives up:
# ~4 full frames of noise is no slow device, it is a broken line.
MAX_SKIPPED_BYTES: Final = 1024

_COIL_ON: Final = 0xFF00


def crc16_bitwise(data: bytes) -> int:
    """Modbus CRC-16 (reflected poly 0xA001, init 0xFFFF) a bit at a time, as the spec
    (MODBUS over Serial Line V1.02 §6.2.2) gives it: the reference for ``crc16``."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def _crc_steps(value: int, steps: int) -> int:
    for _ in range(steps):
        value = (value >> 1) ^ 0xA001 if value & 1 else value >> 1
    return value


# crc16_bitwise's steps as lookups (every frame in and out is checked, so this is on
# the bus's path per reading). Two bytes at a time: the register XOR the next word (low
# byte first) goes through sixteen steps, which are linear in it, so one table for its
# low byte and one for its high byte do it; an odd last byte takes eight steps.
_CRC_TABLE: Final = tuple(_crc_steps(b, 8) for b in range(256))
_CRC_LOW: Final = tuple(_crc_steps(b, 16) for b in range(256))
_CRC_HIGH: Final = tuple(_crc_steps(b << 8, 16) for b in range(256))
_LE_WORDS: Final = tuple(f"<{n}H" for n in range(MAX_ADU_BYTES // 2 + 1))  # formatted once


def crc16(data: bytes) -> int:
    """Modbus CRC-16 (reflected poly 0xA001, init 0xFFFF); sent low byte first."""
    crc = 0xFFFF
    low, high = _CRC_LOW, _CRC_HIGH
    n = len(data)
    words = _LE_WORDS[n >> 1] if n <= MAX_ADU_BYTES else f"<{n >> 1}H"
    for word in struct.unpack_from(words, data):
        crc ^= word
        crc = low[crc & 0xFF] ^ high[crc >> 8]
    if n & 1:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ data[-1]) & 0xFF]
    return crc


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<H", crc16(body))


def _pack_bits(bits: tuple[int, ...]) -> bytes:
    # §6.1: the first coil is the LSB of the first byte; unused high bits are 0.
    out = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def _unpack_bits(data: bytes, count: int) -> tuple[int, ...]:
    return tuple((data[i // 8] >> (i % 8)) & 1 for i in range(count))


# struct formats of 0..125 big-endian words, formatted once (every answer is unpacked).
_WORDS: Final = tuple(f">{n}H" for n in range(MAX_COUNT[READ_HOLDING_REGISTERS] + 1))


def _unpack_words(data: bytes) -> tuple[int, ...]:
    return struct.unpack(_WORDS[len(data) // 2], data)


def _byte_count(function: int, count: int) -> int:
    return (count + 7) // 8 if function in (1, 2, 15) else 2 * count


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _check_values(function: int, values: tuple[int, ...]) -> None:
    # min and max rather than a generator over every value: a read's answer has up to
    # 125 of them, and no values (a read, a write-multiple echo) need no check.
    if values:
        limit = 1 if function in (1, 2, 5, 15) else 0xFFFF
        if not (0 <= min(values) and max(values) <= limit):
            raise ValueError(f"fn {function}: values out of range 0..{limit}")


def _check_range(function: int, address: int, count: int) -> None:
    if not 1 <= count <= MAX_COUNT[function]:
        raise ValueError(f"fn {function}: count outside 1..{MAX_COUNT[function]}")
    _check(0 <= address and address + count <= 0x10000, "address range")


@dataclass(frozen=True, slots=True)
class Request:
    """A master's request. ``count`` is filled in for writes (1, or len(values)).

    Reads: ``count`` items from ``address``, ``values`` empty. Fn 5: one
    value, 1 = ON (0xFF00). Fn 6: one 16-bit value. Fn 15/16: the values.
    Invalid field values raise ``ValueError`` (a programming error); the
    readers validate wire bytes first and raise ``ModbusProtocolError``.
    """

    unit: int
    function: int
    address: int
    count: int = 0
    values: tuple[int, ...] = ()
    # to_bytes's frame, kept from its first call: a meter sends the same requests each
    # reading. Not a value of the request (not compared, not shown).
    _frame: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Plain ifs, not _check: a message is formatted only when it is raised.
        fn = self.function
        if fn not in FUNCTIONS:
            raise ValueError(f"unsupported function {fn}")
        if not 0 <= self.unit <= MAX_UNIT:
            raise ValueError(f"unit {self.unit} outside 0..{MAX_UNIT}")
        if fn in _SINGLE_WRITES or fn in _MULTI_WRITES:
            object.__setattr__(self, "count", len(self.values))
            _check_values(fn, self.values)
        else:
            _check(self.unit != 0, "a read cannot be broadcast (unit 0)")
            _check(not self.values, "a read request carries no values")
        _check_range(fn, self.address, self.count)

    def to_bytes(self) -> bytes:
        frame = self._frame
        if frame is None:
            frame = self._encode()
            object.__setattr__(self, "_frame", frame)
        return frame

    def _encode(self) -> bytes:
        head = struct.pack(">BBH", self.unit, self.function, self.address)
        if self.function == WRITE_SINGLE_COIL:
            body = head + struct.pack(">H", _COIL_ON if self.values[0] else 0)
        elif self.function == WRITE_SINGLE_REGISTER:
            body = head + struct.pack(">H", self.values[0])
        elif self.function == WRITE_MULTIPLE_COILS:
            data = _pack_bits(self.values)
            body = head + struct.pack(">HB", self.count, len(data)) + data
        elif self.function == WRITE_MULTIPLE_REGISTERS:
            data = struct.pack(f">{self.count}H", *self.values)
            body = head + struct.pack(">HB", self.count, len(data)) + data
        else:
            body = head + struct.pack(">H", self.count)
        return _with_crc(body)


@dataclass(frozen=True, slots=True)
class Response:
    """A device's answer. ``function`` is the request's code, also for exceptions.

    Reads: ``values`` are the items read (coils 0/1, registers 16-bit) and
    ``address``/``count`` are the request's (they are not on the wire). Fn 5/6:
    the echoed address and one value. Fn 15/16: the echoed address and count.
    Exception: ``exception_code`` is set, ``to_bytes`` sends function | 0x80,
    and address/count/values are zero/empty (not on the wire).
    """

    unit: int
    function: int
    address: int = 0
    count: int = 0
    values: tuple[int, ...] = ()
    exception_code: int | None = None

    def __post_init__(self) -> None:
        fn = self.function  # plain ifs: see Request
        if fn not in FUNCTIONS:
            raise ValueError(f"unsupported function {fn}")
        if not 1 <= self.unit <= MAX_UNIT:
            raise ValueError(f"unit {self.unit} outside 1..{MAX_UNIT}")
        if self.exception_code is not None:
            _check(1 <= self.exception_code <= 0xFF, "exception code outside 1..255")
            _check(not self.values and self.count == 0 and self.address == 0, "exception: no data")
            return
        if fn in _MULTI_WRITES:
            _check(not self.values, "a write-multiple response carries no values")
        else:
            object.__setattr__(self, "count", len(self.values))
            _check_values(fn, self.values)
        _check_range(fn, self.address, self.count)

    @property
    def is_exception(self) -> bool:
        return self.exception_code is not None

    def to_bytes(self) -> bytes:
        fn = self.function
        if self.exception_code is not None:
            return _with_crc(struct.pack(">BBB", self.unit, fn | 0x80, self.exception_code))
        if fn in _BIT_READS:
            data = _pack_bits(self.values)
        elif fn in _WORD_READS:
            data = struct.pack(f">{self.count}H", *self.values)
        elif fn == WRITE_SINGLE_COIL:
            value = _COIL_ON if self.values[0] else 0
            return _with_crc(struct.pack(">BBHH", self.unit, fn, self.address, value))
        elif fn == WRITE_SINGLE_REGISTER:
            return _with_crc(struct.pack(">BBHH", self.unit, fn, self.address, self.values[0]))
        else:
            return _with_crc(struct.pack(">BBHH", self.unit, fn, self.address, self.count))
        return _with_crc(struct.pack(">BBB", self.unit, fn, len(data)) + data)


def response_length(request: Request) -> int:
    """Bytes of the normal (non-exception) response to ``request``."""
    if request.function in _BIT_READS or request.function in _WORD_READS:
        return 5 + _byte_count(request.function, request.count)
    return 8


def encode_response(request: Request, values: tuple[int, ...] = ()) -> bytes:
    """The normal response to ``request``: ``values`` for reads; writes echo (no values)."""
    fn = request.function
    if fn in _BIT_READS or fn in _WORD_READS:
        _check(len(values) == request.count, "a read response needs exactly count values")
        response = Response(request.unit, fn, request.address, request.count, tuple(values))
    elif fn in _SINGLE_WRITES:
        _check(not values, "a write response echoes the request; pass no values")
        response = Response(request.unit, fn, request.address, 1, request.values)
    else:
        _check(not values, "a write response echoes the request; pass no values")
        response = Response(request.unit, fn, request.address, request.count)
    return response.to_bytes()


def encode_exception(request: Request, code: int) -> bytes:
    """The exception response (function | 0x80, ``code``) to ``request``."""
    return Response(request.unit, request.function, exception_code=code).to_bytes()


class _Buffer:
    """The byte buffer both readers hunt in, with the position of the last silence."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._silence_at: int | None = None  # bytes before the last silence still buffered
        self._silence_reached = False  # every byte before a silence has been looked at
        self.skipped_bytes = 0
        self.checksum_failures = 0
        self.abandoned_candidates = 0

    def _feed(self, data: bytes) -> None:
        if data:
            self._buf += data
        elif self._buf:
            self._silence_at = len(self._buf)
        else:
            self._silence_reached = True

    def _drop(self, n: int) -> None:
        del self._buf[:n]
        self.skipped_bytes += n
        if self._silence_at is not None:
            self._silence_at -= n
            if self._silence_at <= 0:
                self._silence_at = None
                self._silence_reached = True

    def _take(self, length: int) -> bytes | None:
        """The candidate of ``length`` at the head if complete with a good CRC, else None.

        None with the buffer unchanged means wait; otherwise one byte was dropped.
        """
        buf = self._buf
        if self._silence_at is not None and length > self._silence_at:
            self.abandoned_candidates += 1  # no frame spans a silence
            self._drop(1)
            return None
        if len(buf) < length:
            return None
        frame = bytes(buf[:length])
        # A frame followed by its CRC (low byte first) has CRC 0, since Modbus's CRC-16
        # has no final XOR: the same test as comparing the last two bytes, without slices.
        if crc16(frame):
            self.checksum_failures += 1
            self._drop(1)
            return None
        del buf[:length]
        if self._silence_at is not None:
            self._silence_at -= length
            if self._silence_at <= 0:
                self._silence_at, self._silence_reached = None, True
        return frame


class ResponseReader(_Buffer):
    """Reads the one response to ``request`` from a byte stream (resync: see module doc)."""

    def __init__(self, request: Request) -> None:
        if request.unit == 0:
            raise ValueError("a broadcast request gets no response")
        super().__init__()
        self._request = request
        self._headers = (request.function, request.function | 0x80)
        self._length = response_length(request)
        # A read's answer names its byte count (byte 2); other answers have none.
        reads = request.function in _BIT_READS or request.function in _WORD_READS
        self._count_byte = _byte_count(request.function, request.count) if reads else None
        self._result: Response | None = None
        self._trailing = b""
        self.bytes_received = 0

    @property
    def trailing_data(self) -> bytes:
        """Bytes that arrived after the taken frame (never parsed)."""
        return self._trailing

    @property
    def in_frame(self) -> bool:
        """True while a candidate frame has started but is not complete."""
        return self._result is None and len(self._buf) > 0

    def receive_data(self, data: bytes) -> None:
        """Feed bytes; ``b""`` says the line is silent now (no frame spans a silence)."""
        if self._result is not None:
            self._trailing += data
            return
        self.bytes_received += len(data)
        self._feed(data)

    def next_event(self) -> Response | NeedData:
        if self._result is not None:
            return self._result  # single use: the same frame again, trailing data untouched
        while self._result is None:
            before = len(self._buf)
            frame = self._step()
            if frame is not None:
                self._trailing = bytes(self._buf)
                self._buf.clear()
                self._result = self._decode(frame)
            elif len(self._buf) == before:
                break  # waiting for bytes
        if self._result is not None:
            return self._result
        if self.skipped_bytes > MAX_SKIPPED_BYTES:
            raise ModbusProtocolError(f"{self.skipped_bytes} bytes without a frame")
        if self._silence_reached:
            self._silence_reached = False
            if self.checksum_failures:
                self._raise_checksum()  # the answer came, and it was corrupted
        return NEED_DATA

    def deadline_passed(self) -> NoReturn:
        """The caller gives up waiting: raise what went wrong.

        ``ModbusChecksumError`` if a candidate failed its CRC;
        ``ModbusIncompleteError`` if nothing arrived or a frame started and
        never finished; ``ModbusProtocolError`` if bytes came but none could
        start a frame (noise, wrong baud rate, another unit's traffic).
        """
        if self._result is not None:
            raise ModbusProtocolError("deadline_passed() after the frame was taken")
        if self.checksum_failures:
            self._raise_checksum()
        what = self._what()
        if self._buf or self.abandoned_candidates:
            raise ModbusIncompleteError(f"{what}: part of a frame, then silence")
        if self.bytes_received == 0:
            raise ModbusIncompleteError(f"{what}: no answer")
        raise ModbusProtocolError(f"{what}: {self.bytes_received} bytes, none formed a frame")

    def _what(self) -> str:
        return f"unit {self._request.unit} fn {self._request.function}"

    def _raise_checksum(self) -> NoReturn:
        raise ModbusChecksumError(
            f"{self._what()}: CRC mismatch ({self.checksum_failures} candidates)"
        )

    def _step(self) -> bytes | None:
        """One hunt/length/CRC step: a frame, or None (a byte dropped, or wait)."""
        buf, unit = self._buf, self._request.unit
        if len(buf) < 2 or buf[0] != unit or buf[1] not in self._headers:
            self._drop(_find_header(buf, unit, self._headers))  # (a header at 0 needs no hunt)
        if len(buf) < 3:
            return None
        if buf[1] & 0x80:
            return self._take(5)
        if self._count_byte is not None and buf[2] != self._count_byte:
            self._drop(1)  # impossible byte count: not our frame's header
            return None
        return self._take(self._length)

    def _decode(self, frame: bytes) -> Response:
        req = self._request
        fn = req.function
        if frame[1] & 0x80:
            if frame[2] == 0:
                raise ModbusProtocolError(f"{self._what()}: exception code 0")
            return Response(req.unit, fn, exception_code=frame[2])
        if fn in _BIT_READS:
            return _read_answer(req, _unpack_bits(frame[3:-2], req.count))
        if fn in _WORD_READS:
            return _read_answer(req, struct.unpack_from(_WORDS[req.count], frame, 3))
        address, value = struct.unpack(">HH", frame[2:6])
        if fn == WRITE_SINGLE_COIL:
            expected = _COIL_ON if req.values[0] else 0
        elif fn == WRITE_SINGLE_REGISTER:
            expected = req.values[0]
        else:
            expected = req.count
        if address != req.address or value != expected:
            raise ModbusProtocolError(
                f"{self._what()}: echo {address:#06x}/{value:#06x}, "
                f"expected {req.address:#06x}/{expected:#06x}"
            )
        if fn in _SINGLE_WRITES:
            return Response(req.unit, fn, req.address, 1, req.values)
        return Response(req.unit, fn, req.address, req.count)


def _read_answer(request: Request, values: tuple[int, ...]) -> Response:
    """``Response(unit, fn, address, count, values)`` of a read, built without its checks
    (2/3 of its cost, on every reading's path): the fields are the request's, checked
    when it was built, and ``values`` are ``count`` bits or 16-bit words unpacked from
    the frame, so every check would pass."""
    response = object.__new__(Response)
    set_field = object.__setattr__  # what a frozen dataclass's __init__ does
    set_field(response, "unit", request.unit)
    set_field(response, "function", request.function)
    set_field(response, "address", request.address)
    set_field(response, "count", request.count)
    set_field(response, "values", values)
    set_field(response, "exception_code", None)
    return response


def _find_header(buf: bytearray, unit: int, functions: tuple[int, ...]) -> int:
    """Offset of the first possible header (a lone last byte may be one); len(buf) if none."""
    i = buf.find(unit)
    while 0 <= i < len(buf) - 1 and buf[i + 1] not in functions:
        i = buf.find(unit, i + 1)
    return len(buf) if i < 0 else i


class RequestReader(_Buffer):
    """Reads a stream of requests (server side; resync: see module doc).

    A slave ignores a frame with a bad CRC (Serial Line V1.02 §2.4.1), so
    CRC failures are only counted. A CRC-good frame whose fields are invalid
    (count 0 or over the limit, coil value not 0x0000/0xFF00) is consumed,
    then ``ModbusProtocolError`` is raised; the next call goes on with the
    bytes after it. Frames of function codes outside 1-6, 15, 16 cannot be
    delimited without timing and are skipped as noise. ``receive_data(b"")``
    says the line was silent (t3.5 or more): a candidate that would span it
    is given up, one byte at a time.
    """

    def receive_data(self, data: bytes) -> None:
        self._feed(data)

    def next_event(self) -> Request | NeedData:
        while True:
            before = len(self._buf)
            self._drop(_find_request_header(self._buf))
            length = self._candidate_length()
            frame = self._take(length) if length else None
            if frame is not None:
                return _decode_request(frame)
            if len(self._buf) == before:
                self._silence_reached = False
                return NEED_DATA

    def _candidate_length(self) -> int:
        """Length of the frame at the buffer head (8 until a byte count says more); 0: none."""
        buf = self._buf
        if len(buf) < 7 or buf[1] not in _MULTI_WRITES:
            return 8
        fn = buf[1]
        count = struct.unpack(">H", buf[4:6])[0]
        if not 1 <= count <= MAX_COUNT[fn] or buf[6] != _byte_count(fn, count):
            self._drop(1)
            return 0
        return 9 + buf[6]


def _find_request_header(buf: bytearray) -> int:
    for i in range(len(buf)):
        if buf[i] <= MAX_UNIT and (i == len(buf) - 1 or buf[i + 1] in FUNCTIONS):
            return i
    return len(buf)


def _decode_request(frame: bytes) -> Request:
    unit, fn, address, field = struct.unpack(">BBHH", frame[:6])
    where = f"request unit {unit} fn {fn}"
    if fn in _SINGLE_WRITES:
        if fn == WRITE_SINGLE_COIL and field not in (0, _COIL_ON):
            raise ModbusProtocolError(f"{where}: coil value {field:#06x} is not 0x0000/0xFF00")
        values: tuple[int, ...] = (int(field == _COIL_ON),) if fn == 5 else (field,)
        count = 1
    else:
        count = field
        if not 1 <= count <= MAX_COUNT[fn]:
            raise ModbusProtocolError(f"{where}: count {count} outside 1..{MAX_COUNT[fn]}")
        data = frame[7:-2]
        values = ()
        if fn == WRITE_MULTIPLE_COILS:
            values = _unpack_bits(data, count)
        elif fn == WRITE_MULTIPLE_REGISTERS:
            values = _unpack_words(data)
    if address + count > 0x10000:
        raise ModbusProtocolError(f"{where}: address {address} + count {count} past 0xFFFF")
    if unit == 0 and fn not in _SINGLE_WRITES and fn not in _MULTI_WRITES:
        raise ModbusProtocolError(f"{where}: a read cannot be broadcast")
    if fn in _SINGLE_WRITES or fn in _MULTI_WRITES:
        return Request(unit, fn, address, values=values)
    return Request(unit, fn, address, count)
