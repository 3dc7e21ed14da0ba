"""The protocol registry: everything the agent outside a protocol's package knows of
that protocol, written once (``REGISTRY``, one ``ProtocolSpec`` each). Config, the
bus, the driver factory and scan ask it; none of them branches on a protocol's name.

    protocol     data bits   shared client   a probe of an absent address holds the bus
    modbus       8           ModbusClient    timeout + 17 chars at the bus's baud + 10 ms
    iec62056-21  7 (7E1,     -               timeout + the 8-char sign-on at 300 baud
                 6.2 of the standard)        (mode C always signs on at 300 baud)
    dlms         8           -               timeout + 17 chars at the bus's baud + 10 ms

Only a Modbus bus carries coil relay modules (``modbus-coil``); only DLMS meters take
the ``[[meter]]`` keys ``password_file``, ``client``, ``system_title``, ``ek_file``,
``ak_file`` and ``security``.

A leaf: at import time it imports no protocol package and nothing above the drivers
(config imports it; a test checks the import graph). Each spec loads its driver
module when first asked; DLMS is delivered separately, so its absence is reported
(``available``), never an import error. The parity is the config's (``[[bus]]
parity``); ``bytesize`` is the protocol's.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final, Protocol

from agent.errors import DriverError
from agent.vocab import PROTOCOLS

if TYPE_CHECKING:
    from agent.clock import Clock
    from agent.drivers.driver import MeterDriver
    from agent.drivers.transport import Transport


class MeterParams(Protocol):
    """What a driver factory reads of a ``[[meter]]`` (``config.MeterConfig`` is one)."""

    @property
    def id(self) -> str: ...
    @property
    def address(self) -> int: ...
    @property
    def model(self) -> str: ...
    @property
    def password_file(self) -> Path | None: ...
    @property
    def client(self) -> int | None: ...
    @property
    def system_title(self) -> bytes | None: ...
    @property
    def ek_file(self) -> Path | None: ...
    @property
    def ak_file(self) -> Path | None: ...
    @property
    def security(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class ProtocolSpec:
    name: str  # as a [[bus]] protocol names it (vocab.PROTOCOLS)
    title: str  # as messages name it
    package: str  # the driver package, imported when a driver or probe is first needed
    bytesize: int  # data bits on the line
    probe_chars: int  # characters on the line for a probe of an absent address
    probe_baud: int | None  # the baud rate they go at; None: the bus's
    probe_slack_s: float  # besides the answer allowance and the characters
    driver_factory: Callable[..., MeterDriver]  # (spec, transport, meter, **options)
    text_address: bool = False  # its device address is text (IEC 62056-21's sign-on)
    meter_keys: tuple[str, ...] = ()  # [[meter]] keys for this protocol's meters only
    coil_modules: bool = False  # a bus of it may carry Modbus coil relay modules
    bus_client: bool = False  # its devices share one client over the bus (ModbusClient)

    def module(self, name: str = "device") -> ModuleType:
        """``<package>.<name>``; DriverError if the protocol's driver is not installed."""
        try:
            return importlib.import_module(f"{self.package}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name is not None and exc.name.startswith(self.package):
                raise DriverError(f"the {self.title} driver ({self.package}.device) is not "
                                  "installed") from exc
            raise

    @property
    def available(self) -> bool:
        """Is the protocol's driver installed (DLMS is delivered separately)?"""
        try:
            self.module()
        except DriverError:
            return False
        return True

    def client(self, transport: Transport, clock: Clock | None = None) -> Any:
        """The client the bus's devices share (``bus_client``), else None."""
        if not self.bus_client:
            return None
        return self.module("client").ModbusClient(transport, clock=clock)

    def make_driver(self, transport: Transport, meter: MeterParams, *, client: Any = None,
                    clock: Clock | None = None, data_dir: Path | None = None,
                    system_title: bytes | None = None) -> MeterDriver:
        """The device driver for ``meter`` on a bus of this protocol.

        Modbus devices share the bus's ``client`` (made from ``transport`` if None).
        DLMS meters with HLS keys keep their invocation counters under ``data_dir``
        (memory only if None) and present ``system_title`` (the gateway's) to the meter.
        """
        return self.driver_factory(self, transport, meter, client=client, clock=clock,
                                   data_dir=data_dir, system_title=system_title)

    def probe(self, transport: Transport, address: int, *, timeout_s: float,
              clock: Clock | None = None) -> str | None:
        """Is a meter at ``address``? Its serial ("" if it answers but has none), or None.

        Only "nothing answered" is None; a garbled answer raises (the caller may retry).
        """
        device = self.module()
        where: int | str = str(address) if self.text_address else address
        found: str | None = device.probe(transport, where, timeout_s=timeout_s, clock=clock)
        return found

    def probe_cost_s(self, baudrate: int, timeout_s: float) -> float:
        """About what one probe of an absent address holds the bus: its answer allowance,
        its characters on the line, the slack."""
        from agent.drivers.transport import frame_time_s

        return timeout_s + frame_time_s(self.probe_chars, self.probe_baud or baudrate) \
            + self.probe_slack_s


def _modbus_driver(spec: ProtocolSpec, transport: Transport, meter: MeterParams, *,
                   client: Any, clock: Clock | None, **_dlms: Any) -> MeterDriver:
    device = spec.module()
    driver: MeterDriver = device.ModbusMeter(client or spec.client(transport, clock),
                                             meter.address, meter.model)
    return driver


def _iec_driver(spec: ProtocolSpec, transport: Transport, meter: MeterParams, *,
                clock: Clock | None, **_others: Any) -> MeterDriver:
    driver: MeterDriver = spec.module().IecMeter(transport, str(meter.address), clock=clock)
    return driver


def _dlms_driver(spec: ProtocolSpec, transport: Transport, meter: MeterParams, *,
                 clock: Clock | None, data_dir: Path | None, system_title: bytes | None,
                 **_others: Any) -> MeterDriver:
    driver: MeterDriver = spec.module("params").dlms_meter_from_config(
        transport, meter, data_dir=data_dir, system_title=system_title, clock=clock)
    return driver


REGISTRY: Final[dict[str, ProtocolSpec]] = {s.name: s for s in (
    ProtocolSpec("modbus", "Modbus", "agent.drivers.modbus", bytesize=8, probe_chars=8 + 9,
                 probe_baud=None, probe_slack_s=0.01, driver_factory=_modbus_driver,
                 coil_modules=True, bus_client=True),
    ProtocolSpec("iec62056-21", "IEC 62056-21", "agent.drivers.iec62056", bytesize=7,
                 probe_chars=8, probe_baud=300, probe_slack_s=0.0, driver_factory=_iec_driver,
                 text_address=True),
    ProtocolSpec("dlms", "DLMS", "agent.drivers.dlms", bytesize=8, probe_chars=8 + 9,
                 probe_baud=None, probe_slack_s=0.01, driver_factory=_dlms_driver,
                 meter_keys=("password_file", "client", "system_title", "ek_file", "ak_file",
                             "security")),
)}
assert tuple(REGISTRY) == PROTOCOLS, "the registry names the contract's protocols, in order"


def protocol_spec(name: str) -> ProtocolSpec:
    """The spec of ``name``; DriverError naming the known protocols if there is none."""
    found = REGISTRY.get(name)
    if found is None:
        raise DriverError(f"unknown protocol {name!r}; known: {', '.join(REGISTRY)}")
    return found
