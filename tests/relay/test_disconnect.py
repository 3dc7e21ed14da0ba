"""When the relay may open (DOMAIN), end to end through the ledger's parts and the real store:
every deferral reason (one `disconnect_deferred` per episode, with detail.reasons and
detail.reason), credit running out inside protected time, alerts before disconnection,
reconnection at any hour, overrides, tamper, `armed`, bounded relay retries, and the
`policy` command."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.buffer.journal import Account
from agent.config import MeterConfig
from agent.errors import CommandError
from agent.localtime import LocalTime
from agent.relay import actuation
from tests.ledger.rig import Rig, unix

FLAT: dict[str, Any] = {"fixed_per_day": 0, "slabs": [{"rate": 10_000}], "duty_bp": 0}  # 10 p/Wh
EC = 1_000  # emergency credit in these tests
MONDAY_10 = unix(2026, 3, 2, 10)


class House:
    """One account on a rig, with its meter's register."""

    def __init__(self, tmp: Path, *, now_s: int = MONDAY_10, meters: int = 1,
                 **kw: Any) -> None:
        policy = {"emergency_credit": EC, **kw.pop("policy", {})}
        self.rig = Rig(tmp, now_s=now_s, tariff=FLAT, policy=policy, meters=meters, **kw)
        self.reg = {f"M{i}": 1_000_000 for i in range(1, meters + 1)}
        for m, wh in self.reg.items():
            self.rig.read(m, wh)

    def spend(self, paise: int, meter: str = "M1", after_s: int = 300) -> None:
        self.rig.advance(after_s)
        self.reg[meter] += paise // 10
        self.rig.read(meter, self.reg[meter])

    def ticks(self, n: int, every_s: int = 60) -> None:
        for _ in range(n):
            self.rig.advance(every_s)
            self.rig.tick()

    def intent(self, meter: str = "M1") -> str:
        return self.rig.meter(meter).relay_intent


# -- every deferral reason, once per episode -----------------------------------------
Hook = Callable[[House], None]


def _nothing(h: House) -> None:
    pass


def _payments_down(h: House) -> None:
    h.rig.ledger.relays.headend_state(True, False, h.rig.now)


def _payments_up(h: House) -> None:
    h.rig.ledger.relays.headend_state(True, True, h.rig.now)


def _headend_silent(h: House) -> None:
    h.rig.headend_up = False  # the broker connection that carried it is gone
    h.rig.advance(7 * 3600)  # > payment_outage_h = 6


def _moratorium(h: House) -> None:
    h.rig.ledger.relays.set_moratorium("*", h.rig.now + 3600, "billing system upgrade", h.rig.now)


def _confirm_clock(h: House) -> None:
    h.rig.ledger.relays.confirm_clock(h.rig.now + 30, h.rig.now)


def _advance(seconds: int) -> Hook:
    def hook(h: House) -> None:
        h.rig.advance(seconds)
    return hook


def _spend_more(h: House) -> None:
    h.spend(EC)


