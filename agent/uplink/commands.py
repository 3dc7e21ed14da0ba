"""Commands from the head-end: CONTRACT 7 (payload, refusal codes, the table of ops).

``parse_command`` refuses in this order, and always says which ``id`` it refused when
the payload's ``id`` could be read (even unauthenticated: it helps the head-end match
the reply; the agent changes no state for a refused command either way):

    1. not a tagged COSE_Mac0 [bstr, map, bstr, bstr]              -> malformed (id None)
    2. protected header not {1: 5}, or the MAC does not verify     -> bad_mac
    3. payload not {"id": str 1..128, "op": str, "iat": int,
       "exp": int, "args": map} (extra keys too)                   -> malformed
    4. exp < now                                                   -> expired
    5. op not in OPS                                               -> unknown_op
    6. args wrong for the op (the table below ``parse_command``)   -> invalid_args

Whether an account or meter exists is the runtime's question (unknown_account,
unknown_meter), as is what a command does.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from agent.errors import CommandError
from agent.ledger.policy import WEEKDAY_NAMES, parse_protected_hours
from agent.relay_spec import parse_relay
from agent.uplink import cbor, cose
from agent.uplink.wire import is_ident

OPS = ("topup", "relay", "read", "tariff", "policy", "moratorium", "meter_add",
       "meter_remove", "resync", "ping")
MAX_ID_CHARS = 128
MAX_TXN_CHARS = 128
# A prepaid domestic top-up above Rs 1,00,000 is a head-end bug, not a payment: refused.
MAX_TOPUP_PAISE = 10_000_000
MAX_TEXT_CHARS = 256  # free text such as a moratorium's reason
DEFAULT_TTL_S = 600  # make_command: a command not delivered within 10 minutes expires
_PAYLOAD_KEYS = frozenset({"id", "op", "iat", "exp", "args"})


@dataclass(frozen=True, slots=True)
class Command:
    id: str
    op: str
    iat: int  # Unix s: when the head-end issued it
    exp: int  # Unix s: refused as expired after this second
    args: dict[str, Any]


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _readable_id(payload: object) -> str | None:
    if isinstance(payload, dict):
        cid = payload.get("id")
        if isinstance(cid, str) and 0 < len(cid) <= MAX_ID_CHARS:
            return cid
    return None


def _peek_id(payload_bytes: bytes) -> str | None:
    """The id of a payload whose MAC failed, if it reads as one; never raises."""
    try:
        return _readable_id(cbor.loads(payload_bytes))
    except cbor.CborError:
        return None


def parse_command(data: bytes, key: bytes, now_s: int) -> Command:
    """A verified, well-formed, unexpired command; CommandError(code, msg, id) otherwise."""
    mac0 = cose.decode_mac0(data)  # malformed, id None
    try:
        cose.check_mac0(key, mac0)
    except CommandError as exc:
        raise CommandError(exc.code, str(exc), _peek_id(mac0.payload)) from exc
    try:
        payload = cbor.loads(mac0.payload)
    except cbor.CborError as exc:
        raise CommandError("malformed", f"payload: {exc}") from exc
    cid = _readable_id(payload)
    if not isinstance(payload, dict):
        raise CommandError("malformed", "payload must be a map")
    if cid is None:
        raise CommandError("malformed", f"id must be a text of 1..{MAX_ID_CHARS} characters")
    problems = []
    extra = sorted(str(k) for k in payload if k not in _PAYLOAD_KEYS)
    if extra:
        problems.append("unknown payload key(s) " + ", ".join(extra))
    op, iat, exp, args = (payload.get(k) for k in ("op", "iat", "exp", "args"))
    if not isinstance(op, str):
        problems.append("op must be a text")
    if not _is_int(iat):
        problems.append("iat must be an integer (Unix seconds)")
    if not _is_int(exp):
        problems.append("exp must be an integer (Unix seconds)")
    if not isinstance(args, dict):
        problems.append("args must be a map")
    if problems:
        raise CommandError("malformed", "; ".join(problems), cid)
    assert isinstance(op, str) and isinstance(iat, int) and isinstance(exp, int)
    assert isinstance(args, dict)
    if exp < now_s:
        raise CommandError("expired", f"expired {now_s - exp} s ago (exp {exp}, now {now_s})",
                           cid)
    if op not in OPS:
        raise CommandError("unknown_op", f"unknown op {op[:64]!r}; ops: {', '.join(OPS)}", cid)
    problems = check_args(op, args)
    if problems:
        raise CommandError("invalid_args", "; ".join(problems), cid)
    return Command(cid, op, iat, exp, args)


def make_command(key: bytes, op: str, args: Mapping[str, Any], *, id: str | None = None,
                 iat: int | None = None, exp: int | None = None, now_s: int) -> bytes:
    """A signed command (for head-ends and tests); not validated, so tests can build
    refusals. Defaults: a random id, iat = now, exp = now + DEFAULT_TTL_S."""
    payload = {
        "id": id if id is not None else secrets.token_hex(8),
        "op": op,
        "iat": now_s if iat is None else iat,
        "exp": now_s + DEFAULT_TTL_S if exp is None else exp,
        "args": dict(args),
    }
    return cose.sign_mac0(key, cbor.dumps(payload))


# -- args per op (CONTRACT 7's table; tariff, policy and meter keys as CONTRACT 2, with
# the ranges agent/config.py applies to a config file) --------------------------------
Check = Callable[[Any, str], list[str]]  # (value, key path) -> problems


def _int_in(lo: int, hi: int) -> Check:
    def check(v: Any, path: str) -> list[str]:
        if not _is_int(v):
            return [f"{path} must be an integer"]
        return [] if lo <= v <= hi else [f"{path} must be {lo}..{hi}"]
    return check


def _text(max_len: int) -> Check:
    def check(v: Any, path: str) -> list[str]:
        ok = isinstance(v, str) and 0 < len(v) <= max_len
        return [] if ok else [f"{path} must be a text of 1..{max_len} characters"]
    return check


def _ident(v: Any, path: str) -> list[str]:
    return [] if is_ident(v) else [f"{path} must match [A-Za-z0-9_-]{{1,64}}"]


def _one_of(*options: str) -> Check:
    def check(v: Any, path: str) -> list[str]:
        return [] if v in options else [f"{path} must be one of {' | '.join(options)}"]
    return check


def _bool(v: Any, path: str) -> list[str]:
    return [] if isinstance(v, bool) else [f"{path} must be true or false"]


def _list_of(item: Check, *, non_empty: bool = True) -> Check:
    def check(v: Any, path: str) -> list[str]:
        if not isinstance(v, list) or (non_empty and not v):
            return [f"{path} must be a{' non-empty' if non_empty else 'n'} array"]
        return [p for i, x in enumerate(v) for p in item(x, f"{path}[{i}]")]
    return check


def _table(spec: Mapping[str, tuple[bool, Check]], v: Any, path: str) -> list[str]:
    """A map with the keys of ``spec`` (key: (required, check)); unknown keys are errors,
    as in a config file."""
    if not isinstance(v, dict):
        return [f"{path} must be a map"]
    where = f"{path}." if path else ""
    problems = [f"{where}{k}: unknown key" for k in sorted(map(str, v)) if k not in spec]
    for key, (required, check) in spec.items():
        if key in v:
            problems += check(v[key], where + key)
        elif required:
            problems.append(f"{where}{key} is required")
    return problems


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()  # "²".isdigit() is True, int("²") fails


def _hhmm(text: Any) -> bool:
    return (isinstance(text, str) and len(text) == 5 and text[2] == ":"
            and _digits(text[:2]) and _digits(text[3:])
            and int(text[:2]) <= 23 and int(text[3:]) <= 59)


def _time(v: Any, path: str) -> list[str]:
    return [] if _hhmm(v) else [f"{path} must be HH:MM"]


def _hours(v: Any, path: str) -> list[str]:
    """"" (none) or comma-separated HH:MM-HH:MM ranges: the ledger's own parser decides."""
    if not isinstance(v, str):
        return [f"{path} must be a text"]
    try:
        parse_protected_hours(v)
    except ValueError as exc:
        return [f"{path}: {exc}"]
    return []


