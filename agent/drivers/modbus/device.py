"""Modbus energy meters on a bus, by register map, and the probe a scan sends.

They only build requests and interpret answers; the ``ModbusClient`` below them
does the I/O, the bus scheduler above them decides when. A coil relay module is a
``Relay`` backend: ``agent/relay/modbus_coil.py`` (it shares ``answer_timeout_s``).
"""

from __future__ import annotations

from typing import Final

from agent.clock import Clock
from agent.drivers.modbus.client import ModbusClient
from agent.drivers.modbus.codec import Request, response_length
from agent.drivers.modbus.maps import (
    ReadBlock,
    decode_serial,
    known_models,
    load_map,
    read_plan,
    serial_read,
)
from agent.drivers.reading import Reading
from agent.drivers.transport import Transport, frame_time_s
from agent.errors import DeviceException, DriverError, TimeoutError_

# What a device may take to start answering, on top of the answer's own line
# time. Eastron documents no figure; 0.5 s is generous for meters that
# typically answer within 100 ms, and short enough that one dead meter does
# not stall a 15 s poll cycle of a dozen.
RESPONSE_LATENCY_S: Final = 0.5
# The serial number is read again after this many readings, and after any
# timeout (a swapped meter was off the bus for a while): a replaced meter
# must be noticed so the ledger starts a new baseline instead of billing the jump.
SERIAL_REFRESH_READS: Final = 96


def answer_timeout_s(client: ModbusClient, request: Request, *choices: float | None) -> float:
    """The first given allowance (else RESPONSE_LATENCY_S) plus the answer's line time."""
    return latency_s(*choices) + frame_time_s(response_length(request), client.transport.baudrate)


def latency_s(*choices: float | None) -> float:
    """The first given allowance, else RESPONSE_LATENCY_S."""
    for choice in choices:
        if choice is not None:
            return choice
    return RESPONSE_LATENCY_S


class ModbusMeter:
    """A meter read through its model's register map (``maps/<model>.toml``).

    ``timeout_s`` (constructor default, or per call) is what the meter may
    take to start answering; each request's own line time is added to it.
    """

    def __init__(
        self, client: ModbusClient, unit: int, model: str, *, timeout_s: float | None = None
    ) -> None:
        self._client = client
        self._unit = unit
        self._plan = read_plan(model)
        self._map = self._plan.rmap
        # The plan never changes: its requests are built once, and their answers' line
        # times once per baud rate (see _line_times).
        self._requests = tuple(Request(unit, b.function, b.address, b.count)
                               for b in self._plan.blocks)
        self._baudrate = 0  # what _line_s was worked out for (0: not yet)
        self._line_s: tuple[float, ...] = ()
        self._timeout_s = timeout_s
        self._serial: str | None = None
        self._serial_unsupported = False
        self._reads_since_serial = 0

    @property
    def unit(self) -> int:
        return self._unit

    @property
    def model(self) -> str:
        return self._map.model

    def _read_block(self, block: ReadBlock, timeout_s: float | None) -> dict[int, int]:
        request = Request(self._unit, block.function, block.address, block.count)
        response = self._client.execute(
            request, answer_timeout_s(self._client, request, timeout_s, self._timeout_s)
        )
        addresses = range(block.address, block.address + block.count)
        return dict(zip(addresses, response.values, strict=True))

    def close(self, *, timeout_s: float | None = None) -> None:
        """Nothing to let go of: a Modbus meter keeps no session between requests."""

    def read_serial(self, *, timeout_s: float | None = None) -> str:
        """The meter's serial number (raises DriverError; DeviceException if unsupported)."""
        block = serial_read(self._map)
        if block is None:
            raise DriverError(f"{self._map.model}: no serial number register in the map")
        serial = decode_serial(self._map, self._read_block(block, timeout_s))
        self._serial = serial
        self._reads_since_serial = 0
        return serial

    def read(self, meter_id: str, now_s: int, *, timeout_s: float | None = None) -> Reading:
        """All mapped quantities in contract units; ``serial`` as last read (see module)."""
        try:
            if self._serial_due():
                try:
                    self.read_serial(timeout_s=timeout_s)
                except DeviceException:
                    # The meter rejects the register (old firmware): read no serial
                    # rather than failing every reading.
                    self._serial_unsupported = True
            allowance_s = latency_s(timeout_s, self._timeout_s)
            execute = self._client.execute
            answers = [execute(request, allowance_s + line_s).values
                       for request, line_s in zip(self._requests, self._line_times(), strict=True)]
        except TimeoutError_:
            self._serial = None  # off the bus: it may come back as another meter
            raise
        self._reads_since_serial += 1
        return Reading(
            meter=meter_id, t=now_s, values=self._plan.decode(answers), serial=self._serial
        )

    def _line_times(self) -> tuple[float, ...]:
        """Each request's answer on the line at the transport's (current) baud rate."""
        baudrate = self._client.transport.baudrate
        if baudrate != self._baudrate:
            self._line_s = tuple(frame_time_s(response_length(r), baudrate)
                                 for r in self._requests)
            self._baudrate = baudrate
        return self._line_s

    def _serial_due(self) -> bool:
        if self._serial_unsupported or self._map.serial is None:
            return False
        return self._serial is None or self._reads_since_serial >= SERIAL_REFRESH_READS


def probe(
    transport: Transport, unit: int, *, timeout_s: float, clock: Clock | None = None
) -> str | None:
    """A scan's question to ``unit``: its serial, "" if it answers without one, None if silent.

    Tries the serial registers of the known maps (one request each, the first
    silence ends it); an exception response means a device is there.
    """
    client = ModbusClient(transport, clock=clock)
    blocks = sorted({b for m in known_models() if (b := serial_read(load_map(m))) is not None},
                    key=lambda b: (b.function, b.address))
    for block in blocks:
        request = Request(unit, block.function, block.address, block.count)
        try:
            response = client.execute(request, answer_timeout_s(client, request, timeout_s))
        except TimeoutError_:
            return None
        except DeviceException:
            continue
        rmap = next(load_map(m) for m in known_models() if serial_read(load_map(m)) == block)
        addresses = range(block.address, block.address + block.count)
        return decode_serial(rmap, dict(zip(addresses, response.values, strict=True)))
    return ""
