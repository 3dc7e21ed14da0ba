"""Live readings as one table (an addition to CONTRACT 4; docs/mqtt-api.md "The table
form"): the rows are readings, one per meter and poll, the columns their fields.

A gateway sends it only when its config asks (``[mqtt] live_readings = "table"``): a
head-end that knows only CONTRACT 4 gets the series form it expects. A message in the
table form is the envelope plus ``"table"`` in place of ``"readings"``:

    {"v": 1, "gw": ..., "boot": ..., "seq": ...,
     "table": {"bn": "SDM-",                       the meters' common prefix (SenML's
                                                   base name, RFC 8428 §4.1)
               "m": ["0001", "0002", ...],         each row's meter: bn + this
               "t": [1767225612, 1, 0, ...],       one column per field, delta-encoded
               "import_wh": [53461, 2004, ...],    down the rows (element 0 absolute,
               "v_dv": [2301, -3, 5, ...], ...}}   each next the difference from the
                                                   row before)

Rows are in meter order, then time (one poll cycle of a gateway is read within seconds,
so ``t`` steps are one or two bytes; voltages, frequencies and power factors of one
neighbourhood are close, so theirs are too). A quantity a row's meter does not measure
is ``null`` in that row (absent, never zero), and the column's next delta is from the
last value present; a column is there if any row has the quantity.

Pure, and as portable as ``wire.py`` (whose checks and helpers it uses): every builder
checks what it built, and a head-end runs the same check; both raise ``WireError``.
Bounds: ``MAX_ROWS`` rows a message (the forming side cuts there).
"""

from __future__ import annotations

from agent.uplink.wire import (
    _I64_MAX,
    _I64_MIN,
    QUANTITIES,
    _int,
    _list,
    _map,
    _need,
    _only,
    _str,
    check_envelope,
    envelope,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    from agent.uplink.wire import ReadingLike

MAX_ROWS = 4096  # a gateway's poll cycle; more go in the next message
_FIELDS = ("bn", "m", "t") + QUANTITIES


def _prefix(ids: list[str]) -> str:
    """The longest common prefix of ``ids`` that leaves every id at least one character."""
    first, last = min(ids), max(ids)
    n = 0
    while n < len(first) - 1 and n < len(last) - 1 and first[n] == last[n]:
        n += 1
    return first[:n]


def _deltas(column: list[int | None]) -> list[int | None]:
    out: list[int | None] = []
    last = 0
    for x in column:
        if x is None:
            out.append(None)
        else:
            out.append(x - last)
            last = x
    return out


def _undeltas(column: list[int | None]) -> list[int | None]:
    out: list[int | None] = []
    total = 0
    for x in column:
        if x is None:
            out.append(None)
        else:
            total += x
            out.append(total)
    return out


def table_body(readings: Iterable[ReadingLike]) -> dict[str, Any]:
    rows = sorted(readings, key=lambda r: (r.meter, r.t))
    _need(0 < len(rows) <= MAX_ROWS, "a table holds 1.." + str(MAX_ROWS) + " rows")
    ids = [_str(r.meter, "reading.meter") for r in rows]
    for r in rows:
        _need(len(r.meter) > 0, "reading.meter must not be empty")
    bn = _prefix(ids)
    body: dict[str, Any] = {"bn": bn, "m": [i[len(bn):] for i in ids],
                            "t": _deltas([_int(r.t, "reading.t", 0) for r in rows])}
    present = {q for r in rows for q in r.values}
    for q in present:
        _need(q in QUANTITIES, "reading: unknown quantity " + repr(q))
    for q in QUANTITIES:
        if q in present:
            body[q] = _deltas([None if q not in r.values else _int(r.values[q], "reading." + q)
                               for r in rows])
    return body


def table_message(gw: str, boot: int, seq: int, readings: Iterable[ReadingLike]
                  ) -> dict[str, Any]:
    msg = envelope(gw, boot, seq)
    msg["table"] = table_body(readings)
    check_table(msg)
    return msg


def check_table(msg: object) -> dict[str, Any]:
    """An ``up/readings`` message in the table form; WireError saying what is wrong."""
    m = check_envelope(msg)
    _only(m, ("v", "gw", "boot", "seq", "table"), "message")
    table = _map(m.get("table"), "table")
    _only(table, _FIELDS, "table")
    bn = table.get("bn", "")
    _need(type(bn) is str and len(bn) <= 256, "table.bn must be a text of 0..256 characters")
    ids = _list(table.get("m"), "table.m")
    _need(0 < len(ids) <= MAX_ROWS, "table.m must have 1.." + str(MAX_ROWS) + " rows")
    for suffix in ids:
        _need(type(suffix) is str and 0 < len(suffix) <= 256,
              "table.m entries are texts of 1..256 characters")
    for key in ("t",) + QUANTITIES:
        if key not in table:
            _need(key != "t", "table.t is required")
            continue
        column = _list(table[key], "table." + key)
        _need(len(column) == len(ids), "table." + key + " must have a value for every row")
        _need(key != "t" or None not in column, "table.t has no nulls")
        _need(any(x is not None for x in column), "table." + key + " has no value")
        total = 0
        for i, x in enumerate(column):
            if x is not None:
                total += _int(x, "table." + key + "[" + str(i) + "]")
                _need(_I64_MIN <= total <= _I64_MAX, "table." + key + " leaves int64")
                _need(key != "t" or total >= 0, "table.t must be Unix seconds")
    return m


def decode_table(msg: object) -> list[tuple[str, int, dict[str, int]]]:
    """The rows of a table-form message: (meter, t, values), in row order."""
    m = check_table(msg)
    table = m["table"]
    bn = table.get("bn", "")
    times = _undeltas(table["t"])
    columns = {q: _undeltas(table[q]) for q in QUANTITIES if q in table}
    out: list[tuple[str, int, dict[str, int]]] = []
    for i, suffix in enumerate(table["m"]):
        t = times[i]
        assert t is not None
        values = {q: v for q, col in columns.items() if (v := col[i]) is not None}
        out.append((bn + suffix, t, values))
    return out
