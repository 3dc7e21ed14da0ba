"""Offline top-up tokens (CONTRACT 8) and the HMAC-SHA256 they rest on."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.ledger.hmac256 import equal, hmac_sha256
from agent.ledger.tokens import (
    LOCK_CAP_S,
    LOCK_FIRST_S,
    QUIET_RESET_S,
    WINDOW_ABOVE,
    WINDOW_BELOW,
    TokenCheck,
    TokenGate,
    TokenState,
    account_key,
    check_token,
    enter_token,
    gate_after,
    gate_locked,
    issue_token,
)

TEST_KEY = bytes(range(32))  # the docs/tokens.md worked example key: 00 01 02 .. 1f
ACCOUNT = "ACC-0001"
accounts = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF), min_size=1, max_size=20)


# --- HMAC-SHA256 --------------------------------------------------------------------


def test_hmac_rfc4231_vectors() -> None:
    # RFC 4231 test cases 1 and 2 (HMAC-SHA-256)
    assert hmac_sha256(b"\x0b" * 20, b"Hi There").hex() == (
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
    )
    assert hmac_sha256(b"Jefe", b"what do ya want for nothing?").hex() == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )


@given(st.binary(max_size=200), st.binary(max_size=300))
def test_hmac_matches_cpython(key: bytes, message: bytes) -> None:
    assert hmac_sha256(key, message) == hmac.new(key, message, hashlib.sha256).digest()


@given(st.binary(max_size=40), st.binary(max_size=40))
def test_equal_matches_compare_digest(a: bytes, b: bytes) -> None:
    assert equal(a, b) == hmac.compare_digest(a, b)


# --- layout, issuer and verifier ------------------------------------------------------


def reference_token(key: bytes, account: str, amount_paise: int, counter: int) -> str:
    """docs/tokens.md written out with CPython's hmac module, independently of the agent."""
    acct_key = hmac.new(key, b"meter-agent/token/v1/" + account.encode(), hashlib.sha256).digest()
    rupees = amount_paise // 100
    msg = counter.to_bytes(2, "big") + rupees.to_bytes(3, "big")
    mac = int.from_bytes(hmac.new(acct_key, msg, hashlib.sha256).digest()[:4], "big")
    text = str(mac << 34 | counter << 18 | rupees).zfill(20)
    return " ".join(text[i : i + 4] for i in range(0, 20, 4))


def test_docs_worked_example() -> None:
    token = issue_token(TEST_KEY, ACCOUNT, 50_000, 1)
    assert token == "5612 0026 2256 9263 9732"  # docs/tokens.md
    value = int(token.replace(" ", ""))
    assert (value >> 34, value >> 18 & 0xFFFF, value & 0x3FFFF) == (0xC2B498A1, 1, 500)
    assert account_key(TEST_KEY, ACCOUNT).hex()[:16] == "7c5842fd51d09c3b"
    result = check_token(TEST_KEY, ACCOUNT, token, TokenState())
    assert result == TokenCheck(True, 50_000, 1, "ok", TokenState(1, frozenset({1})))
    assert issue_token(TEST_KEY, ACCOUNT, 50_000, 2) == "6800 4455 1675 8751 6916"
    assert issue_token(TEST_KEY, ACCOUNT, 50_000, 3) == "5117 1784 2334 8900 7092"
    assert issue_token(TEST_KEY, "ACC-0002", 50_000, 1) == "0234 4974 2500 8938 2388"


@settings(max_examples=200)
@given(
    st.binary(min_size=32, max_size=32), accounts, st.integers(1, 262_143), st.integers(0, 65_535)
)
def test_round_trip_and_reference_agree(
    key: bytes, account: str, rupees: int, counter: int
) -> None:
    token = issue_token(key, account, rupees * 100, counter)
    assert token == reference_token(key, account, rupees * 100, counter)
    assert len(token) == 24 and [len(g) for g in token.split(" ")] == [4] * 5
    state = TokenState(max_counter=counter - 1)
    result = check_token(key, account, token, state)
    assert (result.ok, result.amount_paise, result.counter, result.reason) == (
        True,
        rupees * 100,
        counter,
        "ok",
    )
    # Typed without spaces or with dashes it is the same token.
    assert check_token(key, account, token.replace(" ", ""), state).ok
    assert check_token(key, account, token.replace(" ", "-"), state).ok


@settings(max_examples=300)
@given(st.integers(1, 5000), st.integers(0, 999), st.integers(0, 19), st.integers(1, 9))
def test_any_changed_digit_is_refused(rupees: int, counter: int, position: int, bump: int) -> None:
    digits = list(issue_token(TEST_KEY, ACCOUNT, rupees * 100, counter).replace(" ", ""))
    digits[position] = str((int(digits[position]) + bump) % 10)
    result = check_token(TEST_KEY, ACCOUNT, "".join(digits), TokenState())
    assert not result.ok and result.reason in ("bad_mac", "malformed")
    assert result.new_state == TokenState()


def test_other_account_and_other_key_refused() -> None:
    token = issue_token(TEST_KEY, ACCOUNT, 10_000, 3)
    assert check_token(TEST_KEY, "ACC-0002", token, TokenState()).reason == "bad_mac"
    assert check_token(bytes(32), ACCOUNT, token, TokenState()).reason == "bad_mac"


