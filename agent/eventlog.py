"""The agent's uplink events (CONTRACT 5): one writer, into the store's events lane.

Each event is written in the caller's transaction, beside the state change it reports
(a charge and its ``low_balance``, a relay intent and its ``disconnect_deferred``), and
logged once as ``event=<type>``.
"""

from __future__ import annotations

import logging
from typing import Any

from agent.buffer.store import LANE_EVENTS, Store
from agent.uplink import forming

log = logging.getLogger("agent.ledger")


class EventLog:
    def __init__(self, store: Store) -> None:
        self.store = store

    def emit(self, t: int, type_: str, *, m: str | None = None, acct: str | None = None,
             detail: dict[str, Any] | None = None) -> None:
        self.store.add_pending(LANE_EVENTS, forming.event_item(t, type_, m=m, acct=acct,
                                                              detail=detail), t)
        log.info("event=%s t=%d meter=%s acct=%s detail=%s", type_, t, m, acct, detail or {})
