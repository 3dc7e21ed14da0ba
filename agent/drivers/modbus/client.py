"""A synchronous Modbus RTU master over a ``Transport``: one request, one answer.

Errors (all ``agent.errors.DriverError``):
    TimeoutError_        no answer, or part of one, before ``timeout_s``
    ModbusChecksumError  a frame for us arrived with a bad CRC
    ModbusProtocolError  bytes arrived that form no valid answer
    DeviceException      the device sent an exception response (``.code``)
After a checksum or protocol error the line is drained until it is quiet, so
the next request starts on a clean line. The client never has two frames in
flight: ``execute`` returns or raises before another request can be written;
scheduling several devices on one bus is the bus scheduler's job.
"""

from __future__ import annotations

from typing import Final

from agent.clock import Clock, SystemClock
from agent.drivers.modbus.codec import (
    MAX_ADU_BYTES,
    ModbusIncompleteError,
    ModbusProtocolError,
    Request,
    Response,
    ResponseReader,
    response_length,
)
from agent.drivers.transport import Transport, frame_time_s, silent_interval_s
from agent.errors import DeviceException, TimeoutError_

# Inside a frame, a gap this long means the sender stopped: RTU allows 1.5
# characters, but USB-serial adapters deliver bytes in bursts up to their
# latency timer (16 ms on FTDI), so we allow 50 ms plus t3.5.
FRAME_GAP_S: Final = 0.05
# Draining after a bad frame stops at the first quiet FRAME_GAP_S, or after
# this long in all (a line that never goes quiet is reported by the next request).
MAX_DRAIN_S: Final = 1.0
# An answer begun is slept through but for this much of its remaining line time, then
# read as it arrives (a sleep that wakes late would otherwise delay every answer).
REST_MARGIN_S: Final = 0.002

EXCEPTION_NAMES: Final = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


class ModbusClient:
    def __init__(self, transport: Transport, clock: Clock | None = None) -> None:
        self._transport = transport
        self._clock: Clock = clock or SystemClock()
        self._gap_s = FRAME_GAP_S + silent_interval_s(transport.baudrate)

    @property
    def transport(self) -> Transport:
        return self._transport

    def execute(self, request: Request, timeout_s: float) -> Response:
        """Send ``request`` and return its normal response (see module doc for errors).

        ``timeout_s`` counts from the moment the request has been written.
        """
        if request.unit == 0:
            raise ValueError("broadcast (unit 0) gets no response; not supported here")
        reader = ResponseReader(request)
        expected = response_length(request)
        slept = False  # through the answer's line time, once (see below)
        # Bytes still buffered (a late answer to a request that timed out)
        # must not be taken for this request's answer.
        self._transport.reset_input()
        self._transport.write(request.to_bytes())
        deadline_s = self._clock.monotonic_s() + timeout_s
        what = f"unit {request.unit} fn {request.function} @{request.address:#06x}"
        try:
            while True:
                remaining_s = deadline_s - self._clock.monotonic_s()
                if remaining_s <= 0:
                    reader.deadline_passed()
                # Inside a frame, or after a frame that failed its CRC, an
                # empty read means the sender stopped: tell the reader (a frame
                # never spans a silence; a bad CRC then is the answer's).
                listening = reader.in_frame or reader.checksum_failures > 0
                if reader.in_frame and not slept and 0 < expected - reader.bytes_received:
                    slept = True
                    # the rest of the answer cannot be here before its line time: sleep
                    # most of it once, at its first bytes, then take the rest as it
                    # comes, not a read a burst (the margin keeps a late wake-up from
                    # delaying the answer)
                    rest_s = frame_time_s(expected - reader.bytes_received,
                                          self._transport.baudrate) - REST_MARGIN_S
                    if rest_s > 0:
                        self._clock.sleep(min(remaining_s, rest_s))
                wait_s = min(remaining_s, self._gap_s) if listening else remaining_s
                reader.receive_data(self._transport.read(MAX_ADU_BYTES, wait_s))
                event = reader.next_event()
                if isinstance(event, Response):
                    break
        except ModbusIncompleteError as exc:
            raise TimeoutError_(f"{what}: {exc} within {timeout_s:.3f} s") from exc
        except ModbusProtocolError:
            self._drain()
            raise
        if event.exception_code is not None:
            code = event.exception_code
            name = EXCEPTION_NAMES.get(code, "unknown exception")
            raise DeviceException(f"{what}: exception {code} ({name})", code)
        return event

    def _drain(self) -> None:
        deadline_s = self._clock.monotonic_s() + MAX_DRAIN_S
        while self._clock.monotonic_s() < deadline_s:
            if not self._transport.read(MAX_ADU_BYTES, self._gap_s):
                return
