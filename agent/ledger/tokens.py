"""Offline top-up tokens (CONTRACT 8, DOMAIN "Offline top-ups"); layout in docs/tokens.md.

A token is a number N < 2**66 written as 20 decimal digits (five groups of four):

    N = mac32 << 34 | counter16 << 18 | rupees18

    account_key = HMAC-SHA256(token_key, b"meter-agent/token/v1/" + account UTF-8)
    mac32       = first 4 bytes, big-endian, of
                  HMAC-SHA256(account_key, counter as 2 bytes BE + rupees as 3 bytes BE)

The account is bound by the key, the amount and counter by the MAC. Like
OpenPAYGO Token, a verifier accepts a counter it has not used that lies within
WINDOW_BELOW under to WINDOW_ABOVE over the highest counter seen, so tokens
bought in a row may be entered in any order. ``TokenState`` holds the highest
counter and the used ones still inside the window (at most WINDOW_BELOW + 1).
``TokenGate`` rate-limits wrong entries per account.

Pure: the runtime must make the new TokenState durable (with the journal
entry) before it tells the consumer "accepted" (ledger invariant 4).
"""

from __future__ import annotations

from agent.ledger.hmac256 import equal, hmac_sha256
from agent.ledger.record import dataclass

DIGITS = 20
MAC_BITS = 32
COUNTER_BITS = 16
AMOUNT_BITS = 18
TOKEN_BITS = MAC_BITS + COUNTER_BITS + AMOUNT_BITS  # 66; 2**66 < 10**20
MAX_COUNTER = (1 << COUNTER_BITS) - 1  # 65535: past it, the account needs a new key
MAX_AMOUNT_RUPEES = (1 << AMOUNT_BITS) - 1  # 262,143 rupees per token
KEY_BYTES = 32  # CONTRACT 2: token_key_file holds 32 random bytes
KEY_LABEL = b"meter-agent/token/v1/"

# Counter window: accept max - WINDOW_BELOW .. max + WINDOW_ABOVE (not used before).
# Below it: refused as out_of_window (its use can no longer be told apart).
# Above it: refused as out_of_window (the vending system is too far ahead).
WINDOW_BELOW = 16
WINDOW_ABOVE = 1000

# Wrong entries (malformed or bad_mac) in a row before a lock, the first lock,
# and its cap: each further lock without an accepted token in between doubles.
MAX_WRONG_IN_ROW = 5
LOCK_FIRST_S = 15 * 60
LOCK_CAP_S = 24 * 3600
# After this long with no wrong entry and no lock, the streak and the doubling reset.
QUIET_RESET_S = 24 * 3600

REASONS = ("ok", "malformed", "bad_mac", "used", "out_of_window", "locked")
_COUNTED = ("malformed", "bad_mac")  # reasons that count as a wrong entry


@dataclass(frozen=True, slots=True)
class TokenState:
    """Per-account verifier state (persisted by the runtime)."""

    FIELDS = ("max_counter", "used")
    max_counter: int = -1  # highest counter accepted; -1: none yet
    used: frozenset[int] = frozenset()  # accepted counters >= max_counter - WINDOW_BELOW


@dataclass(frozen=True, slots=True)
class TokenCheck:
    FIELDS = ("ok", "amount_paise", "counter", "reason", "new_state")
    ok: bool
    amount_paise: int  # credit to apply; 0 unless ok (or a genuine token refused)
    counter: int | None  # the token's counter once its MAC verified, else None
    reason: str  # one of REASONS
    new_state: TokenState  # equal to the old state unless ok


@dataclass(frozen=True, slots=True)
class TokenGate:
    """Per-account rate limit on wrong entries (persist it to survive restarts)."""

    FIELDS = ("wrong_in_row", "lockouts", "locked_from_s", "locked_until_s", "last_wrong_s")
    wrong_in_row: int = 0
    lockouts: int = 0  # locks since the last accepted token / quiet reset
    locked_from_s: int = 0  # unix s; the lock holds for locked_from_s <= now < locked_until_s
    locked_until_s: int = 0
    last_wrong_s: int = 0


def account_key(token_key: bytes, account: str) -> bytes:
    if len(token_key) != KEY_BYTES:
        raise ValueError("the token key must be 32 bytes, not " + str(len(token_key)))
    if not account:
        raise ValueError("the account id is empty")
    return hmac_sha256(token_key, KEY_LABEL + account.encode("utf-8"))


