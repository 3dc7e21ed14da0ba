"""The one interface every protocol's meter device implements (the factory that makes
one for a protocol is its ``ProtocolSpec``'s, in ``protocol.py``).

    MeterDriver     read(meter_id, now_s, *, timeout_s) -> Reading
                    read_serial(*, timeout_s) -> str
    RelayDriver     relay_set(connected, *, timeout_s); relay_state(*, timeout_s)
                    -> "closed" | "open" | "armed"          (relay kind "meter")
    EventDriver     read_events(*, timeout_s) -> list[MeterEvent]   (tamper log)

A driver owns no thread and never decides when to talk: the bus scheduler
calls it, one call at a time, and a call returns or raises a ``DriverError``
(``ChecksumError``, ``ProtocolError``, ``TimeoutError_``, ``DeviceException``).
``timeout_s`` is what the meter may take to start answering; each driver adds
its own frames' line time. Relay and event support are separate protocols,
checked with ``isinstance``, because most Modbus and IEC meters have neither. A
``RelayDriver`` is switched as a ``Relay`` through ``agent.relay.meter``; the try
count is ``agent.relay.base``'s.

Protocols and their devices (``protocol.REGISTRY``):
    modbus        ModbusMeter (agent.drivers.modbus.device), register map by model
    iec62056-21   IecMeter (agent.drivers.iec62056.device), OBIS readout
    dlms          DlmsMeter (agent.drivers.dlms.device), imported lazily: it is
                  delivered separately and the other protocols must not need it
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from agent.drivers.reading import Reading
from agent.vocab import TAMPER_KINDS


@dataclass(frozen=True, slots=True)
class MeterEvent:
    """One entry of a meter's event log, as a CONTRACT 5 tamper event needs it."""

    kind: str  # one of TAMPER_KINDS
    code: int  # the meter's own event code (IS 15959: 201 magnet, 251 cover open ...)
    t: int  # Unix seconds UTC, the meter's time stamp of the event

    def __post_init__(self) -> None:
        assert self.kind in TAMPER_KINDS, self.kind


@runtime_checkable
class MeterDriver(Protocol):
    def read(self, meter_id: str, now_s: int, *, timeout_s: float | None = None) -> Reading:
        """Every quantity the meter measures, in contract units, with its serial if known."""
        ...

    def read_serial(self, *, timeout_s: float | None = None) -> str:
        """The meter's serial number."""
        ...

    def close(self, *, timeout_s: float | None = None) -> None:
        """Let go of the meter at a clean stop (DLMS: release the association); the
        transport is closed by the bus after it."""
        ...


@runtime_checkable
class RelayDriver(Protocol):
    def relay_set(self, connected: bool, *, timeout_s: float | None = None) -> None:
        """Ask the meter's own breaker to connect (True) or disconnect the supply."""
        ...

    def relay_state(self, *, timeout_s: float | None = None) -> str:
        """"closed" (supply on), "open" (off) or "armed" (ready for reconnection)."""
        ...


@runtime_checkable
class EventDriver(Protocol):
    def read_events(self, *, timeout_s: float | None = None) -> list[MeterEvent]:
        """The tamper entries of the meter's event log (recent ones, oldest first)."""
        ...
