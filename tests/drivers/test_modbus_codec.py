"""Modbus RTU codec: vectors from tests/vectors/modbus_rtu.txt, resync, fuzzing."""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.drivers.modbus.codec import (
    MAX_COUNT,
    MAX_SKIPPED_BYTES,
    NEED_DATA,
    ModbusChecksumError,
    ModbusIncompleteError,
    ModbusProtocolError,
    Request,
    RequestReader,
    Response,
    ResponseReader,
    crc16,
    crc16_bitwise,
    encode_exception,
    encode_response,
    response_length,
)
from agent.errors import ChecksumError, ProtocolError

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "modbus_rtu.txt"
GARBAGE_HEAD = bytes.fromhex("00 FF 01 11 0A 13 37 11 03 06 02")  # includes fake headers
GARBAGE_TAIL = bytes.fromhex("11 03 06 DE AD BE EF 00")


@dataclass(frozen=True)
class Vector:
    kind: str
    frame: bytes
    request: bytes | None
    source: str
    crc: int | None = None


def _hex(text: str) -> bytes:
    return b"" if text.strip() == "(empty)" else bytes.fromhex(text)


def load_vectors() -> list[Vector]:
    vectors = []
    for line in VECTORS.read_text(encoding="utf-8").splitlines():
        body, _, source = line.partition("#")
        if not body.strip():
            continue
        assert source.strip(), f"vector without a source: {line!r}"
        kind, _, rest = body.strip().partition(" ")
        if kind == "crc":
            data, _, value = rest.partition("=")
            vectors.append(Vector(kind, _hex(data), None, source.strip(), int(value, 16)))
        elif kind == "request":
            vectors.append(Vector(kind, _hex(rest), None, source.strip()))
        else:
            assert kind == "response", line
            frame, _, request = rest.partition(" for ")
            vectors.append(Vector(kind, _hex(frame), _hex(request), source.strip()))
    return vectors


ALL = load_vectors()
CRCS = [v for v in ALL if v.kind == "crc"]
REQUESTS = [v for v in ALL if v.kind == "request"]
RESPONSES = [v for v in ALL if v.kind == "response"]


def _ids(vectors: list[Vector]) -> list[str]:
    return [v.frame.hex(" ") for v in vectors]


def parse_request(frame: bytes) -> Request:
    reader = RequestReader()
    reader.receive_data(frame)
    event = reader.next_event()
    assert isinstance(event, Request), frame.hex(" ")
    return event


def read_response(request: Request, chunks: list[bytes]) -> tuple[Response, ResponseReader]:
    reader = ResponseReader(request)
    event: Response | object = NEED_DATA
    for chunk in chunks:
        reader.receive_data(chunk)
        event = reader.next_event()
    assert isinstance(event, Response)
    return event, reader


def test_vector_file_has_every_kind() -> None:
    assert len(CRCS) >= 3 and len(REQUESTS) >= 15 and len(RESPONSES) >= 15
    functions = {parse_request(v.frame).function for v in REQUESTS}
    assert functions == {1, 2, 3, 4, 5, 6, 15, 16}


@pytest.mark.parametrize("vector", CRCS, ids=_ids(CRCS))
def test_crc_known_answers(vector: Vector) -> None:
    assert crc16(vector.frame) == vector.crc


@pytest.mark.parametrize("vector", CRCS, ids=_ids(CRCS))
def test_crc_bitwise_reference_known_answers(vector: Vector) -> None:
    assert crc16_bitwise(vector.frame) == vector.crc


@given(st.binary(max_size=300))
def test_table_crc_equals_the_bitwise_reference(data: bytes) -> None:
    assert crc16(data) == crc16_bitwise(data)


@given(st.binary(max_size=300), st.one_of(st.binary(min_size=2, max_size=2), st.none()))
def test_crc_over_a_frame_is_zero_exactly_when_it_ends_in_its_crc(
    body: bytes, tail: bytes | None
) -> None:
    good = struct.pack("<H", crc16(body))
    tail = good if tail is None else tail
    assert (crc16(body + tail) == 0) == (tail == good)


@pytest.mark.parametrize("vector", REQUESTS + RESPONSES, ids=_ids(REQUESTS + RESPONSES))
def test_every_vector_frame_carries_a_good_crc(vector: Vector) -> None:
    assert crc16(vector.frame) == 0  # the CRC over a frame with its CRC is 0


@pytest.mark.parametrize("vector", REQUESTS, ids=_ids(REQUESTS))
def test_request_vectors_whole_bytewise_and_with_garbage(vector: Vector) -> None:
    request = parse_request(vector.frame)
    assert request.to_bytes() == vector.frame
    reader = RequestReader()
    seen: list[Request] = []
    for byte in GARBAGE_HEAD + vector.frame + GARBAGE_TAIL:
        reader.receive_data(bytes([byte]))
        event = reader.next_event()
        if isinstance(event, Request):
            seen.append(event)
    assert seen == [request]


