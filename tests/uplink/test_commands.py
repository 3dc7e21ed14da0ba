"""Command verification (CONTRACT 7): every refusal code, in order, with the id carried
wherever the payload's id could be read."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import CommandError
from agent.uplink import cbor, cose
from agent.uplink.commands import (
    DEFAULT_TTL_S,
    MAX_TOPUP_PAISE,
    OPS,
    Command,
    check_args,
    make_command,
    parse_command,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
NOW = 1_767_225_600  # 2026-01-01T00:00Z

TARIFF = {
    "name": "up-lmv1-urban", "fixed_per_day": 733,
    "slabs": [{"upto_kwh": 150, "rate": 550}, {"upto_kwh": 300, "rate": 600},
              {"upto_kwh": 500, "rate": 650}, {"rate": 700}],
    "duty_bp": 500, "billing_day": 1,
    "tod": [{"from": "10:00", "to": "16:00", "pct": 80}, {"from": "18:00", "to": "22:00",
                                                          "pct": 120}],
}
VALID: dict[str, dict[str, Any]] = {
    "topup": {"account": "ACC-0001", "amount": 50000, "txn": "upi-2026-000123"},
    "relay": {"meter": "SDM-0001", "action": "disconnect", "until": NOW + 3600},
    "read": {"meter": "SDM-0001"},
    "tariff": TARIFF,
    "policy": {"protected_hours": "18:00-08:00", "protected_weekdays": ["sun", "Sat"],
               "holidays": ["2026-01-26"], "emergency_credit": 30000,
               "alert_levels_pct": [30, 10, 0], "payment_outage_h": 6, "min_notice_h": 24,
               "max_disconnects_per_hour": 60, "disconnect_on_tamper": False},
    "moratorium": {"until": NOW + 86400, "accounts": ["ACC-0001"], "reason": "billing upgrade"},
    "meter_add": {"id": "SDM-0009", "bus": "rs485-0", "address": 9, "model": "eastron-sdm120",
                  "account": "ACC-0001", "relay": "modbus-coil:20:3"},
    "meter_remove": {"meter": "SDM-0009"},
    "resync": {"account": "ACC-0001", "from_n": 1},
    "ping": {},
}


def signed_payload(payload: object, key: bytes = KEY) -> bytes:
    return cose.sign_mac0(key, cbor.dumps(payload))


def refusal(data: bytes, key: bytes = KEY, now_s: int = NOW) -> CommandError:
    with pytest.raises(CommandError) as err:
        parse_command(data, key, now_s)
    return err.value


@pytest.mark.parametrize("op", OPS)
def test_valid_command_of_every_op(op: str) -> None:
    data = make_command(KEY, op, VALID[op], id=f"c-{op}", now_s=NOW)
    cmd = parse_command(data, KEY, NOW)
    assert cmd == Command(f"c-{op}", op, NOW, NOW + DEFAULT_TTL_S, VALID[op])


def test_make_command_defaults_and_minimal_args() -> None:
    cmd = parse_command(make_command(KEY, "relay", {"meter": "M", "action": "auto"},
                                     now_s=NOW), KEY, NOW)
    assert len(cmd.id) == 16 and cmd.iat == NOW and cmd.exp == NOW + DEFAULT_TTL_S
    minimal_tariff = {"name": "flat", "slabs": [{"rate": 600}]}
    assert not check_args("tariff", minimal_tariff)
    assert not check_args("moratorium", {"until": NOW, "reason": "flood"})  # all accounts
    assert not check_args("policy", {"protected_hours": ""})


# -- the order of refusals --------------------------------------------------------------
def test_not_cbor_at_all_is_malformed_with_no_id() -> None:
    err = refusal(b"\x00\x01 hello, not CBOR \xff")
    assert (err.code, err.command_id) == ("malformed", None)
    err = refusal(b"")
    assert (err.code, err.command_id) == ("malformed", None)


def test_bad_mac_carries_the_readable_id() -> None:
    data = make_command(OTHER_KEY, "ping", {}, id="c-forged", now_s=NOW)
    err = refusal(data)
    assert (err.code, err.command_id) == ("bad_mac", "c-forged")


def test_bad_mac_wins_over_everything_in_the_payload() -> None:
    # Expired, unknown op and bad args, but the MAC is checked first.
    data = make_command(OTHER_KEY, "fly", {"x": 1}, id="c-2", exp=NOW - 999, now_s=NOW)
    assert refusal(data).code == "bad_mac"


def test_bad_mac_with_unreadable_payload_has_no_id() -> None:
    data = cose.sign_mac0(OTHER_KEY, b"\xff\xfe")
    err = refusal(data)
    assert (err.code, err.command_id) == ("bad_mac", None)


@pytest.mark.parametrize("payload, cid", [
    (b"\xff", None),  # payload bytes are not CBOR
    ([1, 2], None),
    ({"op": "ping", "iat": NOW, "exp": NOW, "args": {}}, None),  # no id
    ({"id": "", "op": "ping", "iat": NOW, "exp": NOW, "args": {}}, None),
    ({"id": "x" * 129, "op": "ping", "iat": NOW, "exp": NOW, "args": {}}, None),
    ({"id": 7, "op": "ping", "iat": NOW, "exp": NOW, "args": {}}, None),
    ({"id": "c-3", "op": "ping", "iat": "now", "exp": NOW, "args": {}}, "c-3"),
    ({"id": "c-3", "op": "ping", "iat": NOW, "exp": NOW, "args": []}, "c-3"),
    ({"id": "c-3", "op": 5, "iat": NOW, "exp": NOW, "args": {}}, "c-3"),
    ({"id": "c-3", "op": "ping", "iat": NOW, "exp": True, "args": {}}, "c-3"),
    ({"id": "c-3", "op": "ping", "iat": NOW, "exp": NOW}, "c-3"),
    ({"id": "c-3", "op": "ping", "iat": NOW, "exp": NOW, "args": {}, "extra": 1}, "c-3"),
    # Malformed comes before expired: exp is also in the past here.
    ({"id": "c-3", "op": "ping", "iat": NOW, "exp": 1, "args": None}, "c-3"),
])
def test_malformed_payloads(payload: object, cid: str | None) -> None:
    data = cose.sign_mac0(KEY, payload) if isinstance(payload, bytes) else signed_payload(
        payload)
    err = refusal(data)
    assert (err.code, err.command_id) == ("malformed", cid)


def test_expired_carries_the_id_and_exp_equal_to_now_is_still_valid() -> None:
    data = make_command(KEY, "ping", {}, id="c-old", iat=NOW - 600, exp=NOW - 1, now_s=NOW)
    err = refusal(data)
    assert (err.code, err.command_id) == ("expired", "c-old")
    # Expired comes before unknown op.
    assert refusal(make_command(KEY, "fly", {}, exp=NOW - 1, now_s=NOW)).code == "expired"
    assert parse_command(make_command(KEY, "ping", {}, exp=NOW, now_s=NOW), KEY, NOW)


def test_unknown_op_carries_the_id() -> None:
    err = refusal(make_command(KEY, "reboot", {}, id="c-op", now_s=NOW))
    assert (err.code, err.command_id) == ("unknown_op", "c-op")


# -- invalid_args, op by op -------------------------------------------------------------
def _with(op: str, **changes: Any) -> dict[str, Any]:
    args = dict(VALID[op])
    for k, v in changes.items():
        if v is ...:
            args.pop(k)
        else:
            args[k] = v
    return args


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("topup", _with("topup", amount=0), "args.amount"),
    ("topup", _with("topup", amount=-5), "args.amount"),
    ("topup", _with("topup", amount=MAX_TOPUP_PAISE + 1), "args.amount"),
    ("topup", _with("topup", amount=True), "args.amount"),
    ("topup", _with("topup", txn=""), "args.txn"),
    ("topup", _with("topup", txn="t" * 129), "args.txn"),
    ("topup", _with("topup", txn=...), "args.txn is required"),
    ("topup", _with("topup", account="ACC 1"), "args.account"),
    ("topup", _with("topup", note="hi"), "args.note: unknown key"),
    ("relay", _with("relay", action="open"), "args.action"),
    ("relay", _with("relay", until="tomorrow"), "args.until"),
    ("relay", {"meter": "M", "action": "auto", "until": NOW}, "args.until"),
    ("relay", _with("relay", meter=...), "args.meter is required"),
    ("read", {}, "args.meter is required"),
    ("read", {"meter": ["M"]}, "args.meter"),
    ("tariff", _with("tariff", slabs=[]), "args.slabs"),
    ("tariff", _with("tariff", slabs=[{"upto_kwh": 100, "rate": 5}]), "open-ended"),
    ("tariff", _with("tariff", slabs=[{"rate": 5}, {"rate": 6}]), "only the last"),
    ("tariff", _with("tariff", slabs=[{"upto_kwh": 200, "rate": 5}, {"upto_kwh": 100,
                                                                    "rate": 6}, {"rate": 7}]),
     "increase"),
    ("tariff", _with("tariff", slabs=[{"rate": -1}]), "args.slabs[0].rate"),
    ("tariff", _with("tariff", slabs=[{"rate": 1, "kwh": 3}]), "args.slabs[0].kwh"),
    ("tariff", _with("tariff", duty_bp=10001), "args.duty_bp"),
    ("tariff", _with("tariff", billing_day=29), "args.billing_day"),
    ("tariff", _with("tariff", fixed_per_day=-1), "args.fixed_per_day"),
    ("tariff", _with("tariff", tod=[{"from": "25:00", "to": "10:00", "pct": 80}]),
     "args.tod[0].from"),
    ("tariff", _with("tariff", tod=[{"from": "09:00", "to": "10:00"}]), "args.tod[0].pct"),
    ("tariff", _with("tariff", tod=[{"from": "\u00b2\u00b3:00", "to": "10:00", "pct": 9}]),
     "args.tod[0].from"),  # unicode digits that int() refuses
    ("tariff", _with("tariff", name="a b"), "args.name"),
    ("policy", {}, "at least one"),
    ("policy", {"protected_hours": "18-08"}, "args.protected_hours"),
    ("policy", {"protected_weekdays": ["sunday"]}, "args.protected_weekdays[0]"),
    ("policy", {"holidays": ["26-01-2026"]}, "args.holidays[0]"),
    ("policy", {"holidays": ["2026-02-30"]}, "args.holidays[0]"),
    ("policy", {"alert_levels_pct": [30, 10]}, "must include 0"),
    ("policy", {"alert_levels_pct": [130, 0]}, "args.alert_levels_pct[0]"),
    ("policy", {"emergency_credit": -1}, "args.emergency_credit"),
    ("policy", {"disconnect_on_tamper": 1}, "args.disconnect_on_tamper"),
    ("policy", {"max_disconnects_per_hour": 10**6}, "args.max_disconnects_per_hour"),
    ("policy", {"grace": 1}, "args.grace: unknown key"),
    ("moratorium", _with("moratorium", reason=...), "args.reason is required"),
    ("moratorium", _with("moratorium", accounts=[]), "args.accounts"),
    ("moratorium", _with("moratorium", accounts="ACC-0001"), "args.accounts"),
    ("moratorium", _with("moratorium", until=None), "args.until"),
    ("meter_add", _with("meter_add", address=248), "args.address"),
    ("meter_add", _with("meter_add", relay="coil:1"), "args.relay"),
    ("meter_add", _with("meter_add", relay="modbus-coil:0:1"), "args.relay"),
    ("meter_add", _with("meter_add", relay="gpio:\u00b2"), "args.relay"),
    ("meter_add", _with("meter_add", model=...), "args.model is required"),
    ("meter_add", _with("meter_add", port="/dev/ttyUSB0"), "args.port: unknown key"),
    ("meter_remove", {"id": "SDM-0009"}, "args.meter is required"),
    ("resync", _with("resync", from_n=0), "args.from_n"),
    ("resync", _with("resync", account=...), "args.account is required"),
    ("ping", {"x": 1}, "args.x: unknown key"),
]


@pytest.mark.parametrize("op, args, expect", INVALID)
def test_invalid_args(op: str, args: dict[str, Any], expect: str) -> None:
    err = refusal(make_command(KEY, op, args, id=f"c-{op}", now_s=NOW))
    assert (err.code, err.command_id) == ("invalid_args", f"c-{op}")
    assert expect in str(err)


def test_a_float_amount_is_invalid_args() -> None:
    """Our dumps refuses floats, so this payload is written with cbor2 itself."""
    payload = {"id": "c-f", "op": "topup", "iat": NOW, "exp": NOW,
               "args": _with("topup", amount=500.0)}
    err = refusal(cose.sign_mac0(KEY, cbor2.dumps(payload)))
    assert (err.code, err.command_id) == ("invalid_args", "c-f")
    assert "args.amount must be an integer" in str(err)


def test_every_op_has_invalid_cases() -> None:
    assert {op for op, _, _ in INVALID} == set(OPS)


def test_relay_accepts_every_relay_spelling() -> None:
    for relay in ("meter", "none", "modbus-coil:1:0", "modbus-coil:247:65535", "gpio:17"):
        assert not check_args("meter_add", _with("meter_add", relay=relay)), relay


# -- parses, or raises CommandError: nothing else ---------------------------------------
@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes(data: bytes) -> None:
    try:
        parse_command(data, KEY, NOW)
    except CommandError as exc:
        assert exc.code == "malformed" or exc.code == "bad_mac"


values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.text(max_size=10)
    | st.binary(max_size=6) | st.sampled_from(["ACC-0001", "SDM-0001", "18:00-08:00",
                                              "connect", "2026-01-26", "sun", "gpio:\u00b2",
                                              "\u00b2\u00b3:00", "modbus-coil:1:1"]),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10) | st.sampled_from(["rate", "upto_kwh"]), children,
                      max_size=4),
    max_leaves=12,
)
arg_maps = st.dictionaries(
    st.sampled_from(sorted({k for a in VALID.values() for k in a}) + ["junk"]), values,
    max_size=6,
)
payloads = st.one_of(
    values,
    st.fixed_dictionaries(
        {"id": st.text(max_size=130) | values, "op": st.sampled_from(OPS) | values,
         "iat": st.integers(NOW - 10**6, NOW + 10**6) | values,
         "exp": st.integers(NOW - 10**6, NOW + 10**6) | values, "args": arg_maps | values},
        optional={"extra": values},
    ),
)


@settings(max_examples=400)
@given(payloads)
def test_random_payloads_with_a_valid_mac(payload: object) -> None:
    try:
        cmd = parse_command(signed_payload(payload), KEY, NOW)
    except CommandError as exc:
        assert exc.code in ("malformed", "expired", "unknown_op", "invalid_args")
        assert exc.code == "malformed" or exc.command_id == payload["id"]  # type: ignore[index]
    else:
        assert isinstance(cmd, Command) and cmd.op in OPS and cmd.exp >= NOW
        assert not check_args(cmd.op, cmd.args)


@settings(max_examples=200)
@given(st.sampled_from(OPS), arg_maps)
def test_random_args_for_each_op(op: str, args: dict[str, Any]) -> None:
    try:
        cmd = parse_command(make_command(KEY, op, args, id="c-r", now_s=NOW), KEY, NOW)
    except CommandError as exc:
        assert (exc.code, exc.command_id) == ("invalid_args", "c-r")
    else:
        assert cmd.args == args
