"""Readings to money to relay intent: the imperative side of the prepaid ledger.

The rules are pure functions in ``agent.ledger``; this module feeds them the
stored state, and writes what they decide through the journal in one
transaction per step (charge + balance + events + relay intent together).
It never talks to a bus or a broker: relay intent is durable here first, and
the runtime then asks the bus to make the relay match it (DOMAIN invariant 7).
docs/billing.md, docs/policy.md and docs/tokens.md explain the choices.

Each entry point is one transaction of its own, or joins the caller's when called
inside ``store.tx()`` (topup, set_override, set_moratorium, apply_tariff,
apply_policy from the command dispatcher); ``enter_token`` alone refuses to run
inside another transaction, because its own commit is what makes "accepted" true.
Money lives here; the relay decisions live in ``agent.relay.disconnect`` and the
actuation bookkeeping in ``agent.relay.actuation``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from agent.buffer import outbox
from agent.buffer.journal import Journal, MeterState, TariffVersion, TokenRow
from agent.buffer.store import LANE_EVENTS, LANE_READINGS, Store
from agent.config import _ID_RE, Config, MeterConfig, _Errors, _Table, read_policy, read_tariff
from agent.drivers import models
from agent.drivers.reading import Reading
from agent.errors import CommandError, LedgerError
from agent.ledger import alerts, billing, calendar, tokens
from agent.ledger.policy import Policy
from agent.ledger.tariff import (
    Tariff,
    pro_rata,
    tariff_problems,
    tariff_table,
    version_at,
    version_parts,
)
from agent.relay.disconnect import Disconnection, HeadendView, kernel_clock_synchronised

log = logging.getLogger("agent.ledger")

SPEND_WINDOW_S = 7 * 86_400  # days-left estimate: average spend over at most the last week


def canonical_body(tariff: Tariff) -> str:
    return json.dumps(tariff_table(tariff), sort_keys=True, separators=(",", ":"))


def _problems_text(errors: list[tuple[str, str]]) -> str:
    return "; ".join(f"{key}: {msg}" for key, msg in errors)


class LocalTime:
    """Unix seconds to local wall-clock seconds in one zone; asked several times a
    reading, so each hour's offset is kept once known to hold for the whole hour (no
    transition in it). At most OFFSETS_KEPT hours, then they are read again."""

    OFFSETS_KEPT = 1024

    def __init__(self, tz: ZoneInfo) -> None:
        self.tz = tz
        self._offsets: dict[int, int] = {}  # unix hour -> UTC offset in s

    def local_s(self, unix_s: int) -> int:
        hour = unix_s // 3600
        offset_s = self._offsets.get(hour)
        if offset_s is None:
            offset_s = self._offset_s(unix_s)
            if self._offset_s(hour * 3600) == self._offset_s(hour * 3600 + 3599):
                if len(self._offsets) >= self.OFFSETS_KEPT:
                    self._offsets.clear()
                self._offsets[hour] = offset_s
        return unix_s + offset_s

    def _offset_s(self, unix_s: int) -> int:
        offset = datetime.fromtimestamp(unix_s, self.tz).utcoffset()
        return int(offset.total_seconds()) if offset else 0


class Accounting:
    def __init__(self, cfg: Config, store: Store, journal: Journal, *,
                 token_key: bytes | None = None,
                 clock_synchronised: Callable[[], bool] | None = kernel_clock_synchronised,
                 ) -> None:
        self.cfg = cfg
        self.store = store
        self.journal = journal
        self.tz = ZoneInfo(cfg.gateway.timezone)
        self._local = LocalTime(self.tz)
        self._meters: dict[str, MeterConfig] = {m.id: m for m in cfg.meters}
        self._token_key = token_key
        self.policy: Policy = self._load_policy()
        self.versions: dict[str, list[tuple[int, Tariff]]] = self._load_tariffs()
        self.relays = Disconnection(store, journal, self._meters, self.emit, self.local_s,
                                    lambda: self.policy, clock_synchronised)
        self.actuation = self.relays.actuation

    # -- helpers ------------------------------------------------------------
    def local_s(self, unix_s: int) -> int:
        return self._local.local_s(unix_s)

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
                state = self.journal.meter(meter.id)
                # A credit disconnection decided but not yet carried out when the agent
                # stopped is decided again now (clock, head-end, protected time may differ):
                # the intent goes back to the relay's last known state.
                if (state.relay_intent == "open" and state.relay_reason == "credit"
                        and state.relay_actual != "open"):
                    self.journal.update_meter(meter.id, relay_intent="closed",
                                              relay_reason="redecide_after_restart")
                    log.info("event=relay_redecide meter=%s reason=restart", meter.id)
            self._sync_config_tariffs(now_s)
        self.versions = self._load_tariffs()
        self.tick(now_s)

    @property
    def meters(self) -> dict[str, MeterConfig]:
        return self._meters

    @meters.setter
    def meters(self, meters: dict[str, MeterConfig]) -> None:
        # Updated in place: the disconnection engine and actuation share this mapping,
        # so a meter added or removed at run time (meter_add) is seen everywhere at once.
        self._meters.clear()
        self._meters.update(meters)
        self.relays.meters_changed()

    def accounts(self) -> set[str]:
        return {a.id for a in self.cfg.accounts}

    # -- the clock and the head-end (kept by the disconnection engine) -------------
    @property
    def headend(self) -> HeadendView:
        return self.relays.headend

    @property
    def clock_trusted(self) -> bool:
        return self.relays.clock_trusted

    def confirm_clock(self, iat_s: int, now_s: int) -> None:
        self.relays.confirm_clock(iat_s, now_s)

    def headend_state(self, online: bool | None, payments: bool | None, now_s: float) -> None:
        self.relays.headend_state(online, payments, now_s)

    def headend_still_heard(self, now_s: float) -> None:
        self.relays.headend_still_heard(now_s)

    # -- tariff versions ----------------------------------------------------------
    def _decode_tariff(self, v: TariffVersion) -> Tariff:
        errors = _Errors()
        tariff = read_tariff(v.name, _Table(json.loads(v.body), f"tariff.{v.name}", errors))
        if errors.items:  # only the agent writes bodies, after validating them
            raise LedgerError(f"stored tariff {v.name}@{v.version}: "
                              f"{_problems_text(errors.items)}")
        return dataclasses.replace(tariff, version=v.version)

    def _load_tariffs(self) -> dict[str, list[tuple[int, Tariff]]]:
        versions: dict[str, list[tuple[int, Tariff]]] = {}
        for v in self.journal.tariff_versions():
            versions.setdefault(v.name, []).append((v.effective_s, self._decode_tariff(v)))
        for tariff in self.cfg.tariffs:  # before setup() has stored them: version 1
            versions.setdefault(tariff.name, [(0, dataclasses.replace(tariff, version=1))])
        return versions

    def _sync_config_tariffs(self, now_s: int) -> None:
        """The config's [tariff.*] is version 1 (in force from the beginning); an edited
        config file is a new version from now. A `tariff` command's version stays in
        force across restarts until the config file itself changes."""
        stored: dict[str, list[TariffVersion]] = {}
        for v in self.journal.tariff_versions():
            stored.setdefault(v.name, []).append(v)
        for tariff in self.cfg.tariffs:
            body = canonical_body(tariff)
            have = stored.get(tariff.name, [])
            from_config = [v for v in have if v.source == "config"]
            if from_config and from_config[-1].body == body:
                continue
            version = have[-1].version + 1 if have else 1
            effective = max(now_s, have[-1].effective_s) if have else 0
            self.journal.add_tariff_version(TariffVersion(tariff.name, version, body,
                                                          effective, "config"))
            log.info("event=tariff_version name=%s version=%d source=config effective=%d",
                     tariff.name, version, effective)

    def tariff_at(self, name: str, t: int) -> Tariff:
        """The version of tariff ``name`` in force at unix time ``t``."""
        return version_at(self.versions[name], t)

    def apply_tariff(self, name: str, table: dict[str, Any], now_s: int) -> int:
        """A `tariff` command (CONTRACT 7): a new version of ``name``, in force from now.

        The open month's accrual carries on: energy used from now on is priced
        E_new(C2) - E_new(C1) on the same month's C (docs/billing.md)."""
        body_in = {k: v for k, v in table.items() if k != "name"}
        if not isinstance(name, str) or not _ID_RE.match(name):
            raise CommandError("invalid_args", "name: must match [A-Za-z0-9_-]{1,64}")
        errors = _Errors()
        tariff = read_tariff(name, _Table(body_in, "", errors))
        if not errors.items:
            errors.items.extend(tariff_problems(tariff))
        if errors.items:
            raise CommandError("invalid_args", _problems_text(errors.items))
        with self.store.tx():
            have = [v for v in self.journal.tariff_versions() if v.name == name]
            version = have[-1].version + 1 if have else 1
            effective = max(now_s, have[-1].effective_s) if have else now_s
            self.journal.add_tariff_version(TariffVersion(name, version, canonical_body(tariff),
                                                          effective, "command"))
        self.versions.setdefault(name, []).append(
            (effective, dataclasses.replace(tariff, version=version)))
        log.info("event=tariff_version name=%s version=%d source=command effective=%d",
                 name, version, effective)
        return version

    # -- the policy: config [policy] overlaid by `policy` commands ---------------
    def _load_policy(self) -> Policy:
        policy = self.cfg.policy
        for key, text in self.journal.policy_overlay().items():
            errors = _Errors()
            candidate = read_policy(_Table({key: json.loads(text)}, "policy", errors), policy)
            if errors.items:  # a key this version no longer accepts: the base value holds
                log.warning("event=policy_overlay_ignored %s", _problems_text(errors.items))
                continue
            policy = candidate
        return policy

    def apply_policy(self, changes: dict[str, Any], now_s: int) -> None:
        """A `policy` command: the keys given, over the policy in force; durable."""
        errors = _Errors()
        policy = read_policy(_Table(dict(changes), "policy", errors), self.policy)
        if errors.items:
            raise CommandError("invalid_args", _problems_text(errors.items))
        with self.store.tx():
            for key, value in changes.items():
                self.journal.set_policy_key(key, json.dumps(value, sort_keys=True), now_s)
        self.policy = policy
        log.info("event=policy keys=%s policy=%s", ",".join(sorted(changes)), policy)

    # -- readings -----------------------------------------------------------
    def on_reading(self, reading: Reading) -> None:
        meter = self.meters.get(reading.meter)
        with self.store.tx():
            self.store.add_pending(LANE_READINGS, outbox.reading_item(reading), reading.t,
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
            self.store.add_pending(LANE_READINGS, outbox.reading_item(reading), reading.t,
                                   reading.meter)
            self.emit(reading.t, "bad_reading", m=reading.meter,
                      acct=meter.account if meter else None,
                      detail={"why": "charge_error",
                              "error": f"{type(error).__name__}: {error}"[:200],
                              "import_wh": reading.values.get("import_wh")})

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
                     baseline_wh: int, import_wh: int, **extra: int) -> None:
        self.emit(t, "bad_reading", m=meter.id, acct=meter.account,
                  detail={"why": why, "reason": reason, "rebased": rebased,
                          "baseline_wh": baseline_wh, "import_wh": import_wh, **extra})

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
        parts = version_parts(self.versions[acct.tariff], t0, t1)
        shares = pro_rata(delta_wh, [max(end - start, 0) for _, start, end in parts])
        items: list[tuple[str, int, str]] = []  # (kind, amt, ref), posted together below
        for i, (tariff, start, end) in enumerate(parts):
            if shares[i] == 0:
                continue
            result = billing.charge(tariff, accrual, shares[i], self.local_s(start),
                                    self.local_s(end))
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
        self._after_balance_change(acct.id, before, t1)

    # -- money in -------------------------------------------------------------
    def topup(self, acct_id: str, amount: int, txn: str, now_s: int,
              kind: str = "topup") -> tuple[bool, int]:
        """(applied, balance); applied once per txn. Joins the caller's transaction."""
        with self.store.tx():
            before = self.journal.account(acct_id).balance
            entry = self.journal.topup(acct_id, amount, txn, now_s, kind)
            if entry is None:
                return False, before
            acct = self.journal.account(acct_id)
            rearmed = alerts.rearmed_levels(entry.bal, entry.bal, acct.alerts)
            self.journal.update_account(acct_id, reference=max(entry.bal, 0),
                                        alerts=acct.alerts - rearmed,
                                        zero_alert_at=None if 0 in rearmed
                                        else acct.zero_alert_at)
            self._after_balance_change(acct_id, before, now_s)
            return True, entry.bal

    def _token_key_bytes(self) -> bytes:
        if self._token_key is None:
            from agent.uplink.cose import read_hex_key

            self._token_key = read_hex_key(self.cfg.security.token_key_file)
        return self._token_key

    def enter_token(self, acct_id: str, digits: str, now_s: int) -> dict[str, Any]:
        """`meter-agent token enter`: the token's state, gate, entry and balance commit in
        one transaction, and only then is "accepted" returned (ledger invariant 4)."""
        assert not self.store._depth, "enter_token commits itself: call it outside a tx"
        if acct_id not in self.accounts():
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
                detail: dict[str, Any] = {"why": reason}
                if check.counter is not None:
                    detail["counter"] = check.counter
                if tokens.gate_locked(gate, now_s):
                    detail["locked_until"] = gate.locked_until_s
                self.emit(now_s, "token_rejected", acct=acct_id, detail=detail)
        log.info("event=token acct=%s result=%s counter=%s", acct_id, reason, check.counter)
        if reason != "ok":
            out: dict[str, Any] = {"ok": False, "reason": reason}
            if tokens.gate_locked(gate, now_s):
                out["locked_until"] = gate.locked_until_s
            return out
        return {"ok": True, "amount": check.amount_paise, "balance": balance,
                "counter": check.counter}

    # -- the clock: fixed charges and re-evaluation ---------------------------
    def tick(self, now_s: int) -> None:
        trusted = self.relays.refresh_clock_trust()
        local_now = self.local_s(now_s)
        today = calendar.local_date(local_now)
        with self.store.tx():
            for acct in self.journal.accounts():
                if acct.tariff not in self.versions:
                    continue
                # A clock not yet trusted could use up dates that never come back.
                # (posted for today already, the usual case: nothing to parse)
                dates = billing.fixed_dates_due(acct.fixed_last, today) if trusted and (
                    acct.fixed_last is None or acct.fixed_last < today) else []
                posted = False
                for date in dates:
                    midnight_s = calendar.parse_date(date) * calendar.DAY_S - (local_now - now_s)
                    tariff = self.tariff_at(acct.tariff, midnight_s)
                    if tariff.fixed_per_day:
                        self.journal.post(acct.id, now_s, "fixed", -tariff.fixed_per_day,
                                          f"{date}/{tariff.name}@{tariff.version}")
                        posted = True
                if dates:
                    self.journal.update_account(acct.id, fixed_last=dates[-1])
                if posted:  # alerts fire on a debit only, never on nothing
                    self._after_balance_change(acct.id, acct.balance, now_s)
                else:
                    self.relays.evaluate(acct.id, now_s)

    # -- alerts and relay intent ------------------------------------------------
    def days_left(self, acct_id: str, balance: int, now_s: int) -> int | None:
        spent, first_t = self.journal.spend_since(acct_id, now_s - SPEND_WINDOW_S)
        if first_t is None:
            return None
        window_s = max(now_s - first_t, calendar.DAY_S)  # at least a day of history
        return alerts.days_left_estimate(balance, spent * calendar.DAY_S // window_s)

    def _after_balance_change(self, acct_id: str, before: int, now_s: int) -> None:
        acct = self.journal.account(acct_id)
        crossed = alerts.crossed_levels(self.policy.alert_levels_pct, acct.reference, before,
                                        acct.balance, acct.alerts)
        if crossed:
            zero_at = acct.zero_alert_at
            days = self.days_left(acct_id, acct.balance, now_s)
            for level in crossed:
                self.emit(now_s, "low_balance", acct=acct_id,
                          detail={"level_pct": level, "balance": acct.balance,
                                  "days_left": days})
                if level == 0:
                    zero_at = now_s
            acct = acct._replace(alerts=acct.alerts | frozenset(crossed),
                                 zero_alert_at=zero_at)
            self.journal.update_account(acct_id, alerts=acct.alerts, zero_alert_at=zero_at)
        floor = -self.policy.emergency_credit
        if before >= floor > acct.balance:
            self.emit(now_s, "credit_exhausted", acct=acct_id, detail={"balance": acct.balance})
        self.relays.evaluate(acct_id, now_s, acct)

    # -- actuation -----------------------------------------------------------------
    def relay_result(self, meter_id: str, connected: bool | None, error: str, now_s: int,
                     state: str | None = None) -> None:
        """The bus switched (or failed to switch) a relay and read it back. ``state``
        (closed | open | armed) wins over ``connected`` when given; ``connected`` None
        and ``state`` None or "" (the bus's RelaySwitched.state on a failure): it failed."""
        state = state or None
        if state is not None and state not in ("closed", "open", "armed"):
            raise LedgerError(f"relay state {state!r} is not closed | open | armed")
        actual = state if state is not None else (
            None if connected is None else "closed" if connected else "open")
        self.actuation.result(meter_id, actual, error, now_s)

    def relay_jobs(self, now_s: int | None = None) -> list[tuple[str, bool]]:
        """(meter, connect) for relays that differ from their durable intent; with
        ``now_s`` a relay whose switch failed waits out its back-off (relay/actuation.py)."""
        return self.actuation.jobs(now_s)

    def on_tamper(self, meter_id: str, kind: str, code: int, t: int) -> None:
        """A `tamper` event with evidence kept; opens the relay only with
        policy.disconnect_on_tamper (relay/disconnect.py)."""
        self.relays.on_tamper(meter_id, kind, code, t)

    def set_override(self, meter_id: str, action: str, until: int | None, now_s: int) -> str:
        """A manual override; the resulting intent. Joins the caller's transaction."""
        return self.relays.set_override(meter_id, action, until, now_s)

    def set_moratorium(self, acct: str, until: int, reason: str, now_s: int) -> None:
        """Joins the caller's transaction; ``acct`` '*' covers every account."""
        self.relays.set_moratorium(acct, until, reason, now_s)
