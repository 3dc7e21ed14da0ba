"""The gateway's buses: one ``BusScheduler`` per ``[[bus]]`` of the config, by name.

Each bus polls the meters on it and switches the relays wired to it: a meter's own
breaker on its bus, or a relay on another bus (``config.relay_bus``: a Modbus coil
module, say), so every bus is given both lists and given them again when the meters
change (``meter_add`` / ``meter_remove``). A bus whose thread died is made again from
the dead one's lists (the supervisor asks, after its back-off), its meters offline
until it reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from agent.clock import Clock
from agent.config import Config, MeterConfig, relay_bus
from agent.drivers.bus import BusScheduler


def on_bus(name: str, meters: tuple[MeterConfig, ...]
           ) -> tuple[list[MeterConfig], list[MeterConfig]]:
    """(the meters on bus ``name``, the other buses' meters whose relay is on it)."""
    return ([m for m in meters if m.bus == name],
            [m for m in meters if m.bus != name and relay_bus(m) == name])


class Buses(Mapping[str, BusScheduler]):
    """The bus schedulers by name; a restart replaces one in place, so a reader holding
    this mapping sees the new one."""

    def __init__(self, cfg: Config, meters: tuple[MeterConfig, ...], post: Callable[[Any], None],
                 clock: Clock, make_bus: Callable[..., BusScheduler] = BusScheduler) -> None:
        """``post``: into the runtime's inbox. ``make_bus``: a simulation's stand-in."""
        self.cfg = cfg
        self.post = post
        self.clock = clock
        self.make_bus = make_bus
        self._buses: dict[str, BusScheduler] = {}
        for bus in cfg.buses:
            on, relayed = on_bus(bus.name, meters)
            self._buses[bus.name] = make_bus(bus, on, post, **self._options(relayed))

    def __getitem__(self, name: str) -> BusScheduler:
        return self._buses[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._buses)

    def __len__(self) -> int:
        return len(self._buses)

    def _options(self, relayed: list[MeterConfig]) -> dict[str, Any]:
        """What every bus is made with: DLMS invocation counters live under the data dir
        (durable across power loss), meters see the gateway's own system title."""
        return {"clock": self.clock, "relayed": relayed, "data_dir": self.cfg.gateway.data_dir,
                "system_title": self.cfg.gateway.system_title}

    def set_meters(self, meters: tuple[MeterConfig, ...]) -> None:
        """The gateway's meters changed: each bus gets its own and those it switches."""
        for name, bus in self._buses.items():
            bus.set_meters(*on_bus(name, meters))

    def read_now(self, meter: MeterConfig, ref: str) -> bool:
        """A head-end's ``read`` command: the meter's bus reads it next (ReadDone)."""
        return self._buses[meter.bus].read_now(meter.id, ref)

    def switch_relay(self, meter: MeterConfig, connected: bool) -> bool:
        """The bus the meter's relay is wired to switches it."""
        return self._buses[relay_bus(meter)].switch_relay(meter.id, connected)

    def restart(self, name: str) -> None:
        """A bus thread died: a new one with the dead one's meters, offline until read."""
        old = self._buses[name]
        meters, relayed = list(old.meters.values()), list(old.relayed.values())
        bus = self.make_bus(old.bus, meters, self.post, **self._options(relayed))
        bus.mark_offline(m.id for m in meters)
        self._buses[name] = bus
        bus.start()
