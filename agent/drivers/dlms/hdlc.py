"""HDLC frame format type 3 for DLMS/COSEM, sans-IO.

Implements IEC 62056-46:2002 (DLMS UA Green Book, "the HDLC based data link
layer"): §6.4.1 frame format type 3 (flag 0x7E, format field 0xA000 |
segmentation bit << 11 | 11-bit frame length), §6.4.2 addresses (client: one
byte; server: one, two or four bytes, each byte carrying 7 bits with its LSB
set on the last byte; the upper HDLC address is the logical device, the lower
the physical device), §6.4.3 control field (I, RR, RNR, SNRM, DISC, UA, DM,
FRMR, UI), §6.4.4 HCS and FCS (the FCS-16 of RFC 1662 / ISO 13239, CRC-16/X.25,
sent least significant byte first), §6.4.4.4.3.2 the parameter negotiation
field of SNRM and UA, and the LLC header of §6.3 (E6 E6 00 command, E6 E7 00
response). There is no byte stuffing in frame format type 3: a 0x7E inside a
frame is data, and frames are delimited by their length field.

``HdlcFrame.from_bytes`` parses exactly one frame (flags included) and
``to_bytes`` builds one; ``reader.FrameReader`` finds frames in a byte stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Final

from agent.drivers.dlms.errors import DlmsChecksumError, DlmsProtocolError

FLAG: Final = 0x7E
FORMAT_TYPE_3: Final = 0xA000
SEGMENTED_BIT: Final = 0x0800
MAX_FRAME_LENGTH: Final = 0x07FF  # 11-bit length field
MIN_FRAME_LENGTH: Final = 7  # format 2, two 1-byte addresses, control, FCS 2

LLC_COMMAND: Final = b"\xe6\xe6\x00"
LLC_RESPONSE: Final = b"\xe6\xe7\x00"

# §6.4.4.4.3.2 defaults when SNRM carries no parameters.
DEFAULT_MAX_INFO: Final = 128
DEFAULT_WINDOW: Final = 1

PUBLIC_CLIENT: Final = 0x10
MANAGEMENT_LOGICAL_DEVICE: Final = 1


def _fcs_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_FCS_TABLE: Final = _fcs_table()


def fcs16(data: bytes) -> int:
    """RFC 1662 FCS-16 (CRC-16/X.25): init 0xFFFF, reflected 0x8408, final xor 0xFFFF.

    On the wire the value goes least significant byte first.
    """
    fcs = 0xFFFF
    for byte in data:
        fcs = (fcs >> 8) ^ _FCS_TABLE[(fcs ^ byte) & 0xFF]
    return fcs ^ 0xFFFF


def check_bytes(data: bytes) -> bytes:
    value = fcs16(data)
    return bytes((value & 0xFF, value >> 8))


@dataclass(frozen=True, slots=True)
class HdlcAddress:
    """An HDLC address: ``upper`` alone (client, or a one-byte server), or upper + lower.

    ``length`` is the encoded size (1, 2 or 4; 0 picks the shortest). It does
    not take part in equality: 02 23 and 00 02 00 23 name the same server.
    """

    upper: int
    lower: int | None = None
    length: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        length = self.length
        if length == 0:
            if self.lower is None:
                length = 1 if self.upper <= 0x7F else 4
            else:
                length = 2 if max(self.upper, self.lower) <= 0x7F else 4
            object.__setattr__(self, "length", length)
        if length not in (1, 2, 4):
            raise ValueError(f"HDLC address length {length}: must be 1, 2 or 4")
        if length == 1 and (self.lower is not None or not 0 <= self.upper <= 0x7F):
            raise ValueError(f"one-byte address holds only 0..127, got {self}")
        limit = 0x7F if length <= 2 else 0x3FFF
        for part in (self.upper, self.lower if self.lower is not None else 0):
            if not 0 <= part <= limit:
                raise ValueError(f"address part {part} outside 0..{limit} in {length} bytes")

    @classmethod
    def server(cls, physical: int, logical: int = MANAGEMENT_LOGICAL_DEVICE) -> HdlcAddress:
        """A meter on a multi-drop bus: logical device (upper) at a physical address (lower)."""
        return cls(logical, physical)

    def to_bytes(self) -> bytes:
        if self.length == 1:
            return bytes(((self.upper << 1) | 1,))
        lower = self.lower if self.lower is not None else 0
        if self.length == 2:
            return bytes((self.upper << 1, (lower << 1) | 1))
        return bytes(
            (
                (self.upper >> 7) << 1,
                (self.upper & 0x7F) << 1,
                (lower >> 7) << 1,
                ((lower & 0x7F) << 1) | 1,
            )
        )

    @classmethod
    def parse(cls, data: bytes, offset: int) -> tuple[HdlcAddress, int]:
        """The address starting at ``offset`` and the offset after it."""
        end = offset
        while end < len(data) and not data[end] & 1:
            end += 1
            if end - offset >= 4:
                raise DlmsProtocolError("HDLC address longer than 4 bytes")
        if end >= len(data):
            raise DlmsProtocolError("HDLC address runs past the header")
        raw = data[offset : end + 1]
        parts = [b >> 1 for b in raw]
        if len(raw) == 1:
            return cls(parts[0], None, 1), end + 1
        if len(raw) == 2:
            return cls(parts[0], parts[1], 2), end + 1
        if len(raw) == 4:
            return cls((parts[0] << 7) | parts[1], (parts[2] << 7) | parts[3], 4), end + 1
        raise DlmsProtocolError(f"HDLC address of {len(raw)} bytes (1, 2 or 4 allowed)")


class FrameKind(Enum):
    I = "I"  # noqa: E741 - the standard's name for an information frame
    RR = "RR"
    RNR = "RNR"
    SNRM = "SNRM"
    DISC = "DISC"
    UA = "UA"
    DM = "DM"
    FRMR = "FRMR"
    UI = "UI"


# Unnumbered and supervisory control bytes with the P/F bit cleared (§6.4.3).
_U_CONTROL: Final = {
    FrameKind.SNRM: 0x83,
    FrameKind.DISC: 0x43,
    FrameKind.UA: 0x63,
    FrameKind.DM: 0x0F,
    FrameKind.FRMR: 0x87,
    FrameKind.UI: 0x03,
}
_U_BY_CONTROL: Final = {value: kind for kind, value in _U_CONTROL.items()}
_S_CONTROL: Final = {FrameKind.RR: 0x01, FrameKind.RNR: 0x05}
_S_BY_CONTROL: Final = {value: kind for kind, value in _S_CONTROL.items()}
_PF: Final = 0x10


@dataclass(frozen=True, slots=True)
class HdlcFrame:
    """One HDLC frame. ``send_seq`` is N(S) (I frames), ``recv_seq`` N(R) (I, RR, RNR).

    ``segmented`` is the S bit of the format field: more of this message follows.
    """

    kind: FrameKind
    destination: HdlcAddress
    source: HdlcAddress
    info: bytes = b""
    send_seq: int = 0
    recv_seq: int = 0
    poll_final: bool = True
    segmented: bool = False

    def __post_init__(self) -> None:
        if not (0 <= self.send_seq <= 7 and 0 <= self.recv_seq <= 7):
            raise ValueError("sequence numbers are modulo 8")
        if self.kind in _S_CONTROL and self.info:
            raise ValueError(f"{self.kind.value} frames carry no information field")
        if self._length() > MAX_FRAME_LENGTH:
            raise ValueError("frame longer than the 11-bit length field")

    def _length(self) -> int:
        """The format field's length: format, addresses, control, HCS + info if any, FCS."""
        info = len(self.info) + 2 if self.info else 0
        return 2 + self.destination.length + self.source.length + 1 + info + 2

    @property
    def control(self) -> int:
        pf = _PF if self.poll_final else 0
        if self.kind is FrameKind.I:
            return (self.recv_seq << 5) | pf | (self.send_seq << 1)
        if self.kind in _S_CONTROL:
            return (self.recv_seq << 5) | pf | _S_CONTROL[self.kind]
        return _U_CONTROL[self.kind] | pf

    def to_bytes(self) -> bytes:
        addresses = self.destination.to_bytes() + self.source.to_bytes()
        fmt = FORMAT_TYPE_3 | (SEGMENTED_BIT if self.segmented else 0) | self._length()
        header = bytes((fmt >> 8, fmt & 0xFF)) + addresses + bytes((self.control,))
        body = header + check_bytes(header) + self.info if self.info else header
        return bytes((FLAG,)) + body + check_bytes(body) + bytes((FLAG,))

    @classmethod
    def from_bytes(cls, data: bytes) -> HdlcFrame:
        """Exactly one frame, flags included (``DlmsChecksumError`` on HCS/FCS)."""
        if len(data) < MIN_FRAME_LENGTH + 2 or data[0] != FLAG or data[-1] != FLAG:
            raise DlmsProtocolError("not a flag-delimited HDLC frame")
        if data[1] & 0xF0 != 0xA0:
            raise DlmsProtocolError(f"frame format type {data[1] >> 4:#x} (type 3 is 0xA)")
        length = ((data[1] & 0x07) << 8) | data[2]
        if length != len(data) - 2:
            raise DlmsProtocolError(f"format field says {length} bytes, got {len(data) - 2}")
        body = data[1:-3]
        if check_bytes(body) != data[-3:-1]:
            raise DlmsChecksumError(f"FCS mismatch in {data.hex()}")
        return parse_body(body)


