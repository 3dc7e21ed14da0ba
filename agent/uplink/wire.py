"""The uplink wire format: CONTRACT.md 3 (topics), 4 (envelope, readings), 5 (events),
6 (ledger journal) and 7 (replies), as plain Python maps. CBOR bytes are cbor.py's job.

Pure: this module imports nothing but ``agent.errors`` (itself import-free) so that it
runs under MicroPython. That is why it has no dataclasses, no ``typing`` at run time
(annotations are strings; ``TYPE_CHECKING`` is a plain False that mypy recognises) and
no ``re``. Readings are duck-typed: anything with ``meter`` (str), ``t`` (int, Unix s)
and ``values`` (map of quantity -> int), such as ``agent.drivers.reading.Reading``.

Readings (CONTRACT 4) are grouped per meter, in time order, into series whose arrays are
delta-encoded (element 0 absolute, then differences). All arrays of a series have the
length of ``t``, and a quantity the meter does not measure is absent. So when the set of
quantities changes between two readings of one meter (a value could not be read, a
firmware update), a NEW series for that meter starts at that reading: a message may hold
several consecutive series of one meter, each with one fixed set of quantities.

Every builder checks what it built with the matching ``check_*`` function, and a
head-end runs the same checks on what it receives; both raise ``WireError``.
"""

from __future__ import annotations

from agent.errors import AgentError

# the contract's words are written once in agent.vocab; wire.X stays their name here
from agent.vocab import ENTRY_KINDS as ENTRY_KINDS
from agent.vocab import QUANTITIES as QUANTITIES
from agent.vocab import RELAY_STATES as RELAY_STATES
from agent.vocab import REPLY_CODES as REPLY_CODES
from agent.vocab import TAMPER_KINDS as TAMPER_KINDS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any, Protocol

    from agent.drivers.reading import Reading

    class ReadingLike(Protocol):
        @property
        def meter(self) -> str: ...
        @property
        def t(self) -> int: ...
        @property
        def values(self) -> Mapping[str, int]: ...


VERSION = 1
KINDS = ("readings", "events", "ledger", "reply")  # the `up/{kind}` topics, CONTRACT 3
EVENT_TYPES = (
    "tamper", "relay", "low_balance", "credit_exhausted", "disconnect_deferred",
    "meter_offline", "meter_online", "meter_discovered", "bad_reading", "data_dropped",
    "token_rejected", "meter_security",
)  # CONTRACT 5 says "at least": other types pass the check, these get their detail checked
# meter_security detail.why (agent.drivers.dlms.errors.SECURITY_WHY; a test checks)
SECURITY_WHY = ("auth_failed", "bad_tag", "replayed_counter", "system_title_mismatch",
                "counter_exhausted", "key_missing")
# In CONTRACT 5 order: detail.reason is the first of detail.reasons in this order.
DEFERRAL_REASONS = (
    "protected_hours", "holiday", "payment_outage", "moratorium", "emergency_credit",
    "notice", "untrusted_clock", "rate_limit",
)
_I64_MIN = -(2**63)
_I64_MAX = 2**63 - 1
_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
_ENVELOPE_KEYS = ("v", "gw", "boot", "seq")


class WireError(AgentError):
    """A map that is not a valid CONTRACT 4-7 message (built or received)."""


# -- topics (CONTRACT 3) ----------------------------------------------------------------
def up_topic(prefix: str, gw: str, kind: str) -> str:
    if kind not in KINDS:
        raise WireError("unknown uplink kind " + repr(kind))
    return prefix + "/" + gw + "/up/" + kind


def state_topic(prefix: str, gw: str) -> str:
    return prefix + "/" + gw + "/state"


def cmd_topic(prefix: str, gw: str) -> str:
    return prefix + "/" + gw + "/cmd"


def headend_state_topic(prefix: str) -> str:
    return prefix + "/headend/state"


# -- small checks -----------------------------------------------------------------------
def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)  # a bool is an int in Python


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise WireError(what)


def _int(x: object, what: str, lo: int = _I64_MIN, hi: int = _I64_MAX) -> int:
    _need(_is_int(x), what + " must be an integer")
    assert isinstance(x, int)
    _need(lo <= x <= hi, what + " must be " + str(lo) + ".." + str(hi))
    return x


def _str(x: object, what: str, max_len: int = 256) -> str:
    _need(isinstance(x, str) and 0 < len(x) <= max_len,
          what + " must be a text of 1.." + str(max_len) + " characters")
    assert isinstance(x, str)
    return x


