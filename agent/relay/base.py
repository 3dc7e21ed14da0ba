"""One ``Relay`` protocol for every supply relay the agent switches, and the one loop
that switches one and confirms it (``switch_and_confirm``: the only try count).

States, as reported in `relay` events (CONTRACT 5): ``closed`` (supply connected),
``open`` (disconnected), ``armed`` (a DLMS meter's ready_for_reconnection: it
reconnects when the consumer presses its button). The retry across time is not
here: the durable intent and its bounded back-off live in ``actuation.py``, so a
restart resumes them.

Backends, one per relay kind (CONTRACT 2 ``relay = ...``):
    meter         ``meter.py``: the meter's own breaker through its driver (DLMS class 70)
    modbus-coil   ``modbus_coil.py``: one coil of a Modbus relay module
    gpio          ``gpio.py``: a GPIO line (libgpiod v2)
Meter relays and coil modules share the RS-485 line and are switched by its bus
(``agent/drivers/bus.py`` executes a ``Switch`` action with ``switch_and_confirm``);
GPIO lines are switched directly, through ``sync``.

Bounds (and what happens at them):
- ``RELAY_TRIES`` attempts to switch and read back, for a wire error (a timeout, a
  checksum or protocol error, an exception answer) or a read-back that disagrees;
  then ``RelayError`` with the last attempt's error (the bus reports it in its
  ``RelaySwitched``; actuation backs off). A ``PortError`` or ``SecurityError`` is not
  retried: the port is gone (the bus reopens it), or the meter is not who it should
  be, or its keys are wrong (the bus reports it and switches nothing). A backend's own
  ``RelayError`` (a GPIO line the kernel refuses) is not retried either.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Final, Protocol

from agent.errors import DriverError, PortError, RelayError, SecurityError

log = logging.getLogger("agent.relay")

RELAY_TRIES: Final = 3  # switch + read back; then RelayError carries the last error


class Relay(Protocol):
    name: str

    def switch(self, connect: bool) -> None:
        """Drive the relay; a ``DriverError`` from the wire, ``RelayError`` if refused."""
        ...

    def read(self) -> str:
        """The relay's state as it reads back now: closed | open | armed."""
        ...

    def close(self) -> None:
        """Let go of the hardware; the relay falls to its safe resting state."""
        ...


def confirms(state: str, connect: bool) -> bool:
    """Does a read-back ``state`` confirm the switch? ``armed`` counts as connected (a
    remote reconnect is all such a meter does: the consumer closes its breaker)."""
    return state in ("closed", "armed") if connect else state == "open"


def switch_and_confirm(relay: Relay, connect: bool) -> str:
    """Switch, then read back, up to ``RELAY_TRIES`` times; the confirming state.

    RelayError (the last attempt's error) when no attempt confirmed; ``PortError`` and
    ``SecurityError`` at once, as raised."""
    error = ""
    for _ in range(RELAY_TRIES):
        try:
            relay.switch(connect)
            state = relay.read()
        except (PortError, SecurityError):
            raise
        except DriverError as exc:
            error = str(exc)
            continue
        if confirms(state, connect):
            return state
        error = f"read back {state}"
    raise RelayError(error)


def switch_outcome(relay: Callable[[], Relay], connect: bool) -> tuple[str, str]:
    """A bus's switch (the thread's and the simulation's): (the confirming state, "") or
    ("", why not) when ``relay()`` has no backend for it here (RelayError) or no attempt
    confirmed; ``PortError``, ``SecurityError`` and a driver that cannot be made raise."""
    try:
        return switch_and_confirm(relay(), connect), ""
    except RelayError as exc:
        return "", str(exc)


# (meter, connected, error, state) -> None: Actuation.relay_result without now_s
Report = Callable[[str, bool | None, str, str | None], None]


def sync(relays: Mapping[str, Relay], jobs: list[tuple[str, bool]], report: Report) -> int:
    """Switch each (meter, connect) job whose relay is in ``relays`` and report the
    read-back (or the failure). Jobs of other meters are left for the bus. Returns how
    many were attempted; one ``switch_and_confirm`` per relay per call."""
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
