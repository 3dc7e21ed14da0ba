"""A supply relay on a GPIO line, through libgpiod v2's Python bindings (``gpiod``).

CONTRACT 2: ``relay = "gpio:<line>"``; a line that is ON (logically *active*) means
supply connected. ``gpiod`` is imported only when a GPIO relay is opened: it is
Linux-only and an optional extra (``pip install 'meter-agent[gpio]'``), never a hard
dependency (PyPI ``gpiod>=2.0.2``: the official bindings, libgpiod vendored; building
needs python3-dev). libgpiod v1 bindings and the unofficial PyPI ``gpiod`` <= 1.5.4
(``gpiod.Chip.get_line``) are refused with a clear error: their API is different.

Safe resting state: SUPPLY CONNECTED. Whenever the agent is not driving the line —
the board booting (GPIOs come up as inputs), the agent stopped or killed (the
kernel releases the line when the process exits), the line released — the relay
must connect supply, so an agent fault never disconnects anyone (DOMAIN: never
punish the consumer for the utility's own outage). Wire it so:

  * switch the supply through the relay's normally-closed (NC) contact: the coil is
    energised only to DISCONNECT;
  * with the common opto-isolated "active-low" relay boards (coil on when the input
    is pulled LOW, input pulled up on the board), logical active = physical HIGH =
    coil off = connected: keep ``active_low = False`` (the default); an undriven line
    floats to the board's pull-up, which is connected too;
  * with an active-high driver (coil on when HIGH), set ``active_low = True`` and
    make sure the line has a pull-down so an undriven line means coil off.

On start the line is requested with its value already set to the durable intent
(``connected_at_start``), so a restart does not blip the supply beyond the time the
process was down. docs/policy.md repeats this for installers.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

from agent.config import MeterConfig
from agent.errors import ConfigError, RelayError
from agent.relay.base import Relay

DEFAULT_CHIP = "/dev/gpiochip0"  # Raspberry Pi 4 and 5 (kernel 6.6+): the 40-pin header
CONSUMER = "meter-agent"


def load_gpiod() -> ModuleType:
    """The libgpiod v2 module, or RelayError saying how to get it."""
    try:
        gpiod = importlib.import_module("gpiod")
    except ImportError as exc:
        raise RelayError("GPIO relays need libgpiod v2's Python bindings: "
                         "pip install 'meter-agent[gpio]' (Linux only)") from exc
    if not hasattr(gpiod, "request_lines"):
        raise RelayError("the installed gpiod module is not libgpiod v2 (libgpiod v1, or "
                         "the unofficial gpiod <= 1.5.4); pip install 'gpiod>=2.0.2'")
    return gpiod


class GpioRelay:
    def __init__(self, line: int, *, connected_at_start: bool, chip: str = DEFAULT_CHIP,
                 active_low: bool = False, gpiod: ModuleType | None = None) -> None:
        self.name = f"gpio:{chip}:{line}"
        self.line = line
        self._gpiod = gpiod if gpiod is not None else load_gpiod()
        self._value = self._gpiod.line.Value
        settings = self._gpiod.LineSettings(
            direction=self._gpiod.line.Direction.OUTPUT,
            output_value=self._level(connected_at_start),
            active_low=active_low,
        )
        try:
            self._request: Any = self._gpiod.request_lines(chip, consumer=CONSUMER,
                                                           config={line: settings})
        except OSError as exc:  # no such chip or line, line busy, permission denied
            raise RelayError(f"{self.name}: cannot request the line: {exc}") from exc

    def _level(self, connect: bool) -> Any:
        return self._value.ACTIVE if connect else self._value.INACTIVE

    def switch(self, connect: bool) -> None:
        try:
            self._request.set_value(self.line, self._level(connect))
        except OSError as exc:
            raise RelayError(f"{self.name}: cannot set the line: {exc}") from exc

    def read(self) -> str:
        """An output line reads back the value the kernel drives (logical, so
        active_low is already applied): the agent's own last word, not a contact sense."""
        try:
            value = self._request.get_value(self.line)
        except OSError as exc:
            raise RelayError(f"{self.name}: cannot read the line: {exc}") from exc
        return "closed" if value == self._value.ACTIVE else "open"

    def close(self) -> None:
        """Release the line: the relay falls to the safe resting state (connected)."""
        self._request.release()


def open_relays(meters: Iterable[MeterConfig], intent: Callable[[str], str | None]
                ) -> dict[str, Relay]:
    """The GPIO relays of ``meters`` (the runtime switches them itself, not a bus), each
    requested at its durable intent (``intent``: a meter's relay intent, the journal's);
    a line that cannot be had (libgpiod missing, no such line) is a ConfigError naming
    the meter's key."""
    relays: dict[str, Relay] = {}
    for i, m in enumerate(meters):
        if m.relay_spec.kind != "gpio" or m.relay_spec.line is None:
            continue
        try:
            relays[m.id] = GpioRelay(m.relay_spec.line,
                                     connected_at_start=intent(m.id) == "closed")
        except RelayError as exc:
            raise ConfigError([(f"meter[{i}].relay", str(exc))]) from exc
    return relays