def _map(x: object, what: str) -> dict[Any, Any]:
    _need(isinstance(x, dict), what + " must be a map")
    assert isinstance(x, dict)
    return x


def _text_keys(x: object, what: str) -> dict[Any, Any]:
    """A map with text keys: an event's detail, a reply's result."""
    m = _map(x, what)
    for key in m:
        _need(isinstance(key, str), what + ": keys must be texts, not " + repr(key))
    return m


def _list(x: object, what: str) -> list[Any]:
    _need(isinstance(x, list), what + " must be an array")
    assert isinstance(x, list)
    return x


def _only(m: Mapping[str, object], allowed: tuple[str, ...], what: str) -> None:
    for key in m:
        _need(key in allowed, what + ": unknown key " + repr(key))


def is_ident(text: object) -> bool:
    """``[A-Za-z0-9_-]{1,64}``: gateway ids (CONTRACT 2), written without ``re``."""
    if not isinstance(text, str) or not 0 < len(text) <= 64:
        return False
    for ch in text:
        if ch not in _ID_CHARS:
            return False
    return True


def _field(obj: object, name: str) -> object:
    """A field of a map or an attribute of an object (journal entries, events)."""
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


# -- envelope (CONTRACT 4) --------------------------------------------------------------
def envelope(gw: str, boot: int, seq: int) -> dict[str, Any]:
    msg: dict[str, Any] = {"v": VERSION, "gw": gw, "boot": boot, "seq": seq}
    check_envelope(msg)
    return msg


def check_envelope(msg: object) -> dict[str, Any]:
    m = _map(msg, "message")
    for key in _ENVELOPE_KEYS:
        _need(key in m, "message: missing " + repr(key))
    _need(_is_int(m["v"]) and m["v"] == VERSION, "v must be " + str(VERSION))
    _need(is_ident(m["gw"]), "gw must match [A-Za-z0-9_-]{1,64}")
    _int(m["boot"], "boot", 0)
    _int(m["seq"], "seq", 1)
    return m


# -- readings (CONTRACT 4) --------------------------------------------------------------
def delta(values: list[int]) -> list[int]:
    """Element 0 absolute, each next one the difference from the one before."""
    if not values:
        return []
    return [values[0]] + [values[i] - values[i - 1] for i in range(1, len(values))]


def undelta(values: list[int]) -> list[int]:
    """The inverse of ``delta``: running sums."""
    out: list[int] = []
    total = 0
    for x in values:
        total += x
        out.append(total)
    return out


def readings_body(readings: Iterable[ReadingLike]) -> list[dict[str, Any]]:
    """Series (see the module docstring): by meter id, then time; one per run of readings
    of a meter with the same set of quantities.

    The hot path of a backlog drain (150,000 readings): values are checked a column at
    a time (type, then min/max against int64) rather than one by one."""
    by_meter: dict[str, list[ReadingLike]] = {}
    for r in readings:
        _need(isinstance(r.meter, str) and len(r.meter) > 0, "reading.meter must be a text")
        by_meter.setdefault(r.meter, []).append(r)
    body: list[dict[str, Any]] = []
    for meter in sorted(by_meter):
        rs = by_meter[meter]
        _column([r.t for r in rs], "reading.t")  # so that sorting cannot fail
        rs.sort(key=_time_key)  # stable: equal t keep their order
        start = 0
        for i in range(1, len(rs) + 1):
            if i == len(rs) or rs[i].values.keys() != rs[start].values.keys():
                body.append(_series(meter, rs[start:i]))
                start = i
    return body


def _time_key(r: ReadingLike) -> int:
    return r.t


def _keys(r: ReadingLike) -> list[str]:
    return [q for q in QUANTITIES if q in r.values]


def _column(values: list[Any], what: str) -> list[int]:
    _need(len(values) > 0, what + " must not be empty")
    if len(set(map(type, values))) != 1 or type(values[0]) is not int:
        for x in values:  # bools are ints to isinstance, not here
            _int(x, what)  # raises, saying why
    if min(values) < _I64_MIN or max(values) > _I64_MAX:
        _need(False, what + " must be " + str(_I64_MIN) + ".." + str(_I64_MAX))
    return values


def _series(meter: str, run: list[ReadingLike]) -> dict[str, Any]:
    """One run (all with the keys of ``run[0]``): its arrays, checked and delta-encoded."""
    first = run[0].values
    return series(meter, [r.t for r in run],
                  {q: [r.values[q] for r in run] for q in first})


