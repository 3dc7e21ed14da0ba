"""An IEC 62056-21 mode C meter on a bus: one data readout session per reading.

Session (IEC 62056-21:2002 6.4.3, mode C):
  1. at 300 baud (the initial speed), send ``/?address!``;
  2. the meter answers its identification, offering up to baud rate Z;
  3. send ``ACK 0 Z' 0`` (data readout) with Z' = the lower of the meter's
     offer and the bus's configured speed, then switch to Z';
  4. the meter sends the data message at Z' (BCC checked), and returns to
     300 baud; so do we.
A transport that cannot change speed (no ``set_baudrate``) keeps its speed
and selects it in step 3 (meters configured with a non-standard initial
speed on a fixed-speed line).

Timing: ``timeout_s`` is what the meter may take to start each answer
(the standard's reaction time is 200 ms to 1.5 s); while bytes keep coming
an answer may pause up to ``INTER_CHAR_S`` (the standard's t_a); after a
BCC failure a ``SILENCE_GAP_S`` pause ends the wait (that was the answer).
"""

from __future__ import annotations

from typing import Final

from agent.clock import Clock, SystemClock
from agent.drivers.iec62056.codec import (
    BAUD_RATES,
    INITIAL_BAUD,
    NEED_DATA,
    DataMessage,
    DataReader,
    Identification,
    IdentificationReader,
    IecIncompleteError,
    baud_char,
    encode_ack,
    encode_request,
)
from agent.drivers.iec62056.obis import serial_of, to_values
from agent.drivers.reading import Reading
from agent.drivers.transport import BaudSwitchable, Transport, character_time_s, frame_time_s
from agent.errors import DriverError, PortError, TimeoutError_

RESPONSE_LATENCY_S: Final = 1.5  # the standard's longest reaction time t_r
INTER_CHAR_S: Final = 1.5  # t_a: the longest pause inside one answer
SILENCE_GAP_S: Final = 0.05  # plus 4 characters: a quiet line after a bad BCC
READ_CHUNK: Final = 4096


class IecMeter:
    """A mode C meter at ``address`` (the device address of its sign-on)."""

    def __init__(
        self,
        transport: Transport,
        address: str,
        *,
        clock: Clock | None = None,
        timeout_s: float | None = None,
        initial_baud: int = INITIAL_BAUD,
        max_baud: int | None = None,
    ) -> None:
        self._transport = transport
        self._address = address
        self._clock: Clock = clock or SystemClock()
        self._timeout_s = timeout_s
        self._initial_baud = initial_baud
        # The bus's configured speed is the fastest we select: the wiring was
        # rated for it.
        self._max_baud = max_baud or transport.baudrate
        self.last_identification: Identification | None = None

    @property
    def address(self) -> str:
        return self._address

    def _switch(self, baudrate: int) -> None:
        if isinstance(self._transport, BaudSwitchable):
            self._transport.set_baudrate(baudrate)

    def _choose_baud(self, offered: int) -> int:
        if not isinstance(self._transport, BaudSwitchable):
            return self._transport.baudrate
        rates = [r for r in BAUD_RATES.values() if r <= min(offered, self._max_baud)]
        return max(rates) if rates else INITIAL_BAUD

    def readout(self, *, timeout_s: float | None = None) -> DataMessage:
        """One data readout session (see module doc); raises DriverError subclasses."""
        latency_s = next(t for t in (timeout_s, self._timeout_s, RESPONSE_LATENCY_S)
                         if t is not None)
        original = self._transport.baudrate
        try:
            self._switch(self._initial_baud)
            self._transport.reset_input()
            ident = self._await(IdentificationReader(),
                                self._send(encode_request(self._address), latency_s),
                                "identification")
            assert isinstance(ident, Identification)
            self.last_identification = ident
            chosen = self._choose_baud(ident.baudrate)
            allowance_s = self._send(encode_ack(baud_char(chosen)), latency_s)
            self._switch(chosen)  # the ACK has left: both sides now talk at ``chosen``
            message = self._await(DataReader(), allowance_s, "data message")
            assert isinstance(message, DataMessage)
            return message
        finally:
            self._switch(original)

    def _send(self, frame: bytes, latency_s: float) -> float:
        """Write ``frame``; the answer's allowance: the meter's latency counts from when
        the frame has left the line, and a port's flush may return before that (a USB
        adapter's buffer; a pty at once): at 300 baud a sign-on takes 0.22 s."""
        self._transport.write(frame)
        return latency_s + frame_time_s(len(frame), self._transport.baudrate)

    def _await(
        self, reader: IdentificationReader | DataReader, latency_s: float, what: str
    ) -> Identification | DataMessage:
        gap_s = SILENCE_GAP_S + 4 * character_time_s(self._transport.baudrate)
        deadline_s = self._clock.monotonic_s() + latency_s
        what = f"device {self._address!r}: {what}"
        try:
            while True:
                remaining_s = deadline_s - self._clock.monotonic_s()
                if remaining_s <= 0:
                    reader.deadline_passed(what)
                wait_s = min(remaining_s, gap_s) if reader.checksum_failures else remaining_s
                data = self._transport.read(READ_CHUNK, wait_s)
                if data:
                    deadline_s = max(deadline_s, self._clock.monotonic_s() + INTER_CHAR_S)
                reader.receive_data(data)
                event = reader.next_event()
                if event is not NEED_DATA:
                    assert isinstance(event, Identification | DataMessage)
                    return event
        except IecIncompleteError as exc:
            raise TimeoutError_(str(exc)) from exc

    def read(self, meter_id: str, now_s: int, *, timeout_s: float | None = None) -> Reading:
        message = self.readout(timeout_s=timeout_s)
        return Reading(meter=meter_id, t=now_s, values=to_values(message.datasets),
                       serial=serial_of(message.datasets))

    def close(self, *, timeout_s: float | None = None) -> None:
        """Nothing to let go of: each IEC 62056-21 readout is a session of its own, ended
        by the meter."""

    def read_serial(self, *, timeout_s: float | None = None) -> str:
        serial = serial_of(self.readout(timeout_s=timeout_s).datasets)
        if serial is None:
            raise DriverError(f"device {self._address!r}: the readout carries no serial number")
        return serial


def probe(
    transport: Transport, address: str, *, timeout_s: float, clock: Clock | None = None
) -> str | None:
    """A scan's question: the serial at ``address``, "" if it answers without one, None if
    nothing answers the sign-on."""
    meter = IecMeter(transport, address, clock=clock, timeout_s=timeout_s)
    try:
        return serial_of(meter.readout().datasets) or ""
    except TimeoutError_:
        if meter.last_identification is None:
            return None
        return ""
    except PortError:
        raise
    except DriverError:
        if meter.last_identification is None:
            raise
        return ""
