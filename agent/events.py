"""The agent's uplink events (CONTRACT 5): one frozen record per type, never a dict.

Whoever raises an event builds its record (``EventLog.emit(t, record)``; the storage
bound's ``data_dropped`` is written by buffer/bounds.py); uplink/forming.py's
``event_item`` is the one function that turns a record into the item's bytes. So every
field of a detail is there by construction and typed, with no defaults to guess.

A record says what the event is (``TYPE``), which meter and account it is about
(``meter``, ``acct``: left out of the item when None) and its ``detail()``: the map
CONTRACT 5 names, its keys in the order the log line has always shown them. Fields
carry their unit (``balance_paise``, ``until_s``); the detail's keys are the contract's.

    Tamper              a meter's tamper log entry, and what the agent did about it
    Relay               a relay's read-back state changed
    RelayFailed         a relay did not reach its intent after REPORT_AFTER switches
    RelayOverride       a manual override (cloud ``relay`` op or the local socket)
    LowBalance          an alert level crossed going down
    CreditExhausted     the balance fell through the emergency-credit floor
    DisconnectDeferred  a disconnection held back, and every rule that holds it
    MeterOffline        a meter stopped answering (or its bus thread ended)
    MeterOnline         a meter reported offline answered again
    MeterSecurity       a meter's authentication failed
    MeterDiscovered     background discovery found an unconfigured meter
    BadReading          a reading not charged, and why
    DataDropped         the storage bound thinned or dropped readings
    TokenRejected       an offline top-up token was refused

Here agent/drivers/events.py's records are what a bus tells the runtime; these are
what the agent tells the head-end (a bus's ``MeterOffline`` becomes one of these, with
its account). Nothing here does I/O or imports outside the standard library and
``agent.vocab``, so buffer/ may build one without knowing the wire format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from agent.vocab import RELAY_STATES, TAMPER_KINDS


class Event(Protocol):
    """What uplink/forming.py's ``event_item`` and the event log read of a record."""

    TYPE: ClassVar[str]  # CONTRACT 5 ``type``

    @property
    def meter(self) -> str | None: ...  # ``m``

    @property
    def acct(self) -> str | None: ...  # ``acct``

    def detail(self) -> dict[str, Any]: ...


class _AboutAnAccount:
    """An event about an account, not a meter: no ``m``."""

    __slots__ = ()

    @property
    def meter(self) -> None:
        return None


class _OfTheGateway(_AboutAnAccount):
    """An event of the gateway's own: no ``m``, no ``acct``."""

    __slots__ = ()

    @property
    def acct(self) -> None:
        return None


# -- relays and tamper ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Tamper:
    TYPE: ClassVar[str] = "tamper"
    meter: str
    acct: str | None
    kind: str  # one of vocab.TAMPER_KINDS
    code: int  # the meter's own event code
    action: str  # none | open: what the agent did (policy.disconnect_on_tamper)

    def __post_init__(self) -> None:
        assert self.kind in TAMPER_KINDS, self.kind

    def detail(self) -> dict[str, Any]:
        return {"kind": self.kind, "code": self.code, "action": self.action}


