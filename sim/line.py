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

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

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


class FrameReader(Protocol):
    """A sans-IO reader: ``receive_data(b"")`` means the line went silent."""

    def receive_data(self, data: bytes) -> None: ...

    def next_event(self) -> object: ...


class FramedLineServer:
    """A ``LineServer`` for a request/answer protocol: frames in through a sans-IO reader,
    one answer per frame queued out at the bus's baud rate. Subclasses answer a frame.

    Bound: ``MAX_PENDING_REPLIES`` answers wait; when requests come faster than the line
    carries answers, the oldest waiting answer is dropped (as a real bus would lose it).
    """

    MAX_PENDING_REPLIES = 16

    def __init__(self, reader: FrameReader, frame_type: type, error: type[Exception],
                 baudrate: int) -> None:
        self.baudrate = baudrate
        self._reader = reader
        self._frame_type = frame_type
        self._error = error
        self._replies: deque[bytes] = deque(maxlen=self.MAX_PENDING_REPLIES)
        self._log = logging.getLogger(type(self).__module__)

    def receive_data(self, data: bytes) -> None:
        self._reader.receive_data(data)
        self._drain()

    def silence(self) -> None:
        self._reader.receive_data(b"")  # no frame spans a silence
        self._drain()

    def next_reply(self) -> tuple[bytes, int] | None:
        return (self._replies.popleft(), self.baudrate) if self._replies else None

    def answer(self, frame: Any) -> bytes | None:
        raise NotImplementedError

    def _drain(self) -> None:
        while True:
            try:
                frame = self._reader.next_event()
            except self._error as exc:
                self._log.info("bad frame ignored: %s", exc)
                continue
            if not isinstance(frame, self._frame_type):
                return  # the reader needs more bytes
            reply = self.answer(frame)
            if reply is not None:
                self._replies.append(reply)


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
