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

Waking once an answer: every wake-up of the bus thread costs more CPU than the
codec's work on the frame (issue 14), and a line delivers an answer in bursts (a
UART's FIFO, a USB adapter's latency timer, the simulator's slices). So the client
learns, for each unit, how long after its request was written an answer's bytes
arrive beyond their own line time (the meter's turnaround, the request's line time
where the write returns before it has left, the adapter's delay): its lag, measured
at the answer's first bytes. A unit whose lag is known is slept through to the end of
its answer (lag + the answer's line time + ``LAG_MARGIN_S``) in one go and read once.
The answer is watched as it comes (and the lag measured again) the first time, every
``RELEARN_EVERY`` answers (a meter that got quicker is not waited for too long), and
whenever the answer was not all there at the wake-up (a slower meter: the rest is read
as it comes, and the lag is taken from its last byte, so the next sleep covers it). A
unit that does not answer changes nothing learned. Bound: one lag a unit (1..247).
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
from agent.drivers.sansio import NEED_DATA, NeedData
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
# A unit's answer is slept through to its learned end and this much longer (see above).
LAG_MARGIN_S: Final = 0.0005
# Of a unit's answers, one in this many is watched as it comes and its lag measured.
RELEARN_EVERY: Final = 32

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


def _what(request: Request) -> str:
    return f"unit {request.unit} fn {request.function} @{request.address:#06x}"


class ModbusClient:
    def __init__(self, transport: Transport, clock: Clock | None = None) -> None:
        self._transport = transport
        self._clock: Clock = clock or SystemClock()
        self._gap_s = FRAME_GAP_S + silent_interval_s(transport.baudrate)
        self._lag_s: dict[int, float] = {}  # unit -> learned lag (module doc)
        self._slept_through: dict[int, int] = {}  # unit -> answers slept through since watched

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
        baudrate = self._transport.baudrate
        slept = False  # through the answer's line time, once (see below)
        # Bytes still buffered (a late answer to a request that timed out)
        # must not be taken for this request's answer.
        self._transport.reset_input()
        self._transport.write(request.to_bytes())
        written_s = self._clock.monotonic_s()
        deadline_s = written_s + timeout_s
        line_s = frame_time_s(expected, baudrate)
        first_s, first_bytes = 0.0, 0  # when the first bytes came, watched, and how many
        try:
            event = self._slept_answer(request.unit, reader, written_s, line_s, deadline_s)
            missed = event is NEED_DATA  # slept through, and the answer was not all there
            while not isinstance(event, Response):
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
                                          baudrate) - REST_MARGIN_S
                    if rest_s > 0:
                        self._clock.sleep(min(remaining_s, rest_s))
                wait_s = min(remaining_s, self._gap_s) if listening else remaining_s
                data = self._transport.read(MAX_ADU_BYTES, wait_s)
                if data and not first_bytes:
                    first_s, first_bytes = self._clock.monotonic_s(), len(data)
                reader.receive_data(data)
                event = reader.next_event()
            if first_bytes and event.exception_code is None:
                self._learn(request.unit, written_s, line_s, missed, first_s,
                            frame_time_s(first_bytes, baudrate))
        except ModbusIncompleteError as exc:
            raise TimeoutError_(f"{_what(request)}: {exc} within {timeout_s:.3f} s") from exc
        except ModbusProtocolError:
            self._drain()
            raise
        if event.exception_code is not None:
            code = event.exception_code
            name = EXCEPTION_NAMES.get(code, "unknown exception")
            raise DeviceException(f"{_what(request)}: exception {code} ({name})", code)
        return event

    def _learn(self, unit: int, written_s: float, line_s: float, missed: bool,
               first_s: float, first_line_s: float) -> None:
        """A watched answer's lag: from when its first bytes came (less their own line
        time; the later bytes' jitter does not count), or, after a sleep that woke too
        early, from when its last byte came, so that the next sleep covers this one."""
        if missed:
            lag_s = self._clock.monotonic_s() - written_s - line_s
        else:
            lag_s = first_s - written_s - first_line_s
        self._lag_s[unit] = max(0.0, lag_s)
        self._slept_through[unit] = 0

    def _slept_answer(self, unit: int, reader: ResponseReader, written_s: float,
                      line_s: float, deadline_s: float) -> Response | NeedData | None:
        """The answer read once after sleeping to its learned end (module doc); None: the
        answer is to be watched as it comes; NEED_DATA: it was not all there at the
        wake-up (what was read is fed to ``reader``), watch the rest."""
        lag_s = self._lag_s.get(unit)
        if lag_s is None or self._slept_through.get(unit, 0) >= RELEARN_EVERY:
            return None
        # An answer already there came with the write (an in-memory line, the
        # simulation's): nothing to sleep through. On a wire this finds nothing, at the
        # cost of one select().
        data = self._transport.read(MAX_ADU_BYTES, 0.0)
        if not data:
            now_s = self._clock.monotonic_s()
            if now_s >= deadline_s:
                return None
            self._clock.sleep(min(deadline_s, written_s + lag_s + line_s + LAG_MARGIN_S)
                              - now_s)
            data = self._transport.read(MAX_ADU_BYTES, 0.0)
        reader.receive_data(data)
        event = reader.next_event()
        if isinstance(event, Response):
            self._slept_through[unit] = self._slept_through.get(unit, 0) + 1
        else:
            self._slept_through[unit] = RELEARN_EVERY  # not all there: watched, learned
        return event

    def _drain(self) -> None:
        deadline_s = self._clock.monotonic_s() + MAX_DRAIN_S
        while self._clock.monotonic_s() < deadline_s:
            if not self._transport.read(MAX_ADU_BYTES, self._gap_s):
                return