@pytest.mark.parametrize(
    "digits",
    [
        "",
        "1234 5678 9012 3456 789",  # 19 digits
        "1234 5678 9012 3456 78901",  # 21 digits
        "1234 5678 9O12 3456 7890",  # a letter O
        "१२३४ 5678 9012 3456 7890",  # Devanagari digits
        "9999 9999 9999 9999 9999",  # >= 2**66
        str(0xC2B498A1 << 34 | 1 << 18).zfill(20),  # amount 0
    ],
)
def test_malformed(digits: str) -> None:
    result = check_token(TEST_KEY, ACCOUNT, digits, TokenState())
    assert (result.ok, result.reason, result.counter, result.amount_paise) == (
        False,
        "malformed",
        None,
        0,
    )


def test_used_and_window() -> None:
    def tok(counter: int) -> str:
        return issue_token(TEST_KEY, ACCOUNT, 100, counter)

    state = TokenState()
    # Bought 1, 2, 3; entered 3, 1, 2: any order inside the window is fine.
    for counter in (3, 1, 2):
        result = check_token(TEST_KEY, ACCOUNT, tok(counter), state)
        assert result.ok, result
        state = result.new_state
    assert state == TokenState(3, frozenset({1, 2, 3}))
    used = check_token(TEST_KEY, ACCOUNT, tok(2), state)
    assert (used.ok, used.reason, used.counter, used.new_state) == (False, "used", 2, state)
    too_far = check_token(TEST_KEY, ACCOUNT, tok(3 + WINDOW_ABOVE + 1), state)
    assert too_far.reason == "out_of_window"
    state = check_token(TEST_KEY, ACCOUNT, tok(3 + WINDOW_ABOVE), state).new_state
    assert state.max_counter == 1003 and state.used == frozenset({1003})  # old ones pruned
    assert check_token(TEST_KEY, ACCOUNT, tok(1003 - WINDOW_BELOW), state).ok
    assert check_token(TEST_KEY, ACCOUNT, tok(1002 - WINDOW_BELOW), state).reason == "out_of_window"
    assert check_token(TEST_KEY, ACCOUNT, tok(3), state).reason == "out_of_window"


@settings(max_examples=100)
@given(st.lists(st.integers(0, 300), max_size=60))
def test_no_counter_is_ever_accepted_twice(entries: list[int]) -> None:
    state = TokenState()
    accepted: list[int] = []
    for counter in entries:
        result = check_token(TEST_KEY, ACCOUNT, issue_token(TEST_KEY, ACCOUNT, 100, counter), state)
        if result.ok:
            accepted.append(counter)
            state = result.new_state
        assert len(state.used) <= WINDOW_BELOW + 1
    assert len(accepted) == len(set(accepted))


def test_issuer_refuses_bad_input() -> None:
    for amount, counter in [(150, 1), (0, 1), (262_144 * 100, 1), (100, -1), (100, 65_536)]:
        with pytest.raises(ValueError):
            issue_token(TEST_KEY, ACCOUNT, amount, counter)
    with pytest.raises(ValueError):
        issue_token(b"short", ACCOUNT, 100, 1)
    with pytest.raises(ValueError):
        issue_token(TEST_KEY, "", 100, 1)


# --- rate limit on wrong entries ----------------------------------------------------


def test_lockout_after_five_wrong_entries_doubling_to_a_cap() -> None:
    good = issue_token(TEST_KEY, ACCOUNT, 500, 1)
    state, gate, now = TokenState(), TokenGate(), 1_800_000_000
    expected_lock = LOCK_FIRST_S
    for _round in range(10):
        for i in range(5):
            result, gate = enter_token(
                TEST_KEY, ACCOUNT, "0000 0000 0000 0000 0001", state, gate, now
            )
            assert result.reason == "bad_mac"
            assert gate_locked(gate, now) == (i == 4)
        # Locked: even a genuine token is refused, and not counted.
        result, gate2 = enter_token(TEST_KEY, ACCOUNT, good, state, gate, now + expected_lock - 1)
        assert (result.ok, result.reason, gate2) == (False, "locked", gate)
        assert gate.locked_until_s - now == expected_lock
        now += expected_lock
        expected_lock = min(expected_lock * 2, LOCK_CAP_S)
    assert gate.locked_until_s - gate.locked_from_s == LOCK_CAP_S
    result, gate = enter_token(TEST_KEY, ACCOUNT, good, state, gate, now)
    assert result.ok and gate == TokenGate()


def test_used_tokens_neither_count_nor_reset() -> None:
    good = issue_token(TEST_KEY, ACCOUNT, 500, 1)
    state = check_token(TEST_KEY, ACCOUNT, good, TokenState()).new_state
    gate = TokenGate(wrong_in_row=4, last_wrong_s=100)
    result, after = enter_token(TEST_KEY, ACCOUNT, good, state, gate, 101)
    assert result.reason == "used" and after == gate


def test_quiet_day_resets_the_streak_and_the_doubling() -> None:
    gate = TokenGate(
        wrong_in_row=4, lockouts=3, locked_from_s=0, locked_until_s=7200, last_wrong_s=0
    )
    assert gate_after(gate, "bad_mac", 7200 + QUIET_RESET_S - 1).lockouts == 4  # 5th wrong: lock
    fresh = gate_after(gate, "bad_mac", 7200 + QUIET_RESET_S)
    assert (fresh.wrong_in_row, fresh.lockouts) == (1, 0)


def test_clock_set_back_releases_rather_than_stretches_a_lock() -> None:
    gate = TokenGate(lockouts=1, locked_from_s=10_000, locked_until_s=10_000 + LOCK_FIRST_S)
    assert gate_locked(gate, 10_000)
    assert not gate_locked(gate, 9_999)