@dataclass(frozen=True, slots=True)
class Relay:
    TYPE: ClassVar[str] = "relay"
    meter: str
    acct: str | None
    state: str  # the read-back state, one of vocab.RELAY_STATES
    reason: str  # why the intent was set (credit, override, tamper, ...; startup)

    def __post_init__(self) -> None:
        assert self.state in RELAY_STATES, self.state

    def detail(self) -> dict[str, Any]:
        return {"state": self.state, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class RelayFailed:
    TYPE: ClassVar[str] = "relay_failed"
    meter: str
    acct: str | None
    want: str  # the intent
    actual: str  # what the relay reads back ("unknown": it never read back)
    error: str  # the last failure's text
    attempts: int

    def detail(self) -> dict[str, Any]:
        return {"want": self.want, "actual": self.actual, "error": self.error,
                "attempts": self.attempts}


@dataclass(frozen=True, slots=True)
class RelayOverride:
    TYPE: ClassVar[str] = "relay_override"
    meter: str
    acct: str | None
    action: str  # the override asked for
    until_s: int | None  # when it ends (Unix s); None: until lifted (sent as null)
    source: str  # who asked: cloud | local

    def detail(self) -> dict[str, Any]:
        return {"action": self.action, "until": self.until_s, "source": self.source}


@dataclass(frozen=True, slots=True)
class DisconnectDeferred:
    TYPE: ClassVar[str] = "disconnect_deferred"
    meter: str
    acct: str
    reasons: tuple[str, ...]  # every rule holding it back, in CONTRACT 5 order
    balance_paise: int

    def __post_init__(self) -> None:
        assert self.reasons, "a deferral has at least one reason"

    def detail(self) -> dict[str, Any]:
        return {"reasons": list(self.reasons), "reason": self.reasons[0],
                "balance": self.balance_paise}


# -- balance and credit -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LowBalance(_AboutAnAccount):
    TYPE: ClassVar[str] = "low_balance"
    acct: str
    level_pct: int  # the alert level crossed
    balance_paise: int
    days_left: int | None  # the estimate; None: no spend to go by (sent as null)

    def detail(self) -> dict[str, Any]:
        return {"level_pct": self.level_pct, "balance": self.balance_paise,
                "days_left": self.days_left}


@dataclass(frozen=True, slots=True)
class CreditExhausted(_AboutAnAccount):
    TYPE: ClassVar[str] = "credit_exhausted"
    acct: str
    balance_paise: int

    def detail(self) -> dict[str, Any]:
        return {"balance": self.balance_paise}


@dataclass(frozen=True, slots=True)
class TokenRejected(_AboutAnAccount):
    TYPE: ClassVar[str] = "token_rejected"
    acct: str
    why: str  # the token check's reason, or "used"
    counter: int | None = None  # the token's counter once its MAC verified (else left out)
    locked_until_s: int | None = None  # while entry is locked out (else left out)

    def detail(self) -> dict[str, Any]:
        detail: dict[str, Any] = {"why": self.why}
        if self.counter is not None:
            detail["counter"] = self.counter
        if self.locked_until_s is not None:
            detail["locked_until"] = self.locked_until_s
        return detail


# -- meters -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MeterOffline:
    TYPE: ClassVar[str] = "meter_offline"
    meter: str
    acct: str | None
    error: str  # the last failure's text; "" when it has none (left out)

    def detail(self) -> dict[str, Any]:
        return {"error": self.error} if self.error else {}


@dataclass(frozen=True, slots=True)
class MeterOnline:
    TYPE: ClassVar[str] = "meter_online"
    meter: str
    acct: str | None

    def detail(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True, slots=True)
class MeterSecurity:
    TYPE: ClassVar[str] = "meter_security"
    meter: str
    acct: str | None
    why: str  # SecurityError.why (wire.SECURITY_WHY)
    error: str

    def detail(self) -> dict[str, Any]:
        return {"why": self.why, "error": self.error}


@dataclass(frozen=True, slots=True)
class MeterDiscovered(_OfTheGateway):
    TYPE: ClassVar[str] = "meter_discovered"
    bus: str
    address: int
    serial: str
    protocol: str

    def detail(self) -> dict[str, Any]:
        return {"bus": self.bus, "address": self.address, "serial": self.serial,
                "protocol": self.protocol}


@dataclass(frozen=True, slots=True, kw_only=True)
class BadReading:
    """Either a rule refused the reading (``reason``, ``rebased``, ``baseline_wh``;
    ``reset_wh`` for a register reset) or its charge raised (``error``)."""

    TYPE: ClassVar[str] = "bad_reading"
    meter: str
    acct: str | None
    why: str  # the rule (negative, implausible, rollover, ...) or charge_error
    import_wh: int | None  # the reading's register (None: it has none; sent as null)
    error: str | None = None  # a charge that raised: its text
    reason: str | None = None  # a rule's words
    rebased: bool | None = None  # a rule: whether the baseline moved to this reading
    baseline_wh: int | None = None  # a rule: the baseline it was checked against
    reset_wh: int | None = None  # a register reset: the reading rebased on

    def __post_init__(self) -> None:
        rule = (self.reason, self.rebased, self.baseline_wh)
        assert (self.error is None) == (None not in rule), self
        assert self.error is None or rule == (None, None, None), self
        assert self.reset_wh is None or self.error is None, self

    def detail(self) -> dict[str, Any]:
        detail: dict[str, Any] = {"why": self.why}
        if self.error is not None:
            detail["error"] = self.error
        else:
            detail["reason"] = self.reason
            detail["rebased"] = self.rebased
            detail["baseline_wh"] = self.baseline_wh
        detail["import_wh"] = self.import_wh
        if self.reset_wh is not None:
            detail["reset_wh"] = self.reset_wh
        return detail


# -- the store --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class DataDropped(_OfTheGateway):
    TYPE: ClassVar[str] = "data_dropped"
    what: str  # instantaneous | readings
    count: int  # readings stripped or dropped
    from_s: int  # the oldest reading's time
    to_s: int  # the newest reading's time
    quantities: tuple[str, ...] = ()  # instantaneous: the quantities stripped
    reason: str | None = None  # readings: disk_full when a write found no room
    seqs: tuple[int, ...] = ()  # readings: the formed messages dropped, ascending

    def detail(self) -> dict[str, Any]:
        detail: dict[str, Any] = {"what": self.what, "count": self.count}
        if self.quantities:
            detail["quantities"] = list(self.quantities)
        detail["from"] = self.from_s
        detail["to"] = self.to_s
        if self.reason is not None:
            detail["reason"] = self.reason
        if self.seqs:
            detail["seqs"] = list(self.seqs)
        return detail


EVENTS: tuple[type[Event], ...] = (
    Tamper, Relay, RelayFailed, RelayOverride, DisconnectDeferred, LowBalance,
    CreditExhausted, TokenRejected, MeterOffline, MeterOnline, MeterSecurity,
    MeterDiscovered, BadReading, DataDropped,
)
