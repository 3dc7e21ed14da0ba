"""Byte transports for the bus drivers: a thin Protocol and its pyserial implementation.

Codecs never see a transport; clients (``modbus/client.py``) take one, so
tests swap in a scripted transport instead of patching pyserial.

RTU line timing (MODBUS over Serial Line V1.02 §2.5.1.1): one character is
11 bits (start, 8 data, parity or a second stop bit, stop); frames are
separated by a silence of at least 3.5 characters, fixed at 1.75 ms above
19200 baud. ``SerialTransport`` waits before every write until that long has
passed since the last byte it sent or received.

Every failure of the port (pyserial's ``SerialException``, ``OSError`` and termios's
own ``termios.error``, which is neither: a USB adapter unplugged mid-read raises it from
``tcflush``) is a ``DriverError`` naming the port, so the bus closes and reopens it.

A pty (a simulated bus, or a socat bridge) has no line settings: Linux forces 8 data
bits without parity on it and refuses a second ``tcsetattr`` that asks otherwise
(EINVAL), so a port that resolves to ``/dev/pts/N`` is opened 8N1 whatever the bus
says; its speed is kept for the pacing.
"""

from __future__ import annotations

import os
import select
import termios
from typing import Any, Final, Protocol, runtime_checkable

import serial

from agent.clock import Clock, SystemClock
from agent.errors import DriverError, PortError

BITS_PER_CHAR: Final = 11
# pyserial read() blocks at most this long per call, so read(timeout_s) ends
# at most this late; short enough not to matter against ~0.5 s timeouts.
POLL_S: Final = 0.01
PARITIES: Final = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}
# Everything opening or using a serial port may raise (termios.error is not an OSError).
PORT_ERRORS: Final = (serial.SerialException, OSError, termios.error)
# A write the UART takes no byte of for this long: the port is stuck (a wedged USB
# adapter); it is closed and opened again like any other port failure.
WRITE_STALL_S: Final = 2.0


def is_pty(port: str) -> bool:
    """Does ``port`` (a path or a symlink to one; not a URL) name a pseudo-terminal?"""
    return "://" not in port and os.path.realpath(port).startswith("/dev/pts/")


def character_time_s(baudrate: int) -> float:
    """Seconds one RTU character takes on the line."""
    if baudrate <= 0:
        raise ValueError(f"baudrate must be positive, got {baudrate}")
    return BITS_PER_CHAR / baudrate


def silent_interval_s(baudrate: int) -> float:
    """t3.5: the silence that ends a frame (fixed 1.75 ms above 19200 baud)."""
    if baudrate > 19200:
        return 0.00175
    return 3.5 * character_time_s(baudrate)


def frame_time_s(n_bytes: int, baudrate: int) -> float:
    """Seconds ``n_bytes`` characters take on the line."""
    return n_bytes * character_time_s(baudrate)