def _mac(key: bytes, counter: int, rupees: int) -> int:
    message = counter.to_bytes(2, "big") + rupees.to_bytes(3, "big")
    return int.from_bytes(hmac_sha256(key, message)[:4], "big")


def format_token(value: int) -> str:
    text = f"{value:020d}"
    return " ".join(text[i : i + 4] for i in range(0, DIGITS, 4))


def issue_token(token_key: bytes, account: str, amount_paise: int, counter: int) -> str:
    """The reference issuer: the token for ``amount_paise`` (whole rupees) and ``counter``."""
    if amount_paise % 100 != 0 or not 1 <= amount_paise // 100 <= MAX_AMOUNT_RUPEES:
        raise ValueError("a token carries whole rupees, 1..262143 (amount in paise)")
    if not 0 <= counter <= MAX_COUNTER:
        raise ValueError("the token counter must be 0..65535")
    rupees = amount_paise // 100
    mac = _mac(account_key(token_key, account), counter, rupees)
    return format_token(mac << 34 | counter << AMOUNT_BITS | rupees)


def _parse(digits: str) -> int | None:
    """The token's number, or None if the text is not 20 digits (spaces, '-' allowed)."""
    text = digits.replace(" ", "").replace("-", "")
    if len(text) != DIGITS or not all("0" <= ch <= "9" for ch in text):
        return None
    value = int(text)
    return value if value < 1 << TOKEN_BITS else None


def check_token(token_key: bytes, account: str, digits: str, state: TokenState) -> TokenCheck:
    """Verify a typed token against the account's state; never raises on bad input."""
    value = _parse(digits)
    rupees = 0 if value is None else value & MAX_AMOUNT_RUPEES
    if value is None or rupees == 0:
        return TokenCheck(False, 0, None, "malformed", state)
    counter = value >> AMOUNT_BITS & MAX_COUNTER
    mac = value >> 34
    expected = _mac(account_key(token_key, account), counter, rupees)
    if not equal(mac.to_bytes(4, "big"), expected.to_bytes(4, "big")):
        return TokenCheck(False, 0, None, "bad_mac", state)
    amount_paise = rupees * 100
    if counter in state.used:
        return TokenCheck(False, amount_paise, counter, "used", state)
    if not state.max_counter - WINDOW_BELOW <= counter <= state.max_counter + WINDOW_ABOVE:
        return TokenCheck(False, amount_paise, counter, "out_of_window", state)
    top = max(state.max_counter, counter)
    used = frozenset(c for c in state.used | {counter} if c >= top - WINDOW_BELOW)
    return TokenCheck(True, amount_paise, counter, "ok", TokenState(max_counter=top, used=used))


def gate_locked(gate: TokenGate, now_s: int) -> bool:
    """Entries are refused (``locked``) now. A clock set back before the lock began
    releases it rather than stretching it."""
    return gate.locked_from_s <= now_s < gate.locked_until_s


def gate_after(gate: TokenGate, reason: str, now_s: int) -> TokenGate:
    """The gate after an entry with this outcome (see the constants above)."""
    if reason == "ok":
        return TokenGate()
    if reason not in _COUNTED:
        # used / out_of_window need a genuine MAC: not guessing, but no reset either,
        # else one old genuine token would wipe a guesser's streak.
        return gate
    if now_s - max(gate.last_wrong_s, gate.locked_until_s) >= QUIET_RESET_S:
        gate = TokenGate()
    wrong = gate.wrong_in_row + 1
    if wrong < MAX_WRONG_IN_ROW:
        return TokenGate(wrong, gate.lockouts, gate.locked_from_s, gate.locked_until_s, now_s)
    lock_s = min(LOCK_FIRST_S << min(gate.lockouts, 16), LOCK_CAP_S)  # shift bounded too
    return TokenGate(0, gate.lockouts + 1, now_s, now_s + lock_s, now_s)


def enter_token(
    token_key: bytes,
    account: str,
    digits: str,
    state: TokenState,
    gate: TokenGate,
    now_s: int,
) -> tuple[TokenCheck, TokenGate]:
    """A consumer's entry: refused as ``locked`` while the gate is shut, else checked
    and counted. Returns the check and the account's new gate."""
    if gate_locked(gate, now_s):
        return TokenCheck(False, 0, None, "locked", state), gate
    result = check_token(token_key, account, digits, state)
    return result, gate_after(gate, result.reason, now_s)
