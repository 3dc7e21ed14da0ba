"""Every disconnection judged at the instant the agent asked for it, from the world's truth.

For each time the agent asks a bus to open a relay that is physically closed, the
rules of DOMAIN "When the relay may open" are recomputed from what the world
knows, not from what the agent believes:

  emergency_credit  the balance it committed (lowest in that step) < -emergency_credit
  notice            every alert level committed since the last credit that lifted the
                    balance above 0, the 0 % one at least min_notice_h (true) hours ago
  protected time    true local time: not 18:00-08:00, not a Sunday, not a holiday
  untrusted_clock   the agent's clock is really right (within 5 min) AND it had a
                    reason to trust it this boot (NTP, or a command it verified)
  moratorium        no moratorium the agent accepted covers the account
  payment_outage    the last head-end state delivered to this process said online and
                    payments up, heard over a connection that is up or was up within
                    payment_outage_h
  rate_limit        fewer than max_disconnects_per_hour opens in the past hour (less a
                    minute: decisions are dated by the reading that triggered them)

A disconnection the agent gives another reason for is judged on that reason: an
override needs a `relay` command it accepted (and still in force); tamper needs
``disconnect_on_tamper`` (off in the simulation). Reconnection: after a credit
leaves the balance above 0, a relay that is open must close within one poll
interval (plus any time the agent was not running).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sim.neighbourhood.observe import Observer
from sim.neighbourhood.world import HOUR_S, Calendar

CLOCK_WINDOW_S = 300
# The agent dates a decision by the reading that triggered it; in the simulation that
# can be seconds before the step that acts on it, so the hourly cap is judged with
# this much slack (a window of 59 minutes).
RATE_SLACK_S = 60


@dataclass
class BootTruth:
    index: int
    start_t: int
    offset_s: int  # the agent's wall clock minus true time
    ntp: bool = False  # the kernel clock synchronised since power-on
    confirmed: bool = False  # a verified command's iat was within 5 min of its clock
    connected: bool = False
    conn_heard: bool = False  # the head-end's state was delivered on this connection
    he_online: bool | None = None
    he_payments: bool | None = None
    he_heard_t: int | None = None  # last true time heard over a live connection


@dataclass(frozen=True, slots=True)
class PolicyTruth:
    emergency_credit: int
    levels: tuple[int, ...]
    min_notice_h: int
    payment_outage_h: int
    max_per_hour: int


@dataclass
class Disconnection:
    t: int
    meter: str
    acct: str
    boot: int
    reason: str  # the agent's relay_reason
    balance: int
    allowed_by: str
    broken: list[str]
    stale: bool = False  # an open intent decided before a restart, executed after it
    decided: int = 0  # the true time the rules were judged at (a decision this step)


@dataclass
class Judge:
    cal: Calendar
    policy: PolicyTruth
    poll_s: int
    obs: Observer
    opens: list[Disconnection] = field(default_factory=list)
    moratoria: dict[str, int] = field(default_factory=dict)  # acct or "*" -> until
    overrides: dict[str, tuple[str, int | None]] = field(default_factory=dict)
    asked: list[tuple[str, bool]] = field(default_factory=list)  # this step
    judged: dict[str, int] = field(default_factory=dict)  # meter -> boot of its judged open
    owed: dict[str, list[int]] = field(default_factory=dict)  # meter -> credit times
    reconnections: list[tuple[str, int, int]] = field(default_factory=list)  # m, credit, close
    late: list[str] = field(default_factory=list)
    inherited: dict[str, int] = field(default_factory=dict)  # meter -> boot that decided it

    def accepted(self, op: str, args: dict[str, Any], reply: dict[str, Any]) -> None:
        """A command reply the agent committed: moratoria and overrides now in force."""
        if reply.get("code") != "ok" or reply.get("dup"):
            return
        if op == "moratorium":
            for acct in args.get("accounts") or ["*"]:
                self.moratoria[acct] = int(args["until"])
        elif op == "relay":
            meter = str(args["meter"])
            if args["action"] == "auto":
                self.overrides.pop(meter, None)
            else:
                self.overrides[meter] = (str(args["action"]), args.get("until"))

    # -- during a step ---------------------------------------------------------------------
    def ask(self, meter: str, connected: bool) -> None:
        self.asked.append((meter, connected))

    def forget_step(self) -> None:
        self.asked = []

    # -- after a step ----------------------------------------------------------------------
    def judge_step(self, t: int, boot: BootTruth, reasons: dict[str, str],
                   closed: dict[str, bool], account_of: dict[str, str]) -> None:
        for meter, connected in self.asked:
            if connected or not closed.get(meter, True) or self.judged.get(meter) == boot.index:
                continue
            self.judged[meter] = boot.index
            verdict = self._judge(t, boot, meter, account_of[meter], reasons.get(meter, ""))
            verdict.stale = self.inherited.pop(meter, None) is not None
            self.opens.append(verdict)
        self.asked = []
        for entry in self.obs.step_credits:
            if entry.bal <= 0:
                continue
            for meter, acct in account_of.items():
                if acct == entry.acct and not closed.get(meter, True) \
                        and not self._override_open(meter, t):
                    self.owed.setdefault(meter, []).append(t)

    def booted(self, boot: int, open_intents: list[str]) -> None:
        """At each boot: relays the store says should be open that are not yet."""
        self.inherited = dict.fromkeys(open_intents, boot - 1)

    def coil(self, meter: str, connected: bool, t: int) -> None:
        self.judged.pop(meter, None)
        self.inherited.pop(meter, None)
        if connected:
            for credit_t in self.owed.pop(meter, []):
                self.reconnections.append((meter, credit_t, t))

    def _override_open(self, meter: str, t: int) -> bool:
        action, until = self.overrides.get(meter, ("", None))
        return action == "disconnect" and (until is None or t < until)

    def _judge(self, t: int, boot: BootTruth, meter: str, acct: str,
               reason: str) -> Disconnection:
        known = self.obs.accounts.get(acct)
        balance = self.obs.step_min.get(acct, known.balance if known is not None else 0)
        if reason.startswith("override"):
            ok = self._override_open(meter, t)
            return Disconnection(t, meter, acct, boot.index, reason, balance,
                                 "override_disconnect" if ok else "",
                                 [] if ok else ["override: no accepted override in force"],
                                 decided=t)
        if reason != "credit":
            return Disconnection(t, meter, acct, boot.index, reason, balance, "",
                                 [f"reason {reason!r}: disconnect_on_tamper is off"],
                                 decided=t)
        # The agent decides while it handles a reading, dated by the reading, or at a
        # tick: the rules are judged at the step's time, else at a decision this step
        # recorded (journal.record_disconnect), seconds earlier.
        first: tuple[list[str], int] | None = None
        for when in sorted({d for d in self.obs.step_decided if d < t}, reverse=True) + [t]:
            broken, held = self.rules(when, boot, acct, balance)
            recent = sum(1 for d in self.opens if d.reason == "credit"
                         and when - HOUR_S + RATE_SLACK_S < d.decided <= when)
            if recent >= self.policy.max_per_hour:
                broken.append(f"rate_limit: {recent} opens in the past hour "
                              f"(max {self.policy.max_per_hour})")
            else:
                held.append(f"{recent + 1}/{self.policy.max_per_hour} this hour")
            if not broken:
                return Disconnection(t, meter, acct, boot.index, reason, balance,
                                     "credit: " + "; ".join(held), [], decided=when)
            first = first or (broken, when)
        assert first is not None
        return Disconnection(t, meter, acct, boot.index, reason, balance, "", first[0],
                             decided=first[1])

    def rules(self, t: int, boot: BootTruth, acct: str,
              balance: int) -> tuple[list[str], list[str]]:
        """(broken rules, the facts that allowed it) at true time ``t``."""
        p = self.policy
        broken: list[str] = []
        held: list[str] = []
        if balance < -p.emergency_credit:
            held.append(f"balance {balance} < -{p.emergency_credit}")
        else:
            broken.append(f"emergency_credit: balance {balance} >= -{p.emergency_credit}")
        state = self.obs.accounts.get(acct)
        alerts = state.alerts if state is not None else {}
        missing = [lvl for lvl in p.levels if lvl not in alerts]
        zero_t = alerts.get(0)
        if missing:
            broken.append(f"notice: alert levels {missing} not raised since the last credit")
        elif zero_t is None or t - zero_t < p.min_notice_h * HOUR_S:
            broken.append(f"notice: 0 % alert only {(t - (zero_t or t)) // 60} min before")
        else:
            held.append(f"0 % alert {(t - zero_t) // HOUR_S} h before")
        why = self.cal.protection(t)
        if why is not None:
            broken.append(f"{why}: true local time {self.cal.describe(t)}")
        else:
            held.append(f"{self.cal.describe(t)} not protected")
        if abs(boot.offset_s) > CLOCK_WINDOW_S:
            broken.append(f"untrusted_clock: the agent's clock is {boot.offset_s} s off")
        elif not (boot.ntp or boot.confirmed):
            broken.append("untrusted_clock: neither NTP nor a verified command this boot")
        else:
            held.append("clock trusted (" + ("NTP" if boot.ntp else "head-end") + ")")
        until = max(self.moratoria.get(acct, 0), self.moratoria.get("*", 0))
        if t < until:
            broken.append(f"moratorium: accepted, in force until {until}")
        heard = boot.he_heard_t
        live = boot.connected and boot.conn_heard
        fresh = live or (heard is not None and t - heard <= p.payment_outage_h * HOUR_S)
        if boot.he_online is not True or boot.he_payments is not True:
            broken.append(f"payment_outage: head-end last said online={boot.he_online} "
                          f"payments={boot.he_payments}")
        elif not fresh:
            broken.append(f"payment_outage: not heard for {(t - (heard or 0)) // 60} min")
        else:
            held.append("payments up, " + ("heard live" if live else
                                           f"heard {(t - (heard or t)) // 60} min ago"))
        return broken, held

    def settle(self, downtime: list[tuple[int, int]], end_t: int) -> None:
        """Reconnection promises: within one poll interval of the credit, not counting
        time the agent was down."""
        for meter, credit_t, close_t in self.reconnections:
            allowed = self.poll_s + _overlap(downtime, credit_t, close_t)
            if close_t - credit_t > allowed:
                self.late.append(f"{meter}: credit at {credit_t}, reconnected "
                                 f"{close_t - credit_t} s later (allowed {allowed} s)")
        for meter, credits in self.owed.items():
            for credit_t in credits:
                allowed = self.poll_s + _overlap(downtime, credit_t, end_t)
                if end_t - credit_t > allowed:
                    self.late.append(f"{meter}: credit at {credit_t}, never reconnected")


def _overlap(windows: list[tuple[int, int]], a: int, b: int) -> int:
    return sum(max(0, min(b, end) - max(a, start)) for start, end in windows)
