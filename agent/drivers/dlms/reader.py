"""HDLC frames out of a byte stream, any split, with resync, sans-IO.

``FrameReader`` takes the bytes of an IEC 62056-46 line (``hdlc.py`` has the
frame format) in any split, skips garbage and yields frames
(``receive_data`` / ``next_event``, the h11 pattern).

Resync:
  1. Hunt: the first 0x7E followed by a format byte of type 3 (0xA0..0xAF).
     Bytes before it are dropped (``skipped_bytes``).
  2. Length: from the format field; under MIN_FRAME_LENGTH is no frame: drop one
     byte, go to 1.
  3. Wait: fewer bytes than length + 2 flags -> NEED_DATA, unless a whole
     frame with a good FCS already sits further on in the buffer: then the
     head was noise that looked like a long frame, and is dropped up to it.
  4. Check: a closing flag where the length says, then the FCS. On a mismatch
     drop ONE byte (a real frame may start inside the candidate), count the
     FCS failure (``checksum_failures``), go to 1. A good FCS but a bad HCS, an
     address of three or more than four bytes, or an unknown control byte is a
     frame the sender built wrongly: it is consumed and ``DlmsProtocolError``
     (``DlmsChecksumError`` for the HCS) is raised.
A frame's closing flag may open the next frame (ISO 13239 shared flags), so
it stays in the buffer. ``receive_data(b"")`` says the line went quiet: a
waiting candidate is abandoned one byte at a time, and if an FCS failed since
the last good frame, ``next_event`` raises ``DlmsChecksumError`` (the answer
came, corrupted). ``deadline_passed()`` raises what went wrong when the caller
gives up. Memory is bounded: a candidate is at most MAX_FRAME_LENGTH + 2
bytes, and more than MAX_SKIPPED_BYTES of garbage raises at once.

Invariant (fuzzed in the tests): whatever bytes arrive, ``next_event`` returns
a frame or NEED_DATA, or raises ``DlmsProtocolError`` (or a subclass).
"""

from __future__ import annotations

from typing import Final, NoReturn

from agent.drivers.dlms.errors import DlmsChecksumError, DlmsIncompleteError, DlmsProtocolError
from agent.drivers.dlms.hdlc import (
    FLAG,
    MAX_FRAME_LENGTH,
    MIN_FRAME_LENGTH,
    HdlcFrame,
    check_bytes,
    parse_body,
)
from agent.drivers.sansio import NEED_DATA, NeedData

# A reader that dropped this much garbage without a frame gives up: two
# maximum frames of noise is a broken line or a wrong baud rate, not a meter.
MAX_SKIPPED_BYTES: Final = 2 * (MAX_FRAME_LENGTH + 2)




