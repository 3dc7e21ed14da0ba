"""One ``Relay`` protocol for every supply relay the agent switches directly.

States, as reported in `relay` events (CONTRACT 5): ``closed`` (supply connected),
``open`` (disconnected), ``armed`` (a DLMS meter's ready_for_reconnection: it
reconnects when the consumer presses its button). A relay that cannot be switched or
whose read-back disagrees raises ``RelayError``; nothing here retries: the durable
intent and the bounded back-off live in ``actuation.py``, so a restart resumes them.

Meter relays (DLMS class 70, a meter's Modbus coil) and Modbus relay modules share
the RS-485 line and are switched by its bus scheduler (agent/drivers/bus.py); GPIO
lines (``gpio.py``) are switched directly, through ``sync``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Protocol

from agent.errors import RelayError
from agent.vocab import RELAY_STATES

log = logging.getLogger("agent.relay")


class Relay(Protocol):
    name: str

    def switch(self, connect: bool) -> None:
        """Drive the relay; RelayError if the driver refuses."""
        ...

    def read(self) -> str:
        """The relay's state as it reads back now: closed | open | armed."""
        ...

    def close(self) -> None:
        """Let go of the hardware; the relay falls to its safe resting state."""
        ...


def switch_and_confirm(relay: Relay, connect: bool) -> str:
    """Switch, then read back; RelayError unless the read-back matches (``armed``
    counts as connected: the meter waits for its button)."""
    relay.switch(connect)
    state = relay.read()
    if state not in RELAY_STATES:
        raise RelayError(f"{relay.name}: read back {state!r}, not closed | open | armed")
    if (state in ("closed", "armed")) != connect:
        raise RelayError(f"{relay.name}: asked to {'connect' if connect else 'disconnect'} "
                         f"but it reads back {state}")
    return state


# (meter, connected, error, state) -> None: Actuation.relay_result without now_s
Report = Callable[[str, bool | None, str, str | None], None]


def sync(relays: Mapping[str, Relay], jobs: list[tuple[str, bool]], report: Report) -> int:
    """Switch each (meter, connect) job whose relay is in ``relays`` and report the
    read-back (or the failure). Jobs of other meters are left for the bus. Returns how
    many were attempted; at most one attempt per relay per call."""
    attempted = 0
    for meter_id, connect in jobs:
        relay = relays.get(meter_id)
        if relay is None:
            continue
        attempted += 1
        try:
            state = switch_and_confirm(relay, connect)
        except RelayError as exc:
            log.warning("event=relay_switch_failed meter=%s relay=%s error=%s", meter_id,
                        relay.name, exc)
            report(meter_id, None, str(exc), None)
            continue
        report(meter_id, state != "open", "", state)
    return attempted


class FakeRelay:
    """An in-memory relay for tests and the simulator. ``stuck`` ignores switching
    (a welded contact); ``fail`` makes the next switch raise."""

    def __init__(self, name: str = "fake", state: str = "closed") -> None:
        self.name = name
        self.state = state
        self.stuck = False
        self.fail = False
        self.switches: list[bool] = []
        self.closed = False

    def switch(self, connect: bool) -> None:
        self.switches.append(connect)
        if self.fail:
            self.fail = False
            raise RelayError(f"{self.name}: driver refused")
        if not self.stuck:
            self.state = "closed" if connect else "open"

    def read(self) -> str:
        return self.state

    def close(self) -> None:
        self.closed = True
