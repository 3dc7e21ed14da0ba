"""Durable relay intent against what each relay reports (DOMAIN "When the relay may open",
ledger invariant 7).

The intent (closed | open, with its reason) is written in the same transaction as
the balance change that decided it, before anything is switched. The runtime asks
``jobs()`` which relays differ from their intent, has the bus (or a ``Relay``
backend) switch and read them back, and reports with ``result()``. A switch that
fails, or whose read-back disagrees, is retried with a bounded back-off; the
intent itself never expires.

States reported: ``closed``, ``open``, ``armed`` (DLMS class 70
ready_for_reconnection: the meter waits for the consumer's button). ``armed``
satisfies a ``closed`` intent: the agent has done all it can, so it stops asking.
"""

from __future__ import annotations

import logging

from agent.buffer.journal import Journal
from agent.buffer.store import Store
from agent.errors import LedgerError
from agent.eventlog import EventLog
from agent.events import Relay, RelayFailed
from agent.meters import MeterRegistry
from agent.vocab import RELAY_STATES

log = logging.getLogger("agent.relay")

# A failed or unconfirmed switch is retried after 10 s, doubling per attempt up to one
# try per 15 min, for ever (the intent stays durable); the 5th failed attempt in a row
# raises one `relay_failed` event so a technician is sent.
RETRY_FIRST_S = 10
RETRY_CAP_S = 900
REPORT_AFTER = 5


def matches(intent: str, actual: str) -> bool:
    return actual == intent or (intent == "closed" and actual == "armed")


def backoff_s(attempts: int) -> int:
    """Seconds before retry number ``attempts + 1`` (attempts >= 1)."""
    return min(RETRY_FIRST_S << min(attempts - 1, 16), RETRY_CAP_S)


class Actuation:
    def __init__(self, store: Store, journal: Journal, meters: MeterRegistry,
                 events: EventLog) -> None:
        self.store = store
        self.journal = journal
        self.meters = meters  # the registry: meter_add/remove show up here too
        self.events = events

    def set_intent(self, meter_id: str, want: str, reason: str, now_s: int) -> None:
        """In the caller's transaction. A new intent is acted on at once: no back-off
        inherited from the old one."""
        self.journal.update_meter(meter_id, relay_intent=want, relay_reason=reason,
                                  relay_attempts=0, relay_next_s=0)
        log.info("event=relay_intent meter=%s want=%s reason=%s t=%d", meter_id, want, reason,
                 now_s)

    def relay_result(self, meter_id: str, connected: bool | None, error: str, now_s: int,
                     state: str | None = None) -> None:
        """The bus switched (or failed to switch) a relay and read it back. ``state``
        (closed | open | armed) wins over ``connected`` when given; ``connected`` None
        and ``state`` None or "" (the bus's BusEvent.state on a failure): it failed."""
        state = state or None
        if state is not None and state not in RELAY_STATES:
            raise LedgerError(f"relay state {state!r} is not closed | open | armed")
        actual = state if state is not None else (
            None if connected is None else "closed" if connected else "open")
        self.result(meter_id, actual, error, now_s)

    def result(self, meter_id: str, actual: str | None, error: str, now_s: int) -> None:
        """What the relay reads back after a switch (``None``: the switch or read failed)."""
        assert actual is None or actual in RELAY_STATES, actual
        meter = self.meters.get(meter_id)
        acct = meter.account if meter else None
        with self.store.tx():
            st = self.journal.meter(meter_id)
            if actual is not None and actual != st.relay_actual:
                self.journal.update_meter(meter_id, relay_actual=actual)
                self.events.emit(now_s, Relay(meter_id, acct, actual,
                                              st.relay_reason or "startup"))
            if actual is not None and matches(st.relay_intent, actual):
                if st.relay_attempts:
                    self.journal.update_meter(meter_id, relay_attempts=0, relay_next_s=0)
                return
            attempts = st.relay_attempts + 1
            self.journal.update_meter(meter_id, relay_attempts=attempts,
                                      relay_next_s=now_s + backoff_s(attempts))
            log.warning("event=relay_mismatch meter=%s want=%s actual=%s error=%s attempt=%d",
                        meter_id, st.relay_intent, actual, error, attempts)
            if attempts == REPORT_AFTER:
                self.events.emit(now_s, RelayFailed(meter_id, acct, st.relay_intent,
                                                    actual or st.relay_actual or "unknown",
                                                    error, attempts))

    def jobs(self, now_s: int | None = None) -> list[tuple[str, bool]]:
        """(meter, connect) for each relay that differs from its intent. With ``now_s``,
        one whose last switch failed waits out its back-off."""
        out = []
        states = self.journal.meter_states()
        for meter in self.meters.relayed():
            state = states.get(meter.id)
            if state is None or matches(state.relay_intent, state.relay_actual):
                continue
            # A back-off reaching further than the cap means the wall clock went back.
            if now_s is not None and now_s < state.relay_next_s <= now_s + RETRY_CAP_S:
                continue
            out.append((state.id, state.relay_intent == "closed"))
        return out
