"""One coil of a Modbus relay module as a ``Relay`` (relay kind ``modbus-coil``,
CONTRACT 2: ``modbus-coil:[<bus>:]<unit>:<coil>``); coil ON means supply connected.

Write Single Coil (function 5; the device's echo is checked by the codec), read it
back with Read Coils (function 1). The module sits on an RS-485 line and is switched
by that line's bus, through the bus's shared ``ModbusClient``, one frame at a time.
"""

from __future__ import annotations

from agent.drivers.modbus.client import ModbusClient
from agent.drivers.modbus.codec import Request
from agent.drivers.modbus.device import answer_timeout_s


class ModbusCoilRelay:
    """``timeout_s`` as for ``ModbusMeter``: what the module may take to start
    answering; each request's own line time is added."""

    def __init__(self, client: ModbusClient, unit: int, coil: int, *,
                 timeout_s: float | None = None) -> None:
        self.name = f"modbus-coil:{unit}:{coil}"
        self._client = client
        self._unit = unit
        self._coil = coil
        self._timeout_s = timeout_s

    def switch(self, connect: bool) -> None:
        request = Request(self._unit, 5, self._coil, values=(1 if connect else 0,))
        self._client.execute(request, answer_timeout_s(self._client, request, self._timeout_s))

    def read(self) -> str:
        request = Request(self._unit, 1, self._coil, 1)
        response = self._client.execute(
            request, answer_timeout_s(self._client, request, self._timeout_s))
        return "closed" if response.values[0] == 1 else "open"

    def close(self) -> None:
        pass