@pytest.mark.parametrize("vector", RESPONSES, ids=_ids(RESPONSES))
def test_response_vectors_whole_bytewise_and_with_garbage(vector: Vector) -> None:
    assert vector.request is not None
    request = parse_request(vector.request)
    whole, reader = read_response(request, [vector.frame])
    if request.function in (1, 2) and not whole.is_exception:
        # Real devices leave junk in the unused high bits of the last byte
        # (§6.1 asks for zeros): they are ignored, so compare the bits read.
        data = vector.frame[3:-2]
        assert whole.values == tuple((data[i // 8] >> (i % 8)) & 1 for i in range(request.count))
    else:
        assert whole.to_bytes() == vector.frame
    assert reader.trailing_data == b""
    bytewise, _ = read_response(request, [bytes([b]) for b in vector.frame])
    assert bytewise == whole
    framed = GARBAGE_HEAD + vector.frame + GARBAGE_TAIL
    garbled, reader = read_response(request, [bytes([b]) for b in framed])
    assert garbled == whole
    assert reader.trailing_data == GARBAGE_TAIL  # looked at by nobody
    in_two, _ = read_response(request, [framed[:7], framed[7:]])
    assert in_two == whole


def test_eastron_voltage_example_decodes_to_230_2() -> None:
    response, _ = read_response(Request(1, 4, 0x0156, 2), [bytes.fromhex("010404436633341B38")])
    assert response.values == (0x4366, 0x3334)


def test_coil_padding_bits_from_a_real_device_are_ignored() -> None:
    # Matrix PEL-8000: 0x48 for one input, "the lowest bit is 0: OFF".
    response, _ = read_response(Request(1, 1, 0x0510, 1), [bytes.fromhex("01010148 51BE")])
    assert response.values == (0,)


def test_exception_vector() -> None:
    response, _ = read_response(
        parse_request(bytes.fromhex("0A0104A10001AC63")), [bytes.fromhex("0A8102B053")]
    )
    assert response.is_exception and response.exception_code == 2 and response.function == 1
    assert encode_exception(Request(10, 1, 0x04A1, 1), 2) == bytes.fromhex("0A8102B053")


def test_encode_response_helpers_match_vectors() -> None:
    read = parse_request(bytes.fromhex("1103006B00037687"))
    assert encode_response(read, (0x022B, 0, 0x64)) == bytes.fromhex("110306022B00000064C8BA")
    coil = parse_request(bytes.fromhex("110500ACFF004E8B"))
    assert coil.values == (1,) and encode_response(coil) == coil.to_bytes()
    multi = parse_request(bytes.fromhex("110F0013000A02CD01BF0B"))
    assert multi.values == (1, 0, 1, 1, 0, 0, 1, 1, 1, 0)
    assert encode_response(multi) == bytes.fromhex("110F0013000A2699")
    with pytest.raises(ValueError):
        encode_response(read, (1,))


def test_error_classes_sit_in_the_agent_tree() -> None:
    assert issubclass(ModbusChecksumError, ChecksumError)
    assert issubclass(ModbusChecksumError, ModbusProtocolError)
    assert issubclass(ModbusProtocolError, ProtocolError)
    assert issubclass(ModbusIncompleteError, ModbusProtocolError)


# --- resync, silence and giving up ---------------------------------------

EASTRON_REQ = Request(1, 4, 0x0156, 2)
EASTRON_RSP = bytes.fromhex("010404436633341B38")


def test_corrupted_frame_is_a_checksum_error_once_the_line_is_silent() -> None:
    reader = ResponseReader(EASTRON_REQ)
    reader.receive_data(EASTRON_RSP[:-1] + b"\x00")
    assert reader.next_event() is NEED_DATA  # could still be noise before the frame
    reader.receive_data(b"")
    with pytest.raises(ModbusChecksumError):
        reader.next_event()


def test_deadline_passed_names_what_happened() -> None:
    with pytest.raises(ModbusIncompleteError, match="no answer"):
        ResponseReader(EASTRON_REQ).deadline_passed()
    partial = ResponseReader(EASTRON_REQ)
    partial.receive_data(EASTRON_RSP[:5])
    assert partial.next_event() is NEED_DATA
    with pytest.raises(ModbusIncompleteError, match="part of a frame"):
        partial.deadline_passed()
    noise = ResponseReader(EASTRON_REQ)
    noise.receive_data(bytes.fromhex("FF FE 02 04 04"))
    assert noise.next_event() is NEED_DATA
    with pytest.raises(ModbusProtocolError, match="none formed a frame") as info:
        noise.deadline_passed()
    assert not isinstance(info.value, ModbusIncompleteError)


def test_silence_abandons_a_candidate_and_finds_an_exception_inside_it() -> None:
    # "01 04 04" (noise that looks like our header) then a real exception
    # frame: the 9-byte candidate never completes; after the silence the
    # 5-byte exception inside it is found.
    exception = encode_exception(EASTRON_REQ, 2)
    reader = ResponseReader(EASTRON_REQ)
    reader.receive_data(bytes.fromhex("010404") + exception)
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"")
    event = reader.next_event()
    assert isinstance(event, Response) and event.exception_code == 2


def test_a_late_answer_after_a_silence_is_still_taken() -> None:
    reader = ResponseReader(EASTRON_REQ)
    reader.receive_data(b"\x01")  # a glitch byte equal to the unit
    reader.receive_data(b"")
    assert reader.next_event() is NEED_DATA
    reader.receive_data(EASTRON_RSP)
    assert isinstance(reader.next_event(), Response)


def test_write_echo_that_disagrees_is_a_protocol_error() -> None:
    request = Request(1, 5, 7, values=(1,))
    wrong = Response(1, 5, 7, 1, (0,)).to_bytes()
    reader = ResponseReader(request)
    reader.receive_data(wrong)
    with pytest.raises(ModbusProtocolError, match="echo"):
        reader.next_event()


def test_a_flooded_line_is_given_up_within_the_bound() -> None:
    reader = ResponseReader(EASTRON_REQ)
    reader.receive_data(b"\xaa" * (MAX_SKIPPED_BYTES + 1))
    with pytest.raises(ModbusProtocolError, match="without a frame"):
        reader.next_event()


def test_request_reader_skips_bad_crc_and_raises_on_bad_field_then_goes_on() -> None:
    good = Request(3, 4, 0x48, 2).to_bytes()
    bad_crc = good[:-1] + bytes([good[-1] ^ 1])
    bad_coil = bytes.fromhex("030500010012")
    bad_coil += crc16(bad_coil).to_bytes(2, "little")
    reader = RequestReader()
    reader.receive_data(bad_crc + bad_coil + good)
    with pytest.raises(ModbusProtocolError, match="coil value"):
        reader.next_event()
    assert reader.next_event() == Request(3, 4, 0x48, 2)
    assert reader.checksum_failures >= 1
    assert reader.next_event() is NEED_DATA


def test_request_reader_gives_up_a_half_request_at_a_silence() -> None:
    reader = RequestReader()
    reader.receive_data(bytes.fromhex("0110000100"))  # a fn 16 header, then the line went quiet
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"")
    reader.receive_data(Request(1, 3, 0, 1).to_bytes())
    assert reader.next_event() == Request(1, 3, 0, 1)


@pytest.mark.parametrize(
    ("unit", "function", "address", "count", "values"),
    [
        (1, 7, 0, 1, ()),  # unsupported function
        (248, 3, 0, 1, ()),  # reserved unit
        (1, 3, 0, 126, ()),  # over the 125-register limit
        (1, 3, 0xFFFF, 2, ()),  # past the address space
        (0, 3, 0, 1, ()),  # a broadcast read
        (1, 5, 0, 0, (2,)),  # a coil is 0 or 1
        (1, 6, 0, 0, (0x10000,)),  # a register is 16 bits
    ],
)
def test_invalid_requests_are_value_errors(
    unit: int, function: int, address: int, count: int, values: tuple[int, ...]
) -> None:
    with pytest.raises(ValueError):
        Request(unit, function, address, count, values)


@given(st.sampled_from([1, 2, 3, 4, 5, 6, 15, 16]),
       st.lists(st.sampled_from([-1, 0, 1, 2, 0xFFFF, 0x10000]) | st.integers(-3, 0x10003),
                min_size=1, max_size=8))
def test_values_outside_the_functions_range_are_value_errors(fn: int, values: list[int]) -> None:
    limit = 1 if fn in (1, 2, 5, 15) else 0xFFFF
    values = values[:1] if fn in (5, 6) else values
    ok = all(0 <= v <= limit for v in values)  # the check as first written
    build: Any = Request if fn in (5, 6, 15, 16) else Response
    try:
        build(1, fn, 0, values=tuple(values))
    except ValueError as exc:
        assert not ok and str(exc) == f"fn {fn}: values out of range 0..{limit}"
    else:
        assert ok


def test_a_request_keeps_its_frame_without_it_being_a_value() -> None:
    request = Request(1, 4, 0, 32)
    shown, key = repr(request), hash(request)
    frame = request.to_bytes()
    assert frame == bytes.fromhex("01 04 0000 0020 F1D2")
    assert request.to_bytes() is frame
    assert repr(request) == shown and hash(request) == key and request == Request(1, 4, 0, 32)
    assert replace(request, address=5).to_bytes() == Request(1, 4, 5, 32).to_bytes() != frame


def test_broadcast_has_no_response_reader() -> None:
    with pytest.raises(ValueError):
        ResponseReader(Request(0, 5, 0, values=(1,)))


# --- properties ----------------------------------------------------------


@st.composite
def requests(draw: st.DrawFn) -> Request:
    fn = draw(st.sampled_from([1, 2, 3, 4, 5, 6, 15, 16]))
    unit = draw(st.integers(1, 247))
    if fn in (5, 6, 15, 16):
        count = 1 if fn in (5, 6) else draw(st.integers(1, MAX_COUNT[fn]))
        top = 1 if fn in (5, 15) else 0xFFFF
        values = tuple(draw(st.lists(st.integers(0, top), min_size=count, max_size=count)))
        address = draw(st.integers(0, 0x10000 - count))
        return Request(draw(st.integers(0, 247)), fn, address, values=values)
    count = draw(st.integers(1, MAX_COUNT[fn]))
    return Request(unit, fn, draw(st.integers(0, 0x10000 - count)), count)


@st.composite
def exchanges(draw: st.DrawFn) -> tuple[Request, bytes]:
    request = draw(requests().filter(lambda r: r.unit != 0))
    if draw(st.booleans()):
        return request, encode_exception(request, draw(st.integers(1, 255)))
    if request.function in (1, 2, 3, 4):
        top = 1 if request.function in (1, 2) else 0xFFFF
        n = request.count
        values = draw(st.lists(st.integers(0, top), min_size=n, max_size=n))
        return request, encode_response(request, tuple(values))
    return request, encode_response(request)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)] or [b""]


