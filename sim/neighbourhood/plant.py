"""Bugs planted on purpose, to show the simulation finds them (``--plant-bug NAME``).

  holiday  the policy forgets holidays: a disconnection may happen on one
           (``agent.ledger.policy.is_protected_day`` keeps only the weekdays)
  duty     duty computed on each posting's rounded energy paise, rounded half up,
           instead of on the exact milli-paise (``agent.ledger.billing.charge``)
  notice   the 24 h notice after the 0 % alert is not waited for
           (``agent.ledger.policy.notice_given`` only checks the levels)

Each is a monkeypatch of one function of the pure ledger, undone on exit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from agent.ledger import billing, policy
from agent.ledger.calendar import weekday

BUGS = ("holiday", "duty", "notice")


@contextmanager
def planted(name: str) -> Iterator[None]:
    if not name:
        yield
        return
    if name not in BUGS:
        raise ValueError(f"unknown bug {name!r}; known: {', '.join(BUGS)}")
    module: Any
    if name == "holiday":
        module, attr = policy, "is_protected_day"
        new: Callable[..., Any] = _weekdays_only
    elif name == "notice":
        module, attr = policy, "notice_given"
        new = _levels_only
    else:
        module, attr = billing, "charge"
        new = _duty_rounded(billing.charge)
    old = getattr(module, attr)
    setattr(module, attr, new)
    try:
        yield
    finally:
        setattr(module, attr, old)


def _weekdays_only(pol: policy.Policy, local_s: int) -> bool:
    return weekday(local_s) in pol.protected_weekdays


def _levels_only(inputs: policy.PolicyInputs) -> bool:
    required = set(inputs.policy.alert_levels_pct) | {0}
    return required <= set(inputs.alerts_raised)


def _duty_rounded(charge: Callable[..., billing.Charge]) -> Callable[..., billing.Charge]:
    def wrapped(tariff: Any, *args: Any, **kwargs: Any) -> billing.Charge:
        result = charge(tariff, *args, **kwargs)
        postings = tuple(
            dataclasses.replace(p, duty_paise=(p.energy_paise * tariff.duty_bp + 5000) // 10_000)
            for p in result.postings)
        return billing.Charge(postings=postings, accrual=result.accrual)

    return wrapped
