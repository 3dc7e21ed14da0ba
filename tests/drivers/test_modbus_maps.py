"""Declarative register maps: loading, read planning, decoding to contract units."""

from __future__ import annotations

import struct
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.drivers.modbus.maps import (
    MAX_GAP_REGISTERS,
    ReadBlock,
    ReadPlan,
    RegisterMap,
    decode,
    decode_serial,
    known_models,
    load_map,
    parse_map,
    plan_reads,
    read_plan,
    serial_read,
)
from agent.drivers.reading import QUANTITIES
from agent.errors import DriverError, ProtocolError


def float_words(value: float, address: int) -> dict[int, int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return {address: hi, address + 1: lo}


def test_known_models_come_from_the_data_files() -> None:
    assert known_models() == ("eastron-sdm120", "eastron-sdm630")


def test_unknown_model_is_a_driver_error_naming_it() -> None:
    with pytest.raises(DriverError, match="no-such-meter"):
        load_map("no-such-meter")


def test_sdm120_map() -> None:
    rmap = load_map("eastron-sdm120")
    addresses = {r.quantity: r.address for r in rmap.registers}
    assert addresses == {
        "v_dv": 0x00,
        "i_ma": 0x06,
        "p_w": 0x0C,
        "pf_milli": 0x1E,
        "f_chz": 0x46,
        "import_wh": 0x48,
        "export_wh": 0x4A,
    }
    assert all(r.function == 4 and r.type == "float32" for r in rmap.registers)
    assert rmap.max_current_a == 45 and rmap.register_max_wh == 99_999_990
    assert serial_read(rmap) == ReadBlock(3, 0xFC00, 2)


def test_sdm120_plan_is_two_frames() -> None:
    # 0x00..0x1F in one frame (gaps of 4 and 16 words are cheaper than frames);
    # the 38-word gap before 0x46 is not.
    assert plan_reads(load_map("eastron-sdm120")) == (ReadBlock(4, 0x00, 32), ReadBlock(4, 0x46, 6))


def test_sdm630_plan_is_one_frame() -> None:
    assert plan_reads(load_map("eastron-sdm630")) == (ReadBlock(4, 0x2A, 34),)


def test_decode_sdm120_in_contract_units() -> None:
    rmap = load_map("eastron-sdm120")
    words: dict[int, int] = {}
    # 43 66 33 34 is the Eastron manual's example: 230.2 V.
    words.update({0x00: 0x4366, 0x01: 0x3334})
    for address, value in (
        (0x06, 4.5),
        (0x0C, 1012.6),
        (0x1E, -0.87),
        (0x46, 49.98),
        (0x48, 12345.67),
        (0x4A, 0.0),
    ):
        words.update(float_words(value, address))
    values = decode(rmap, words)
    assert values == {
        "v_dv": 2302,
        "i_ma": 4500,
        "p_w": 1013,
        "pf_milli": -870,
        "f_chz": 4998,
        "import_wh": 12_345_670,
        "export_wh": 0,
    }
    assert all(type(v) is int for v in values.values())
    assert set(values) <= set(QUANTITIES)


def test_energy_is_scaled_from_the_exact_float_not_its_repr() -> None:
    rmap = load_map("eastron-sdm120")
    # float32 nearest 99999.99 is 99999.9921875: x1000 = 99999992.1875 Wh.
    words = {a: 0 for a in range(0x00, 0x4C)}
    words.update(float_words(99999.99, 0x48))
    assert decode(rmap, words)["import_wh"] == 99_999_992
    exact = Decimal(struct.unpack(">f", struct.pack(">f", 99999.99))[0])
    assert exact == Decimal("99999.9921875")


def test_nan_register_is_a_protocol_error() -> None:
    rmap = load_map("eastron-sdm120")
    words = {a: 0 for a in range(0x00, 0x4C)}
    words.update({0x0C: 0x7FC0, 0x0D: 0})
    with pytest.raises(ProtocolError, match="p_w"):
        decode(rmap, words)


def test_missing_word_is_a_driver_error() -> None:
    with pytest.raises(DriverError, match="0x0048"):
        decode(load_map("eastron-sdm120"), {a: 0 for a in range(0x00, 0x48)})


def test_decode_serial() -> None:
    rmap = load_map("eastron-sdm120")
    assert decode_serial(rmap, {0xFC00: 0x0131, 0xFC01: 0x2D00}) == str(0x01312D00)


def _doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "model": "test-meter",
        "phases": 1,
        "max_current_a": 60,
        "register_max_wh": 999_999_999,
        "register": [
            {"quantity": "import_wh", "function": 3, "address": 10, "type": "uint32", "scale": 10},
            {"quantity": "p_w", "function": 3, "address": 12, "type": "int16", "scale": "0.1"},
        ],
    }
    doc.update(overrides)
    return doc


