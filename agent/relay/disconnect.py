"""When the relay may open, and who decides (DOMAIN "When the relay may open"; docs/policy.md).

The imperative side of ``agent.ledger.policy``: for each meter of an account it
decides the relay intent, in this order, and writes it in the caller's
transaction (``Actuation.set_intent``), before anything is switched:

  1. a manual override (`relay` command or technician) until ``until`` or `auto`;
  2. a tamper hold (only with ``disconnect_on_tamper``), until an override;
  3. credit: balance > 0 closes the relay at any hour (reconnection is never held);
  4. the policy: ``decide_disconnect`` with every input gathered here, logged;
     a held-back disconnection is one ``disconnect_deferred`` event per episode.

It also keeps what the policy needs that is not in the store: the head-end's
retained state and whether the clock is trusted (NTP since boot, or a verified
command's ``iat`` within 5 minutes).

Once a second the tick decides every account again (``redecide``: the hour, the
head-end and the clock's trust move on without a balance change). An account whose
last decision (the tick's, or an ``evaluate``'s after a balance, an alert, an override,
a tamper) wrote nothing is not decided again before the first second at which time
alone could change the answer (``policy.steady_until``: the next minute, an override's
or a moratorium's end, the notice running out, payments turning stale), as long as
nothing else it depends on moved: the account's next ``evaluate`` replaces its memo; a
change of the head-end's state, the clock's trust, the policy, the meters, a
moratorium or a recorded disconnection forgets them all (``_epoch``), and so does any
undone transaction (``Store.undone``: a memo may come from the writes it undid). The
answer is the same; the queries are not run again for nothing.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import logging
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from agent.buffer.journal import Account, Journal
from agent.buffer.store import Store
from agent.config import MeterConfig
from agent.eventlog import EventLog
from agent.events import DisconnectDeferred, Tamper
from agent.ledger.policy import STEADY_MAX_S, Policy, PolicyInputs, decide_disconnect, steady_until
from agent.localtime import LocalTime
from agent.meters import MeterRegistry
from agent.policy_overlay import PolicyOverlay
from agent.relay.actuation import Actuation
from agent.vocab import TAMPER_KINDS

log = logging.getLogger("agent.ledger")

CLOCK_CONFIRM_WINDOW_S = 300  # DOMAIN: a verified command's iat within 5 minutes
# IS 15959 pairs occurrence/restoration codes (201/202 magnet, 203/204 neutral): a
# restoration is kept as evidence but never opens a relay.
RESTORATION_CODES = frozenset({202, 204})
# the head-end heard again after this long: payments may have turned possible again
# (payment_outage_h is at least an hour), so every account's steady decision is forgotten
HEARD_AGAIN_S = 60


@dataclasses.dataclass(frozen=True, slots=True)
class Steady:
    """An account's last tick decision, which wrote nothing: it holds for ``now_s`` in
    [since_s, until_s) while the inputs outside the account are the ones it saw."""
    since_s: int
    until_s: int
    epoch: int
    trusted: bool
    policy: Policy
    meters: int  # MeterRegistry.version
    undone: int  # Store.undone: a decision of a transaction undone since does not hold


@dataclasses.dataclass
class HeadendView:
    online: bool | None = None
    payments: bool | None = None
    heard_s: float | None = None  # last time heard over a live broker connection


# -- is the clock NTP-synchronised since boot? (DOMAIN: the clock is trusted) --------
STA_UNSYNC = 0x0040  # <linux/timex.h>: the kernel clock is not synchronised
TIME_ERROR = 5  # adjtimex's return when it is not
TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")  # on tmpfs: gone at each boot


class _Timex(ctypes.Structure):  # struct timex of <sys/timex.h>, read-only use (modes = 0)
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long),
                ("status", ctypes.c_int), ("rest", ctypes.c_byte * 256)]  # room to spare


@functools.cache
def _adjtimex() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn: Callable[..., int] = ctypes.CDLL(None, use_errno=True).adjtimex
    except (OSError, AttributeError):
        return None
    return fn


def kernel_clock_synchronised() -> bool:
    """True when systemd-timesyncd has synchronised since boot, or when the kernel says
    an NTP daemon (chrony, ntpd, timesyncd) disciplines the clock: adjtimex() is not
    TIME_ERROR and STA_UNSYNC is clear. False elsewhere (not Linux, no libc). Asked
    about once a second until it says yes (then Disconnection latches it)."""
    if TIMESYNCD_FLAG.exists():
        return True
    adjtimex = _adjtimex()
    if adjtimex is None:
        return False
    timex = _Timex()  # modes = 0: read only, never sets anything
    state = int(adjtimex(ctypes.byref(timex)))
    return state not in (-1, TIME_ERROR) and not timex.status & STA_UNSYNC


class Disconnection:
    def __init__(self, store: Store, journal: Journal, meters: MeterRegistry,
                 events: EventLog, local: LocalTime, policies: PolicyOverlay,
                 actuation: Actuation, clock_synchronised: Callable[[], bool] | None) -> None:
        self.store = store
        self.journal = journal
        self.meters = meters
        self.events = events
        self.local = local
        self.policies = policies  # the policy in force now (a `policy` command may change it)
        self.headend = HeadendView()
        self.clock_trusted = False
        self.clock_confirmed = False  # by a verified head-end command
        self._clock_synchronised = clock_synchronised
        self._clock_asked_s: int | None = None  # the ledger second the kernel was last asked
        self.actuation = actuation
        # the decision last logged per account, (allowed, reasons): logged only when it
        # changes, not on every poll (SD-card wear); one entry an account
        self._logged: dict[str, tuple[bool, tuple[str, ...]]] = {}
        # the tick's memo (module docstring): one entry an account at most
        self._steady: dict[str, Steady] = {}
        self._epoch = 0  # moved by any change outside the account an answer depends on
        self._writes = 0  # counts what evaluation writes: a decision that wrote is not steady

    def redecide_after_restart(self, meters: Iterable[MeterConfig]) -> None:
        """A credit disconnection decided but not yet carried out when the agent stopped
        is decided again now (clock, head-end, protected time may differ): the intent
        goes back to the relay's last known state. In the caller's transaction."""
        for meter in meters:
            state = self.journal.meter(meter.id)
            if (state.relay_intent == "open" and state.relay_reason == "credit"
                    and state.relay_actual != "open"):
                self.journal.update_meter(meter.id, relay_intent="closed",
                                          relay_reason="redecide_after_restart")
                log.info("event=relay_redecide meter=%s reason=restart", meter.id)

    # -- the clock ------------------------------------------------------------
    def confirm_clock(self, iat_s: int, now_s: int) -> None:
        if abs(iat_s - now_s) <= CLOCK_CONFIRM_WINDOW_S:
            self.clock_confirmed = self.clock_trusted = True

    def refresh_clock_trust(self, now_s: int | None = None) -> bool:
        """Trusted once NTP synchronised the clock since boot (latched for this process)
        or a verified head-end command confirmed it. With ``now_s`` the kernel is asked
        once per second of it, not once per account a tick decides."""
        if not self.clock_trusted and self._clock_synchronised is not None \
                and (now_s is None or now_s != self._clock_asked_s):
            self._clock_asked_s = now_s
            self.clock_trusted = bool(self._clock_synchronised())
        return self.clock_trusted

    # -- the head-end's retained state ---------------------------------------------
    def headend_state(self, online: bool | None, payments: bool | None, now_s: float) -> None:
        self.headend.online = online
        self.headend.payments = payments
        self.headend.heard_s = now_s
        self._epoch += 1

    def headend_still_heard(self, now_s: float) -> None:
        """While the broker connection that delivered the retained state stays up, any
        change would reach us at once: the last state is still what the head-end says."""
        if self.headend.heard_s is not None:
            if now_s - self.headend.heard_s > HEARD_AGAIN_S:
                self._epoch += 1
            self.headend.heard_s = now_s

    # -- decisions -----------------------------------------------------------------
    def evaluate(self, acct_id: str, now_s: int, acct: Account | None = None) -> None:
        """Make each of the account's relay intents what the rules say, in order:
        a live override, a tamper hold, credit (reconnect at any hour), the policy.
        ``acct``: the account as just written by the caller (saves reading it again)."""
        self._remember(acct_id, now_s, self._decide(acct_id, now_s, acct))

    def redecide(self, acct_id: str, now_s: int) -> None:
        """The tick's evaluate: skipped while the account's last one holds (``Steady``)."""
        steady = self._steady.get(acct_id)
        if (steady is not None and steady.since_s <= now_s < steady.until_s
                and steady.epoch == self._epoch and steady.trusted == self.clock_trusted
                and steady.policy is self.policies.policy
                and steady.meters == self.meters.version
                and steady.undone == self.store.undone):
            return
        self._remember(acct_id, now_s, self._decide(acct_id, now_s))

    def _remember(self, acct_id: str, now_s: int, until: int | None) -> None:
        """The memo of a decision that wrote nothing (``until``: until when it holds)."""
        if until is None:
            self._steady.pop(acct_id, None)
        else:
            self._steady[acct_id] = Steady(now_s, until, self._epoch, self.clock_trusted,
                                           self.policies.policy, self.meters.version,
                                           self.store.undone)

    def _decide(self, acct_id: str, now_s: int, acct: Account | None = None) -> int | None:
        """evaluate(); returns until when the answer holds if it wrote nothing, else None."""
        if acct is None:
            acct = self.journal.account(acct_id)
        writes = self._writes
        until: int | None = now_s + STEADY_MAX_S
        for meter in self.meters.of_account(acct_id):
            state = self.journal.meter(meter.id)
            if state.override:
                if state.override_until is None or now_s < state.override_until:
                    want = "closed" if state.override == "connect" else "open"
                    if state.relay_intent != want:
                        self._set_intent(meter, want, f"override_{state.override}", now_s)
                    if state.override_until is not None and until is not None:
                        until = min(until, state.override_until)
                    continue
                self._writes += 1
                self.journal.update_meter(meter.id, override="", override_until=None)
                if state.relay_intent == "open" and state.relay_reason.startswith("override"):
                    self._set_intent(meter, "closed", "override_end", now_s)
                state = self.journal.meter(meter.id)
            if state.tamper_hold:
                if state.relay_intent != "open":
                    self._set_intent(meter, "open", "tamper", now_s)
                continue
            if acct.balance > 0:  # reconnection is allowed at any hour (DOMAIN)
                if state.relay_intent == "open":
                    self._set_intent(meter, "closed", "credit", now_s)
                self._end_deferral(acct)
                continue
            if acct.balance >= 0 or state.relay_intent == "open":
                continue
            steady = self._consider(acct, meter, now_s)
            until = None if steady is None or until is None else min(until, steady)
        return until if self._writes == writes else None

    def _end_deferral(self, acct: Account) -> None:
        if acct.deferred:
            self._writes += 1
            self.journal.update_account(acct.id, deferred="")

    def _consider(self, acct: Account, meter: MeterConfig, now_s: int) -> int | None:
        """The policy's decision for one meter; returns ``steady_until``."""
        inputs = PolicyInputs(
            balance=acct.balance,
            local_s=self.local.local_s(now_s),
            clock_trusted=self.refresh_clock_trust(now_s),
            moratorium_until=self.journal.moratorium_until(acct.id),
            now_s=now_s,
            headend_online=self.headend.online,
            payments_ok=self.headend.payments,
            headend_heard_s=self.headend.heard_s,
            alerts_raised=acct.alerts,
            zero_alert_at_s=acct.zero_alert_at,
            disconnects_last_hour=self.journal.count_disconnects(now_s - 3600),
            policy=self.policies.policy,
        )
        decision = decide_disconnect(inputs)
        logged = (decision.allowed, tuple(decision.reasons))
        if self._logged.get(acct.id) != logged:
            self._logged[acct.id] = logged
            log.info("event=disconnect_decision acct=%s meter=%s allowed=%s reasons=%s "
                     "balance=%d floor=%d local=%s trusted=%s online=%s payments=%s heard=%s "
                     "moratorium=%s alerts=%s zero_at=%s disconnects_1h=%d", acct.id, meter.id,
                     decision.allowed, ",".join(decision.reasons), acct.balance,
                     -self.policies.policy.emergency_credit, inputs.local_s, inputs.clock_trusted,
                     inputs.headend_online, inputs.payments_ok, inputs.headend_heard_s,
                     inputs.moratorium_until, sorted(acct.alerts), acct.zero_alert_at,
                     inputs.disconnects_last_hour)
        if decision.allowed:
            self._record_disconnect(now_s)
            self._set_intent(meter, "open", "credit", now_s)
            self._end_deferral(acct)
            return None
        key = ",".join(decision.reasons)
        if key != acct.deferred:  # acct was read after the balance change that led here
            # once per episode: an episode is a run of decisions with the same reasons
            self.events.emit(now_s, DisconnectDeferred(meter.id, acct.id, decision.reasons,
                                                       acct.balance))
            self._writes += 1
            self.journal.update_account(acct.id, deferred=key)
            return None
        return steady_until(inputs, decision)

    def _set_intent(self, meter: MeterConfig, want: str, reason: str, now_s: int) -> None:
        self._writes += 1
        self.actuation.set_intent(meter.id, want, reason, now_s)

    def _record_disconnect(self, t: int) -> None:
        """One more disconnection in the rate limit's hour: every answer may move."""
        self._epoch += 1
        self.journal.record_disconnect(t)

    # -- tamper ------------------------------------------------------------------
    def on_tamper(self, meter_id: str, kind: str, code: int, t: int) -> None:
        """A meter reported tamper: evidence is kept, a `tamper` event raised; the relay
        opens (durable intent first) only with policy.disconnect_on_tamper."""
        kind = kind if kind in TAMPER_KINDS else "other"
        meter = self.meters.get(meter_id)
        acct_id = meter.account if meter else None
        with self.store.tx():
            if self.journal.tamper_recorded(meter_id, t, code):
                log.info("event=tamper_seen_before meter=%s t=%d code=%d", meter_id, t, code)
                return
            state = self.journal.meter(meter_id)
            balance = self.journal.account(acct_id).balance if acct_id else None
            action = "none"
            if (meter is not None and self.policies.policy.disconnect_on_tamper
                    and code not in RESTORATION_CODES and meter.relay_spec.kind != "none"):
                action = "open"
                self.journal.update_meter(meter_id, tamper_hold=t)
                self._record_disconnect(t)
            self.journal.record_tamper(meter_id, acct_id, t, kind, code, balance,
                                       state.relay_actual or "unknown", action)
            self.events.emit(t, Tamper(meter_id, acct_id, kind, code, action))
            if action == "open" and acct_id is not None:
                self.evaluate(acct_id, t)

    def set_override(self, meter_id: str, action: str, until: int | None, now_s: int) -> str:
        """A manual override (cloud `relay` op or a technician); returns the resulting intent.
        Any override also ends a tamper hold: a person has decided. Joins the caller's tx."""
        meter = self.meters[meter_id]
        with self.store.tx():
            state = self.journal.meter(meter_id)
            if action == "auto":
                self.journal.update_meter(meter_id, override="", override_until=None,
                                          tamper_hold=0)
                if state.relay_intent == "open" and state.relay_reason.startswith(
                        ("override", "tamper")):
                    self._set_intent(meter, "closed", "override_auto", now_s)
            else:
                self.journal.update_meter(meter_id, override=action, override_until=until,
                                          tamper_hold=0)
            log.info("event=relay_override meter=%s action=%s until=%s", meter_id, action, until)
            self.evaluate(meter.account, now_s)
            return self.journal.meter(meter_id).relay_intent

    def set_moratorium(self, acct: str, until: int, reason: str, now_s: int) -> None:
        """Joins the caller's transaction; ``acct`` '*' covers every account."""
        with self.store.tx():
            self.journal.set_moratorium(acct, until, reason)
            self._epoch += 1
        log.info("event=moratorium acct=%s until=%d reason=%s t=%d", acct, until, reason, now_s)
