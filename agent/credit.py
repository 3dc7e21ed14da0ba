"""Money in: top-ups (the ``topup`` command) and prepaid tokens typed in by hand.

A top-up is applied once per ``txn`` (the journal's txn table) and re-arms the
alert levels above the new balance. A token (docs/tokens.md) is checked by
``agent.ledger.tokens``: its state, the wrong-entry gate, the entry and the balance
commit in one transaction before "accepted" is returned (ledger invariant 4). After
the balance changes, alerts and the relay decision follow as for a charge.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from agent.alerting import BalanceAlerts
from agent.buffer.journal import Journal, TokenRow
from agent.buffer.store import Store
from agent.errors import CommandError
from agent.eventlog import EventLog
from agent.events import TokenRejected
from agent.ledger import tokens
from agent.ledger.alerts import rearmed_levels
from agent.relay.disconnect import Disconnection

log = logging.getLogger("agent.ledger")


class Credit:
    def __init__(self, accounts: Iterable[str], store: Store, journal: Journal,
                 events: EventLog, alerts: BalanceAlerts, relays: Disconnection, *,
                 token_key_file: Path, token_key: bytes | None = None) -> None:
        """``accounts``: the config's account ids. The token key is ``token_key``, or
        read from ``token_key_file`` when the first token is entered."""
        self.accounts = frozenset(accounts)
        self.store = store
        self.journal = journal
        self.events = events
        self.alerts = alerts
        self.relays = relays
        self._token_key = token_key
        self._token_key_file = token_key_file

    def _balance_changed(self, acct_id: str, before: int, now_s: int) -> None:
        acct = self.alerts.balance_changed(acct_id, before, now_s)
        self.relays.evaluate(acct_id, now_s, acct)

    def topup(self, acct_id: str, amount: int, txn: str, now_s: int,
              kind: str = "topup") -> tuple[bool, int]:
        """(applied, balance); applied once per txn. Joins the caller's transaction."""
        with self.store.tx():
            before = self.journal.account(acct_id).balance
            entry = self.journal.topup(acct_id, amount, txn, now_s, kind)
            if entry is None:
                return False, before
            acct = self.journal.account(acct_id)
            rearmed = rearmed_levels(entry.bal, entry.bal, acct.alerts)
            self.journal.update_account(acct_id, reference=max(entry.bal, 0),
                                        alerts=acct.alerts - rearmed,
                                        zero_alert_at=None if 0 in rearmed
                                        else acct.zero_alert_at)
            self._balance_changed(acct_id, before, now_s)
            return True, entry.bal

    def _token_key_bytes(self) -> bytes:
        if self._token_key is None:
            from agent.uplink.cose import read_hex_key

            self._token_key = read_hex_key(self._token_key_file)
        return self._token_key

    def enter_token(self, acct_id: str, digits: str, now_s: int) -> dict[str, Any]:
        """`meter-agent token enter`: the token's state, gate, entry and balance commit in
        one transaction, and only then is "accepted" returned (ledger invariant 4)."""
        assert not self.store.in_tx, "enter_token commits itself: call it outside a tx"
        if acct_id not in self.accounts:
            raise CommandError("unknown_account", f"no account {acct_id!r}")
        key = self._token_key_bytes()
        with self.store.tx():
            row = self.journal.token_row(acct_id)
            state = tokens.TokenState() if row is None else tokens.TokenState(
                row.max_counter, row.used)
            gate = tokens.TokenGate() if row is None else tokens.TokenGate(
                row.wrong_in_row, row.lockouts, row.locked_from_s, row.locked_until_s,
                row.last_wrong_s)
            check, gate = tokens.enter_token(key, acct_id, digits, state, gate, now_s)
            applied, balance = False, self.journal.account(acct_id).balance
            if check.ok:
                # The txn table is a second lock on "at most once" besides TokenState.used.
                applied, balance = self.topup(acct_id, check.amount_paise,
                                              f"token:{acct_id}:{check.counter}", now_s, "token")
                state = check.new_state
            reason = check.reason if not check.ok else ("ok" if applied else "used")
            self.journal.save_token_row(acct_id, TokenRow(
                state.max_counter, state.used, gate.wrong_in_row, gate.lockouts,
                gate.locked_from_s, gate.locked_until_s, gate.last_wrong_s))
            if reason != "ok":
                locked_until_s = gate.locked_until_s if tokens.gate_locked(gate, now_s) else None
                self.events.emit(now_s, TokenRejected(acct_id, reason, check.counter,
                                                      locked_until_s))
        log.info("event=token acct=%s result=%s counter=%s", acct_id, reason, check.counter)
        if reason != "ok":
            out: dict[str, Any] = {"ok": False, "reason": reason}
            if tokens.gate_locked(gate, now_s):
                out["locked_until"] = gate.locked_until_s
            return out
        return {"ok": True, "amount": check.amount_paise, "balance": balance,
                "counter": check.counter}