def parse_body(body: bytes) -> HdlcFrame:
    """Format field to information field (FCS already checked)."""
    destination, offset = HdlcAddress.parse(body, 2)
    source, offset = HdlcAddress.parse(body, offset)
    if offset >= len(body):
        raise DlmsProtocolError("HDLC frame without a control field")
    control = body[offset]
    offset += 1
    info = b""
    if offset < len(body):
        if len(body) < offset + 2:
            raise DlmsProtocolError("HDLC frame ends inside its HCS")
        if check_bytes(body[:offset]) != body[offset : offset + 2]:
            raise DlmsChecksumError(f"HCS mismatch in {body.hex()}")
        info = body[offset + 2 :]
    segmented = bool(body[0] & (SEGMENTED_BIT >> 8))
    pf = bool(control & _PF)
    if not control & 1:
        kind, send_seq, recv_seq = FrameKind.I, (control >> 1) & 7, control >> 5
    elif control & 0x0F in _S_BY_CONTROL:
        kind, send_seq, recv_seq = _S_BY_CONTROL[control & 0x0F], 0, control >> 5
    elif control & ~_PF in _U_BY_CONTROL:
        kind, send_seq, recv_seq = _U_BY_CONTROL[control & ~_PF], 0, 0
    else:
        raise DlmsProtocolError(f"unknown HDLC control byte {control:#04x}")
    if kind in _S_CONTROL and info:
        raise DlmsProtocolError(f"{kind.value} frame with an information field")
    return HdlcFrame(kind, destination, source, info, send_seq, recv_seq, pf, segmented)


