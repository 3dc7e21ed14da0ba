"""Test stand-ins for relays: an in-memory ``Relay`` backend."""

from __future__ import annotations

from agent.errors import DriverError, RelayError


class FakeRelay:
    """An in-memory relay. ``stuck`` ignores switching (a welded contact); ``fail``
    makes the next switch raise RelayError (the backend refuses); ``wire_errors`` are
    raised by the next switches, one each (a line that garbles a frame)."""

    def __init__(self, name: str = "fake", state: str = "closed") -> None:
        self.name = name
        self.state = state
        self.stuck = False
        self.fail = False
        self.wire_errors: list[DriverError] = []
        self.switches: list[bool] = []
        self.closed = False

    def switch(self, connect: bool) -> None:
        self.switches.append(connect)
        if self.fail:
            self.fail = False
            raise RelayError(f"{self.name}: driver refused")
        if self.wire_errors:
            raise self.wire_errors.pop(0)
        if not self.stuck:
            self.state = "closed" if connect else "open"

    def read(self) -> str:
        return self.state

    def close(self) -> None:
        self.closed = True