def series(meter: str, times: list[int], columns: Mapping[str, list[int]]) -> dict[str, Any]:
    """One series from its columns (absolute values, in time order): checked (a column
    at a time) and delta-encoded. For builders that hold readings as columns already."""
    _need(isinstance(meter, str) and len(meter) > 0, "reading.meter must be a text")
    _column(times, "reading.t")
    _need(min(times) >= 0, "reading.t must be 0.." + str(_I64_MAX))
    for q in columns:
        _need(q in QUANTITIES, "reading: unknown quantity " + repr(q))
    s: dict[str, Any] = {"m": meter, "t": delta(times)}
    for q in QUANTITIES:
        if q in columns:
            column = columns[q]
            _need(len(column) == len(times), "reading." + q + " must have the length of t")
            # the deltas too must be int64 (check_readings): |values| < 2**62 always are
            s[q] = _column(delta(_column(column, "reading." + q)), "reading." + q + " step")
    _need(len(times) < 2 or min(s["t"][1:]) >= 0, "a series must be in time order")
    return s


def readings_message(gw: str, boot: int, seq: int, readings: Iterable[ReadingLike]
                     ) -> dict[str, Any]:
    msg = envelope(gw, boot, seq)
    msg["readings"] = readings_body(readings)
    check_readings(msg)
    return msg


def reading_fields(reading: ReadingLike) -> dict[str, Any]:
    """One reading, not delta-encoded: the `read` command's result (CONTRACT 7)."""
    out: dict[str, Any] = {"m": reading.meter, "t": reading.t}
    for q in _keys(reading):
        out[q] = reading.values[q]
    return out


def check_readings(msg: object) -> dict[str, Any]:
    """An ``up/readings`` message: the series form of CONTRACT 4, or the table form a
    gateway configured for it sends (``agent.uplink.table``)."""
    if isinstance(msg, dict) and "table" in msg and "readings" not in msg:
        from agent.uplink.table import check_table  # it builds on this module

        return check_table(msg)
    m = check_envelope(msg)
    if _readings_ok(m.get("readings")):
        return m
    return _check_readings_in_full(m)


def _readings_ok(body: object) -> bool:
    """True only if ``_check_readings_in_full`` would pass ``body``: exact built-in types,
    whole columns at a time, no error texts built. False means "not sure": the full
    check then runs and says why (so the two always agree; a test checks)."""
    if type(body) is not list:
        return False
    for s in body:
        if type(s) is not dict:
            return False
        m = s.get("m")
        t = s.get("t")
        if type(m) is not str or not 0 < len(m) <= 256 or not _ints_ok(t, 0, _I64_MAX):
            return False
        assert isinstance(t, list)
        n = len(t)
        present = 2
        for q in QUANTITIES:
            if q in s:
                arr = s[q]
                if not _ints_ok(arr, _I64_MIN, _I64_MAX) or len(arr) != n:
                    return False
                present += 1
        if len(s) != present:  # a key besides m, t and the quantities
            return False
    return True


def _ints_ok(arr: object, lo: int, hi: int) -> bool:
    """A non-empty list of ints (not bools) in lo..hi."""
    if type(arr) is not list or not arr:
        return False
    assert isinstance(arr, list)
    if len(set(map(type, arr))) != 1 or type(arr[0]) is not int:
        return False
    low: int = min(arr)
    high: int = max(arr)
    return lo <= low and high <= hi


def _check_readings_in_full(m: dict[str, Any]) -> dict[str, Any]:
    for i, raw in enumerate(_list(m.get("readings"), "readings")):
        what = "readings[" + str(i) + "]"
        s = _map(raw, what)
        _only(s, ("m", "t") + QUANTITIES, what)
        _str(s.get("m"), what + ".m")
        t = _list(s.get("t"), what + ".t")
        _need(len(t) > 0, what + ".t must not be empty")
        for j, x in enumerate(t):
            # t[0] is a Unix time, later steps are >= 0: a series is in time order.
            _int(x, what + ".t[" + str(j) + "]", 0)
        for q in QUANTITIES:
            if q in s:
                arr = _list(s[q], what + "." + q)
                _need(len(arr) == len(t), what + "." + q + " must have the length of t")
                for j, x in enumerate(arr):
                    _int(x, what + "." + q + "[" + str(j) + "]")
    return m