@settings(max_examples=300, deadline=None)
@given(requests(), st.lists(st.integers(0, 300), max_size=6))
def test_request_round_trip(request: Request, cuts: list[int]) -> None:
    reader = RequestReader()
    events = []
    for chunk in _chunks(request.to_bytes(), cuts):
        reader.receive_data(chunk)
        events.append(reader.next_event())
    assert [e for e in events if e is not NEED_DATA] == [request]


@settings(max_examples=300, deadline=None)
@given(exchanges(), st.lists(st.integers(0, 300), max_size=6))
def test_response_round_trip(exchange: tuple[Request, bytes], cuts: list[int]) -> None:
    request, frame = exchange
    assert len(frame) <= 256
    if frame[1] & 0x80 == 0:
        assert len(frame) == response_length(request)
    response, _ = read_response(request, _chunks(frame, cuts))
    assert response.to_bytes() == frame


@settings(max_examples=300, deadline=None)
@given(exchanges())
def test_a_read_answer_is_the_response_its_checks_accept(exchange: tuple[Request, bytes]) -> None:
    request, frame = exchange
    response, _ = read_response(request, [frame])
    # The reader builds a read's answer without its checks: built again with them, it is
    # accepted and equal (every field).
    assert replace(response) == response
    if not response.is_exception and request.function in (1, 2, 3, 4):
        assert (response.unit, response.function, response.address, response.count) == (
            request.unit, request.function, request.address, request.count)
        assert len(response.values) == request.count