class FrameReader:
    """Frames out of a byte stream, any split, with resync (see the module doc)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._silence_at: int | None = None  # buffered bytes that came before a silence
        self._silence_reached = False
        # Since the last good frame: what ``deadline_passed`` and the bound look at.
        self._failed_since_frame = 0
        self._skipped_since_frame = 0
        self._received_since_frame = 0
        # Totals, for the bus's per-meter counters.
        self.skipped_bytes = 0
        self.checksum_failures = 0
        self.frames = 0

    @property
    def in_frame(self) -> bool:
        """A candidate frame has started and is not complete."""
        return len(self._buf) > 1

    @property
    def failed_since_frame(self) -> int:
        return self._failed_since_frame

    def receive_data(self, data: bytes) -> None:
        """Feed bytes; ``b""`` says the line is quiet now (no frame spans a silence)."""
        if data:
            self._received_since_frame += len(data)
            self._buf += data
        elif self._buf:
            self._silence_at = len(self._buf)
        else:
            self._silence_reached = True

    def next_event(self) -> HdlcFrame | NeedData:
        while True:
            before = len(self._buf)
            frame = self._step()
            if frame is not None:
                return frame
            if len(self._buf) == before:
                break
        if self._skipped_since_frame > MAX_SKIPPED_BYTES:
            self._skipped_since_frame = 0  # raised once: the caller decides what follows
            raise DlmsProtocolError(f"over {MAX_SKIPPED_BYTES} bytes without an HDLC frame")
        if self._silence_reached:
            self._silence_reached = False
            if self._failed_since_frame:
                failed, self._failed_since_frame = self._failed_since_frame, 0
                raise DlmsChecksumError(f"FCS mismatch ({failed} candidates), then silence")
        return NEED_DATA

    def deadline_passed(self) -> NoReturn:
        """The caller stops waiting: raise what went wrong (checksum, incomplete, noise)."""
        if self._failed_since_frame:
            failed, self._failed_since_frame = self._failed_since_frame, 0
            raise DlmsChecksumError(f"FCS mismatch ({failed} candidates), no good frame")
        if self.in_frame:
            raise DlmsIncompleteError("part of an HDLC frame, then nothing")
        if self._received_since_frame <= 1:  # at most the last frame's closing flag
            raise DlmsIncompleteError("no answer")
        raise DlmsIncompleteError(f"{self._received_since_frame} bytes, none formed a frame")

    def _drop(self, n: int) -> None:
        del self._buf[:n]
        self.skipped_bytes += n
        self._skipped_since_frame += n
        if self._silence_at is not None:
            self._silence_at -= n
            if self._silence_at <= 0:
                self._silence_at, self._silence_reached = None, True

    def _step(self) -> HdlcFrame | None:
        """One hunt/length/check step: a frame, or None (a byte dropped, or wait)."""
        buf = self._buf
        start = _find_start(buf)
        if start:
            self._drop(start)
        if len(buf) < 3:
            if self._silence_at is not None:
                self._drop(len(buf))  # too short to be a frame, and the line went quiet
            return None
        length = ((buf[1] & 0x07) << 8) | buf[2]
        if length < MIN_FRAME_LENGTH:
            self._drop(1)
            return None
        if self._silence_at is not None and length + 2 > self._silence_at:
            self._drop(1)  # the line went quiet inside it: no frame spans a silence
            return None
        if len(buf) < length + 2:
            later = _later_frame(buf)
            if later:
                self._drop(later)  # a whole good frame further on: the head was noise
            return None
        if buf[length + 1] != FLAG:
            self._drop(1)
            return None
        body = bytes(buf[1 : length - 1])
        if check_bytes(body) != bytes(buf[length - 1 : length + 1]):
            self.checksum_failures += 1
            self._failed_since_frame += 1
            self._drop(1)
            return None
        # Taken: keep the closing flag, it may open the next frame.
        del buf[: length + 1]
        if self._silence_at is not None:
            self._silence_at -= length + 1
            if self._silence_at <= 0:
                self._silence_at, self._silence_reached = None, True
        self.frames += 1
        self._failed_since_frame = self._skipped_since_frame = 0
        self._received_since_frame = len(buf)
        return parse_body(body)


def _later_frame(buf: bytearray) -> int:
    """Offset (> 0) of a complete frame with a good FCS after the head, else 0.

    While the head candidate waits for bytes that may never come (noise that
    looked like a long frame), a frame that is already whole and checks out
    further on is the real one: take it now instead of at the next silence.
    """
    i = buf.find(FLAG, 1)
    while 0 < i < len(buf) - 2:
        if buf[i + 1] & 0xF0 == 0xA0:
            length = ((buf[i + 1] & 0x07) << 8) | buf[i + 2]
            end = i + length + 1
            if (
                length >= MIN_FRAME_LENGTH
                and end < len(buf)
                and buf[end] == FLAG
                and check_bytes(bytes(buf[i + 1 : end - 2])) == bytes(buf[end - 2 : end])
            ):
                return i
        i = buf.find(FLAG, i + 1)
    return 0


def _find_start(buf: bytearray) -> int:
    """Offset of the first 0x7E that may open a frame (a lone last 0x7E may); len if none."""
    i = buf.find(FLAG)
    while 0 <= i < len(buf) - 1 and buf[i + 1] & 0xF0 != 0xA0:
        i = buf.find(FLAG, i + 1)
    return len(buf) if i < 0 else i