def _iso_date(v: Any, path: str) -> list[str]:
    try:
        ok = isinstance(v, str) and len(v) == 10 and v[4] == v[7] == "-" \
            and date.fromisoformat(v).isoformat() == v
    except ValueError:
        ok = False
    return [] if ok else [f"{path} must be a date YYYY-MM-DD"]


def _weekday(v: Any, path: str) -> list[str]:
    ok = isinstance(v, str) and v.lower() in WEEKDAY_NAMES  # any case, as in a config file
    return [] if ok else [f"{path} must be one of {', '.join(WEEKDAY_NAMES)}"]


def _levels(v: Any, path: str) -> list[str]:
    problems = _list_of(_int_in(0, 100))(v, path)
    if not problems and 0 not in v:
        problems.append(f"{path} must include 0 (the level at which credit is exhausted)")
    return problems


def _relay(v: Any, path: str) -> list[str]:
    """The config's parser decides; the command takes CONTRACT 2's spellings only (a
    coil module on the meter's own bus: no ``<bus>:``, docs/mqtt-api.md meter-add-args)."""
    try:
        if isinstance(v, str) and parse_relay(v).bus is None:
            return []
    except ValueError:
        pass
    return [f"{path} must be meter | modbus-coil:<unit 1..247>:<coil 0..65535> | "
            "gpio:<line 0..1023> | none"]


