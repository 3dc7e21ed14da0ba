"""Finding meters on a bus: a one-off scan, and the running agent's background discovery.

``scan_bus`` is for a port nobody else uses (``meter-agent scan --bus NAME``
with no agent running): it probes each address in turn through the
protocol's ``probe`` (a Modbus serial-register read with a short timeout, an
IEC 62056-21 sign-on and readout, a DLMS association) and returns what
answered. With the agent running, the same probing goes through the bus
scheduler (``BusScheduler.scan``), because one bus has one master. The probe is the
protocol's (``protocol.ProtocolSpec.probe``).

``ScanJob`` and ``Discovery`` hold the bookkeeping the scheduler needs, with
no I/O: which address is next, what was found, what was already reported.

Bounds: addresses are 1..247 (``MAX_ADDRESS``); a probe that answers garbage
is tried ``PROBE_TRIES`` times, then recorded as an error for that address;
``Discovery`` remembers at most one serial per address (247 entries) and
pauses ``SWEEP_PAUSE_S`` between full sweeps, so an idle bus is not kept busy
by probing forever.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from agent.drivers.protocol import protocol_spec
from agent.errors import DriverError, PortError

if TYPE_CHECKING:
    from agent.clock import Clock
    from agent.drivers.transport import Transport

MAX_ADDRESS: Final = 247
PROBE_TRIES: Final = 2
SCAN_TIMEOUT_S: Final = 0.2  # a meter that takes longer to answer is missed; pass more
SWEEP_PAUSE_S: Final = 300.0


@dataclass(frozen=True, slots=True)
class Found:
    address: int
    protocol: str
    serial: str  # "" when the device answers but reports no serial

    def as_dict(self) -> dict[str, Any]:
        return {"address": self.address, "protocol": self.protocol, "serial": self.serial}


def check_addresses(addresses: Iterable[int]) -> list[int]:
    out = list(addresses)
    bad = [a for a in out if not isinstance(a, int) or not 1 <= a <= MAX_ADDRESS]
    if bad:
        raise ValueError(f"addresses must be 1..{MAX_ADDRESS}, got {bad[:5]}")
    return out


def probe_once(
    transport: Transport, protocol: str, address: int, *, timeout_s: float,
    clock: Clock | None = None,
) -> tuple[Found | None, str]:
    """(Found or None, error): ``PROBE_TRIES`` attempts while the answer is garbled."""
    spec = protocol_spec(protocol)
    error = ""
    for _ in range(PROBE_TRIES):
        try:
            serial = spec.probe(transport, address, timeout_s=timeout_s, clock=clock)
        except PortError:
            raise  # the port is gone, not the meter: the bus reopens it
        except DriverError as exc:
            error = str(exc)
            continue
        return (Found(address, protocol, serial) if serial is not None else None), ""
    return None, error


def scan_bus(
    transport: Transport,
    protocol: str,
    addresses: Iterable[int],
    *,
    timeout_s: float = SCAN_TIMEOUT_S,
    progress: Callable[[int, Found | None], None] | None = None,
    clock: Clock | None = None,
) -> list[Found]:
    """Probe every address, one at a time; ``progress(address, found)`` after each."""
    found: list[Found] = []
    for address in check_addresses(addresses):
        hit, _ = probe_once(transport, protocol, address, timeout_s=timeout_s, clock=clock)
        if hit is not None:
            found.append(hit)
        if progress is not None:
            progress(address, hit)
    return found


@dataclass
class ScanJob:
    """A scan asked of the running scheduler: one address per step."""

    ref: str
    addresses: list[int]
    timeout_s: float
    index: int = 0
    found: list[Found] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)  # (address, why)

    @property
    def done(self) -> bool:
        return self.index >= len(self.addresses)

    def next_address(self) -> int:
        address = self.addresses[self.index]
        self.index += 1
        return address


class Discovery:
    """Which unconfigured address to probe next, and which finds are new.

    Sweeps 1..247 skipping ``busy`` addresses (configured meters, relay
    modules); after a sweep, rests ``SWEEP_PAUSE_S``. A find is new when the
    address was never reported, or now answers with another serial.
    """

    def __init__(self, sweep_pause_s: float = SWEEP_PAUSE_S) -> None:
        self._next = 1
        self._rest_until_s = 0.0
        self._sweep_pause_s = sweep_pause_s
        self._reported: dict[int, str] = {}
        self.enabled = True

    def next_address(self, busy: set[int], now_s: float) -> int | None:
        if not self.enabled or now_s < self._rest_until_s:
            return None
        for _ in range(MAX_ADDRESS):
            address = self._next
            self._next = address % MAX_ADDRESS + 1
            if self._next == 1:
                self._rest_until_s = now_s + self._sweep_pause_s
            if address not in busy:
                return address
            if self._next == 1:
                return None
        return None

    def is_new(self, found: Found) -> bool:
        if self._reported.get(found.address) == found.serial:
            return False
        self._reported[found.address] = found.serial
        return True
