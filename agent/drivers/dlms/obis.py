"""OBIS codes (IEC 62056-6-1): the logical names of COSEM objects, sans-IO."""

from __future__ import annotations

from dataclasses import dataclass

from agent.drivers.dlms.errors import DlmsProtocolError


@dataclass(frozen=True, slots=True)
class Obis:
    """An OBIS code, A.B.C.D.E.F (IEC 62056-6-1)."""

    a: int
    b: int
    c: int
    d: int
    e: int
    f: int

    def __post_init__(self) -> None:
        if not all(0 <= v <= 255 for v in self.groups):
            raise ValueError(f"OBIS groups are bytes: {self.groups}")

    @property
    def groups(self) -> tuple[int, int, int, int, int, int]:
        return (self.a, self.b, self.c, self.d, self.e, self.f)

    @classmethod
    def parse(cls, text: str) -> Obis:
        parts = text.split(".")
        if len(parts) != 6 or not all(p.isdigit() for p in parts):
            raise ValueError(f"OBIS code {text!r}: six dotted numbers expected")
        a, b, c, d, e, f = (int(p) for p in parts)
        return cls(a, b, c, d, e, f)

    @classmethod
    def from_bytes(cls, data: bytes) -> Obis:
        if len(data) != 6:
            raise DlmsProtocolError(f"logical name is 6 bytes, got {len(data)}")
        return cls(*data)

    def to_bytes(self) -> bytes:
        return bytes(self.groups)

    def __str__(self) -> str:
        return ".".join(str(v) for v in self.groups)