_SLAB = {"upto_kwh": (False, _int_in(1, 2**31)), "rate": (True, _int_in(0, 2**31))}
_TOD = {"from": (True, _time), "to": (True, _time), "pct": (True, _int_in(0, 1000))}


def _slabs(v: Any, path: str) -> list[str]:
    problems = _list_of(lambda s, p: _table(_SLAB, s, p))(v, path)
    if problems:
        return problems
    uptos = [s.get("upto_kwh") for s in v]
    if uptos[-1] is not None:
        problems.append(f"{path}: the last slab must have no upto_kwh (it is open-ended)")
    if None in uptos[:-1]:
        problems.append(f"{path}: only the last slab may omit upto_kwh")
    bounded = [u for u in uptos if u is not None]
    if any(b <= a for a, b in zip(bounded, bounded[1:], strict=False)):
        problems.append(f"{path}: upto_kwh must increase from slab to slab")
    return problems


_I64 = 2**63 - 1
_SPECS: dict[str, dict[str, tuple[bool, Check]]] = {
    "topup": {"account": (True, _ident), "amount": (True, _int_in(1, MAX_TOPUP_PAISE)),
              "txn": (True, _text(MAX_TXN_CHARS))},
    "relay": {"meter": (True, _ident),
              "action": (True, _one_of("connect", "disconnect", "auto")),
              "until": (False, _int_in(0, _I64))},
    "read": {"meter": (True, _ident)},
    "tariff": {"name": (True, _ident), "fixed_per_day": (False, _int_in(0, _I64)),
               "slabs": (True, _slabs), "duty_bp": (False, _int_in(0, 10000)),
               "billing_day": (False, _int_in(1, 28)),
               "tod": (False, _list_of(lambda w, p: _table(_TOD, w, p), non_empty=False))},
    "policy": {"protected_hours": (False, _hours),
               "protected_weekdays": (False, _list_of(_weekday, non_empty=False)),
               "holidays": (False, _list_of(_iso_date, non_empty=False)),
               "emergency_credit": (False, _int_in(0, 10_000_000)),
               "alert_levels_pct": (False, _levels),
               "payment_outage_h": (False, _int_in(0, 24 * 365)),
               "min_notice_h": (False, _int_in(0, 24 * 60)),
               "max_disconnects_per_hour": (False, _int_in(0, 100_000)),
               "disconnect_on_tamper": (False, _bool)},
    "moratorium": {"until": (True, _int_in(0, _I64)),
                   "accounts": (False, _list_of(_ident)),
                   "reason": (True, _text(MAX_TEXT_CHARS))},
    "meter_add": {"id": (True, _ident), "bus": (True, _ident), "address": (True, _int_in(1, 247)),
                  "model": (True, _text(64)), "account": (True, _ident),
                  "relay": (False, _relay)},
    "meter_remove": {"meter": (True, _ident)},
    "resync": {"account": (True, _ident), "from_n": (True, _int_in(1, _I64))},
    "ping": {},
}
assert set(_SPECS) == set(OPS)


def check_args(op: str, args: Mapping[str, Any]) -> list[str]:
    """Every problem with ``args`` for ``op`` (empty: valid), each naming its key path."""
    problems = _table(_SPECS[op], dict(args), "args")
    if op == "policy" and not args:
        problems.append("args: a policy command needs at least one [policy] key")
    if op == "relay" and args.get("action") == "auto" and "until" in args:
        problems.append("args.until goes with connect or disconnect, not auto")
    return problems