@settings(max_examples=300, deadline=None)
@given(exchanges(), st.binary(max_size=40), st.binary(max_size=40))
def test_frame_in_garbage_is_found(
    exchange: tuple[Request, bytes], head: bytes, tail: bytes
) -> None:
    request, frame = exchange
    reader = ResponseReader(request)
    reader.receive_data(head + frame + tail)
    try:
        event = reader.next_event()
    except ModbusProtocolError:
        # only a CRC-good frame in the garbage that contradicts the request may do this
        return
    assert isinstance(event, Response)
    found = event.to_bytes()
    # The frame, or a CRC-good frame that started inside the leading garbage.
    assert found == frame or (head + frame).find(found) < len(head)


@settings(max_examples=400, deadline=None)
@given(requests().filter(lambda r: r.unit != 0), st.lists(st.binary(max_size=64), max_size=8))
def test_arbitrary_bytes_parse_or_raise_the_codec_error(
    request: Request, chunks: list[bytes]
) -> None:
    reader = ResponseReader(request)
    for chunk in chunks + [b""]:
        reader.receive_data(chunk)
        try:
            event = reader.next_event()
        except ModbusProtocolError:
            return
        if isinstance(event, Response):
            return
        assert event is NEED_DATA
    with pytest.raises(ModbusProtocolError):
        reader.deadline_passed()


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_arbitrary_bytes_to_the_request_reader(chunks: list[bytes]) -> None:
    reader = RequestReader()
    for chunk in chunks:
        reader.receive_data(chunk)
        for _ in range(64):
            try:
                event = reader.next_event()
            except ModbusProtocolError:
                continue
            if event is NEED_DATA:
                break
            assert isinstance(event, Request)
