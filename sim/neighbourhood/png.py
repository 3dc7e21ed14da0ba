"""A tiny RGB raster and PNG writer (PNG spec, ISO/IEC 15948: signature, IHDR, IDAT, IEND;
8-bit truecolour, filter 0 on every row, zlib deflate), with lines, boxes and a 5x7 font.

No dependency beyond zlib and struct: the plot of a household's month is drawn here.
"""

from __future__ import annotations

import struct
import zlib
from typing import Final

Color = tuple[int, int, int]
SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"

# 5x7 glyphs (the HD44780 character ROM's shapes): seven 5-bit rows, top first, in hex.
_FONT: Final = {
    "A": "0e1111111f1111", "B": "1e11111e11111e", "C": "0e11101010110e", "D": "1c12111111121c",
    "E": "1f10101e10101f", "F": "1f10101e101010", "G": "0e11101711110f", "H": "1111111f111111",
    "I": "0e04040404040e", "J": "0702020202120c", "K": "11121418141211", "L": "1010101010101f",
    "M": "111b1515111111", "N": "11111915131111", "O": "0e11111111110e", "P": "1e11111e101010",
    "Q": "0e11111115120d", "R": "1e11111e141211", "S": "0f10100e01011e", "T": "1f040404040404",
    "U": "1111111111110e", "V": "11111111110a04", "W": "1111111515150a", "X": "11110a040a1111",
    "Y": "1111110a040404", "Z": "1f01020408101f", "0": "0e11131519110e", "1": "040c040404040e",
    "2": "0e11010204081f", "3": "1f02040201110e", "4": "02060a121f0202", "5": "1f101e0101110e",
    "6": "0608101e11110e", "7": "1f010204080808", "8": "0e11110e11110e", "9": "0e11110f01020c",
    "-": "0000001f000000", ".": "00000000000c0c", ":": "000c0c000c0c00", "/": "00010204081000",
    "%": "18190204081303", "(": "02040808080402", ")": "08040202020408", "+": "0004041f040400",
    ",": "000000000c0408", "=": "00001f001f0000",
}


def _glyph(ch: str) -> bytes:
    return bytes.fromhex(_FONT.get(ch.upper(), "00" * 7))


class Canvas:
    def __init__(self, width: int, height: int, background: Color = (255, 255, 255)) -> None:
        self.width, self.height = width, height
        self.rows = [bytearray(bytes(background) * width) for _ in range(height)]

    def pixel(self, x: int, y: int, color: Color) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            self.rows[y][3 * x:3 * x + 3] = bytes(color)

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        """Filled, corners inclusive, clipped to the canvas."""
        x0, x1 = sorted((max(0, x0), min(self.width - 1, x1)))
        for y in range(max(0, min(y0, y1)), min(self.height - 1, max(y0, y1)) + 1):
            self.rows[y][3 * x0:3 * x1 + 3] = bytes(color) * (x1 - x0 + 1)

    def line(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        """Bresenham."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            self.pixel(x0, y0, color)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err, x0 = err + dy, x0 + sx
            if e2 <= dx:
                err, y0 = err + dx, y0 + sy

    def text(self, x: int, y: int, text: str, color: Color, scale: int = 1) -> None:
        for i, ch in enumerate(text):
            for row, bits in enumerate(_glyph(ch)):
                for col in range(5):
                    if bits >> (4 - col) & 1:
                        gx, gy = x + (6 * i + col) * scale, y + row * scale
                        self.rect(gx, gy, gx + scale - 1, gy + scale - 1, color)

    def png(self) -> bytes:
        raw = b"".join(b"\x00" + bytes(row) for row in self.rows)
        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 9))
                + _chunk(b"IEND", b""))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def read_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB bytes) of a PNG this module wrote; checks every CRC."""
    if not data.startswith(SIGNATURE):
        raise ValueError("not a PNG")
    pos, idat, width, height = len(SIGNATURE), b"", 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        if crc != zlib.crc32(kind + body) & 0xFFFFFFFF:
            raise ValueError(f"bad CRC in {kind!r}")
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = 1 + 3 * width
    return width, height, [raw[i * stride + 1:(i + 1) * stride] for i in range(height)]
