"""The agent's uplink events (CONTRACT 5): one writer, into the store's events lane.

Each event is written in the caller's transaction, beside the state change it reports
(a charge and its ``low_balance``, a relay intent and its ``disconnect_deferred``), and
logged once as ``event=<type>``. The records are agent/events.py's, one per type.
"""

from __future__ import annotations

import logging

from agent.buffer.store import LANE_EVENTS, Store
from agent.events import Event
from agent.uplink import forming

log = logging.getLogger("agent.ledger")


class EventLog:
    def __init__(self, store: Store) -> None:
        self.store = store

    def emit(self, t: int, event: Event) -> None:
        """Write ``event`` (a record of agent/events.py) at ``t``, in the caller's
        transaction, and log it."""
        self.store.add_pending(LANE_EVENTS, forming.event_item(t, event), t)
        log.info("event=%s t=%d meter=%s acct=%s detail=%s", event.TYPE, t, event.meter,
                 event.acct, event.detail())