class Transport(Protocol):
    @property
    def baudrate(self) -> int: ...

    def write(self, data: bytes) -> None:
        """Send all of ``data``; returns once it has left (or is leaving) the port."""
        ...

    def read(self, max_bytes: int, timeout_s: float) -> bytes:
        """Whatever arrived, up to ``max_bytes``: b"" if nothing came within ``timeout_s``."""
        ...

    def reset_input(self) -> None:
        """Discard bytes received and not read yet."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class BaudSwitchable(Protocol):
    """A transport that can change its speed mid-session (IEC 62056-21 baud switch)."""

    @property
    def baudrate(self) -> int: ...

    def set_baudrate(self, baudrate: int) -> None: ...


class SerialTransport:
    """A serial port (device path, pty symlink or pyserial URL) with RTU pacing."""

    def __init__(
        self,
        port: str,
        baudrate: int,
        parity: str = "N",
        *,
        clock: Clock | None = None,
        bytesize: int = 8,
    ) -> None:
        if parity not in PARITIES:
            raise DriverError(f"{port}: parity must be N, E or O, got {parity!r}")
        if bytesize not in (7, 8):
            raise DriverError(f"{port}: bytesize must be 7 or 8, got {bytesize}")
        self._port_name = port
        self._baudrate = baudrate
        self._clock: Clock = clock or SystemClock()
        self._silent_s = silent_interval_s(baudrate)
        self._last_activity_s = float("-inf")
        if is_pty(port):  # see the module docstring
            parity, bytesize = "N", 8
        try:
            self._serial: Any = serial.serial_for_url(
                port,
                baudrate=baudrate,
                parity=PARITIES[parity],
                bytesize=bytesize,  # 7 for IEC 62056-21 (7E1), 8 for Modbus RTU
                stopbits=1,
                timeout=POLL_S,
                write_timeout=None,
            )
        except (*PORT_ERRORS, ValueError) as exc:
            raise PortError(f"{port}: cannot open: {exc}") from exc
        # A POSIX device (a UART, a USB adapter, a pty) is read with select() and read()
        # on its descriptor: two system calls a burst instead of pyserial's four and its
        # timeout objects (the bus thread's largest cost per reading); written with
        # write() and tcdrain(), and flushed with tcflush(), on it too. URLs
        # (socket://, loop://) go through pyserial.
        fd = getattr(self._serial, "fd", None)
        self._fd: int | None = fd if isinstance(fd, int) and fd >= 0 else None

    @property
    def baudrate(self) -> int:
        return self._baudrate

    @property
    def port(self) -> str:
        return self._port_name

    def set_baudrate(self, baudrate: int) -> None:
        """Change speed (IEC 62056-21 mode C switches after the ACK); pacing follows."""
        if baudrate == self._baudrate:
            return
        try:
            self._serial.baudrate = baudrate
        except (*PORT_ERRORS, ValueError) as exc:
            raise PortError(f"{self._port_name}: cannot set {baudrate} baud: {exc}") from exc
        self._baudrate = baudrate
        self._silent_s = silent_interval_s(baudrate)

    def write(self, data: bytes) -> None:
        wait_s = self._last_activity_s + self._silent_s - self._clock.monotonic_s()
        self._clock.sleep(wait_s)  # t3.5 since the last byte either way: a new frame
        started_s = self._clock.monotonic_s()
        try:
            if self._fd is not None:
                self._write_fd(self._fd, data)
            else:
                self._serial.write(data)
                self._serial.flush()  # tcdrain: returns once the UART has the bytes
        except (*PORT_ERRORS, ValueError) as exc:  # ValueError: the descriptor was closed
            raise PortError(f"{self._port_name}: write failed: {exc}") from exc
        # USB adapters may still be shifting bits out after flush(): count the
        # frame's own line time as well.
        self._last_activity_s = max(
            self._clock.monotonic_s(), started_s + frame_time_s(len(data), self._baudrate)
        )

    def read(self, max_bytes: int, timeout_s: float) -> bytes:
        if self._fd is not None:
            return self._read_fd(self._fd, max_bytes, timeout_s)
        deadline_s = self._clock.monotonic_s() + timeout_s
        try:
            while True:
                waiting = self._serial.in_waiting
                if waiting:
                    data = bytes(self._serial.read(min(waiting, max_bytes)))
                elif self._clock.monotonic_s() >= deadline_s:
                    return b""
                else:
                    data = bytes(self._serial.read(1))  # blocks up to POLL_S
                    more = self._serial.in_waiting if data else 0
                    if more and max_bytes > 1:
                        data += bytes(self._serial.read(min(more, max_bytes - 1)))
                if data:
                    self._last_activity_s = self._clock.monotonic_s()
                    return data
        except PORT_ERRORS as exc:
            raise PortError(f"{self._port_name}: read failed: {exc}") from exc

    @staticmethod
    def _write_fd(fd: int, data: bytes) -> None:
        """All of ``data`` on the (non-blocking) descriptor, then tcdrain: returns once
        the UART has the bytes. Waits for room at most WRITE_STALL_S at a time."""
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                if not select.select([], [fd], [], WRITE_STALL_S)[1]:
                    raise OSError(f"write stalled: no room for {WRITE_STALL_S:g} s") from None
        termios.tcdrain(fd)

    def _read_fd(self, fd: int, max_bytes: int, timeout_s: float) -> bytes:
        """``read`` on the descriptor: whatever has arrived, or what arrives first
        within ``timeout_s``, up to ``max_bytes``."""
        deadline_s = self._clock.monotonic_s() + timeout_s
        try:
            while True:
                wait_s = max(0.0, deadline_s - self._clock.monotonic_s())
                ready, _, _ = select.select([fd], [], [], wait_s)
                if ready:
                    data = os.read(fd, max_bytes)
                    if not data:  # readable and empty: the device has gone (EOF)
                        raise OSError("device disconnected (read returned nothing)")
                    self._last_activity_s = self._clock.monotonic_s()
                    return data
                if wait_s <= 0:
                    return b""
        except (*PORT_ERRORS, ValueError) as exc:  # ValueError: the descriptor was closed
            raise PortError(f"{self._port_name}: read failed: {exc}") from exc

    def reset_input(self) -> None:
        try:
            if self._fd is not None:
                termios.tcflush(self._fd, termios.TCIFLUSH)
            else:
                self._serial.reset_input_buffer()
        except (*PORT_ERRORS, ValueError) as exc:
            raise PortError(f"{self._port_name}: reset failed: {exc}") from exc

    def close(self) -> None:
        self._fd = None  # its number may be given to another file once closed
        try:
            self._serial.close()
        except PORT_ERRORS as exc:
            raise PortError(f"{self._port_name}: close failed: {exc}") from exc
