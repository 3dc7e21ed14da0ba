"""Alerts on a balance change: ``low_balance`` at each alert level crossed going down
(with a days-left estimate) and ``credit_exhausted`` when the balance falls through the
emergency-credit floor (docs/policy.md). The levels are a share of the account's
``reference`` (its balance after the last top-up); a top-up re-arms the levels above
the new balance (``agent.ledger.alerts``, pure).

The caller then has the relay engine decide on the same account
(``Disconnection.evaluate``): the alerts raised here are inputs to that decision
(minimum notice), so they are written first, in the same transaction.
"""

from __future__ import annotations

from agent.buffer.journal import Account, Journal
from agent.eventlog import EventLog
from agent.events import CreditExhausted, LowBalance
from agent.ledger import alerts, calendar
from agent.policy_overlay import PolicyOverlay

SPEND_WINDOW_S = 7 * 86_400  # days-left estimate: average spend over at most the last week


class BalanceAlerts:
    def __init__(self, journal: Journal, events: EventLog, policies: PolicyOverlay) -> None:
        self.journal = journal
        self.events = events
        self.policies = policies

    def days_left(self, acct_id: str, balance: int, now_s: int) -> int | None:
        spent, first_t = self.journal.spend_since(acct_id, now_s - SPEND_WINDOW_S)
        if first_t is None:
            return None
        window_s = max(now_s - first_t, calendar.DAY_S)  # at least a day of history
        return alerts.days_left_estimate(balance, spent * calendar.DAY_S // window_s)

    def balance_changed(self, acct_id: str, before: int, now_s: int) -> Account:
        """The alerts a change from ``before`` to the stored balance raises, written in
        the caller's transaction; the account as it now stands."""
        policy = self.policies.policy
        acct = self.journal.account(acct_id)
        crossed = alerts.crossed_levels(policy.alert_levels_pct, acct.reference, before,
                                        acct.balance, acct.alerts)
        if crossed:
            zero_at = acct.zero_alert_at
            days = self.days_left(acct_id, acct.balance, now_s)
            for level in crossed:
                self.events.emit(now_s, LowBalance(acct_id, level, acct.balance, days))
                if level == 0:
                    zero_at = now_s
            acct = acct._replace(alerts=acct.alerts | frozenset(crossed),
                                 zero_alert_at=zero_at)
            self.journal.update_account(acct_id, alerts=acct.alerts, zero_alert_at=zero_at)
        floor = -policy.emergency_credit
        if before >= floor > acct.balance:
            self.events.emit(now_s, CreditExhausted(acct_id, acct.balance))
        return acct
