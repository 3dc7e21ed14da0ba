"""The fast paths of ``wire.check_readings`` / ``wire.check_ledger`` decide exactly as the
full checks do: a message the fast path accepts is accepted by the full check, and
whatever the full check says (return, or WireError and its text) the public check says."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.uplink import wire

GW = "gw-demo-01"
I64 = 2**63

# values near every bound the checks test, and of every type a decoder can give
_ODD: list[Any] = [None, True, False, 0, 1, -1, 1.0, "", "x", b"x", [], {}, [1], I64 - 1, I64,
                   -I64, -I64 - 1, "a" * 256, "a" * 257]
odd = st.sampled_from(_ODD)
ints = st.one_of(st.integers(-5, 5), st.integers(-(10**12), 10**12),
                 st.sampled_from([I64 - 1, I64, -I64, -I64 - 1]))


def _outcome(check: Any, msg: object) -> tuple[str, object]:
    try:
        check(msg)
    except wire.WireError as exc:
        return "refused", str(exc)
    return "ok", None


def _full_readings(msg: object) -> dict[str, Any]:
    return wire._check_readings_in_full(wire.check_envelope(msg))


def _full_ledger(msg: object) -> dict[str, Any]:
    return wire._check_ledger_in_full(wire.check_envelope(msg))


@st.composite
def series(draw: st.DrawFn) -> object:
    n = draw(st.integers(0, 3))
    s: dict[Any, Any] = {"m": draw(st.sampled_from(["SDM-1", "M", "", "a" * 257])),
                         "t": draw(st.lists(st.integers(0, 10**10), min_size=n, max_size=n))}
    for q in draw(st.lists(st.sampled_from(wire.QUANTITIES), unique=True, max_size=3)):
        s[q] = draw(st.lists(ints, min_size=n, max_size=n))
    for _ in range(draw(st.sampled_from([0, 0, 0, 0, 0, 1, 2]))):  # spoil it
        key = draw(st.sampled_from(["m", "t", "kwh", 1, *wire.QUANTITIES]))
        how = draw(st.integers(0, 3))
        if how == 0:
            s.pop(key, None)
        elif how == 1:
            s[key] = draw(odd)
        elif how == 2 and isinstance(s.get(key), list) and s[key]:
            s[key] = [*s[key][:-1], draw(odd)]
        elif isinstance(s.get(key), list):
            s[key] = [*s[key], draw(ints)]
    return draw(st.one_of(st.just(s), odd)) if draw(st.integers(0, 9)) == 0 else s


@st.composite
def entries(draw: st.DrawFn) -> object:
    out: list[Any] = []
    bal: dict[str, int] = {}
    for _ in range(draw(st.integers(0, 4))):
        acct = draw(st.sampled_from(["A1", "A2"]))
        amt = draw(ints)
        kinds = [*wire.ENTRY_KINDS, *wire.ENTRY_KINDS, "gift"]
        e: dict[Any, Any] = {"acct": acct, "n": draw(st.integers(1, 3)),
                             "t": draw(st.integers(0, 10**10)),
                             "kind": draw(st.sampled_from(kinds)),
                             "amt": amt, "bal": bal.get(acct, 0) + amt,
                             "ref": draw(st.sampled_from(["", "r", "", "r", None]))}
        if not draw(st.integers(0, 9)):
            e["bal"] += 1  # breaks the chain when n follows
        bal[acct] = e["bal"]
        for _ in range(draw(st.sampled_from([0, 0, 0, 0, 1]))):
            key = draw(st.sampled_from(["acct", "n", "t", "kind", "amt", "bal", "ref", "x", 1]))
            if draw(st.booleans()):
                e.pop(key, None)
            else:
                e[key] = draw(odd)
        out.append(e if draw(st.integers(0, 19)) else draw(odd))
    return out if draw(st.integers(0, 19)) else draw(odd)


@settings(max_examples=700)
@given(st.lists(series(), max_size=3), st.integers(0, 19))
def test_check_readings_decides_as_the_full_check(body: list[object], spoil: int) -> None:
    msg: dict[str, Any] = {**wire.envelope(GW, 1, 1), "readings": body}
    if spoil == 0:
        msg["readings"] = tuple(body)
    if wire._readings_ok(msg["readings"]):
        _full_readings(msg)  # the fast path is never wrong to accept
    assert _outcome(wire.check_readings, msg) == _outcome(_full_readings, msg)


@settings(max_examples=700)
@given(entries())
def test_check_ledger_decides_as_the_full_check(body: object) -> None:
    msg: dict[str, Any] = {**wire.envelope(GW, 1, 1), "entries": body}
    if wire._ledger_ok(body):
        _full_ledger(msg)  # the fast path is never wrong to accept
    assert _outcome(wire.check_ledger, msg) == _outcome(_full_ledger, msg)


def test_fast_paths_take_the_messages_the_agent_builds() -> None:
    from agent.drivers.reading import Reading

    readings = [Reading("M1", 100 + i, {"import_wh": 5 + i, "p_w": 300}) for i in range(3)]
    msg = wire.readings_message(GW, 1, 2, readings)
    assert wire._readings_ok(msg["readings"])
    ledger = wire.ledger_message(GW, 1, 3, [
        {"acct": "A", "n": 1, "t": 5, "kind": "topup", "amt": 100, "bal": 100, "ref": "x"},
        {"acct": "A", "n": 2, "t": 6, "kind": "energy", "amt": -30, "bal": 70, "ref": ""}])
    assert wire._ledger_ok(ledger["entries"])
