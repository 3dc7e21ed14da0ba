"""The one interface every protocol's meter device implements, and the factory.

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

Protocols and their devices:
    modbus        ModbusMeter (agent.drivers.modbus.device), register map by model
    iec62056-21   IecMeter (agent.drivers.iec62056.device), OBIS readout
    dlms          DlmsMeter (agent.drivers.dlms.device), imported lazily: it is
                  delivered separately and the other protocols must not need it
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from agent.drivers.reading import Reading
from agent.errors import DriverError
from agent.vocab import PROTOCOLS, TAMPER_KINDS

if TYPE_CHECKING:
    from pathlib import Path

    from agent.clock import Clock
    from agent.config import MeterConfig
    from agent.drivers.modbus.client import ModbusClient
    from agent.drivers.transport import Transport

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


def _dlms_module(name: str = "device") -> Any:
    try:
        return importlib.import_module(f"agent.drivers.dlms.{name}")
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.startswith("agent.drivers.dlms"):
            raise DriverError("the DLMS driver (agent.drivers.dlms.device) is not installed") \
                from exc
        raise


def available(protocol: str) -> bool:
    """Is the driver of ``protocol`` installed (DLMS is delivered separately)?"""
    if protocol != "dlms":
        return protocol in PROTOCOLS
    try:
        _dlms_module()
    except DriverError:
        return False
    return True


def make_driver(
    protocol: str,
    transport: Transport,
    meter: MeterConfig,
    *,
    client: ModbusClient | None = None,
    clock: Clock | None = None,
    data_dir: Path | None = None,
    system_title: bytes | None = None,
) -> MeterDriver:
    """The device driver for ``meter`` on a bus speaking ``protocol``.

    Modbus devices share the bus's ``client`` (made from ``transport`` if None).
    DLMS meters with HLS keys keep their invocation counters under ``data_dir``
    (memory only if None) and present ``system_title`` (the gateway's) to the meter.
    """
    if protocol == "modbus":
        from agent.drivers.modbus.client import ModbusClient
        from agent.drivers.modbus.device import ModbusMeter

        return ModbusMeter(client or ModbusClient(transport, clock=clock), meter.address,
                           meter.model)
    if protocol == "iec62056-21":
        from agent.drivers.iec62056.device import IecMeter

        return IecMeter(transport, str(meter.address), clock=clock)
    if protocol == "dlms":
        driver: MeterDriver = _dlms_module("params").dlms_meter_from_config(
            transport, meter, data_dir=data_dir, system_title=system_title, clock=clock)
        return driver
    raise DriverError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")


def probe(protocol: str, transport: Transport, address: int, *, timeout_s: float,
          clock: Clock | None = None) -> str | None:
    """Is a meter at ``address``? Its serial ("" if it answers but has none), or None.

    Only "nothing answered" is None; a garbled answer raises (the caller may retry).
    """
    if protocol == "modbus":
        from agent.drivers.modbus.device import probe as modbus_probe

        return modbus_probe(transport, address, timeout_s=timeout_s, clock=clock)
    if protocol == "iec62056-21":
        from agent.drivers.iec62056.device import probe as iec_probe

        return iec_probe(transport, str(address), timeout_s=timeout_s, clock=clock)
    if protocol == "dlms":
        found: str | None = _dlms_module().probe(transport, address, timeout_s=timeout_s,
                                                 clock=clock)
        return found
    raise DriverError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
