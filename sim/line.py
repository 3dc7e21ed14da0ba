"""The plug-in interface between ``sim.meters`` (ptys, pacing, state file) and one
protocol's simulated devices on one bus.

``sim.meters`` owns the pty: it feeds every byte the agent writes to
``LineServer.receive_data``, calls ``silence()`` when the line has been quiet
for a while (Modbus RTU ends frames on silence), and writes every frame from
``next_reply()`` after the turnaround, paced at the returned baud rate (11
bits a character; IEC 62056-21 switches baud rate mid-session).

Each protocol module offers ``build_bus(bus, meters, env) -> BusBuild``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from agent.clock import Clock
    from agent.config import BusConfig, MeterConfig


class LineServer(Protocol):
    def receive_data(self, data: bytes) -> None:
        """Bytes from the agent (any split)."""
        ...

    def silence(self) -> None:
        """The line has been quiet for a while."""
        ...

    def next_reply(self) -> tuple[bytes, int] | None:
        """The next frame to send and the baud rate to send it at, or None."""
        ...


class SimMeter(Protocol):
    """What the state file, fault injection and relays need of any simulated meter."""

    def advance(self) -> None:
        """Integrate energy up to the clock's now."""
        ...

    def snapshot(self) -> dict[str, int | bool]:
        """At least import_wh, export_wh, p_w, connected."""
        ...


@dataclass(frozen=True)
class SimEnv:
    clock: Clock
    speed: float
    load_scale: float
    seed: int
    utc_offset_s: int


@dataclass
class BusBuild:
    server: LineServer
    meters: dict[str, SimMeter] = field(default_factory=dict)


class BuildBus(Protocol):
    def __call__(self, bus: BusConfig, meters: list[MeterConfig], env: SimEnv) -> BusBuild: ...
