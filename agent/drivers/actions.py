"""What a bus schedule asks its driver to do, and what the driver may answer besides
a result: one frozen record per kind of action (``schedule.BusSchedule.next_action``
returns them; ``bus.BusScheduler`` and the simulation's ``SimBus`` execute them).

    action        executed as                         result handed back
    Poll          one attempt of a routine read       Reading | DriverError | NotAttempted
    Read          one attempt of a command's read     Reading | DriverError | NotAttempted
    ReadEvents    the meter's event log               list[MeterEvent] | DriverError
    Switch        switch the relay and read it back   (state, error) | DriverError
    ScanStep      probe one address for a scan        (Found | None, error) | DriverError
    Discover      probe one unconfigured address      (Found | None, error) | DriverError
    Idle          wait (a new job wakes the driver)   nothing
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

from agent.config import MeterConfig
from agent.errors import DriverError


@dataclass(frozen=True, slots=True)
class Poll:
    """One attempt (``attempt`` of ``attempts``, from 1) to read ``meter`` routinely."""

    meter: MeterConfig
    attempt: int
    attempts: int


@dataclass(frozen=True, slots=True)
class Read:
    """One attempt to read a meter for a command (``ref``); ``meter`` None: not on the bus."""

    meter_id: str
    meter: MeterConfig | None
    ref: str
    attempt: int


@dataclass(frozen=True, slots=True)
class ReadEvents:
    """Read the meter's event log (a driver without one answers no events)."""

    meter: MeterConfig


@dataclass(frozen=True, slots=True)
class Switch:
    """Switch the relay of ``meter_id`` and read it back: the result is (state, error),
    state "" on a failure; ``meter`` None: not known on this bus. ``job``: the
    schedule's number of the switch job it runs."""

    meter_id: str
    meter: MeterConfig | None
    connected: bool
    job: int = field(default=0, compare=False)

    @property
    def kind(self) -> str:
        return self.meter.relay_spec.kind if self.meter is not None else "unknown meter"


@dataclass(frozen=True, slots=True)
class ScanStep:
    """Probe ``address`` for a scan (result: ``(Found | None, error)``); ``address``
    None: nothing is left to probe, the scan reports (the result is ignored)."""

    address: int | None
    timeout_s: float


@dataclass(frozen=True, slots=True)
class Discover:
    """Probe one unconfigured address (result: ``(Found | None, error)``)."""

    address: int


@dataclass(frozen=True, slots=True)
class Idle:
    wait_s: float  # nothing is due before this many seconds from now (new jobs wake it)


Action: TypeAlias = Poll | Read | ReadEvents | Switch | ScanStep | Discover | Idle


@dataclass(frozen=True, slots=True)
class NotAttempted:
    """A poll or read that could not start (no driver for the meter: its keys cannot be
    read, say): it fails at once, and no attempt is counted."""

    error: DriverError
