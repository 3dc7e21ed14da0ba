"""A-XDR encoding of COSEM data, sans-IO.

Implements the ``Data`` CHOICE of IEC 62056-6-2:2017 §4.1.5 (DLMS UA Blue
Book, "common data types") in its A-XDR encoding (IEC 61334-6, as the Green
Book's xDLMS APDUs carry it): a one-byte tag, then the value. Fixed-size
integers are big-endian two's complement; octet-string, visible-string,
utf8-string, array and structure carry a BER-style length (short form below
0x80, else 0x81..0x84 and 1..4 length bytes). date-time (tag 25, also the
12-byte octet-string registers use) is year(2) month day weekday hour minute
second hundredths deviation(2, signed, minutes from local time to UTC, so
UTC = local + deviation; 0x8000 = not specified) clock-status (Blue Book
§4.1.6.1).

Supported tags: null-data 0, array 1, structure 2, boolean 3, bit-string 4,
double-long 5, double-long-unsigned 6, octet-string 9, visible-string 10,
utf8-string 12, integer 15, long 16, unsigned 17, long-unsigned 18, long64 20,
long64-unsigned 21, enum 22, float32 23, float64 24, date-time 25. Not
supported (raise): bcd 13, compact-array 19, date 26, time 27, don't-care 255.

Bounds: a length over MAX_LENGTH and nesting deeper than MAX_DEPTH raise
``DlmsProtocolError`` before anything is allocated for them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, TypeAlias

from agent.drivers.dlms.errors import DlmsProtocolError

# An APDU is at most 65535 bytes (max PDU size is an Unsigned16), so no
# length inside one can be larger.
MAX_LENGTH: Final = 0xFFFF
MAX_DEPTH: Final = 16  # COSEM profiles nest 3-4 deep; 16 stops a crafted recursion
NOT_SPECIFIED_DEVIATION: Final = -0x8000


class Tag(IntEnum):
    NULL = 0
    ARRAY = 1
    STRUCTURE = 2
    BOOLEAN = 3
    BIT_STRING = 4
    DOUBLE_LONG = 5
    DOUBLE_LONG_UNSIGNED = 6
    OCTET_STRING = 9
    VISIBLE_STRING = 10
    UTF8_STRING = 12
    INTEGER = 15
    LONG = 16
    UNSIGNED = 17
    LONG_UNSIGNED = 18
    LONG64 = 20
    LONG64_UNSIGNED = 21
    ENUM = 22
    FLOAT32 = 23
    FLOAT64 = 24
    DATE_TIME = 25


# tag -> (struct format, min, max) for the fixed-size integers.
_INTS: Final = {
    Tag.INTEGER: (">b", -0x80, 0x7F),
    Tag.LONG: (">h", -0x8000, 0x7FFF),
    Tag.DOUBLE_LONG: (">i", -0x8000_0000, 0x7FFF_FFFF),
    Tag.LONG64: (">q", -0x8000_0000_0000_0000, 0x7FFF_FFFF_FFFF_FFFF),
    Tag.UNSIGNED: (">B", 0, 0xFF),
    Tag.ENUM: (">B", 0, 0xFF),
    Tag.LONG_UNSIGNED: (">H", 0, 0xFFFF),
    Tag.DOUBLE_LONG_UNSIGNED: (">I", 0, 0xFFFF_FFFF),
    Tag.LONG64_UNSIGNED: (">Q", 0, 0xFFFF_FFFF_FFFF_FFFF),
}
_FLOATS: Final = {Tag.FLOAT32: ">f", Tag.FLOAT64: ">d"}
_LISTS: Final = (Tag.ARRAY, Tag.STRUCTURE)


@dataclass(frozen=True, slots=True)
class DateTime:
    """A COSEM date-time; 0xFF / 0xFFFF fields mean "not specified"."""

    year: int
    month: int
    day: int
    hour: int
    minute: int
    second: int
    hundredths: int = 0
    deviation_min: int = NOT_SPECIFIED_DEVIATION
    weekday: int = 0xFF
    clock_status: int = 0xFF

    def to_bytes(self) -> bytes:
        return struct.pack(
            ">HBBBBBBBhB",
            self.year,
            self.month,
            self.day,
            self.weekday,
            self.hour,
            self.minute,
            self.second,
            self.hundredths,
            self.deviation_min,
            self.clock_status,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> DateTime:
        if len(data) != 12:
            raise DlmsProtocolError(f"date-time is 12 bytes, got {len(data)}")
        year, month, day, weekday, hour, minute, second, hundredths, dev, status = struct.unpack(
            ">HBBBBBBBhB", data
        )
        return cls(year, month, day, hour, minute, second, hundredths, dev, weekday, status)

    @classmethod
    def from_unix(cls, t_s: int, deviation_min: int) -> DateTime:
        """The local time of Unix second ``t_s`` in a zone whose local = UTC - deviation."""
        days, rest = divmod(t_s - deviation_min * 60, 86_400)
        year, month, day = _civil_from_days(days)
        return cls(
            year,
            month,
            day,
            rest // 3600,
            rest // 60 % 60,
            rest % 60,
            0,
            deviation_min,
            (days + 3) % 7 + 1,  # 1970-01-01 was a Thursday; Monday is 1
            0,
        )

    def to_unix(self, default_deviation_min: int = 0) -> int:
        """Unix seconds; a missing deviation takes ``default_deviation_min``."""
        if self.year == 0xFFFF or 0xFF in (self.month, self.day, self.hour, self.minute):
            raise DlmsProtocolError(f"date-time {self} does not name one instant")
        if not (1 <= self.month <= 12 and 1 <= self.day <= 31 and self.hour < 24):
            raise DlmsProtocolError(f"date-time {self} out of range")
        if self.minute > 59 or (self.second != 0xFF and self.second > 59):
            raise DlmsProtocolError(f"date-time {self} out of range")
        second = 0 if self.second == 0xFF else self.second
        deviation = self.deviation_min
        if deviation == NOT_SPECIFIED_DEVIATION:
            deviation = default_deviation_min
        local_s = (
            _days_from_civil(self.year, self.month, self.day) * 86_400
            + self.hour * 3600
            + self.minute * 60
            + second
        )
        return local_s + deviation * 60


def _days_from_civil(year: int, month: int, day: int) -> int:
    # Howard Hinnant's days_from_civil: no datetime import, so it runs anywhere.
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


def _civil_from_days(days: int) -> tuple[int, int, int]:
    days += 719_468
    era = days // 146_097
    doe = days - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


Value: TypeAlias = "None | bool | int | float | bytes | str | tuple[Data, ...] | DateTime"


@dataclass(frozen=True, slots=True)
class Data:
    """One COSEM value with its type. Bit-strings are (bit count, bytes) in ``value``/``bits``."""

    tag: Tag
    value: Value = None
    bits: int = 0  # bit-string only: the number of bits

    def __post_init__(self) -> None:
        tag, value = self.tag, self.value
        if tag in _INTS:
            _, low, high = _INTS[tag]
            if type(value) is not int or not low <= value <= high:
                raise ValueError(f"{tag.name} holds {low}..{high}, got {value!r}")
        elif tag in _FLOATS:
            if type(value) is not float:
                raise ValueError(f"{tag.name} holds a float, got {value!r}")
        elif tag is Tag.BOOLEAN:
            if type(value) is not bool:
                raise ValueError(f"boolean holds a bool, got {value!r}")
        elif tag in (Tag.OCTET_STRING, Tag.BIT_STRING):
            if type(value) is not bytes:
                raise ValueError(f"{tag.name} holds bytes, got {value!r}")
            if tag is Tag.BIT_STRING and len(value) != (self.bits + 7) // 8:
                raise ValueError("bit-string: bytes do not match the bit count")
        elif tag in (Tag.VISIBLE_STRING, Tag.UTF8_STRING):
            if type(value) is not str:
                raise ValueError(f"{tag.name} holds a str, got {value!r}")
            if tag is Tag.VISIBLE_STRING and not value.isascii():
                raise ValueError("visible-string holds ASCII only")
        elif tag in _LISTS:
            if type(value) is not tuple or not all(isinstance(v, Data) for v in value):
                raise ValueError(f"{tag.name} holds a tuple of Data, got {value!r}")
        elif tag is Tag.DATE_TIME:
            if not isinstance(value, DateTime):
                raise ValueError(f"date-time holds a DateTime, got {value!r}")
        elif value is not None:
            raise ValueError(f"null-data holds None, got {value!r}")

    @property
    def items(self) -> tuple[Data, ...]:
        """The elements of an array or structure (DlmsProtocolError for other types)."""
        if self.tag not in _LISTS or not isinstance(self.value, tuple):
            raise DlmsProtocolError(f"expected an array or structure, got {self.tag.name}")
        return self.value

    @property
    def integer(self) -> int:
        """The value of any integer type or enum (DlmsProtocolError otherwise)."""
        if self.tag not in _INTS or type(self.value) is not int:
            raise DlmsProtocolError(f"expected an integer, got {self.tag.name}")
        return self.value

    @property
    def octets(self) -> bytes:
        if self.tag is not Tag.OCTET_STRING or type(self.value) is not bytes:
            raise DlmsProtocolError(f"expected an octet-string, got {self.tag.name}")
        return self.value

    def to_bytes(self) -> bytes:
        return encode(self)


def structure(*items: Data) -> Data:
    return Data(Tag.STRUCTURE, tuple(items))


def array(items: list[Data] | tuple[Data, ...]) -> Data:
    return Data(Tag.ARRAY, tuple(items))


def encode_length(length: int) -> bytes:
    """BER-style length: short form below 0x80, else 0x8N and N bytes."""
    if length < 0:
        raise ValueError("negative length")
    if length < 0x80:
        return bytes((length,))
    size = (length.bit_length() + 7) // 8
    return bytes((0x80 | size,)) + length.to_bytes(size, "big")


def decode_length(data: bytes, offset: int) -> tuple[int, int]:
    """(length, offset after it); DlmsProtocolError if truncated or over MAX_LENGTH."""
    if offset >= len(data):
        raise DlmsProtocolError("length expected, data ends")
    first = data[offset]
    if first < 0x80:
        return first, offset + 1
    size = first & 0x7F
    if not 1 <= size <= 4 or offset + 1 + size > len(data):
        raise DlmsProtocolError(f"bad length prefix {first:#04x}")
    length = int.from_bytes(data[offset + 1 : offset + 1 + size], "big")
    if length > MAX_LENGTH:
        raise DlmsProtocolError(f"length {length} over {MAX_LENGTH}")
    return length, offset + 1 + size


def encode(data: Data) -> bytes:
    tag, value = data.tag, data.value
    head = bytes((tag,))
    if tag in _INTS:
        return head + struct.pack(_INTS[tag][0], value)
    if tag in _FLOATS:
        return head + struct.pack(_FLOATS[tag], value)
    if tag is Tag.BOOLEAN:
        return head + (b"\x01" if value else b"\x00")
    if tag is Tag.OCTET_STRING and isinstance(value, bytes):
        return head + encode_length(len(value)) + value
    if tag is Tag.BIT_STRING and isinstance(value, bytes):
        return head + encode_length(data.bits) + value
    if tag is Tag.VISIBLE_STRING and isinstance(value, str):
        return head + encode_length(len(value)) + value.encode("ascii")
    if tag is Tag.UTF8_STRING and isinstance(value, str):
        raw = value.encode("utf-8")
        return head + encode_length(len(raw)) + raw
    if tag in _LISTS and isinstance(value, tuple):
        return head + encode_length(len(value)) + b"".join(encode(v) for v in value)
    if tag is Tag.DATE_TIME and isinstance(value, DateTime):
        return head + value.to_bytes()
    return head  # null-data


def decode(data: bytes) -> Data:
    """Exactly one value: trailing bytes are an error."""
    value, offset = decode_prefix(data, 0)
    if offset != len(data):
        raise DlmsProtocolError(f"{len(data) - offset} bytes after the A-XDR value")
    return value


def decode_prefix(data: bytes, offset: int, depth: int = 0) -> tuple[Data, int]:
    """The value starting at ``offset`` and the offset after it."""
    if depth > MAX_DEPTH:
        raise DlmsProtocolError(f"A-XDR nesting deeper than {MAX_DEPTH}")
    if offset >= len(data):
        raise DlmsProtocolError("A-XDR value expected, data ends")
    raw_tag = data[offset]
    offset += 1
    try:
        tag = Tag(raw_tag)
    except ValueError:
        raise DlmsProtocolError(f"unsupported A-XDR tag {raw_tag}") from None
    if tag in _INTS:
        fmt = _INTS[tag][0]
        end = offset + struct.calcsize(fmt)
        _need(data, end, tag)
        return Data(tag, struct.unpack(fmt, data[offset:end])[0]), end
    if tag in _FLOATS:
        end = offset + struct.calcsize(_FLOATS[tag])
        _need(data, end, tag)
        return Data(tag, float(struct.unpack(_FLOATS[tag], data[offset:end])[0])), end
    if tag is Tag.BOOLEAN:
        _need(data, offset + 1, tag)
        return Data(tag, data[offset] != 0), offset + 1
    if tag is Tag.DATE_TIME:
        _need(data, offset + 12, tag)
        return Data(tag, DateTime.from_bytes(data[offset : offset + 12])), offset + 12
    if tag is Tag.NULL:
        return Data(tag), offset
    length, offset = decode_length(data, offset)
    if tag in _LISTS:
        items = []
        # Each element takes at least one byte: a count beyond the data is a lie.
        _need(data, offset + length, tag)
        for _ in range(length):
            item, offset = decode_prefix(data, offset, depth + 1)
            items.append(item)
        return Data(tag, tuple(items)), offset
    size = (length + 7) // 8 if tag is Tag.BIT_STRING else length
    end = offset + size
    _need(data, end, tag)
    raw = bytes(data[offset:end])
    if tag is Tag.OCTET_STRING:
        return Data(tag, raw), end
    if tag is Tag.BIT_STRING:
        return Data(tag, raw, length), end
    try:
        text = raw.decode("ascii" if tag is Tag.VISIBLE_STRING else "utf-8")
    except UnicodeDecodeError:
        raise DlmsProtocolError(f"{tag.name} is not valid text") from None
    return Data(tag, text), end


def _need(data: bytes, end: int, tag: Tag) -> None:
    if end > len(data):
        raise DlmsProtocolError(f"{tag.name} runs past the end of the data")