def decode_readings(msg: object) -> list[Reading]:
    """The readings of an ``up/readings`` message, in message order (for head-ends).

    Imports Reading (a dataclass) only when called: the agent itself never decodes.
    """
    from agent.drivers.reading import Reading

    m = check_readings(msg)
    if "table" in m:
        from agent.uplink.table import decode_table

        return [Reading(meter, t, values) for meter, t, values in decode_table(m)]
    out: list[Reading] = []
    for s in m["readings"]:
        times = undelta(s["t"])
        columns = {q: undelta(s[q]) for q in QUANTITIES if q in s}
        for i, t in enumerate(times):
            out.append(Reading(s["m"], t, {q: col[i] for q, col in columns.items()}))
    return out


# -- events (CONTRACT 5) ----------------------------------------------------------------
def event(t: int, type: str, *, m: str | None = None, acct: str | None = None,
          detail: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One event map; ``m``/``acct`` are left out when None (absent, not null)."""
    e: dict[str, Any] = {"t": t, "type": type, "detail": dict(detail or {})}
    if m is not None:
        e["m"] = m
    if acct is not None:
        e["acct"] = acct
    _check_event(e, "event")
    return e


def deferred_detail(reasons: Iterable[str], **extra: Any) -> dict[str, Any]:
    """``disconnect_deferred`` detail: every holding rule in CONTRACT order, and the first."""
    given = set(reasons)
    for r in given:
        _need(r in DEFERRAL_REASONS, "unknown deferral reason " + repr(r))
    _need(len(given) > 0, "a deferral needs at least one reason")
    ordered = [r for r in DEFERRAL_REASONS if r in given]
    detail = dict(extra)
    detail["reasons"] = ordered
    detail["reason"] = ordered[0]
    return detail


def events_message(gw: str, boot: int, seq: int, events: Iterable[object]) -> dict[str, Any]:
    """``events``: maps (or objects) with t, type, m?, acct?, detail."""
    msg = envelope(gw, boot, seq)
    out = []
    for e in events:
        item: dict[str, Any] = {"t": _field(e, "t"), "type": _field(e, "type"),
                                "detail": _field(e, "detail")}
        if item["detail"] is None:
            item["detail"] = {}
        for key in ("m", "acct"):
            value = _field(e, key)
            if value is not None:
                item[key] = value
        out.append(item)
    msg["events"] = out
    check_events(msg)
    return msg


def check_events(msg: object) -> dict[str, Any]:
    m = check_envelope(msg)
    for i, raw in enumerate(_list(m.get("events"), "events")):
        _check_event(raw, "events[" + str(i) + "]")
    return m


def _check_event(raw: object, what: str) -> None:
    e = _map(raw, what)
    _only(e, ("t", "type", "m", "acct", "detail"), what)
    _int(e.get("t"), what + ".t", 0)
    kind = _str(e.get("type"), what + ".type", 64)
    for key in ("m", "acct"):
        if key in e:
            _str(e[key], what + "." + key)
    d = _text_keys(e.get("detail"), what + ".detail")
    if kind == "tamper":
        _need(d.get("kind") in TAMPER_KINDS, what + ".detail.kind must be one of "
              + " | ".join(TAMPER_KINDS))
    elif kind == "relay":
        _need(d.get("state") in RELAY_STATES, what + ".detail.state must be one of "
              + " | ".join(RELAY_STATES))
    elif kind == "meter_security":
        _need(d.get("why") in SECURITY_WHY, what + ".detail.why must be one of "
              + " | ".join(SECURITY_WHY))
    elif kind == "disconnect_deferred":
        reasons = _list(d.get("reasons"), what + ".detail.reasons")
        ordered = [r for r in DEFERRAL_REASONS if r in reasons]
        _need(len(reasons) > 0 and reasons == ordered,
              what + ".detail.reasons must be distinct known reasons in CONTRACT 5 order")
        _need(d.get("reason") == reasons[0], what + ".detail.reason must be reasons[0]")


# -- ledger journal (CONTRACT 6) --------------------------------------------------------
def ledger_message(gw: str, boot: int, seq: int, entries: Iterable[object]) -> dict[str, Any]:
    """``entries``: maps (or objects such as the journal's Entry) with acct, n, t, kind,
    amt, bal, ref."""
    msg = envelope(gw, boot, seq)
    msg["entries"] = [
        {k: _field(e, k) for k in ("acct", "n", "t", "kind", "amt", "bal", "ref")}
        for e in entries
    ]
    check_ledger(msg)
    return msg


def check_ledger(msg: object) -> dict[str, Any]:
    m = check_envelope(msg)
    if _ledger_ok(m.get("entries")):
        return m
    return _check_ledger_in_full(m)


_LEDGER_KEYS = 7  # acct, n, t, kind, amt, bal, ref: all required, nothing else


def _ledger_ok(entries: object) -> bool:
    """True only if ``_check_ledger_in_full`` would pass ``entries`` (exact built-in types,
    no error texts built); False means "not sure": the full check then says why."""
    if type(entries) is not list:
        return False
    last: dict[str, tuple[int, int]] = {}
    for e in entries:
        if type(e) is not dict or len(e) != _LEDGER_KEYS:
            return False
        try:
            acct, n, t, kind, amt, bal, ref = _ledger_fields(e)
        except KeyError:
            return False
        # Each of the seven keys found and 7 keys in all: no other key (what _only checks).
        if not (type(acct) is str and 0 < len(acct) <= 256
                and type(n) is int and 1 <= n <= _I64_MAX
                and type(t) is int and 0 <= t <= _I64_MAX
                and type(amt) is int and _I64_MIN <= amt <= _I64_MAX
                and type(bal) is int and _I64_MIN <= bal <= _I64_MAX
                and type(kind) is str and kind in ENTRY_KINDS and type(ref) is str):
            return False
        prev = last.get(acct)
        if prev is not None and n == prev[0] + 1 and prev[1] + amt != bal:
            return False
        last[acct] = (n, bal)
    return True


def _ledger_fields(e: dict[str, Any]) -> tuple[Any, ...]:
    return (e["acct"], e["n"], e["t"], e["kind"], e["amt"], e["bal"], e["ref"])


def _check_ledger_in_full(m: dict[str, Any]) -> dict[str, Any]:
    last: dict[str, tuple[int, int]] = {}  # acct -> (n, bal) of its previous entry here
    for i, raw in enumerate(_list(m.get("entries"), "entries")):
        what = "entries[" + str(i) + "]"
        e = _map(raw, what)
        _only(e, ("acct", "n", "t", "kind", "amt", "bal", "ref"), what)
        acct = _str(e.get("acct"), what + ".acct")
        n = _int(e.get("n"), what + ".n", 1)
        _int(e.get("t"), what + ".t", 0)
        _need(e.get("kind") in ENTRY_KINDS, what + ".kind must be one of "
              + " | ".join(ENTRY_KINDS))
        amt = _int(e.get("amt"), what + ".amt")
        bal = _int(e.get("bal"), what + ".bal")
        _need(isinstance(e.get("ref"), str), what + ".ref must be a text")
        # Consecutive entries must chain (CONTRACT 6: the sum of entries is the balance).
        # A batch may mix a resync with new entries, so only n == previous n + 1 is checked.
        prev = last.get(acct)
        if prev is not None and n == prev[0] + 1:
            _need(prev[1] + amt == bal, what + ": bal is not the previous bal + amt")
        last[acct] = (n, bal)
    return m


# -- replies (CONTRACT 7) ---------------------------------------------------------------
def reply_message(gw: str, boot: int, seq: int, command_id: str | None, code: str,
                  msg: str = "", result: Mapping[str, Any] | None = None, *,
                  dup: bool = False) -> dict[str, Any]:
    """``ok`` is derived from ``code`` so the two can never disagree; ``dup`` is only
    present (and true) on the stored reply sent again for a repeated command id."""
    out = envelope(gw, boot, seq)
    out["id"] = command_id
    out["ok"] = code == "ok"
    out["code"] = code
    out["msg"] = msg
    out["result"] = dict(result or {})
    if dup:
        out["dup"] = True
    check_reply(out)
    return out


def check_reply(msg: object) -> dict[str, Any]:
    m = check_envelope(msg)
    for key in ("id", "ok", "code", "msg", "result"):
        _need(key in m, "reply: missing " + repr(key))
    _need(m["id"] is None or (isinstance(m["id"], str) and 0 < len(m["id"]) <= 128),
          "reply.id must be null or a text of 1..128 characters")
    _need(m["code"] in REPLY_CODES, "reply.code must be one of " + " | ".join(REPLY_CODES))
    _need(m["ok"] is (m["code"] == "ok"), "reply.ok must be true exactly when code is ok")
    _need(isinstance(m["msg"], str), "reply.msg must be a text")
    _text_keys(m["result"], "reply.result")
    _need(m.get("dup", True) is True, "reply.dup, when present, must be true")
    return m


_CHECKS = {"readings": check_readings, "events": check_events, "ledger": check_ledger,
           "reply": check_reply}


def check_message(kind: str, msg: object) -> dict[str, Any]:
    """Check a received ``up/{kind}`` map; returns it typed as a map, or raises WireError."""
    check = _CHECKS.get(kind)
    if check is None:
        raise WireError("unknown uplink kind " + repr(kind))
    return check(msg)
