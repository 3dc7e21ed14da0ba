"""Readings to money: each meter's register delta priced and posted to its account.

The rules are pure functions in ``agent.ledger.billing`` (docs/billing.md); this
module feeds them the stored state and writes what they decide through the journal,
in the caller's transaction (a poll cycle's readings share one). A delta is checked
first (``validate_delta``): a rollover, a replaced meter or an implausible jump is a
``bad_reading`` and never charged; a register below its baseline is a bad reading too,
unless it is the RESET_READINGS-th consistent one in a row (a register reset), which
rebases the meter. Once a day each account's fixed charge is posted (``tick``).

After a balance change the alerts it raises are written (``BalanceAlerts``), then the
account's relays are decided again (``Disconnection.evaluate``), in that order and in
the same transaction. This module never talks to a bus or a broker.
"""

from __future__ import annotations

from agent.alerting import BalanceAlerts
from agent.buffer.journal import Journal, MeterState
from agent.buffer.store import LANE_READINGS, Store
from agent.config import MeterConfig
from agent.drivers import models
from agent.drivers.reading import Reading
from agent.eventlog import EventLog
from agent.events import BadReading
from agent.ledger import billing, calendar
from agent.ledger.tariff import pro_rata, version_parts
from agent.localtime import LocalTime
from agent.meters import MeterRegistry
from agent.relay.disconnect import Disconnection
from agent.tariffs import Tariffs
from agent.uplink import forming


