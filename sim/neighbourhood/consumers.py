"""How households pay: by app through the head-end, or with a token from a counter.

A household learns it is running low from the head-end's SMS (sent when a
``low_balance`` event *reaches the head-end*, so an outage delays it) and that it
has run out when its supply is cut. What it does depends on its habit:

  planner      pays by app within hours of the 30 % alert
  last_minute  pays by app half a day to four days after the 0 % alert, or soon after a cut
  struggler    pays small amounts, six hours to three days after a cut
  token_user   buys a token at a counter after the 10 % alert

When the app cannot take money (the head-end is down or says payments are down,
as in Munger and Lucknow) most go to a counter instead. Counters are open 09:00 to
17:00 local, Monday to Saturday, not on holidays; a token (``issue_token``, the
reference vending system) is typed in at the concentrator some time later. Some
typos (a token refused, then typed again right) and some tokens entered twice
(refused as used) exercise the token rules.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from agent.ledger.tokens import issue_token
from sim.neighbourhood.world import DAY_S, HOUR_S, Calendar, Household

AMOUNTS_RS = {"planner": (500, 1000, 1500, 2000), "last_minute": (300, 500, 1000),
              "struggler": (100, 150, 200, 300), "token_user": (500, 1000)}
COUNTER_OPEN_H = (9, 17)
TYPO_PCT = 4
TWICE_PCT = 3


class Host(Protocol):
    @property
    def now(self) -> int: ...
    def at(self, t: int, fn: Callable[[], None]) -> None: ...
    def app_payments(self) -> bool: ...
    def cloud_topup(self, acct: str, amount: int, txn: str) -> bool: ...
    def enter_token(self, acct: str, digits: str, note: str) -> None: ...


@dataclass
class Ledger:
    """What the households did, for the checks and the report."""

    cloud: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # txn: acct, paise, t
    tokens: list[tuple[int, str, int, int, str]] = field(default_factory=list)  # t acct n p dig
    entries: list[tuple[int, str, str, str]] = field(default_factory=list)  # t, acct, digits, note
    by_channel: dict[str, int] = field(default_factory=dict)


class Consumers:
    def __init__(self, host: Host, households: list[Household], token_key: bytes,
                 rng: random.Random, cal: Calendar) -> None:
        self.host = host
        self.by_acct = {hh.account: hh for hh in households}
        self.token_key = token_key
        self.rng = rng
        self.cal = cal
        self.planned: dict[str, int] = {}  # account -> when it will pay
        self.counters: dict[str, int] = {}
        self.txns = 0
        self.ledger = Ledger()

    def open_accounts(self, t: int) -> None:
        for acct, hh in sorted(self.by_acct.items()):
            self.host.at(t, partial(self._cloud, acct, hh.start_balance, "open"))

    # -- what they notice ----------------------------------------------------------------
    def on_alert(self, acct: str, level_pct: int, t: int) -> None:
        hh = self.by_acct.get(acct)
        if hh is None:
            return
        habit = hh.habit
        if habit == "planner" and level_pct <= 30:
            self._plan(acct, t + self.rng.randrange(HOUR_S, 12 * HOUR_S))
        elif habit == "token_user" and level_pct <= 10:
            self._plan(acct, t + self.rng.randrange(HOUR_S, DAY_S))
        elif habit == "last_minute" and level_pct == 0:
            self._plan(acct, t + self.rng.randrange(12 * HOUR_S, 96 * HOUR_S))

    def on_cut(self, acct: str, t: int) -> None:
        hh = self.by_acct.get(acct)
        if hh is None:
            return
        delay = self.rng.randrange(6 * HOUR_S, 3 * DAY_S) if hh.habit == "struggler" \
            else self.rng.randrange(600, 3 * HOUR_S)
        self._plan(acct, t + delay, sooner=True)

    # -- paying --------------------------------------------------------------------------
    def _plan(self, acct: str, t: int, *, sooner: bool = False) -> None:
        planned = self.planned.get(acct)
        if planned is not None and (not sooner or planned <= t):
            return
        self.planned[acct] = t
        self.host.at(t, lambda: self._pay(acct, t))

    def _pay(self, acct: str, planned_t: int) -> None:
        if self.planned.get(acct) != planned_t:
            return  # superseded by a sooner plan
        hh = self.by_acct[acct]
        amount = self.rng.choice(AMOUNTS_RS[hh.habit]) * 100
        if hh.habit != "token_user" and self.host.app_payments():
            del self.planned[acct]
            self._cloud(acct, amount, "app")
        elif hh.habit == "token_user" or self.rng.random() < 0.7:
            del self.planned[acct]
            self.host.at(self._counter_open(self.host.now), lambda: self._token(acct, amount))
        else:  # tries the app again later
            again = self.host.now + 6 * HOUR_S
            self.planned[acct] = again
            self.host.at(again, lambda: self._pay(acct, again))

    def _cloud(self, acct: str, amount: int, channel: str) -> None:
        self.txns += 1
        txn = f"pay-{acct}-{self.txns}"
        if not self.host.cloud_topup(acct, amount, txn):  # the head-end is offline
            self.host.at(self.host.now + HOUR_S, lambda: self._cloud(acct, amount, channel))
            return
        self.ledger.cloud[txn] = (acct, amount, self.host.now)
        self.ledger.by_channel[channel] = self.ledger.by_channel.get(channel, 0) + amount

    def _counter_open(self, t: int) -> int:
        """The first moment at or after ``t`` a payment counter is open."""
        for _ in range(30 * 24):
            local = self.cal.local(t)
            open_h, close_h = COUNTER_OPEN_H
            if (local.weekday() < 6 and local.date().isoformat() not in self.cal.holidays
                    and open_h <= local.hour < close_h):
                return t
            t = (t // HOUR_S + 1) * HOUR_S
        return t

    def _token(self, acct: str, amount: int) -> None:
        counter = self.counters.get(acct, 0)
        self.counters[acct] = counter + 1
        digits = issue_token(self.token_key, acct, amount, counter)
        now = self.host.now
        self.ledger.tokens.append((now, acct, counter, amount, digits))
        self.ledger.by_channel["token"] = self.ledger.by_channel.get("token", 0) + amount
        walk = now + self.rng.randrange(900, 3 * HOUR_S)
        if self.rng.randrange(100) < TYPO_PCT:
            wrong = _typo(digits, self.rng)
            self.host.at(walk, lambda: self.host.enter_token(acct, wrong, "typo"))
            walk += 300
        self.host.at(walk, lambda: self.host.enter_token(acct, digits, "token"))
        if self.rng.randrange(100) < TWICE_PCT:
            self.host.at(walk + HOUR_S, lambda: self.host.enter_token(acct, digits, "again"))

    def entered(self, acct: str, digits: str, note: str, t: int) -> None:
        self.ledger.entries.append((t, acct, digits, note))


def _typo(digits: str, rng: random.Random) -> str:
    chars = list(digits)
    spots = [i for i, c in enumerate(chars) if c.isdigit()]
    i = rng.choice(spots)
    chars[i] = str((int(chars[i]) + rng.randrange(1, 10)) % 10)
    return "".join(chars)
