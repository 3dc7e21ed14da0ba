"""Modbus RTU on one simulated bus: the ``build_bus`` plug-in for ``sim.meters``.

Every ``[[meter]]`` of the bus is a simulated Eastron meter at its
``address`` (the model picks SDM120 or SDM630; an unknown model is served as
an SDM120); a meter whose relay is ``modbus-coil:[<bus>:]<unit>:<coil>`` is
gated by a simulated coil module at that unit of that bus (coils start ON), a
meter of another bus too (``attach_relays``, called by ``sim.meters``). A request to an absent
unit, or to a meter set silent, gets no reply, as on a real bus; broadcasts
(unit 0) are acted on by every device and answered by none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from agent.drivers.modbus.codec import ModbusProtocolError, Request, RequestReader
from sim.line import BusBuild, FramedLineServer, SimEnv, SimMeter
from sim.load import LoadModel, serial_number
from sim.modbus_device import SimCoilModule, SimDevice, SimEastronMeter, SimSDM120, SimSDM630

if TYPE_CHECKING:
    from agent.config import BusConfig, MeterConfig


MODELS: Final = {"eastron-sdm120": SimSDM120, "eastron-sdm630": SimSDM630}
COILS_PER_MODULE: Final = 8


class ModbusLineServer(FramedLineServer):
    """Requests in (any split), replies out at the bus's baud rate."""

    def __init__(self, devices: dict[int, SimDevice], baudrate: int) -> None:
        super().__init__(RequestReader(), Request, ModbusProtocolError, baudrate)
        self.devices = devices

    def answer(self, request: Request) -> bytes | None:
        if request.unit == 0:  # broadcast: every device acts, none answers
            for each in self.devices.values():
                each.handle(request)
            return None
        device = self.devices.get(request.unit)
        response = device.handle(request) if device is not None else None
        return response.to_bytes() if response is not None else None


def build_bus(bus: BusConfig, meters: list[MeterConfig], env: SimEnv) -> BusBuild:
    devices: dict[int, SimDevice] = {}
    by_id: dict[str, SimEastronMeter] = {}
    for index, m in enumerate(meters):
        cls = MODELS.get(m.model, SimSDM120)
        if m.address in devices:
            raise ValueError(f"bus {bus.name}: two devices at unit {m.address}")
        meter = cls(
            m.address,
            clock=env.clock,
            serial=serial_number(env.seed, m.id),
            seed=env.seed * 1000 + index,
            speed=env.speed,
            load_scale=env.load_scale,
            utc_offset_s=env.utc_offset_s,
        )
        devices[m.address] = meter
        by_id[m.id] = meter
    server = ModbusLineServer(devices, bus.baudrate)
    attach_relays(bus, server, [(m, by_id[m.id]) for m in meters
                                if m.relay_spec.bus in (None, bus.name)])
    sim_meters: dict[str, SimMeter] = dict(by_id)
    return BusBuild(server=server, meters=sim_meters)


def attach_relays(bus: BusConfig, server: ModbusLineServer,
                  gated: list[tuple[MeterConfig, SimMeter]]) -> None:
    """A coil module on this bus for each ``modbus-coil`` relay of ``gated``: the bus's own
    meters, and meters of other buses (an IEC meter) whose module is on this one."""
    for m, meter in gated:
        spec = m.relay_spec
        if spec.kind != "modbus-coil":
            continue
        assert spec.unit is not None and spec.coil is not None
        module = server.devices.get(spec.unit)
        if module is None:
            module = server.devices[spec.unit] = SimCoilModule(spec.unit, COILS_PER_MODULE)
        if not isinstance(module, SimCoilModule):
            raise ValueError(f"bus {bus.name}: unit {spec.unit} is a meter and a relay")
        assert isinstance(meter, LoadModel)
        module.attach(spec.coil, meter)
