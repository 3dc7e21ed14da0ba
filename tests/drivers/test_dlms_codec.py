"""DLMS codecs: HDLC frames, A-XDR data and APDUs from tests/vectors/dlms_*.txt, fuzzing."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.drivers.dlms.apdu import (
    Aare,
    Aarq,
    ActionRequest,
    GetRequest,
    GetRequestList,
    GetResponse,
    Obis,
    decode_apdu,
)
from agent.drivers.dlms.axdr import (
    MAX_DEPTH,
    Data,
    DateTime,
    Tag,
    decode,
    decode_length,
    encode_length,
)
from agent.drivers.dlms.errors import (
    DlmsChecksumError,
    DlmsIncompleteError,
    DlmsProtocolError,
)
from agent.drivers.dlms.hdlc import (
    FrameKind,
    HdlcAddress,
    HdlcFrame,
    HdlcParameters,
    fcs16,
)
from agent.drivers.dlms.reader import MAX_SKIPPED_BYTES, FrameReader
from agent.drivers.sansio import NEED_DATA
from agent.errors import ChecksumError, ProtocolError

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors"
# Garbage that looks like the start of frames: a flag with a format byte, a
# lone flag, and a long "length" that never completes before the real frame.
GARBAGE_HEAD = bytes.fromhex("00 FF 7E 7E A0 05 13 7E A8 FF 21 7E")
GARBAGE_TAIL = bytes.fromhex("7E A0 1F 21 02 DE AD")


def _hex(text: str) -> bytes:
    """Hex with spaces; an optional "+ N x BB" suffix repeats a byte."""
    text, _, repeat = text.partition("+")
    data = bytes.fromhex(text)
    if repeat.strip():
        count, _, byte = repeat.partition("x")
        data += bytes.fromhex(byte) * int(count)
    return data


def _lines(name: str) -> list[tuple[str, str, str]]:
    """(kind, body, source) of each vector line of a file; every line has a source."""
    out = []
    for line in (VECTORS / name).read_text(encoding="utf-8").splitlines():
        body, _, source = line.partition("#")
        if not body.strip():
            continue
        assert source.strip(), f"vector without a source: {line!r}"
        kind, _, rest = body.strip().partition(" ")
        out.append((kind, rest.strip(), source.strip()))
    return out


@dataclass(frozen=True)
class FrameVector:
    raw: bytes
    kind: str
    destination: str
    source: str
    send_seq: int | None
    recv_seq: int | None
    segmented: bool
    origin: str


def _address_text(address: HdlcAddress) -> str:
    return str(address.upper) if address.lower is None else f"{address.upper}/{address.lower}"


def load_frames() -> list[FrameVector]:
    frames = []
    for kind, body, origin in _lines("dlms_hdlc.txt"):
        if kind != "frame":
            continue
        raw, _, expect = body.partition("=")
        fields = expect.split()
        seqs = dict(f.split("=") for f in fields[3:] if "=" in f)
        frames.append(FrameVector(_hex(raw), fields[0], fields[1], fields[2],
                                  int(seqs["ns"]) if "ns" in seqs else None,
                                  int(seqs["nr"]) if "nr" in seqs else None,
                                  "seg" in fields[3:], origin))
    return frames


FRAMES = load_frames()
FCS_VECTORS = [(_hex(b.partition("=")[0]), int(b.partition("=")[2], 16), s)
               for k, b, s in _lines("dlms_hdlc.txt") if k == "fcs"]
APDUS = [(k, _hex(b), s) for k, b, s in _lines("dlms_apdu.txt")]
AXDR = [(_hex(b), s) for k, b, s in _lines("dlms_axdr.txt") if k == "data"]
DATETIMES = [(_hex(b.partition("=")[0]), int(b.partition("=")[2]), s)
             for k, b, s in _lines("dlms_axdr.txt") if k == "datetime"]


def test_vector_files_are_not_empty() -> None:
    assert len(FRAMES) >= 12 and len(FCS_VECTORS) >= 2
    assert len(APDUS) >= 25 and len(AXDR) >= 10 and len(DATETIMES) >= 3


# -- HDLC ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("data", "value", "origin"), FCS_VECTORS)
def test_fcs16_known_answers(data: bytes, value: int, origin: str) -> None:
    assert fcs16(data) == value, origin


def _check(frame: HdlcFrame, vector: FrameVector) -> None:
    assert frame.kind.value == vector.kind, vector.origin
    assert _address_text(frame.destination) == vector.destination
    assert _address_text(frame.source) == vector.source
    if vector.send_seq is not None:
        assert frame.send_seq == vector.send_seq
    if vector.recv_seq is not None:
        assert frame.recv_seq == vector.recv_seq
    assert frame.segmented == vector.segmented


def _read_all(chunks: list[bytes]) -> list[HdlcFrame]:
    reader = FrameReader()
    frames = []
    for chunk in chunks:
        reader.receive_data(chunk)
        while isinstance(event := reader.next_event(), HdlcFrame):
            frames.append(event)
    return frames


@pytest.mark.parametrize("vector", FRAMES, ids=[v.raw.hex()[:24] for v in FRAMES])
def test_frame_vectors_whole_bytewise_and_in_garbage(vector: FrameVector) -> None:
    frame = HdlcFrame.from_bytes(vector.raw)
    _check(frame, vector)
    assert frame.to_bytes() == vector.raw  # every vector re-encodes byte for byte
    assert _read_all([vector.raw]) == [frame]
    assert _read_all([bytes([b]) for b in vector.raw]) == [frame]
    assert _read_all([GARBAGE_HEAD + vector.raw + GARBAGE_TAIL]) == [frame]
    assert _read_all([bytes([b]) for b in GARBAGE_HEAD + vector.raw + GARBAGE_TAIL]) == [frame]


def test_back_to_back_frames_and_shared_flags() -> None:
    a, b = FRAMES[0].raw, FRAMES[1].raw
    assert _read_all([a + b + a]) == [HdlcFrame.from_bytes(x) for x in (a, b, a)]
    shared = a + b[1:]  # one flag closes the first frame and opens the second
    assert _read_all([shared]) == [HdlcFrame.from_bytes(a), HdlcFrame.from_bytes(b)]


@pytest.mark.parametrize("vector", FRAMES[:6], ids=[v.raw.hex()[:24] for v in FRAMES[:6]])
def test_every_single_bit_flip_is_caught(vector: FrameVector) -> None:
    for index in range(1, len(vector.raw) - 1):
        for bit in range(8):
            bad = bytearray(vector.raw)
            bad[index] ^= 1 << bit
            with pytest.raises(DlmsProtocolError):
                HdlcFrame.from_bytes(bytes(bad))


def test_fcs_and_hcs_mismatch_are_checksum_errors() -> None:
    raw = bytearray(FRAMES[2].raw)  # an I frame: it has an HCS
    bad_fcs = bytes(raw[:-2]) + bytes([raw[-2] ^ 0xFF, 0x7E])
    with pytest.raises(DlmsChecksumError) as info:
        HdlcFrame.from_bytes(bad_fcs)
    assert isinstance(info.value, ChecksumError) and isinstance(info.value, ProtocolError)
    # A frame whose FCS is right but whose HCS was built wrong is the sender's fault.
    body = bytearray(raw[1:-3])
    hcs_at = 2 + 4 + 1 + 1  # format, 4-byte destination, client, control
    body[hcs_at] ^= 0x01
    rebuilt = b"\x7e" + bytes(body)
    fcs = fcs16(bytes(body))
    rebuilt += bytes([fcs & 0xFF, fcs >> 8, 0x7E])
    with pytest.raises(DlmsChecksumError, match="HCS"):
        HdlcFrame.from_bytes(rebuilt)


def test_reader_reports_a_corrupt_answer_at_the_silence() -> None:
    raw = bytearray(FRAMES[1].raw)
    raw[10] ^= 0x40
    reader = FrameReader()
    reader.receive_data(bytes(raw))
    assert reader.next_event() is NEED_DATA
    assert reader.failed_since_frame == 1
    reader.receive_data(b"")  # the line went quiet: that was the answer
    with pytest.raises(DlmsChecksumError):
        reader.next_event()
    assert reader.next_event() is NEED_DATA  # raised once, then reading goes on


def test_reader_deadline_errors() -> None:
    reader = FrameReader()
    with pytest.raises(DlmsIncompleteError, match="no answer"):
        reader.deadline_passed()
    reader.receive_data(FRAMES[1].raw[:10])
    assert reader.next_event() is NEED_DATA and reader.in_frame
    with pytest.raises(DlmsIncompleteError, match="part of"):
        reader.deadline_passed()
    noise = FrameReader()
    noise.receive_data(b"\x01\x02\x03\x04")
    assert noise.next_event() is NEED_DATA
    with pytest.raises(DlmsIncompleteError, match="none formed a frame"):
        noise.deadline_passed()


def test_reader_gives_up_on_a_flooded_line() -> None:
    reader = FrameReader()
    reader.receive_data(b"\x55" * (MAX_SKIPPED_BYTES + 1))
    with pytest.raises(DlmsProtocolError, match="without an HDLC frame"):
        reader.next_event()
    reader.receive_data(FRAMES[0].raw)  # and recovers when frames come again
    assert isinstance(reader.next_event(), HdlcFrame)


def test_silence_abandons_a_candidate_that_would_span_it() -> None:
    reader = FrameReader()
    reader.receive_data(b"\x7e\xa0\x40\x03")  # a frame start claiming 64 bytes
    reader.receive_data(b"")
    reader.receive_data(FRAMES[0].raw)  # the real frame comes after the silence
    assert reader.next_event() == HdlcFrame.from_bytes(FRAMES[0].raw)


@pytest.mark.parametrize(
    ("address", "encoded"),
    [
        (HdlcAddress(16), "21"),  # public client (dlms-cosem test_hdlc)
        (HdlcAddress(1), "03"),
        (HdlcAddress(0b1001010), "95"),
        (HdlcAddress(1, 17), "0223"),
        (HdlcAddress(1, 17, 4), "00020023"),  # Kmethy §1
        (HdlcAddress(1, 1100), "00021099"),  # Gurux forum node/25704
        (HdlcAddress(0x3FFF, 0x3FFF), "FEFEFEFF"),  # all-station
    ],
)
def test_address_encoding(address: HdlcAddress, encoded: str) -> None:
    raw = bytes.fromhex(encoded)
    assert address.to_bytes() == raw
    parsed, end = HdlcAddress.parse(raw, 0)
    assert parsed == address and end == len(raw) and parsed.length == len(raw)


def test_address_rules() -> None:
    assert HdlcAddress(1, 17) == HdlcAddress(1, 17, 4)  # same server, two encodings
    assert HdlcAddress.server(200).length == 4
    for bad in ("020407", "0204060810", "0204"):  # 3 bytes; no end bit in 4; cut short
        with pytest.raises(DlmsProtocolError):
            HdlcAddress.parse(bytes.fromhex(bad), 0)
    with pytest.raises(ValueError):
        HdlcAddress(200, None, 1)


def test_parameters_round_trip_and_defaults() -> None:
    ua = HdlcFrame.from_bytes(FRAMES[1].raw)
    params = HdlcParameters.from_bytes(ua.info)
    assert params == HdlcParameters(128, 128, 1, 1)
    assert HdlcParameters.from_bytes(params.to_bytes()) == params
    assert HdlcParameters.from_bytes(b"") == HdlcParameters()
    big = HdlcParameters(1024, 512, 1, 1)
    assert HdlcParameters.from_bytes(big.to_bytes()) == big
    for bad in ("8180", "818003050105", "81800307010F", "8180040501"):
        with pytest.raises(DlmsProtocolError):
            HdlcParameters.from_bytes(bytes.fromhex(bad))


addresses = st.one_of(
    st.builds(HdlcAddress, st.integers(0, 0x7F)),
    st.builds(HdlcAddress, st.integers(0, 0x7F), st.integers(0, 0x7F)),
    st.builds(HdlcAddress, st.integers(0, 0x3FFF), st.integers(0, 0x3FFF), st.just(4)),
)


@st.composite
def frames(draw: st.DrawFn) -> HdlcFrame:
    kind = draw(st.sampled_from(list(FrameKind)))
    info = b"" if kind in (FrameKind.RR, FrameKind.RNR) else draw(st.binary(max_size=300))
    return HdlcFrame(kind, draw(addresses), draw(addresses), info,
                     draw(st.integers(0, 7)) if kind is FrameKind.I else 0,
                     draw(st.integers(0, 7)) if kind in (FrameKind.I, FrameKind.RR,
                                                         FrameKind.RNR) else 0,
                     draw(st.booleans()), draw(st.booleans()))


@settings(max_examples=300, deadline=None)
@given(frames(), st.binary(max_size=40), st.lists(st.integers(1, 50), max_size=8))
def test_frames_round_trip_in_any_split(frame: HdlcFrame, garbage: bytes,
                                        cuts: list[int]) -> None:
    raw = frame.to_bytes()
    assert HdlcFrame.from_bytes(raw) == frame
    stream = garbage.replace(b"\x7e", b"") + raw
    chunks, at = [], 0
    for cut in cuts:
        chunks.append(stream[at : at + cut])
        at += cut
    chunks.append(stream[at:])
    assert _read_all(chunks) == [frame]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8), st.booleans())
def test_arbitrary_bytes_parse_or_raise_the_protocol_error(chunks: list[bytes],
                                                           silence: bool) -> None:
    reader = FrameReader()
    for chunk in chunks:
        reader.receive_data(chunk)
        if silence:
            reader.receive_data(b"")
        for _ in range(len(chunk) + 2):
            try:
                if reader.next_event() is NEED_DATA:
                    break
            except DlmsProtocolError:
                pass
    with pytest.raises(DlmsProtocolError):
        reader.deadline_passed()
    for chunk in chunks:
        try:
            HdlcFrame.from_bytes(chunk)
        except DlmsProtocolError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=3, max_size=80))
def test_flag_delimited_bytes_parse_or_raise(body: bytes) -> None:
    fcs = fcs16(body)
    try:
        HdlcFrame.from_bytes(b"\x7e" + body + bytes([fcs & 0xFF, fcs >> 8]) + b"\x7e")
    except DlmsProtocolError:
        pass


# -- A-XDR --------------------------------------------------------------------------------
@pytest.mark.parametrize(("raw", "origin"), AXDR, ids=[r.hex()[:20] for r, _ in AXDR])
def test_axdr_vectors_round_trip(raw: bytes, origin: str) -> None:
    value = decode(raw)
    assert value.to_bytes() == raw, origin
    with pytest.raises(DlmsProtocolError):
        decode(raw + b"\x00")  # trailing bytes are an error
    if len(raw) > 1:
        with pytest.raises(DlmsProtocolError):
            decode(raw[:-1])


def test_axdr_vectors_mean_what_their_sources_say() -> None:
    kamstrup = decode(AXDR[0][0])
    assert kamstrup.items[0] == Data(Tag.VISIBLE_STRING, "Kamstrup_V0001")
    assert kamstrup.items[1].octets == Obis(1, 1, 0, 0, 5, 255).to_bytes()
    assert decode(AXDR[2][0]).integer == 5009
    scaler_unit = decode(AXDR[3][0])
    assert [i.integer for i in scaler_unit.items] == [-2, 35]
    assert decode(bytes.fromhex("10FC18")).integer == -1000


@pytest.mark.parametrize(("raw", "unix", "origin"), DATETIMES)
def test_date_time_vectors(raw: bytes, unix: int, origin: str) -> None:
    when = DateTime.from_bytes(raw)
    assert when.to_unix() == unix, origin
    assert when.to_bytes() == raw


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 4_102_444_800), st.integers(-720, 720))
def test_date_time_from_unix_round_trips(t: int, deviation: int) -> None:
    when = DateTime.from_unix(t, deviation)
    assert when.to_unix() == t
    assert DateTime.from_bytes(when.to_bytes()) == when
    assert 1 <= when.weekday <= 7


def test_date_time_not_one_instant_is_refused() -> None:
    with pytest.raises(DlmsProtocolError):
        DateTime.from_bytes(bytes.fromhex("FFFF0101FF000000FF8000FF")).to_unix()


def _ints(tag: Tag, low: int, high: int) -> st.SearchStrategy[Data]:
    return st.builds(Data, st.just(tag), st.integers(low, high))


scalars = st.one_of(
    st.just(Data(Tag.NULL)),
    st.builds(Data, st.just(Tag.BOOLEAN), st.booleans()),
    _ints(Tag.INTEGER, -128, 127),
    _ints(Tag.LONG, -(2**15), 2**15 - 1),
    _ints(Tag.DOUBLE_LONG, -(2**31), 2**31 - 1),
    _ints(Tag.LONG64, -(2**63), 2**63 - 1),
    _ints(Tag.UNSIGNED, 0, 255),
    _ints(Tag.ENUM, 0, 255),
    _ints(Tag.LONG_UNSIGNED, 0, 2**16 - 1),
    _ints(Tag.DOUBLE_LONG_UNSIGNED, 0, 2**32 - 1),
    _ints(Tag.LONG64_UNSIGNED, 0, 2**64 - 1),
    st.builds(Data, st.just(Tag.FLOAT32),
              st.floats(width=32, allow_nan=False)),
    st.builds(Data, st.just(Tag.FLOAT64), st.floats(allow_nan=False)),
    st.builds(Data, st.just(Tag.OCTET_STRING), st.binary(max_size=300)),
    st.builds(Data, st.just(Tag.VISIBLE_STRING),
              st.text(st.characters(max_codepoint=127), max_size=40)),
    st.builds(Data, st.just(Tag.UTF8_STRING), st.text(max_size=20)),
    st.integers(0, 40).flatmap(lambda n: st.builds(
        Data, st.just(Tag.BIT_STRING),
        st.binary(min_size=(n + 7) // 8, max_size=(n + 7) // 8), st.just(n))),
    st.builds(lambda t, d: Data(Tag.DATE_TIME, DateTime.from_unix(t, d)),
              st.integers(0, 4_102_444_800), st.integers(-720, 720)),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.builds(lambda xs: Data(Tag.ARRAY, tuple(xs)), st.lists(inner, max_size=6)),
        st.builds(lambda xs: Data(Tag.STRUCTURE, tuple(xs)), st.lists(inner, max_size=6)),
    ),
    max_leaves=30,
)


@settings(max_examples=500, deadline=None)
@given(values)
def test_axdr_round_trip(value: Data) -> None:
    assert decode(value.to_bytes()) == value


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_axdr_arbitrary_bytes_decode_or_raise(raw: bytes) -> None:
    try:
        decode(raw)
    except DlmsProtocolError:
        pass


@given(st.integers(0, 0xFFFF))
def test_lengths_round_trip(length: int) -> None:
    raw = encode_length(length)
    assert decode_length(raw, 0) == (length, len(raw))


def test_axdr_bounds() -> None:
    deep = b"\x02\x01" * (MAX_DEPTH + 2) + b"\x00"
    with pytest.raises(DlmsProtocolError, match="nesting"):
        decode(deep)
    with pytest.raises(DlmsProtocolError):
        decode(b"\x01\x84\x7f\xff\xff\xff")  # a count far beyond the data
    with pytest.raises(DlmsProtocolError, match="unsupported"):
        decode(b"\x0d\x01")  # bcd
    with pytest.raises(ValueError):
        Data(Tag.UNSIGNED, 256)


# -- APDUs --------------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "raw", "origin"), APDUS, ids=[r.hex()[:24] for _, r, _ in APDUS])
def test_apdu_vectors(kind: str, raw: bytes, origin: str) -> None:
    apdu = decode_apdu(raw)
    if kind == "roundtrip":
        assert apdu.to_bytes() == raw, origin
    else:
        assert kind == "parse"
        assert decode_apdu(apdu.to_bytes()) == apdu  # what we keep survives a round trip


def _apdu(prefix: str) -> object:
    """The decoded APDU vector whose hex starts with ``prefix``."""
    raw = next(r for _, r, _ in APDUS if r.hex().upper().startswith(prefix))
    return decode_apdu(raw)


def test_apdu_vectors_mean_what_their_sources_say() -> None:
    lls = _apdu("6036A109")
    assert isinstance(lls, Aarq) and lls.mechanism == 1 and lls.password == b"12345678"
    assert lls.max_pdu_size == 0x04B0 and lls.conformance == 0x007E1F
    cosem_client = _apdu("6042A109")
    assert isinstance(cosem_client, Aarq) and cosem_client.password == b"00000000"
    accepted = _apdu("6129A109060760857405080101A203020100")
    assert isinstance(accepted, Aare) and accepted.accepted and accepted.max_pdu_size == 500
    too_low = _apdu("611FA109")
    assert isinstance(too_low, Aare) and too_low.initiate_error == 1 and not too_low.accepted
    get = _apdu("C001C1000100002B")
    assert isinstance(get, GetRequest) and str(get.obis) == "0.0.43.1.0.255"
    response = _apdu("C401C1000600001391")
    assert isinstance(response, GetResponse) and response.data == Data(
        Tag.DOUBLE_LONG_UNSIGNED, 5009)
    listed = _apdu("C003C102")
    assert isinstance(listed, GetRequestList)
    assert [(c, str(o), a) for c, o, a in listed.attributes] == [
        (1, "0.0.42.0.0.255", 2), (8, "0.0.1.0.0.255", 2)]
    disconnect = _apdu("C301C10046000060030AFF01")
    assert isinstance(disconnect, ActionRequest)
    assert (disconnect.class_id, str(disconnect.obis), disconnect.method) == (
        70, "0.0.96.3.10.255", 1)


@pytest.mark.parametrize(("kind", "raw", "origin"), APDUS[:12], ids=[r.hex()[:24] for _, r, _ in
                                                                     APDUS[:12]])
def test_apdu_vectors_carried_in_frames_byte_by_byte(kind: str, raw: bytes, origin: str) -> None:
    client, server = HdlcAddress(16), HdlcAddress(1, 17)
    frame = HdlcFrame(FrameKind.I, server, client, b"\xe6\xe6\x00" + raw)
    stream = GARBAGE_HEAD + frame.to_bytes() + GARBAGE_TAIL
    (received,) = _read_all([bytes([b]) for b in stream])
    assert decode_apdu(received.info[3:]) == decode_apdu(raw), origin


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([r for _, r, _ in APDUS]), st.integers(0, 200), st.binary(max_size=6))
def test_apdu_mutations_parse_or_raise(raw: bytes, at: int, junk: bytes) -> None:
    for mutated in (raw[: at % (len(raw) + 1)], raw + junk,
                    raw[: at % len(raw)] + junk + raw[at % len(raw) + 1 :]):
        try:
            decode_apdu(mutated)
        except DlmsProtocolError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_apdu_arbitrary_bytes_parse_or_raise(raw: bytes) -> None:
    try:
        decode_apdu(raw)
    except DlmsProtocolError:
        pass


def test_obis_text() -> None:
    assert str(Obis.parse("1.0.1.8.0.255")) == "1.0.1.8.0.255"
    for bad in ("1.0.1.8.0", "1.0.1.8.0.256", "a.b.c.d.e.f"):
        with pytest.raises(ValueError):
            Obis.parse(bad)


# -- sans-IO (STYLE rule 1) ---------------------------------------------------------------
PURE = ["hdlc.py", "reader.py", "axdr.py", "acse.py", "apdu.py", "obis.py", "cosem.py",
        "connection.py", "errors.py", "ciphered.py", "ciphering.py", "security.py"]
FORBIDDEN = {"serial", "time", "socket", "select", "os", "threading", "asyncio", "datetime"}
ALLOWED = {"__future__", "dataclasses", "enum", "typing", "struct", "decimal", "agent"}
# ciphering.py is the one codec that needs a native library (AES-GCM from pyca/cryptography,
# never hand-written): it need not run on MicroPython. security.py uses the standard
# library's HMAC for key fingerprints and takes its counters and random source injected.
EXTRA = {"ciphering.py": {"cryptography"}, "security.py": {"hashlib", "hmac", "collections"}}


@pytest.mark.parametrize("name", PURE)
def test_codecs_do_no_io(name: str) -> None:
    path = ROOT / "agent" / "drivers" / "dlms" / name
    tree = ast.parse(path.read_text(encoding="utf-8"))
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            modules.add((node.module or "").split(".")[0])
    assert not modules & FORBIDDEN, f"{name} imports {sorted(modules & FORBIDDEN)}"
    assert modules <= ALLOWED | EXTRA.get(name, set()), f"{name}: {sorted(modules)}"
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"\bexcept Exception\b", text)


def test_only_the_ciphering_codec_imports_cryptography() -> None:
    users = []
    for path in sorted((ROOT / "agent").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n.split(".")[0] == "cryptography" for n in names):
                users.append(path.relative_to(ROOT).as_posix())
    assert sorted(set(users)) == ["agent/drivers/dlms/ciphering.py"]
