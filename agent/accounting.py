"""Readings to money to relay intent: the imperative side of the prepaid ledger.

The rules are pure functions in ``agent.ledger``; this module feeds them the
stored state, and writes what they decide through the journal in one
transaction per step (charge + balance + events + relay intent together).
It never talks to a bus or a broker: relay intent is durable here first, and
the runtime then asks the bus to make the relay match it (DOMAIN invariant 7).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from agent.buffer import outbox
from agent.buffer.journal import Account, Journal
from agent.buffer.store import LANE_EVENTS, LANE_READINGS, Store
from agent.config import Config, MeterConfig
from agent.drivers.modbus.maps import load_map
from agent.drivers.reading import Reading
from agent.ledger import alerts, billing, calendar
from agent.ledger.policy import Policy, PolicyInputs, decide_disconnect
from agent.ledger.tariff import Tariff

log = logging.getLogger("agent.ledger")

CLOCK_CONFIRM_WINDOW_S = 300  # DOMAIN: a verified command's iat within 5 minutes
MAX_LINE_VOLTAGE_V = 300  # with the model's max current: the most a meter can pass


@dataclass
class HeadendView:
    online: bool | None = None
    payments: bool | None = None
    heard_s: float | None = None  # last time heard over a live broker connection


class Accounting:
    def __init__(self, cfg: Config, store: Store, journal: Journal) -> None:
        self.cfg = cfg
        self.store = store
        self.journal = journal
        self.tz = ZoneInfo(cfg.gateway.timezone)
        self.policy: Policy = cfg.policy
        self.tariffs: dict[str, Tariff] = {t.name: t for t in cfg.tariffs}
        self.meters: dict[str, MeterConfig] = {m.id: m for m in cfg.meters}
        self.headend = HeadendView()
        self.clock_trusted = False

    # -- helpers ------------------------------------------------------------
    def local_s(self, unix_s: int) -> int:
        offset = datetime.fromtimestamp(unix_s, self.tz).utcoffset()
        return unix_s + (int(offset.total_seconds()) if offset else 0)

    def emit(self, t: int, type_: str, *, m: str | None = None, acct: str | None = None,
             detail: dict[str, Any] | None = None) -> None:
        self.store.add_pending(LANE_EVENTS, outbox.event_item(t, type_, m=m, acct=acct,
                                                              detail=detail), t)
        log.info("event=%s t=%d meter=%s acct=%s detail=%s", type_, t, m, acct, detail or {})

    def setup(self, now_s: int) -> None:
        with self.store.tx():
            for acct in self.cfg.accounts:
                self.journal.ensure_account(acct.id, acct.tariff)
            for meter in self.cfg.meters:
                self.journal.meter(meter.id)
        self.tick(now_s)

    def confirm_clock(self, iat_s: int, now_s: int) -> None:
        if abs(iat_s - now_s) <= CLOCK_CONFIRM_WINDOW_S:
            self.clock_trusted = True

    # -- readings -----------------------------------------------------------
    def on_reading(self, reading: Reading) -> None:
        meter = self.meters.get(reading.meter)
        with self.store.tx():
            self.store.add_pending(LANE_READINGS, outbox.reading_item(reading), reading.t)
            if meter is None or "import_wh" not in reading.values:
                return
            self._charge_reading(meter, reading)

    def _charge_reading(self, meter: MeterConfig, reading: Reading) -> None:
        state = self.journal.meter(meter.id)
        new_wh = reading.values["import_wh"]
        if state.base_wh is None or state.base_t is None:
            self.journal.update_meter(meter.id, base_wh=new_wh, base_t=reading.t,
                                      serial=reading.serial)
            return
        rmap = load_map(meter.model)
        check = billing.validate_delta(
            state.base_wh, new_wh, reading.t - state.base_t,
            rmap.max_current_a * MAX_LINE_VOLTAGE_V * rmap.phases, rmap.register_max_wh,
            state.serial, reading.serial)
        if check.bad_reading or check.kind in ("rollover", "replaced"):  # never charged
            self.emit(reading.t, "bad_reading", m=meter.id, acct=meter.account,
                      detail={"why": check.kind, "reason": check.reason,
                              "baseline_wh": state.base_wh, "import_wh": new_wh})
        if not check.rebase:
            return  # baseline kept: the next good reading is charged from it
        self.journal.update_meter(meter.id, base_wh=new_wh, base_t=reading.t,
                                  serial=reading.serial or state.serial)
        if check.kind == "ok" and check.delta_wh > 0:
            self._post_energy(meter, check.delta_wh, state.base_t, reading.t)

    def _post_energy(self, meter: MeterConfig, delta_wh: int, t0: int, t1: int) -> None:
        acct = self.journal.account(meter.account)
        tariff = self.tariffs[acct.tariff]
        accrual = None if not acct.month else billing.MonthAccrual(
            acct.month, acct.consumed_wh, acct.energy_mp, acct.energy_posted, acct.duty_posted,
            acct.duty_mp_bp)
        before = acct.balance
        result = billing.charge(tariff, accrual, delta_wh, self.local_s(t0), self.local_s(t1))
        for posting in result.postings:
            # the entry names the meter, the billing month and the tariff version in force
            ref = f"{meter.id}/{posting.month}/{tariff.name}@{posting.tariff_version}"
            if posting.energy_paise:
                self.journal.post(acct.id, t1, "energy", -posting.energy_paise, ref)
            if posting.duty_paise:
                self.journal.post(acct.id, t1, "duty", -posting.duty_paise, ref)
        new = result.accrual
        self.journal.update_account(acct.id, month=new.month, consumed_wh=new.consumed_wh,
                                    energy_mp=new.energy_mp, energy_posted=new.energy_posted,
                                    duty_posted=new.duty_posted, duty_mp_bp=new.duty_mp_bp)
        self._after_balance_change(acct.id, before, t1)

    # -- money in -------------------------------------------------------------
    def topup(self, acct_id: str, amount: int, txn: str, now_s: int,
              kind: str = "topup") -> tuple[bool, int]:
        """Inside the caller's transaction. (applied, balance); applied once per txn."""
        before = self.journal.account(acct_id).balance
        entry = self.journal.topup(acct_id, amount, txn, now_s, kind)
        if entry is None:
            return False, before
        acct = self.journal.account(acct_id)
        rearmed = alerts.rearmed_levels(entry.bal, entry.bal, acct.alerts)
        self.journal.update_account(acct_id, reference=max(entry.bal, 0),
                                    alerts=acct.alerts - rearmed,
                                    zero_alert_at=None if 0 in rearmed else acct.zero_alert_at)
        self._after_balance_change(acct_id, before, now_s)
        return True, entry.bal

    # -- the clock: fixed charges and re-evaluation ---------------------------
    def tick(self, now_s: int) -> None:
        today = calendar.local_date(self.local_s(now_s))
        with self.store.tx():
            for acct in self.journal.accounts():
                tariff = self.tariffs.get(acct.tariff)
                if tariff is None:
                    continue
                dates = billing.fixed_dates_due(acct.fixed_last, today)
                before = acct.balance
                for date in dates:
                    if tariff.fixed_per_day:
                        self.journal.post(acct.id, now_s, "fixed", -tariff.fixed_per_day,
                                          f"{date}/{tariff.name}@{tariff.version}")
                if dates:
                    self.journal.update_account(acct.id, fixed_last=dates[-1])
                    self._after_balance_change(acct.id, before, now_s)
                else:
                    self._evaluate_relays(acct.id, now_s)

    # -- alerts and relay intent ------------------------------------------------
    def _after_balance_change(self, acct_id: str, before: int, now_s: int) -> None:
        acct = self.journal.account(acct_id)
        crossed = alerts.crossed_levels(self.policy.alert_levels_pct, acct.reference, before,
                                        acct.balance, acct.alerts)
        if crossed:
            raised = acct.alerts | frozenset(crossed)
            zero_at = acct.zero_alert_at
            for level in crossed:
                self.emit(now_s, "low_balance", acct=acct_id,
                          detail={"level_pct": level, "balance": acct.balance})
                if level == 0:
                    zero_at = now_s
            self.journal.update_account(acct_id, alerts=raised, zero_alert_at=zero_at)
        floor = -self.policy.emergency_credit
        if before >= floor > acct.balance:
            self.emit(now_s, "credit_exhausted", acct=acct_id, detail={"balance": acct.balance})
        self._evaluate_relays(acct_id, now_s)

    def _evaluate_relays(self, acct_id: str, now_s: int) -> None:
        acct = self.journal.account(acct_id)
        for meter in self.meters.values():
            if meter.account != acct_id:
                continue
            state = self.journal.meter(meter.id)
            if state.override and (state.override_until is None or now_s < state.override_until):
                want = "closed" if state.override == "connect" else "open"
                if state.relay_intent != want:
                    self._set_intent(meter, want, f"override_{state.override}", now_s)
                continue
            if state.override:
                self.journal.update_meter(meter.id, override="", override_until=None)
            if acct.balance > 0:  # reconnection is allowed at any hour (DOMAIN)
                if state.relay_intent == "open":
                    self._set_intent(meter, "closed", "credit", now_s)
                self._end_deferral(acct)
                continue
            if acct.balance >= 0 or state.relay_intent == "open":
                continue
            self._consider_disconnect(acct, meter, now_s)

    def _end_deferral(self, acct: Account) -> None:
        if acct.deferred:
            self.journal.update_account(acct.id, deferred="")

    def _consider_disconnect(self, acct: Account, meter: MeterConfig, now_s: int) -> None:
        moratorium = self.journal.moratorium_until(acct.id)
        inputs = PolicyInputs(
            balance=acct.balance,
            local_s=self.local_s(now_s),
            clock_trusted=self.clock_trusted,
            moratorium_until=moratorium,
            now_s=now_s,
            headend_online=self.headend.online,
            payments_ok=self.headend.payments,
            headend_heard_s=self.headend.heard_s,
            alerts_raised=acct.alerts,
            zero_alert_at_s=acct.zero_alert_at,
            disconnects_last_hour=self.journal.count_disconnects(now_s - 3600),
            policy=self.policy,
        )
        decision = decide_disconnect(inputs)
        log.info("event=disconnect_decision acct=%s meter=%s allowed=%s reasons=%s "
                 "balance=%d trusted=%s payments=%s heard=%s", acct.id, meter.id,
                 decision.allowed, ",".join(decision.reasons), acct.balance,
                 self.clock_trusted, self.headend.payments, self.headend.heard_s)
        if decision.allowed:
            self.journal.record_disconnect(now_s)
            self._set_intent(meter, "open", "credit", now_s)
            self._end_deferral(acct)
            return
        key = ",".join(decision.reasons)
        if key != acct.deferred:  # once per episode (a new set of reasons is a new episode)
            self.emit(now_s, "disconnect_deferred", m=meter.id, acct=acct.id,
                      detail={"reasons": list(decision.reasons), "reason": decision.reasons[0],
                              "balance": acct.balance})
            self.journal.update_account(acct.id, deferred=key)

    def _set_intent(self, meter: MeterConfig, want: str, reason: str, now_s: int) -> None:
        self.journal.update_meter(meter.id, relay_intent=want, relay_reason=reason)
        log.info("event=relay_intent meter=%s want=%s reason=%s", meter.id, want, reason)

    def relay_result(self, meter_id: str, connected: bool | None, error: str,
                     now_s: int) -> None:
        """The bus switched (or failed to switch) a relay: record it and report it."""
        meter = self.meters.get(meter_id)
        with self.store.tx():
            state = self.journal.meter(meter_id)
            if connected is None:
                log.warning("event=relay_failed meter=%s want=%s error=%s", meter_id,
                            state.relay_intent, error)
                return
            actual = "closed" if connected else "open"
            if actual != state.relay_actual:
                self.journal.update_meter(meter_id, relay_actual=actual)
                self.emit(now_s, "relay", m=meter_id, acct=meter.account if meter else None,
                          detail={"state": actual, "reason": state.relay_reason or "startup"})

    def set_override(self, meter_id: str, action: str, until: int | None, now_s: int) -> str:
        """Inside the caller's transaction; returns the relay intent that results."""
        if action == "auto":
            self.journal.update_meter(meter_id, override="", override_until=None)
        else:
            self.journal.update_meter(meter_id, override=action, override_until=until)
        self._evaluate_relays(self.meters[meter_id].account, now_s)
        if action == "auto":
            state = self.journal.meter(meter_id)
            if state.relay_reason.startswith("override") and state.relay_intent == "open":
                self._set_intent(self.meters[meter_id], "closed", "override_auto", now_s)
                self._evaluate_relays(self.meters[meter_id].account, now_s)
        return self.journal.meter(meter_id).relay_intent

    def relay_jobs(self) -> list[tuple[str, bool]]:
        """Meters whose relay does not (yet) match the durable intent."""
        out = []
        for state in self.journal.meters():
            meter = self.meters.get(state.id)
            if meter is None or meter.relay_spec.kind == "none":
                continue
            if state.relay_actual != state.relay_intent:
                out.append((state.id, state.relay_intent == "closed"))
        return out

    def accounts(self) -> set[str]:
        return {a.id for a in self.cfg.accounts}

    def set_moratorium(self, acct: str, until: int, reason: str, now_s: int) -> None:
        """Inside the caller's transaction; ``acct`` '*' covers every account."""
        self.journal.set_moratorium(acct, until, reason)
        log.info("event=moratorium acct=%s until=%d reason=%s", acct, until, reason)

    def headend_state(self, online: bool | None, payments: bool | None, now_s: float) -> None:
        self.headend.online = online
        self.headend.payments = payments
        self.headend.heard_s = now_s

    def headend_still_heard(self, now_s: float) -> None:
        """While the broker connection that delivered the retained state stays up, any
        change would reach us at once: the last state is still what the head-end says."""
        if self.headend.heard_s is not None:
            self.headend.heard_s = now_s
