"""An HTTP/1.0 and 1.1 request head reader (RFC 9112 §2-3, §5), sans-IO: bytes in,
a ``Request`` or ``NEED_DATA`` or an ``HttpError`` out. No body is ever read: the
status page answers GET and HEAD only, and closes every connection after one answer.

    reader = RequestReader()
    reader.receive_data(chunk)          # any split
    event = reader.next_event()         # Request | NEED_DATA; raises HttpError(code)

Bounds (and what happens at them):
- ``MAX_REQUEST_LINE`` bytes of request line: ``HttpError(414)``;
- ``MAX_HEADER_BYTES`` bytes of header lines: ``HttpError(431)``;
- a line that is not ``METHOD SP target SP HTTP/x.y``, or a header line without a
  colon: ``HttpError(400)``.
Invariant (fuzzed): any bytes give a Request, NEED_DATA or an HttpError, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

MAX_REQUEST_LINE: Final = 2048
MAX_HEADER_BYTES: Final = 8192


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


class HttpError(Exception):
    """The request cannot be served; ``code`` is the status to answer with."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, str] = field(default_factory=dict)  # names lower-cased

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


class RequestReader:
    def __init__(self) -> None:
        self._buffer = bytearray()

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    def next_event(self) -> Request | _NeedData:
        head_end = self._buffer.find(b"\r\n\r\n")
        line_end = self._buffer.find(b"\r\n")
        if line_end < 0:
            if len(self._buffer) > MAX_REQUEST_LINE:
                raise HttpError(414, "request line too long")
            return NEED_DATA
        if line_end > MAX_REQUEST_LINE:
            raise HttpError(414, "request line too long")
        if head_end < 0:
            if len(self._buffer) - line_end > MAX_HEADER_BYTES:
                raise HttpError(431, "request headers too large")
            return NEED_DATA
        if head_end - line_end > MAX_HEADER_BYTES:
            raise HttpError(431, "request headers too large")
        line = bytes(self._buffer[:line_end])
        return Request(*_request_line(line), headers=_headers(
            bytes(self._buffer[line_end + 2:head_end])))


def _request_line(line: bytes) -> tuple[str, str, str]:
    try:
        method, target, version = line.decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        raise HttpError(400, "malformed request line") from None
    if not method.isalpha() or not target.startswith("/") or not version.startswith("HTTP/"):
        raise HttpError(400, "malformed request line")
    return method, target, version


def _headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw in block.split(b"\r\n") if block else ():
        name, sep, value = raw.partition(b":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, "malformed header line")
        headers[name.decode("latin-1").lower()] = value.strip().decode("latin-1")
    return headers
