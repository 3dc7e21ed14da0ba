"""Offline tokens through Credit.enter_token and the real store (CONTRACT 8,
ledger invariant 4): accepted once, "used" durable before "accepted", refused with a
`token_rejected` event, wrong entries rate-limited across restarts."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.errors import CommandError
from agent.ledger import tokens
from agent.ledger.tokens import issue_token
from tests.ledger.rig import TOKEN_KEY, UP_TABLE, Rig

NO_FIXED = {**UP_TABLE, "fixed_per_day": 0}  # nothing but tokens moves these balances


def token(counter: int, rupees: int = 500, acct: str = "A1") -> str:
    return issue_token(TOKEN_KEY, acct, rupees * 100, counter)


def test_a_token_is_accepted_once_and_reported(tmp_path: Path) -> None:
    rig = Rig(tmp_path, tariff=NO_FIXED)
    out = rig.ledger.credit.enter_token("A1", token(1), rig.now)
    assert out == {"ok": True, "amount": 50_000, "balance": 50_000, "counter": 1}
    again = rig.ledger.credit.enter_token("A1", token(1).replace(" ", "-"), rig.now)
    assert again == {"ok": False, "reason": "used"}
    assert [(e.kind, e.amt, e.ref) for e in rig.entries()] == [("token", 50_000, "token:A1:1")]
    [event] = rig.events("token_rejected")
    assert event["acct"] == "A1" and event["detail"] == {"why": "used", "counter": 1}
    rig.close()


def test_accepted_is_durable_when_it_is_returned(tmp_path: Path) -> None:
    """Read through a second connection while the agent's is still open: what the
    consumer was told is already on disk (the transaction committed before returning)."""
    rig = Rig(tmp_path, tariff=NO_FIXED)
    assert rig.ledger.credit.enter_token("A1", token(7), rig.now)["ok"]
    other = sqlite3.connect(Path(rig.cfg.gateway.data_dir) / "agent.sqlite3")
    try:
        assert other.execute("SELECT used, max_counter FROM tokens WHERE acct = 'A1'"
                             ).fetchone() == ("7", 7)
        assert other.execute("SELECT kind, amt FROM journal WHERE acct = 'A1'"
                             ).fetchall() == [("token", 50_000)]
        assert other.execute("SELECT balance FROM accounts WHERE id = 'A1'").fetchone() == (
            50_000,)
    finally:
        other.close()
    rig.close()


def test_a_failure_before_commit_applies_nothing_and_the_token_still_works(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rig = Rig(tmp_path, tariff=NO_FIXED)

    def power_cut(*args: object) -> None:
        raise KeyboardInterrupt("power cut")  # not an Exception: nothing may swallow it

    monkeypatch.setattr(rig.journal, "save_token_row", power_cut)
    with pytest.raises(KeyboardInterrupt):
        rig.ledger.credit.enter_token("A1", token(1), rig.now)
    monkeypatch.undo()
    rig.restart()
    assert rig.entries() == [] and rig.journal.token_row("A1") is None
    assert rig.ledger.credit.enter_token("A1", token(1), rig.now)["ok"]
    rig.restart()
    assert rig.ledger.credit.enter_token("A1", token(1), rig.now)["reason"] == "used"
    rig.close()


def test_forged_other_account_and_malformed_tokens_are_refused(tmp_path: Path) -> None:
    rig = Rig(tmp_path, meters=2, tariff=NO_FIXED)
    digits = token(1).replace(" ", "")
    forged = digits[:-1] + str((int(digits[-1]) + 1) % 10)  # one more rupee
    outcomes = [rig.ledger.credit.enter_token("A1", d, rig.now)["reason"]
                for d in (forged, token(1, acct="A2"), "1234", "9" * 20)]
    assert outcomes == ["bad_mac", "bad_mac", "malformed", "malformed"]
    assert [e["detail"]["why"] for e in rig.events("token_rejected")] == outcomes
    assert rig.entries("A1") == [] and rig.entries("A2") == []
    assert rig.ledger.credit.enter_token("A2", token(1, acct="A2"), rig.now)["ok"]  # A2's own: fine
    with pytest.raises(CommandError) as err:
        rig.ledger.credit.enter_token("NOPE", token(1), rig.now)
    assert err.value.code == "unknown_account"
    rig.close()


def test_five_wrong_entries_lock_the_account_across_a_restart(tmp_path: Path) -> None:
    rig = Rig(tmp_path, tariff=NO_FIXED)
    for _ in range(tokens.MAX_WRONG_IN_ROW):
        out = rig.ledger.credit.enter_token("A1", "0000 0000 0000 0000 0001", rig.now)
        assert out["reason"] == "bad_mac"
    rig.restart()  # a power cycle does not reset the gate
    rig.advance(60)
    locked = rig.ledger.credit.enter_token("A1", token(1), rig.now)  # even a genuine one
    assert locked == {"ok": False, "reason": "locked",
                      "locked_until": rig.now - 60 + tokens.LOCK_FIRST_S}
    assert rig.events("token_rejected")[-1]["detail"]["why"] == "locked"
    rig.advance(tokens.LOCK_FIRST_S)
    assert rig.ledger.credit.enter_token("A1", token(1), rig.now)["ok"]
    assert rig.journal.token_row("A1").wrong_in_row == 0  # type: ignore[union-attr]
    rig.close()


def test_tokens_in_any_order_within_the_window(tmp_path: Path) -> None:
    rig = Rig(tmp_path, tariff=NO_FIXED)
    results = [rig.ledger.credit.enter_token("A1", token(c, rupees=c), rig.now) for c in (3, 1, 2)]
    assert [r["counter"] for r in results] == [3, 1, 2]
    assert rig.account().balance == 600
    far = rig.ledger.credit.enter_token("A1", token(3 + tokens.WINDOW_ABOVE + 1), rig.now)
    assert far["reason"] == "out_of_window"
    rig.close()


def test_a_token_credit_reconnects(tmp_path: Path) -> None:
    rig = Rig(tmp_path, tariff={"fixed_per_day": 0, "slabs": [{"rate": 10_000}]})
    rig.read("M1", 1_000_000)
    rig.advance(300)
    rig.read("M1", 1_000_100)  # -1000 paise, past the zero emergency credit
    assert rig.meter().relay_intent == "open"
    assert rig.ledger.credit.enter_token("A1", token(1, rupees=20), rig.now)["balance"] == 1_000
    assert rig.meter().relay_intent == "closed"
    rig.close()


def test_enter_token_refuses_to_run_inside_a_transaction(tmp_path: Path) -> None:
    rig = Rig(tmp_path, tariff=NO_FIXED)
    with rig.store.tx(), pytest.raises(AssertionError, match="outside a tx"):
        rig.ledger.credit.enter_token("A1", token(1), rig.now)
    rig.close()


def test_the_token_key_is_read_from_the_config_when_not_given(tmp_path: Path) -> None:
    from agent.wiring import wire_ledger

    rig = Rig(tmp_path, tariff=NO_FIXED)
    rig.cfg.security.token_key_file.write_text(TOKEN_KEY.hex() + "\n")
    ledger = wire_ledger(rig.cfg, rig.store, rig.journal, rig.meters, clock_synchronised=None)
    assert ledger.credit.enter_token("A1", token(1), rig.now)["ok"]
    rig.close()
