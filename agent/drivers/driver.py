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
checked with ``isinstance``, because most Modbus and IEC meters have neither.

Protocols and their devices:
    modbus        ModbusMeter (agent.drivers.modbus.device), register map by model
    iec62056-21   IecMeter (agent.drivers.iec62056.device), OBIS readout
    dlms          DlmsMeter (agent.drivers.dlms.device), imported lazily: it is
                  delivered separately and the other protocols must not need it
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

from agent.drivers.reading import Reading
from agent.errors import DriverError, PortError, SecurityError
from agent.vocab import PROTOCOLS, TAMPER_KINDS

if TYPE_CHECKING:
    from pathlib import Path

    from agent.clock import Clock
    from agent.config import MeterConfig
    from agent.drivers.modbus.client import ModbusClient
    from agent.drivers.transport import Transport

RELAY_TRIES: Final = 3  # switch + read back; then RelaySwitched carries the last error


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


class CoilRelay(Protocol):
    """A relay module's coil (``ModbusCoilRelay``; the simulation has its own)."""

    def set_connected(self, connected: bool, *, timeout_s: float | None = None) -> None: ...

    def read_connected(self, *, timeout_s: float | None = None) -> bool: ...


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


def switch_meter_relay(
    driver: MeterDriver | None, connected: bool, timeout_s: float
) -> tuple[str, str]:
    """Switch a meter's own breaker and read it back: (state, "") or ("", error).

    For a connect request "armed" (ready for reconnection: the consumer closes the
    breaker on the meter) is all the meter will do remotely, so it counts as done.
    """
    if not isinstance(driver, RelayDriver):
        return "", "this meter's driver has no relay (relay kind 'meter')"
    error = ""
    for _ in range(RELAY_TRIES):
        try:
            driver.relay_set(connected, timeout_s=timeout_s)
            state = driver.relay_state(timeout_s=timeout_s)
        except (PortError, SecurityError):
            raise  # no retry: the port is gone (the bus reopens it), or the meter is not
            # who it should be, or the keys are wrong (the bus reports it, switches nothing)
        except DriverError as exc:
            error = str(exc)
            continue
        if (state in ("closed", "armed")) if connected else state == "open":
            return state, ""
        error = f"read back {state}"
    return "", error


def switch_coil(relay: CoilRelay, connected: bool, timeout_s: float) -> tuple[str, str]:
    """Switch a Modbus relay module's coil and read it back: (state, "") or ("", error)."""
    error = ""
    for _ in range(RELAY_TRIES):
        try:
            relay.set_connected(connected, timeout_s=timeout_s)
            actual = relay.read_connected(timeout_s=timeout_s)
        except (PortError, SecurityError):
            raise  # no retry: the port is gone (the bus reopens it), or the meter is not
            # who it should be, or the keys are wrong (the bus reports it, switches nothing)
        except DriverError as exc:
            error = str(exc)
            continue
        if actual == connected:
            return ("closed" if actual else "open"), ""
        error = f"read back {'connected' if actual else 'disconnected'}"
    return "", error