class Charging:
    def __init__(self, store: Store, journal: Journal, meters: MeterRegistry,
                 tariffs: Tariffs, local: LocalTime, events: EventLog, alerts: BalanceAlerts,
                 relays: Disconnection) -> None:
        self.store = store
        self.journal = journal
        self.meters = meters
        self.tariffs = tariffs
        self.local = local
        self.events = events
        self.alerts = alerts
        self.relays = relays

    def _balance_changed(self, acct_id: str, before: int, now_s: int) -> None:
        acct = self.alerts.balance_changed(acct_id, before, now_s)
        self.relays.evaluate(acct_id, now_s, acct)

    # -- readings -----------------------------------------------------------
    def on_reading(self, reading: Reading) -> None:
        meter = self.meters.get(reading.meter)
        with self.store.tx():
            self.store.add_pending(LANE_READINGS, forming.reading_item(reading), reading.t,
                                   reading.meter)
            if meter is None or "import_wh" not in reading.values:
                return
            self._charge_reading(meter, reading)

    def reading_not_charged(self, reading: Reading, error: Exception) -> None:
        """A reading whose charge raised (a bug, not a rule: the rules say bad_reading
        themselves): it is still reported, with a ``bad_reading`` saying why, and its
        meter's baseline stays where it was; the next reading is charged from there."""
        meter = self.meters.get(reading.meter)
        with self.store.tx():
            self.store.add_pending(LANE_READINGS, forming.reading_item(reading), reading.t,
                                   reading.meter)
            self.events.emit(reading.t, BadReading(
                meter=reading.meter, acct=meter.account if meter else None, why="charge_error",
                error=f"{type(error).__name__}: {error}"[:200],
                import_wh=reading.values.get("import_wh")))

    def _charge_reading(self, meter: MeterConfig, reading: Reading) -> None:
        state = self.journal.meter(meter.id)
        new_wh = reading.values["import_wh"]
        if state.base_wh is None or state.base_t is None:
            self.journal.update_meter(meter.id, base_wh=new_wh, base_t=reading.t,
                                      serial=reading.serial)
            return
        rated = models.model(meter.model)
        check = billing.validate_delta(
            state.base_wh, new_wh, reading.t - state.base_t, rated.max_power_w,
            rated.register_max_wh, state.serial, reading.serial)
        if check.kind == "negative":
            self._below_baseline(meter, state, reading, rated.max_power_w)
            return
        if state.reset_count:  # a reading at or above the baseline: it was a glitch
            self.journal.update_meter(meter.id, reset_count=0)
        if check.bad_reading or check.kind in ("rollover", "replaced"):  # never charged
            self._bad_reading(meter, reading.t, check.kind, check.reason, check.rebase,
                              state.base_wh, new_wh)
        if not check.rebase:
            return  # baseline kept: the next good reading is charged from it
        self.journal.update_meter(meter.id, base_wh=new_wh, base_t=reading.t,
                                  serial=reading.serial or state.serial)
        if check.kind == "ok" and check.delta_wh > 0:
            self._post_energy(meter, check.delta_wh, state.base_t, reading.t)

    def _bad_reading(self, meter: MeterConfig, t: int, why: str, reason: str, rebased: bool,
                     baseline_wh: int, import_wh: int, reset_wh: int | None = None) -> None:
        self.events.emit(t, BadReading(meter=meter.id, acct=meter.account, why=why,
                                       reason=reason, rebased=rebased, baseline_wh=baseline_wh,
                                       import_wh=import_wh, reset_wh=reset_wh))

    def _below_baseline(self, meter: MeterConfig, state: MeterState, reading: Reading,
                        max_power_w: int) -> None:
        """A register below the baseline, same serial: a bad reading, unless it is the
        RESET_READINGS-th consistent one in a row (DOMAIN: register reset), which rebases
        the meter on the first of them and charges the last from it."""
        assert state.base_wh is not None and state.base_t is not None
        new_wh = reading.values["import_wh"]
        before = billing.ResetWatch(state.reset_count, state.reset_first_wh,
                                    state.reset_first_t, state.reset_last_wh,
                                    state.reset_last_t) if state.reset_count else None
        watch = billing.watch_reset(before, new_wh, reading.t, max_power_w)
        if watch.count < billing.RESET_READINGS:
            self.journal.update_meter(meter.id, reset_count=watch.count,
                                      reset_first_wh=watch.first_wh,
                                      reset_first_t=watch.first_t,
                                      reset_last_wh=watch.last_wh, reset_last_t=watch.last_t)
            self._bad_reading(meter, reading.t, "negative", f"register went back from "
                              f"{state.base_wh} to {new_wh} Wh", False, state.base_wh, new_wh)
            return
        self._bad_reading(meter, reading.t, "register_reset",
                          f"{watch.count} readings in a row below the baseline "
                          f"{state.base_wh} Wh: rebased on {watch.first_wh} Wh", True,
                          state.base_wh, new_wh, reset_wh=watch.first_wh)
        delta_wh = new_wh - watch.first_wh  # consistent readings: >= 0 and plausible
        self.journal.update_meter(meter.id, base_wh=new_wh, base_t=reading.t,
                                  serial=reading.serial or state.serial, reset_count=0)
        if delta_wh > 0:
            self._post_energy(meter, delta_wh, watch.first_t, reading.t)

    def _post_energy(self, meter: MeterConfig, delta_wh: int, t0: int, t1: int) -> None:
        acct = self.journal.account(meter.account)
        accrual = None if not acct.month else billing.MonthAccrual(
            acct.month, acct.consumed_wh, acct.energy_mp, acct.energy_posted, acct.duty_posted,
            acct.duty_mp_bp)
        before = acct.balance
        parts = version_parts(self.tariffs.versions[acct.tariff], t0, t1)
        shares = pro_rata(delta_wh, [max(end - start, 0) for _, start, end in parts])
        items: list[tuple[str, int, str]] = []  # (kind, amt, ref), posted together below
        for i, (tariff, start, end) in enumerate(parts):
            if shares[i] == 0:
                continue
            result = billing.charge(tariff, accrual, shares[i], self.local.local_s(start),
                                    self.local.local_s(end))
            for posting in result.postings:
                # the entry names the meter, the billing month and the tariff version in force
                ref = f"{meter.id}/{posting.month}/{tariff.name}@{posting.tariff_version}"
                if posting.energy_paise:
                    items.append(("energy", -posting.energy_paise, ref))
                if posting.duty_paise:
                    items.append(("duty", -posting.duty_paise, ref))
            accrual = result.accrual
        assert accrual is not None  # delta_wh > 0 leaves at least one non-empty share
        self.journal.post_all(acct.id, t1, items, month=accrual.month,
                              consumed_wh=accrual.consumed_wh, energy_mp=accrual.energy_mp,
                              energy_posted=accrual.energy_posted,
                              duty_posted=accrual.duty_posted, duty_mp_bp=accrual.duty_mp_bp)
        self._balance_changed(acct.id, before, t1)

    # -- the clock: fixed charges and re-evaluation ---------------------------
    def tick(self, now_s: int) -> None:
        """Each account's fixed charges due by today (only on a trusted clock); an account
        with none posted has its relays decided again (the hour, the head-end and the
        clock's trust move on without a balance change), unless its last decision still
        holds (``Disconnection.redecide``; a tick rolled back leaves no memo that holds:
        ``Store.undone``)."""
        trusted = self.relays.refresh_clock_trust(now_s)
        local_now = self.local.local_s(now_s)
        today = calendar.local_date(local_now)
        with self.store.tx():
            for acct in self.journal.accounts():
                if acct.tariff not in self.tariffs.versions:
                    continue
                # A clock not yet trusted could use up dates that never come back.
                # (posted for today already, the usual case: nothing to parse)
                dates = billing.fixed_dates_due(acct.fixed_last, today) if trusted and (
                    acct.fixed_last is None or acct.fixed_last < today) else []
                posted = False
                for date in dates:
                    midnight_s = calendar.parse_date(date) * calendar.DAY_S - (local_now - now_s)
                    tariff = self.tariffs.tariff_at(acct.tariff, midnight_s)
                    if tariff.fixed_per_day:
                        self.journal.post(acct.id, now_s, "fixed", -tariff.fixed_per_day,
                                          f"{date}/{tariff.name}@{tariff.version}")
                        posted = True
                if dates:
                    self.journal.update_account(acct.id, fixed_last=dates[-1])
                if posted:  # alerts fire on a debit only, never on nothing
                    self._balance_changed(acct.id, acct.balance, now_s)
                else:
                    self.relays.redecide(acct.id, now_s)
