"""What a bus tells the runtime: one frozen record per kind of event, never a dict.

A bus (``bus.BusScheduler``, or the simulation's ``SimBus``) posts these into the
runtime's inbox; the runtime dispatches on the record's type (``{type: handler}``),
so every field it reads is there by construction and typed, with no defaults to
guess. They carry no behaviour: what the runtime does with each is in
``agent.runtime``; where each comes from is in ``bus.py``.

    ReadingTaken      a routine poll read the meter
    MeterOffline      OFFLINE_AFTER polls failed in a row (or the port is gone): once
    MeterOnline       the first good poll of a meter reported offline
    RelaySwitched     a relay job's outcome: the read-back state, or why it failed
    ReadDone          an on-demand read (``read_now``) for a command, read or failed
    TamperSeen        a new entry of a meter's event log (CONTRACT 5 ``tamper``)
    MeterSecurity     a meter's authentication failed (once per kind of failure)
    MeterDiscovered   background discovery found an unconfigured meter
    ScanDone          a scan (``scan``) has probed every address it was given
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

from agent.drivers.reading import Reading
from agent.drivers.scan import Found


@dataclass(frozen=True, slots=True)
class ReadingTaken:
    meter: str
    reading: Reading


@dataclass(frozen=True, slots=True)
class MeterOffline:
    meter: str
    error: str  # the last failure's text ("" when it has none)


@dataclass(frozen=True, slots=True)
class MeterOnline:
    meter: str


@dataclass(frozen=True, slots=True)
class RelaySwitched:
    meter: str
    connected: bool | None  # the read-back state; None: the switch failed
    state: str  # closed | open | armed; "" when it failed
    error: str  # why it failed; "" when it worked


@dataclass(frozen=True, slots=True)
class ReadDone:
    meter: str
    ref: str  # the id of the command that asked
    reading: Reading | None  # None: the read failed
    error: str  # why it failed; "" when it worked


@dataclass(frozen=True, slots=True)
class TamperSeen:
    meter: str
    kind: str  # one of vocab.TAMPER_KINDS
    code: int  # the meter's own event code
    t: int  # Unix seconds UTC, the meter's time stamp of the event


@dataclass(frozen=True, slots=True)
class MeterSecurity:
    meter: str
    why: str  # SecurityError.why
    error: str


@dataclass(frozen=True, slots=True)
class MeterDiscovered:
    bus: str
    address: int
    serial: str
    protocol: str


@dataclass(frozen=True, slots=True)
class ScanDone:
    ref: str  # the id of the request that asked
    bus: str
    protocol: str
    addresses: int  # how many were probed
    found: tuple[tuple[Found, str | None], ...]  # each find, and the meter configured there
    errors: tuple[tuple[int, str], ...]  # (address, why) of each garbled answer

    def reply(self) -> dict[str, Any]:
        """The answer to the CLI's ``scan`` request."""
        return {
            "bus": self.bus,
            "protocol": self.protocol,
            "addresses": self.addresses,
            "found": [{**f.as_dict(), "meter": meter} for f, meter in self.found],
            "errors": [{"address": a, "error": e} for a, e in self.errors],
        }


BusEvent: TypeAlias = (ReadingTaken | MeterOffline | MeterOnline | RelaySwitched | ReadDone
                       | TamperSeen | MeterSecurity | MeterDiscovered | ScanDone)
BUS_EVENTS: tuple[type, ...] = (ReadingTaken, MeterOffline, MeterOnline, RelaySwitched,
                                ReadDone, TamperSeen, MeterSecurity, MeterDiscovered, ScanDone)
