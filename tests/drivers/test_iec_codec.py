"""IEC 62056-21 codec and OBIS mapping: vectors from tests/vectors/iec62056_21.txt,
resync, corruption, fuzzing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.drivers.iec62056.codec import (
    NEED_DATA,
    Break,
    DataMessage,
    DataReader,
    DataSet,
    Identification,
    IdentificationReader,
    IecChecksumError,
    IecIncompleteError,
    IecProtocolError,
    OptionSelect,
    RequestReader,
    SignOn,
    baud_char,
    bcc,
    encode_ack,
    encode_break,
    encode_data_message,
    encode_identification,
    encode_request,
)
from agent.drivers.iec62056.obis import normalize, serial_of, to_values
from agent.errors import ChecksumError, ProtocolError

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "iec62056_21.txt"
# Garbage with fake starts of every message kind ('/', STX, ETX, ACK, SOH) in it.
GARBAGE_HEAD = b"\x00\xff/?x\x02junk\x03Z\x06\x01B1\r\n"
GARBAGE_TAIL = b"\x02/LGZ\x03\xff"


@dataclass(frozen=True)
class Vector:
    kind: str
    frame: bytes
    source: str
    expect: str = ""


def load_vectors() -> list[Vector]:
    out = []
    for line in VECTORS.read_text(encoding="utf-8").splitlines():
        body, _, source = line.partition("#")
        if not body.strip():
            continue
        assert source.strip(), f"vector without a source: {line!r}"
        kind, _, rest = body.strip().partition(" ")
        hexpart, _, expect = rest.replace("=>", "=", 1).partition("=") if kind != "data" \
            else rest.partition("=>")
        out.append(Vector(kind, bytes.fromhex(hexpart), source.strip(), expect.strip()))
    return out


ALL = load_vectors()
BCCS = [v for v in ALL if v.kind == "bcc"]
IDENTS = [v for v in ALL if v.kind == "ident"]
REQUESTS = [v for v in ALL if v.kind == "request"]
DATA = [v for v in ALL if v.kind == "data"]


def _ids(vectors: list[Vector]) -> list[str]:
    return [v.source.split(":")[1].strip()[:40] for v in vectors]


def test_every_kind_has_vectors_and_real_ones_dominate() -> None:
    assert len(BCCS) >= 2 and len(IDENTS) >= 4 and len(REQUESTS) >= 4 and len(DATA) >= 3
    assert sum(v.source.startswith("real") for v in ALL) >= len(ALL) - 2


@pytest.mark.parametrize("vector", BCCS, ids=_ids(BCCS))
def test_bcc_known_answers(vector: Vector) -> None:
    assert bcc(vector.frame) == int(vector.expect, 16)


def feed(reader: IdentificationReader | DataReader, chunks: list[bytes]) -> object:
    event: object = NEED_DATA
    for chunk in chunks:
        reader.receive_data(chunk)
        event = reader.next_event()
        if event is not NEED_DATA:
            return event
    return event


def splits(frame: bytes) -> dict[str, list[bytes]]:
    return {
        "whole": [frame],
        "bytewise": [frame[i : i + 1] for i in range(len(frame))],
        "garbage": [GARBAGE_HEAD + frame + GARBAGE_TAIL],
        "garbage-bytewise": [bytes([b]) for b in GARBAGE_HEAD + frame + GARBAGE_TAIL],
    }


@pytest.mark.parametrize("how", ["whole", "bytewise", "garbage", "garbage-bytewise"])
@pytest.mark.parametrize("vector", IDENTS, ids=_ids(IDENTS))
def test_identification_vectors(vector: Vector, how: str) -> None:
    event = feed(IdentificationReader(), splits(vector.frame)[how])
    assert isinstance(event, Identification)
    assert event.baudrate == 9600 and len(event.manufacturer) == 3
    assert encode_identification(event) == vector.frame


@pytest.mark.parametrize("how", ["whole", "bytewise", "garbage", "garbage-bytewise"])
@pytest.mark.parametrize("vector", DATA, ids=_ids(DATA))
def test_data_vectors(vector: Vector, how: str) -> None:
    reader = DataReader()
    event = feed(reader, splits(vector.frame)[how])
    assert isinstance(event, DataMessage)
    expect = dict(pair.split("=") for pair in vector.expect.split())
    serial = expect.pop("serial")
    assert to_values(event.datasets) == {k: int(v) for k, v in expect.items()}
    assert serial_of(event.datasets) == serial
    if how == "garbage":
        assert reader.trailing_data == GARBAGE_TAIL  # never parsed


@pytest.mark.parametrize("how", ["whole", "bytewise", "garbage"])
def test_request_vectors(how: str) -> None:
    stream = [splits(v.frame)[how] for v in REQUESTS]
    reader = RequestReader()
    events = []
    for chunks in stream:
        for chunk in chunks:
            reader.receive_data(chunk)
            while (event := reader.next_event()) is not NEED_DATA:
                events.append(event)
    assert events == [SignOn(""), SignOn("202006003607"), OptionSelect("0", "5", "0"),
                      OptionSelect("0", "6", "0"), Break()]


def test_encoders_match_the_real_requests() -> None:
    frames = [v.frame for v in REQUESTS]
    assert encode_request() == frames[0]
    assert encode_request("202006003607") == frames[1]
    assert encode_ack("5") == frames[2] and encode_ack(baud_char(19200)) == frames[3]
    assert encode_break() == frames[4]
    with pytest.raises(ValueError):
        encode_request("bad!address")
    with pytest.raises(ValueError):
        baud_char(115200)


def test_every_single_bit_flip_of_a_data_message_is_refused() -> None:
    frame = DATA[-1].frame
    for i in range(len(frame)):
        for bit in range(8):
            bad = frame[:i] + bytes([frame[i] ^ (1 << bit)]) + frame[i + 1 :]
            reader = DataReader()
            reader.receive_data(bad)
            try:
                event = reader.next_event()
                if event is NEED_DATA:
                    reader.receive_data(b"")  # the line goes quiet
                    event = reader.next_event()
                if event is NEED_DATA:
                    reader.deadline_passed()
            except IecProtocolError:
                continue
            raise AssertionError(f"flip at {i}/{bit} gave {event!r}")


def test_bad_bcc_is_a_checksum_error_at_the_silence_and_a_good_copy_wins() -> None:
    frame = DATA[-1].frame
    bad = frame[:-1] + bytes([frame[-1] ^ 1])
    reader = DataReader()
    reader.receive_data(bad)
    assert reader.next_event() is NEED_DATA  # a good copy may still follow
    reader.receive_data(frame)
    assert isinstance(reader.next_event(), DataMessage)
    reader = DataReader()
    reader.receive_data(bad)
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"")
    with pytest.raises(IecChecksumError) as info:
        reader.next_event()
    assert isinstance(info.value, ChecksumError) and isinstance(info.value, ProtocolError)


def test_deadline_says_what_went_wrong() -> None:
    with pytest.raises(IecIncompleteError, match="no answer"):
        DataReader().deadline_passed()
    reader = DataReader()
    reader.receive_data(DATA[-1].frame[:20])
    reader.next_event()
    with pytest.raises(IecIncompleteError, match="part of"):
        reader.deadline_passed()
    ident = IdentificationReader()
    ident.receive_data(b"noise without a start")
    ident.next_event()
    with pytest.raises(IecProtocolError, match="none formed"):
        ident.deadline_passed()


def test_a_block_that_does_not_end_with_bang_is_refused() -> None:
    body = b"1.8.0(1*kWh)\r\n\x03"
    with pytest.raises(IecProtocolError, match="'!'"):
        feed(DataReader(), [b"\x02" + body + bytes([bcc(body)])])


@pytest.mark.parametrize(
    ("address", "code"),
    [("1.8.0", "1.8.0"), ("1-0:1.8.0*255", "1.8.0"), ("1-1:1.8.0", "1.8.0"),
     ("1.8.0*01", None), ("1.8.0&01", None), ("C.1.0", "96.1.0"), ("F.F", "97.97.0"),
     ("0-0:96.1.0", "96.1.0")],
)
def test_obis_normalize(address: str, code: str | None) -> None:
    assert normalize(address) == code


def test_obis_units_and_errors() -> None:
    def ds(code: str, value: str, unit: str = "") -> DataSet:
        return DataSet(code, ((value, unit),))

    assert to_values((ds("1.8.0", "12.3456", "MWh"), ds("1.7.0", "-450", "W"))) == {
        "import_wh": 12_345_600, "p_w": -450}
    assert to_values((ds("1.8.0", "7.0005"),)) == {"import_wh": 7000}  # kWh; half-even
    assert to_values((ds("13.7.0", "-0.875"),)) == {"pf_milli": -875}
    with pytest.raises(IecProtocolError, match="unit"):
        to_values((ds("32.7.0", "230", "kWh"),))
    with pytest.raises(IecProtocolError, match="not a number"):
        to_values((ds("1.8.0", "12,5", "kWh"),))
    assert serial_of((ds("0.0.0", "A"), ds("C.1.0", "B"))) == "B"
    assert serial_of((ds("1.8.0", "1"),)) is None


# --- properties ---------------------------------------------------------------

_text = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E,
                              blacklist_characters="()*/!"), min_size=1, max_size=12)
datasets = st.lists(st.builds(lambda a, v, u: DataSet(a, ((v, u),)), _text,
                              _text, st.one_of(st.just(""), _text)), min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(datasets, st.binary(max_size=30), st.binary(max_size=30), st.integers(1, 40))
def test_data_message_round_trips_through_garbage(
    sets: list[DataSet], head: bytes, tail: bytes, chunk: int
) -> None:
    frame = encode_data_message(sets)
    data = head.replace(b"\x02", b"") + frame + tail
    event = feed(DataReader(), [data[i : i + chunk] for i in range(0, len(data), chunk)])
    assert isinstance(event, DataMessage) and list(event.datasets) == sets


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=80), st.just(b"")), max_size=8),
       st.sampled_from([IdentificationReader, DataReader, RequestReader]))
def test_arbitrary_bytes_parse_or_raise_the_codec_error(
    chunks: list[bytes], cls: type[IdentificationReader | DataReader | RequestReader]
) -> None:
    reader = cls()
    try:
        for chunk in chunks:
            reader.receive_data(chunk)
            reader.next_event()
        if not isinstance(reader, RequestReader):
            reader.deadline_passed()
    except IecProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=200))
def test_arbitrary_data_blocks_parse_or_raise(block: bytes) -> None:
    body = block.replace(b"\x03", b"") + b"!\r\n\x03"
    try:
        feed(DataReader(), [b"\x02" + body + bytes([bcc(body)])])
    except IecProtocolError:
        pass