@dataclass(frozen=True, slots=True)
class HdlcParameters:
    """The negotiated link parameters, from the server's point of view as sent in its UA.

    ``max_info_tx``: longest information field the sender of the UA/SNRM will
    transmit; ``max_info_rx``: the longest it accepts. Windows are in frames.
    """

    max_info_tx: int = DEFAULT_MAX_INFO
    max_info_rx: int = DEFAULT_MAX_INFO
    window_tx: int = DEFAULT_WINDOW
    window_rx: int = DEFAULT_WINDOW

    def to_bytes(self) -> bytes:
        """The §6.4.4.4.3.2 information field: 81 80 group-length {id len value}."""
        group = b""
        for ident, value, width in (
            (5, self.max_info_tx, 2 if self.max_info_tx > 0xFF else 1),
            (6, self.max_info_rx, 2 if self.max_info_rx > 0xFF else 1),
            (7, self.window_tx, 4),
            (8, self.window_rx, 4),
        ):
            group += bytes((ident, width)) + value.to_bytes(width, "big")
        return b"\x81\x80" + bytes((len(group),)) + group

    @classmethod
    def from_bytes(cls, info: bytes) -> HdlcParameters:
        """Parse the field; absent parameters keep their defaults; b"" is all defaults."""
        if not info:
            return cls()
        if len(info) < 3 or info[0] != 0x81 or info[1] != 0x80 or info[2] != len(info) - 3:
            raise DlmsProtocolError(f"bad HDLC parameter field {info.hex()}")
        values = {5: DEFAULT_MAX_INFO, 6: DEFAULT_MAX_INFO, 7: DEFAULT_WINDOW, 8: DEFAULT_WINDOW}
        offset = 3
        while offset < len(info):
            if offset + 2 > len(info):
                raise DlmsProtocolError("HDLC parameter field ends inside a parameter")
            ident, width = info[offset], info[offset + 1]
            value_bytes = info[offset + 2 : offset + 2 + width]
            if len(value_bytes) != width or width > 4:
                raise DlmsProtocolError(f"HDLC parameter {ident}: bad length {width}")
            if ident in values:
                values[ident] = int.from_bytes(value_bytes, "big")
            offset += 2 + width
        params = cls(values[5], values[6], values[7], values[8])
        if not (1 <= params.window_tx <= 7 and 1 <= params.window_rx <= 7):
            raise DlmsProtocolError(f"HDLC window outside 1..7 in {params}")
        if not (8 <= params.max_info_tx <= 2030 and 8 <= params.max_info_rx <= 2030):
            raise DlmsProtocolError(f"HDLC max information field out of range in {params}")
        return params