CASES: dict[str, dict[str, Any]] = {
    "protected_hours": dict(now_s=unix(2026, 3, 2, 20), policy={
        "protected_hours": "18:00-08:00"}, lift=_advance(12 * 3600)),
    "holiday_weekday": dict(reason="holiday", now_s=unix(2026, 3, 1, 10), policy={
        "protected_weekdays": ["sun"]}, lift=_advance(14 * 3600)),
    "holiday_date": dict(reason="holiday", policy={"holidays": ["2026-03-02"]},
                         lift=_advance(14 * 3600)),
    "payments_down": dict(reason="payment_outage", setup=_payments_down, lift=_payments_up),
    "headend_never_heard": dict(reason="payment_outage", headend=False, lift=_payments_up),
    "headend_not_heard_6h": dict(reason="payment_outage", setup=_headend_silent,
                                 lift=_payments_up),
    "moratorium": dict(setup=_moratorium, lift=_advance(3600)),
    "emergency_credit": dict(spend=EC // 2, lift=_spend_more),
    "notice": dict(policy={"min_notice_h": 24}, lift=_advance(24 * 3600)),
    "untrusted_clock": dict(trusted=False, lift=_confirm_clock),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_deferral_reason_is_reported_once_then_lifted(tmp_path: Path, case: str) -> None:
    spec = dict(CASES[case])
    reason = spec.pop("reason", case)
    setup: Hook = spec.pop("setup", _nothing)
    lift: Hook = spec.pop("lift")
    spent = spec.pop("spend", 2 * EC)
    h = House(tmp_path, **spec)
    setup(h)
    h.spend(spent)
    h.ticks(30)
    deferred = h.rig.events("disconnect_deferred")
    assert len(deferred) == 1, deferred  # one episode, however many decisions
    assert deferred[0]["detail"]["reasons"] == [reason]
    assert deferred[0]["detail"]["reason"] == reason
    assert deferred[0]["acct"] == "A1" and deferred[0]["m"] == "M1"
    assert h.intent() == "closed" and h.rig.account().deferred == reason
    lift(h)
    h.rig.tick()
    assert h.intent() == "open" and h.rig.meter().relay_reason == "credit"
    assert len(h.rig.events("disconnect_deferred")) == 1
    assert h.rig.account().deferred == ""
    h.rig.close()


def test_rate_limit_holds_the_next_account_for_an_hour(tmp_path: Path) -> None:
    h = House(tmp_path, meters=2, policy={"max_disconnects_per_hour": 1})
    h.spend(2 * EC, "M1")
    h.spend(2 * EC, "M2", after_s=60)
    assert h.intent("M1") == "open"
    assert h.intent("M2") == "closed"
    h.ticks(10)
    [event] = h.rig.events("disconnect_deferred")
    assert (event["acct"], event["detail"]["reasons"], event["detail"]["reason"]) == (
        "A2", ["rate_limit"], "rate_limit")
    h.ticks(60)  # an hour after the first disconnection
    assert h.intent("M2") == "open"
    h.rig.close()


def test_every_reason_at_once_is_listed_in_contract_order(tmp_path: Path) -> None:
    h = House(tmp_path, now_s=unix(2026, 3, 1, 20), trusted=False, headend=False, policy={
        "protected_hours": "18:00-08:00", "protected_weekdays": ["sun"], "min_notice_h": 24})
    _moratorium(h)
    h.spend(EC // 2)
    [event] = h.rig.events("disconnect_deferred")
    assert event["detail"]["reasons"] == ["protected_hours", "holiday", "payment_outage",
                                          "moratorium", "emergency_credit", "notice",
                                          "untrusted_clock"]
    assert event["detail"]["reason"] == "protected_hours"
    h.rig.close()


def test_a_changed_set_of_reasons_is_a_new_episode(tmp_path: Path) -> None:
    h = House(tmp_path, policy={"min_notice_h": 1})
    h.spend(EC // 2)  # within the emergency credit, and no notice yet
    h.spend(EC, after_s=60)  # now past it: only the notice holds
    h.ticks(5)
    reasons = [e["detail"]["reasons"] for e in h.rig.events("disconnect_deferred")]
    assert reasons == [["emergency_credit", "notice"], ["notice"]]
    h.rig.close()


def test_the_emergency_credit_is_given_in_full_to_the_paisa(tmp_path: Path) -> None:
    h = House(tmp_path)
    h.spend(EC)  # balance exactly -EC: not below the floor
    h.ticks(5)
    assert h.rig.account().balance == -EC and h.intent() == "closed"
    h.spend(10)  # one Wh more: -EC - 10
    assert h.intent() == "open"
    assert [e["detail"]["balance"] for e in h.rig.events("credit_exhausted")] == [-EC - 10]
    h.rig.close()


# -- protected time: disconnect at the next allowed time, not before ---------------------
PH, HOL = "protected_hours", "holiday"


@pytest.mark.parametrize(("start", "opens", "episodes"), [
    # Friday evening -> Saturday 08:00
    (unix(2026, 3, 6, 17, 50), unix(2026, 3, 7, 8), [(PH,)]),
    # Saturday evening -> Sunday (protected weekday), Monday 9th (a holiday) -> Tuesday 08:00
    (unix(2026, 3, 7, 17, 50), unix(2026, 3, 10, 8),
     [(PH,), (PH, HOL), (HOL,), (PH, HOL), (HOL,), (PH, HOL), (PH,)]),
], ids=["friday", "weekend_and_holiday"])
def test_credit_out_in_protected_time_disconnects_at_the_next_allowed_minute(
        tmp_path: Path, start: int, opens: int, episodes: list[tuple[str, ...]]) -> None:
    h = House(tmp_path, now_s=start, policy={
        "protected_hours": "18:00-08:00", "protected_weekdays": ["sun"],
        "holidays": ["2026-03-09"]})
    h.spend(2 * EC, after_s=15 * 60)  # runs out at 18:05
    while h.rig.now < opens - 60:
        h.rig.advance(60)
        h.rig.tick()
        assert h.intent() == "closed", f"opened {opens - h.rig.now} s early"
    h.rig.advance(60)
    h.rig.tick()
    assert h.rig.now == opens and h.intent() == "open"
    # One event per episode: a run of decisions held back by the same set of reasons.
    chain = [tuple(e["detail"]["reasons"]) for e in h.rig.events("disconnect_deferred")]
    assert chain == episodes
    h.rig.close()


# -- alerts, then disconnection, then reconnection at any hour ------------------------------
def test_each_alert_fires_once_and_all_precede_the_disconnection(tmp_path: Path) -> None:
    h = House(tmp_path, policy={"min_notice_h": 2})
    h.rig.topup("A1", 10_000, "pay-1")
    for _ in range(30):
        h.spend(500, after_s=120)
        h.rig.tick()
    low = h.rig.events("low_balance")
    assert [e["detail"]["level_pct"] for e in low] == [30, 10, 0]
    assert [e["detail"]["balance"] for e in low] == [3_000, 1_000, 0]
    assert all(isinstance(e["detail"]["days_left"], int) for e in low)
    assert h.intent() == "closed"  # the 0% alert is not yet 2 h old
    zero_t = low[2]["t"]
    while h.intent() == "closed":
        h.ticks(1)
    assert h.rig.now - zero_t == 2 * 3600
    h.rig.topup("A1", 500, "pay-2")  # still below zero: nothing re-arms, nothing closes
    assert h.intent() == "open" and len(h.rig.events("low_balance")) == 3
    h.rig.close()


def test_reconnection_happens_at_any_hour_as_soon_as_credit_is_positive(tmp_path: Path) -> None:
    h = House(tmp_path, now_s=unix(2026, 3, 2, 17, 0), policy={"protected_hours": "18:00-08:00"})
    h.spend(2 * EC)
    assert h.intent() == "open"
    h.rig.follow_relays()
    h.rig.now = unix(2026, 3, 2, 23, 30)  # protected hours: reconnection is never held
    applied, balance = h.rig.topup("A1", 2 * EC + 1, "late-payment")
    assert applied and balance == 1
    assert h.intent() == "closed" and h.rig.ledger.actuation.jobs(h.rig.now) == [("M1", True)]
    assert h.rig.meter().relay_reason == "credit"
    h.rig.close()


# -- overrides --------------------------------------------------------------------------
def test_a_disconnect_override_wins_until_its_time_then_credit_rules(tmp_path: Path) -> None:
    h = House(tmp_path)
    h.rig.topup("A1", 50_000, "p")
    assert h.rig.ledger.relays.set_override("M1", "disconnect", h.rig.now + 600,
                                            h.rig.now) == "open"
    assert h.rig.meter().relay_reason == "override_disconnect"
    h.ticks(9)
    assert h.intent() == "open"
    h.ticks(1)
    assert h.intent() == "closed" and h.rig.meter().relay_reason == "override_end"
    assert h.rig.meter().override == ""
    h.rig.close()


def test_a_connect_override_holds_supply_on_until_auto(tmp_path: Path) -> None:
    h = House(tmp_path)
    h.rig.ledger.relays.set_override("M1", "connect", None, h.rig.now)
    h.spend(5 * EC)
    h.ticks(3)
    assert h.intent() == "closed"
    assert h.rig.ledger.relays.set_override("M1", "auto", None, h.rig.now) == "open"
    h.rig.close()


# -- tamper -------------------------------------------------------------------------------
def test_tamper_keeps_evidence_and_does_not_open_by_default(tmp_path: Path) -> None:
    h = House(tmp_path)
    h.rig.ledger.relays.on_tamper("M1", "magnet", 201, h.rig.now)
    h.rig.ledger.relays.on_tamper("M1", "bogus-kind", 999, h.rig.now)
    [first, second] = h.rig.events("tamper")
    assert first["detail"] == {"kind": "magnet", "code": 201, "action": "none"}
    assert second["detail"]["kind"] == "other"
    log = h.rig.journal.tamper_log("M1")
    assert [(r["kind"], r["code"], r["action"]) for r in log] == [
        ("magnet", 201, "none"), ("other", 999, "none")]
    assert h.intent() == "closed"
    h.rig.restart()  # a restarted agent reads the meter's event log from the start again
    first_t = log[0]["t"]
    assert isinstance(first_t, int)
    h.rig.ledger.relays.on_tamper("M1", "magnet", 201, first_t)
    assert len(h.rig.events("tamper")) == 2 and len(h.rig.journal.tamper_log("M1")) == 2
    h.rig.close()


def test_disconnect_on_tamper_opens_until_a_person_decides(tmp_path: Path) -> None:
    h = House(tmp_path, policy={"disconnect_on_tamper": True})
    h.rig.topup("A1", 50_000, "p")
    h.rig.ledger.relays.on_tamper("M1", "cover_open", 251, h.rig.now)
    assert h.intent() == "open" and h.rig.meter().relay_reason == "tamper"
    h.rig.topup("A1", 50_000, "p2")  # credit does not end a tamper hold
    h.rig.restart()  # nor does a restart
    h.ticks(2)
    assert h.intent() == "open"
    assert h.rig.ledger.relays.set_override("M1", "auto", None, h.rig.now) == "closed"
    h.rig.ledger.relays.on_tamper("M1", "magnet", 202, h.rig.now)  # a restoration: evidence only
    assert h.intent() == "closed"
    assert h.rig.journal.tamper_log("M1")[-1]["action"] == "none"
    h.rig.close()


# -- actuation: armed, read-back, bounded retries -----------------------------------------------
def test_armed_satisfies_a_closed_intent_and_is_reported(tmp_path: Path) -> None:
    h = House(tmp_path)
    h.spend(2 * EC)
    h.rig.follow_relays()
    h.rig.topup("A1", 10_000, "p")
    # DLMS: the meter waits for its button
    h.rig.ledger.actuation.relay_result("M1", None, "", h.rig.now, state="armed")
    assert h.rig.events("relay")[-1]["detail"] == {"state": "armed", "reason": "credit"}
    assert h.rig.ledger.actuation.jobs(h.rig.now) == []
    # the consumer pressed it
    h.rig.ledger.actuation.relay_result("M1", True, "", h.rig.now, state="closed")
    assert h.rig.events("relay")[-1]["detail"]["state"] == "closed"
    with pytest.raises(Exception, match="closed | open | armed"):
        h.rig.ledger.actuation.relay_result("M1", True, "", h.rig.now, state="half")
    h.rig.close()


def test_a_failing_relay_is_retried_with_backoff_and_reported_once(tmp_path: Path) -> None:
    h = House(tmp_path)
    h.spend(2 * EC)
    delays = []
    for _ in range(7):
        assert h.rig.ledger.actuation.jobs(h.rig.now) == [("M1", False)]
        h.rig.ledger.actuation.relay_result("M1", None, "no answer", h.rig.now)
        delays.append(h.rig.meter().relay_next_s - h.rig.now)
        assert h.rig.ledger.actuation.jobs(h.rig.now) == []  # backing off
        h.rig.now = h.rig.meter().relay_next_s
    assert delays == [10, 20, 40, 80, 160, 320, 640]
    assert len(h.rig.events("relay_failed")) == 1
    assert h.rig.events("relay_failed")[0]["detail"]["attempts"] == actuation.REPORT_AFTER
    h.rig.ledger.actuation.relay_result("M1", True, "", h.rig.now)  # read back: still closed
    assert h.rig.meter().relay_attempts == 8
    h.rig.topup("A1", 10_000, "p")  # a new intent is acted on at once
    assert h.rig.ledger.actuation.jobs(h.rig.now) == []  # closed already matches
    assert h.rig.meter().relay_attempts == 0
    h.rig.close()


# -- the `policy` command ------------------------------------------------------------------------
def test_a_policy_command_overlays_the_config_and_survives_restart(tmp_path: Path) -> None:
    h = House(tmp_path)
    h.rig.ledger.policies.apply({"emergency_credit": 5_000, "protected_weekdays": ["sat", "sun"]},
                           h.rig.now)
    h.rig.restart()
    policy = h.rig.ledger.policies.policy
    assert (policy.emergency_credit, policy.protected_weekdays) == (5_000, (5, 6))
    assert policy.min_notice_h == 0  # the config's value for keys not overlaid
    h.spend(2 * EC)
    assert h.intent() == "closed"  # within the new emergency credit
    h.rig.close()


@pytest.mark.parametrize(("changes", "key"), [
    ({"emergency_credit": -1}, "policy.emergency_credit"),
    ({"protected_hours": "25:00-08:00"}, "policy.protected_hours"),
    ({"alert_levels_pct": [30, 10]}, "policy.alert_levels_pct"),
    ({"disconnect_on_tamper": "yes"}, "policy.disconnect_on_tamper"),
    ({"bogus": 1}, "policy.bogus"),
])
def test_an_invalid_policy_command_names_the_key_and_changes_nothing(
        tmp_path: Path, changes: dict[str, Any], key: str) -> None:
    h = House(tmp_path)
    before = h.rig.ledger.policies.policy
    with pytest.raises(CommandError) as err:
        h.rig.ledger.policies.apply({"min_notice_h": 5, **changes}, h.rig.now)
    assert err.value.code == "invalid_args" and key in str(err.value)
    h.rig.restart()
    assert h.rig.ledger.policies.policy == before
    h.rig.close()


def test_meters_replaced_at_run_time_reach_the_relay_engine(tmp_path: Path) -> None:
    """Provisioning replaces the registry's meters on meter_add / meter_remove; the relay
    engine and actuation read that one registry."""
    h = House(tmp_path)
    h.spend(2 * EC)
    assert h.rig.ledger.actuation.jobs(h.rig.now) == [("M1", False)]
    h.rig.meters.replace([])  # M1 removed
    assert h.rig.ledger.actuation.jobs(h.rig.now) == []
    assert h.rig.ledger.relays.meters is h.rig.meters is h.rig.ledger.actuation.meters
    h.rig.meters.replace(h.rig.cfg.meters)
    assert h.rig.ledger.actuation.jobs(h.rig.now) == [("M1", False)]
    h.rig.close()


def test_an_uncarried_credit_disconnection_is_decided_again_after_a_restart(
        tmp_path: Path) -> None:
    h = House(tmp_path)
    with h.rig.store.tx():  # the decision committed, the agent died before switching
        h.rig.journal.update_meter("M1", relay_intent="open", relay_reason="credit",
                                   relay_actual="closed")
    h.rig.restart()
    state = h.rig.meter()
    assert state.relay_intent == "closed" and state.relay_reason != "credit"
    h.rig.close()


# -- local time: the offsets kept per hour give what the zone database gives ------------
@settings(max_examples=300)
@given(st.sampled_from(["Asia/Kolkata", "Europe/London", "Australia/Lord_Howe",
                        "America/Sao_Paulo"]),
       st.lists(st.integers(unix(2024, 1, 1), unix(2027, 1, 1)), min_size=1, max_size=40))
def test_local_s_kept_offsets_match_the_zone_database(zone: str, times: list[int]) -> None:
    """Lord Howe moves by 30 minutes, London at 01:00 UTC: instants on both sides of a
    transition, asked in any order, get the offset the zone database gives."""
    z = LocalTime(ZoneInfo(zone))
    tz = ZoneInfo(zone)
    for t in times + [t + 1 for t in times] + times:
        offset = datetime.fromtimestamp(t, tz).utcoffset()
        assert z.local_s(t) == t + (int(offset.total_seconds()) if offset else 0)


def test_local_s_across_a_transition_second_by_second() -> None:
    z = LocalTime(ZoneInfo("Europe/London"))
    change = int(datetime(2026, 3, 29, 1, tzinfo=UTC).timestamp())  # clocks go forward
    for t in range(change - 3700, change + 3700, 7):
        assert z.local_s(t) == t + (3600 if t >= change else 0)


def test_a_disconnect_decision_is_logged_once_until_it_changes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    h = House(tmp_path, policy={"min_notice_h": 24})
    caplog.set_level(logging.INFO, logger="agent.ledger")
    h.spend(2 * EC)
    h.ticks(20)  # the same deferred decision on every poll

    def decisions() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.getMessage().startswith("event=disconnect_decision")]

    [once] = decisions()
    assert "acct=A1" in once and "allowed=False" in once and "reasons=notice" in once
    _moratorium(h)  # the reasons change: logged again
    h.ticks(5)
    assert len(decisions()) == 2 and "moratorium" in decisions()[1]
    h.rig.advance(24 * 3600)  # both lifted: allowed, logged again
    h.rig.tick()
    assert len(decisions()) == 3 and "allowed=True" in decisions()[2]
    h.rig.close()


# -- the tick's memo: a steady decision is not made again for nothing -----------------
def _decisions(h: House) -> list[str]:
    """The accounts the policy decides from now on, one entry a decision."""
    relays = h.rig.ledger.relays
    consider = relays._consider
    seen: list[str] = []

    def counted(acct: Account, meter: MeterConfig, now_s: int) -> int | None:
        seen.append(acct.id)
        return consider(acct, meter, now_s)

    relays._consider = counted  # type: ignore[method-assign]
    return seen


def test_a_steady_deferral_is_decided_again_only_at_the_next_minute(tmp_path: Path) -> None:
    h = House(tmp_path, now_s=unix(2026, 3, 2, 20, 0, 10),
              policy={"protected_hours": "18:00-08:00"})
    h.spend(2 * EC)  # 20:05:10: deferred, protected hours
    assert h.rig.account().deferred == "protected_hours"
    h.rig.advance(1)
    h.rig.tick()  # the tick's first decision since the reading's: kept (it wrote nothing)
    seen = _decisions(h)
    for _ in range(48):  # 20:05:12 .. 20:05:59: nothing the answer depends on moves
        h.rig.advance(1)
        h.rig.tick()
    assert len(seen) == 0
    h.rig.advance(1)  # 20:06:00: a new minute, decided again (still protected)
    h.rig.tick()
    assert len(seen) == 1
    assert h.intent() == "closed" and len(h.rig.events("disconnect_deferred")) == 1
    h.rig.close()


def test_a_reading_s_own_decision_holds_for_the_ticks_after_it(tmp_path: Path) -> None:
    h = House(tmp_path, now_s=unix(2026, 3, 2, 20, 0, 10),
              policy={"protected_hours": "18:00-08:00"})
    h.spend(2 * EC)  # 20:05:10: deferred (the deferral is written: not steady)
    h.spend(10, after_s=5)  # 20:05:15: decided again, deferred as before: steady
    seen = _decisions(h)
    for _ in range(44):  # 20:05:16 .. 20:05:59
        h.rig.advance(1)
        h.rig.tick()
    assert len(seen) == 0
    h.rig.advance(1)  # 20:06:00
    h.rig.tick()
    assert len(seen) == 1 and h.intent() == "closed"
    h.rig.close()


def test_a_decision_whose_transaction_is_undone_does_not_hold(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = House(tmp_path, now_s=unix(2026, 3, 2, 20, 0, 10),
              policy={"protected_hours": "18:00-08:00"})
    h.spend(2 * EC)
    relays = h.rig.ledger.relays
    remember = relays._remember

    def then_fail(acct_id: str, now_s: int, until: int | None) -> None:
        remember(acct_id, now_s, until)
        raise RuntimeError("disk gone")

    monkeypatch.setattr(relays, "_remember", then_fail)
    with pytest.raises(RuntimeError):
        h.spend(10, after_s=5)  # its decision was remembered, then its reading undone
    monkeypatch.undo()
    seen = _decisions(h)
    h.rig.advance(1)
    h.rig.tick()
    assert len(seen) == 1
    h.rig.close()


@pytest.mark.parametrize("change", ["headend", "moratorium", "policy", "meters", "trust",
                                    "clock_back", "override"])
def test_whatever_moves_an_input_has_the_next_tick_decide_again(
        tmp_path: Path, change: str) -> None:
    start = unix(2026, 3, 2, 18, 0, 10)
    policy = {"protected_hours": "18:00-08:00"}
    h = House(tmp_path, now_s=start, trusted=change != "trust", policy=policy)
    h.spend(2 * EC)  # 18:05:10
    h.rig.tick()  # steady from here to 18:06:00
    relays = h.rig.ledger.relays
    seen = _decisions(h)
    h.rig.advance(1)
    h.rig.tick()
    assert len(seen) == 0
    if change == "headend":
        relays.headend_state(True, False, h.rig.now)
    elif change == "moratorium":
        relays.set_moratorium("A1", h.rig.now + 3600, "upgrade", h.rig.now)
    elif change == "policy":
        h.rig.ledger.policies.apply({"protected_hours": ""}, h.rig.now)
    elif change == "meters":
        h.rig.meters.replace(list(h.rig.meters.values()))
    elif change == "trust":
        relays.confirm_clock(h.rig.now, h.rig.now)
    elif change == "clock_back":
        h.rig.now = start - 20  # 17:59:50: before the protected hours
    elif change == "override":
        relays.set_override("M1", "auto", None, h.rig.now)
        assert len(seen) == 1  # decided by set_override itself, which wrote nothing
        seen.clear()
    h.rig.tick()
    if change == "override":  # so its decision holds for the tick
        assert len(seen) == 0
    else:
        assert len(seen) >= 1, change
    assert h.intent() == ("open" if change == "policy" else "closed"), change
    if change == "clock_back":  # out of the protected hours, but before the 0 % alert
        assert h.rig.account().deferred == "notice"
    h.rig.close()


def test_a_rate_limited_account_is_decided_again_every_second(tmp_path: Path) -> None:
    h = House(tmp_path, meters=2, policy={"max_disconnects_per_hour": 1})
    h.spend(2 * EC, "M1")
    h.spend(2 * EC, "M2", after_s=60)
    assert h.rig.account("A2").deferred == "rate_limit"
    seen = _decisions(h)
    for _ in range(3):
        h.rig.advance(1)
        h.rig.tick()
    assert len(seen) == 3  # the hour slides over every second
    h.rig.close()


def test_a_tick_that_rolls_back_forgets_what_it_decided(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    h = House(tmp_path, now_s=unix(2026, 3, 2, 20, 0, 10),
              policy={"protected_hours": "18:00-08:00"})
    h.spend(2 * EC)
    h.rig.tick()
    seen = _decisions(h)

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("disk gone")

    monkeypatch.setattr(h.rig.journal, "accounts", broken)
    h.rig.advance(1)
    with pytest.raises(RuntimeError):
        h.rig.tick()
    monkeypatch.undo()
    h.rig.advance(1)
    h.rig.tick()
    assert len(seen) == 1
    h.rig.close()
