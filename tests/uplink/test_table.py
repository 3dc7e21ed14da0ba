"""The table form of live readings (agent/uplink/table.py, docs/mqtt-api.md): round
trips through CBOR, absent quantities, the checks a head-end runs, fuzzing, and its size
against the series form for one poll cycle of a neighbourhood."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.drivers.reading import QUANTITIES, Reading
from agent.uplink import cbor, wire
from agent.uplink.table import MAX_ROWS, check_table, decode_table, table_message
from agent.uplink.wire import WireError

T0 = 1_767_225_600


def cycle(meters: int, seed: int = 1) -> list[Reading]:
    """One poll cycle: every meter read once, a few seconds apart, realistic values."""
    rng = random.Random(seed)
    out = []
    for m in range(meters):
        p = rng.randrange(150, 3300)
        v = 2300 + rng.randrange(-40, 40)
        out.append(Reading(f"SDM-{m + 1:04d}", T0 + m * 23 // 1000, {
            "import_wh": rng.randrange(50_000, 5_000_000), "export_wh": 0, "p_w": p,
            "v_dv": v, "i_ma": p * 10_000 // v, "f_chz": 5000 + rng.randrange(-3, 3),
            "pf_milli": rng.randrange(900, 990)}))
    return out


def test_a_cycle_round_trips_through_cbor_and_the_head_end_reads_it_back() -> None:
    readings = cycle(250)
    msg = table_message("gw-1", 3, 17, reversed(readings))  # any order in
    back = wire.decode_readings(cbor.loads(cbor.dumps(msg)))
    assert [(r.meter, r.t, r.values) for r in back] == [(r.meter, r.t, r.values)
                                                        for r in readings]
    assert msg["table"]["bn"] == "SDM-0" and msg["table"]["m"][:2] == ["001", "002"]
    assert wire.check_message("readings", msg) == msg


def test_a_quantity_a_meter_does_not_measure_is_absent_in_its_row() -> None:
    readings = [Reading("A-1", T0, {"import_wh": 10, "p_w": 5}),
                Reading("A-2", T0 + 1, {"import_wh": 20}),
                Reading("B-1", T0 + 1, {"import_wh": 30, "p_w": 7})]
    msg = table_message("gw-1", 1, 1, readings)
    assert msg["table"]["p_w"] == [5, None, 2]  # the delta skips the absent row
    assert msg["table"]["bn"] == ""
    assert decode_table(msg) == [("A-1", T0, {"import_wh": 10, "p_w": 5}),
                                 ("A-2", T0 + 1, {"import_wh": 20}),
                                 ("B-1", T0 + 1, {"import_wh": 30, "p_w": 7})]


@pytest.mark.parametrize(("table", "fragment"), [
    ({"bn": "X", "m": ["1", "2"], "t": [T0]}, "table.t must have a value for every row"),
    ({"m": ["1"], "t": [None]}, "table.t has no nulls"),
    ({"m": ["1"]}, "table.t is required"),
    ({"m": [""], "t": [T0]}, "table.m entries are texts"),
    ({"m": ["1"], "t": [T0], "p_w": [None]}, "table.p_w has no value"),
    ({"m": ["1"], "t": [T0], "watts": [1]}, "watts"),
    ({"m": ["1"], "t": [-5]}, "table.t must be Unix seconds"),
    ({"m": ["1"], "t": [T0], "p_w": [True]}, r"table\.p_w\[0\]"),
    ({"m": [], "t": []}, "rows"),
])
def test_a_malformed_table_is_refused_naming_what(table: dict[str, object],
                                                   fragment: str) -> None:
    msg = {**wire.envelope("gw-1", 1, 1), "table": table}
    with pytest.raises(WireError, match=fragment):
        check_table(msg)


def test_a_table_holds_at_most_max_rows() -> None:
    with pytest.raises(WireError, match="rows"):
        table_message("gw-1", 1, 1, [Reading(f"M{i}", T0, {"import_wh": i})
                                     for i in range(MAX_ROWS + 1)])


readings_st = st.lists(st.builds(
    Reading, st.sampled_from(["M1", "M2", "MX-10", "MX-2"]), st.integers(0, 2**40),
    st.dictionaries(st.sampled_from(QUANTITIES), st.integers(-(2**40), 2**40), max_size=7)),
    min_size=1, max_size=30)


@given(readings_st)
def test_any_readings_round_trip(readings: list[Reading]) -> None:
    msg = table_message("gw-1", 1, 1, readings)

    def key(row: tuple[str, int, dict[str, int]]) -> tuple[str, int, list[tuple[str, int]]]:
        return row[0], row[1], sorted(row[2].items())

    rows = sorted(((r.meter, r.t, r.values) for r in readings), key=key)
    assert sorted(decode_table(cbor.loads(cbor.dumps(msg))), key=key) == rows


@given(st.dictionaries(st.sampled_from(["bn", "m", "t", "p_w", "x"]),
                       st.one_of(st.none(), st.text(max_size=3), st.integers(),
                                 st.lists(st.one_of(st.none(), st.integers(), st.text(
                                     max_size=2)), max_size=4)), max_size=5))
def test_any_table_is_accepted_or_refused_with_a_wire_error(table: dict[str, object]) -> None:
    try:
        decode_table({**wire.envelope("gw-1", 1, 1), "table": table})
    except WireError:
        pass


def test_a_poll_cycle_in_the_table_form_is_a_fraction_of_the_series_form() -> None:
    readings = cycle(250)
    table = len(cbor.dumps(table_message("gw-1", 1, 1, readings)))
    series = len(cbor.dumps(wire.readings_message("gw-1", 1, 1, readings)))
    per_reading = table / len(readings)
    assert per_reading < 25, per_reading  # 7 quantities: about 3 bytes each
    assert table < series / 3, (table, series)