def test_integer_registers_and_decimal_scale() -> None:
    rmap = parse_map(_doc())
    assert decode(rmap, {10: 0x0001, 11: 0x0002, 12: 0xFFF6}) == {"import_wh": 655_380, "p_w": -1}
    little = parse_map(_doc(word_order="little"))
    assert decode(little, {10: 0x0002, 11: 0x0001, 12: 5})["import_wh"] == 655_380


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"colour": "red"}, "unknown keys"),
        ({"register": []}, "at least one"),
        (
            {"register": [{"quantity": "volts", "function": 4, "address": 0, "type": "float32"}]},
            "quantity",
        ),
        (
            {"register": [{"quantity": "p_w", "function": 2, "address": 0, "type": "float32"}]},
            "function",
        ),
        (
            {"register": [{"quantity": "p_w", "function": 4, "address": 0, "type": "float64"}]},
            "type",
        ),
        (
            {
                "register": [
                    {"quantity": "p_w", "function": 4, "address": 0, "type": "int16", "scale": 0}
                ]
            },
            "scale",
        ),
        (
            {"register": [{"quantity": "p_w", "function": 4, "address": 0xFFFF, "type": "uint32"}]},
            "address",
        ),
        (
            {
                "register": [
                    {"quantity": "p_w", "function": 4, "address": 0, "type": "float32"},
                    {"quantity": "v_dv", "function": 3, "address": 1, "type": "uint16"},
                ]
            },
            "overlap",
        ),
        (
            {
                "register": [
                    {"quantity": "p_w", "function": 4, "address": 0, "type": "float32"},
                    {"quantity": "p_w", "function": 4, "address": 2, "type": "float32"},
                ]
            },
            "twice",
        ),
        ({"max_read_registers": 200}, "max_read_registers"),
        ({"phases": 2}, "phases"),
        ({"max_current_a": True}, "max_current_a"),
        ({"serial": {"function": 3, "address": 0, "type": "float32"}}, "serial.type"),
    ],
)
def test_map_errors_name_the_key(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(DriverError, match=message):
        parse_map(_doc(**overrides))


# --- plan_reads properties ------------------------------------------------


def _min_blocks(spans: list[tuple[int, int]], limit: int) -> int:
    """Fewest blocks by dynamic programming over the sorted spans (the reference)."""
    n = len(spans)
    best = [0] + [n + 1] * n
    for end in range(1, n + 1):
        for start in range(end):
            ok = spans[end - 1][1] - spans[start][0] <= limit and all(
                spans[k + 1][0] - spans[k][1] <= MAX_GAP_REGISTERS for k in range(start, end - 1)
            )
            if ok:
                best[end] = min(best[end], best[start] + 1)
    return best[n]


@st.composite
def register_maps(draw: st.DrawFn) -> RegisterMap:
    n = draw(st.integers(1, len(QUANTITIES)))
    gaps = draw(st.lists(st.integers(0, 60), min_size=n, max_size=n))
    types = draw(st.lists(st.sampled_from(["float32", "uint16"]), min_size=n, max_size=n))
    address = draw(st.integers(0, 100))
    registers = []
    for quantity, gap, type_ in zip(QUANTITIES[:n], gaps, types, strict=True):
        address += gap
        registers.append({"quantity": quantity, "function": 4, "address": address, "type": type_})
        address += 2 if type_ == "float32" else 1
    limit = draw(st.integers(2, 125))
    return parse_map(_doc(register=registers, max_read_registers=limit))


@settings(max_examples=300, deadline=None)
@given(register_maps())
def test_plan_covers_everything_within_limits_in_fewest_frames(rmap: RegisterMap) -> None:
    blocks = plan_reads(rmap)
    for spec in rmap.registers:
        assert any(
            b.function == spec.function
            and b.address <= spec.address
            and spec.end <= b.address + b.count
            for b in blocks
        ), spec
    assert all(1 <= b.count <= rmap.max_read_registers for b in blocks)
    spans = sorted((s.address, s.end) for s in rmap.registers)
    assert len(blocks) == _min_blocks(spans, rmap.max_read_registers)


# --- decode and ReadPlan against the formula, property-tested ------------------------

TYPE_FORMATS = {"float32": ">f", "uint32": ">I", "int32": ">i", "uint16": ">H", "int16": ">h"}


def reference_decode(rmap: RegisterMap, words: dict[int, int]) -> dict[str, int]:
    """The formula as first written: per quantity, struct then round(Decimal(raw) * scale)."""
    values = {}
    for spec in rmap.registers:
        own = [words[spec.address + i] for i in range(spec.words)]
        if spec.words == 2 and rmap.word_order == "little":
            own.reverse()
        raw = struct.unpack(TYPE_FORMATS[spec.type], struct.pack(f">{len(own)}H", *own))[0]
        exact = Decimal(raw)
        if not exact.is_finite():
            raise ProtocolError(f"{rmap.model}: {spec.quantity} register holds {raw}")
        values[spec.quantity] = round(exact * spec.scale)
    return values


def outcome(fn: Any, *args: Any) -> object:
    """The result, or the error's type and message: equivalent code agrees on both."""
    try:
        return fn(*args)
    except DriverError as exc:
        return type(exc), str(exc)


# Bit patterns where a shortcut would go wrong: NaNs, infinities, the largest and
# smallest finite floats, denormals, signed zeros, halves (ties for half-even), and
# integers of 29 digits (Decimal's 28 round them).
SPECIAL_FLOAT_BITS = [0x7FC00000, 0xFFC00001, 0x7F800001, 0x7F800000, 0xFF800000, 0x7F7FFFFF,
                      0xFF7FFFFF, 0x00800000, 0x00000001, 0x807FFFFF, 0x00000000, 0x80000000,
                      0x3F000000, 0xBF000000, 0x3E800000, 0x4B000001, 0x4B7FFFFF, 0x5A000000,
                      0x6E800001, 0xEF000001]


def float_bits() -> st.SearchStrategy[int]:
    as_bits = st.floats(width=32, allow_nan=True).map(
        lambda f: struct.unpack(">I", struct.pack(">f", f))[0])
    dyadic = st.builds(lambda m, e: struct.unpack(">I", struct.pack(">f", m * 2.0**e))[0],
                       st.integers(-(2**24), 2**24), st.integers(-12, 12))  # exact halves
    # 2**40 .. 2**110: where a product passes 2**53 and 10**28
    big = st.builds(lambda sign, e, m: sign << 31 | e << 23 | m, st.integers(0, 1),
                    st.integers(127 + 40, 127 + 110), st.integers(0, 2**23 - 1))
    return st.one_of(as_bits, dyadic, big, st.sampled_from(SPECIAL_FLOAT_BITS),
                     st.integers(0, 2**32 - 1))


def value_words(rmap: RegisterMap, draw: st.DrawFn) -> dict[int, int]:
    """Words for every mapped register of ``rmap``, in its word order."""
    words: dict[int, int] = {}
    for spec in rmap.registers:
        if spec.words == 1:
            words[spec.address] = draw(st.integers(0, 0xFFFF))
            continue
        bits = draw(float_bits() if spec.type == "float32" else st.integers(0, 2**32 - 1))
        hi, lo = bits >> 16, bits & 0xFFFF
        if rmap.word_order == "little":
            hi, lo = lo, hi
        words[spec.address], words[spec.address + 1] = hi, lo
    return words


# Integral scales at and around _EXACT_SCALE (2**29), decimal ones, and integral ones
# written as decimals.
SCALES: list[int | str] = [1, 10, 100, 1000, 3, 2**29 - 1, 2**29, 2**31 + 1, 10**12,
                           "0.1", "0.01", "2.5", "1E+1", "10.0", "1000.000", "0.001"]


@st.composite
def any_register_map(draw: st.DrawFn) -> RegisterMap:
    n = draw(st.integers(1, len(QUANTITIES)))
    address = draw(st.integers(0, 40))
    registers = []
    for quantity in QUANTITIES[:n]:
        address += draw(st.integers(0, 25))
        type_ = draw(st.sampled_from(sorted(TYPE_FORMATS)))
        registers.append({"quantity": quantity, "function": draw(st.sampled_from([3, 4])),
                          "address": address, "type": type_,
                          "scale": draw(st.sampled_from(SCALES))})
        address += 2 if type_.endswith("32") else 1
    return parse_map(_doc(register=registers, max_read_registers=draw(st.integers(2, 125)),
                          word_order=draw(st.sampled_from(["big", "little"]))))


def answers_for(rmap: RegisterMap, words: dict[int, int], draw: st.DrawFn) -> list[tuple[int, ...]]:
    """The plan's answers: the mapped words where each register's own read has them,
    noise in the gaps (another function's register there included)."""
    answers = []
    for block in plan_reads(rmap):
        mine = {a for s in rmap.registers if s.function == block.function
                for a in range(s.address, s.end)}
        noise = draw(st.lists(st.integers(0, 0xFFFF), min_size=block.count,
                              max_size=block.count))
        answers.append(tuple(words[a] if a in mine else word for a, word in
                             zip(range(block.address, block.address + block.count), noise,
                                 strict=True)))
    return answers


@st.composite
def decode_cases(
    draw: st.DrawFn, maps: st.SearchStrategy[RegisterMap]
) -> tuple[RegisterMap, dict[int, int], list[tuple[int, ...]]]:
    """A map, its mapped words, and its plan's answers holding them."""
    rmap = draw(maps)
    words = value_words(rmap, draw)
    return rmap, words, answers_for(rmap, words, draw)


def check_against_the_formula(
    rmap: RegisterMap, words: dict[int, int], answers: list[tuple[int, ...]]
) -> None:
    expected = outcome(reference_decode, rmap, words)
    assert outcome(decode, rmap, words) == expected
    got = outcome(ReadPlan(rmap).decode, answers)
    assert got == expected
    if isinstance(got, dict) and isinstance(expected, dict):
        assert list(got) == list(expected)  # in the map's order, as a reading sends them


@pytest.mark.parametrize("model", known_models())
@settings(max_examples=300, deadline=None)
@given(st.data())
def test_every_shipped_map_decodes_as_the_formula(model: str, data: st.DataObject) -> None:
    check_against_the_formula(*data.draw(decode_cases(st.just(load_map(model)))))


@settings(max_examples=400, deadline=None)
@given(decode_cases(any_register_map()))
def test_any_map_decodes_as_the_formula(
    case: tuple[RegisterMap, dict[int, int], list[tuple[int, ...]]]
) -> None:
    check_against_the_formula(*case)


@settings(max_examples=2000, deadline=None)
@given(float_bits(), st.sampled_from(SCALES))
def test_one_float_scales_as_the_formula(bits: int, scale: int | str) -> None:
    rmap = parse_map(_doc(register=[{"quantity": "p_w", "function": 4, "address": 0,
                                     "type": "float32", "scale": scale}]))
    words = {0: bits >> 16, 1: bits & 0xFFFF}
    assert outcome(decode, rmap, words) == outcome(reference_decode, rmap, words)


def test_the_exact_path_is_taken_only_for_integral_scales_below_its_bound() -> None:
    rmap = parse_map(_doc(register=[
        {"quantity": q, "function": 4, "address": 2 * i, "type": "float32", "scale": s}
        for i, (q, s) in enumerate(zip(QUANTITIES[:5], [10, "10.0", 2**29 - 1, 2**29, "0.1"],
                                       strict=True))]))
    assert [s.int_scale for s in rmap.registers] == [10, 10, 2**29 - 1, None, None]


def test_a_register_decodes_from_its_own_functions_read() -> None:
    # p_w (function 3) sits in the gap of the function-4 read of v_dv..i_ma: that read's
    # word there is an input register, not p_w's holding register.
    rmap = parse_map(_doc(register=[
        {"quantity": "v_dv", "function": 4, "address": 0, "type": "uint16"},
        {"quantity": "p_w", "function": 3, "address": 5, "type": "uint16"},
        {"quantity": "i_ma", "function": 4, "address": 10, "type": "uint16"},
    ]))
    plan = ReadPlan(rmap)
    assert plan.blocks == (ReadBlock(3, 5, 1), ReadBlock(4, 0, 11))
    assert plan.decode([(7,), (1, *[0xFFFF] * 9, 2)]) == {"v_dv": 1, "p_w": 7, "i_ma": 2}


def test_read_plan_is_one_per_model() -> None:
    assert read_plan("eastron-sdm120") is read_plan("eastron-sdm120")
    assert read_plan("eastron-sdm120").rmap is load_map("eastron-sdm120")
    with pytest.raises(DriverError, match="no-such-meter"):
        read_plan("no-such-meter")
