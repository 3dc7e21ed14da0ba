"""The DLMS client connection: the state table, a real session replayed, segmentation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.drivers.dlms.apdu import Aare, Aarq, GetRequest, GetResponse, Obis, ReleaseRequest
from agent.drivers.dlms.axdr import Data, Tag
from agent.drivers.dlms.connection import (
    TRANSITIONS,
    Associated,
    ClientConnection,
    Connected,
    Disconnected,
    Ev,
    Rejected,
    Released,
    Response,
    State,
)
from agent.drivers.dlms.errors import DlmsProtocolError, DlmsStateError
from agent.drivers.dlms.hdlc import (
    LLC_RESPONSE,
    FrameKind,
    HdlcAddress,
    HdlcFrame,
    HdlcParameters,
)
from agent.drivers.sansio import NEED_DATA

SERVER = HdlcAddress(1, 17)
CLIENT = HdlcAddress(16)
# A real session (pwitab/dlms-cosem tests/test_hdlc/test_hdlc.py, see
# tests/vectors/dlms_hdlc.txt): SNRM, UA, AARQ in an I frame, the AARE.
SNRM = bytes.fromhex("7EA00802232193BD647E")
UA = bytes.fromhex("7EA01F21022373E6C781801205019A06019A070400000001080400000001CCA27E")
AARQ_FRAME = bytes.fromhex(
    "7EA02C02232110AF9FE6E600601DA109060760857405080101BE10040E01000000065F1F0400001E1DFFFF"
    "C5E47E")
AARE_FRAME = bytes.fromhex(
    "7EA0382102233034E7E6E7006129A109060760857405080101A203020100A305A103020100BE10040E0800"
    "065F1F0400001E1D04C80007B86A7E")


def server_frame(kind: FrameKind, info: bytes = b"", ns: int = 0, nr: int = 0,
                 segmented: bool = False, source: HdlcAddress = SERVER) -> bytes:
    return HdlcFrame(kind, CLIENT, source, info, ns, nr, True, segmented).to_bytes()


def state_of(conn: ClientConnection) -> State:
    return conn.state  # a call, so the type checker does not narrow across steps


def associated() -> ClientConnection:
    conn = ClientConnection(SERVER, CLIENT)
    conn.connect()
    conn.receive_data(UA)
    assert isinstance(conn.next_event(), Connected)
    conn.associate(Aarq(0x001E1D, 0xFFFF))
    conn.receive_data(AARE_FRAME)
    assert isinstance(conn.next_event(), Associated)
    return conn


def test_the_table_is_complete_and_link_lost_always_resets() -> None:
    reachable = {State.DISCONNECTED} | set(TRANSITIONS.values())
    assert reachable == set(State)
    for state in State:
        assert TRANSITIONS[(state, Ev.LINK_LOST)] is State.DISCONNECTED
    # every state but DISCONNECTED can be left by something other than link_lost
    for state in State:
        exits = {e for (s, e) in TRANSITIONS if s is state and e is not Ev.LINK_LOST}
        assert exits, state


@pytest.mark.parametrize(
    ("state", "event"),
    [(s, e) for s in State for e in Ev if (s, e) not in TRANSITIONS],
)
def test_illegal_transitions_raise(state: State, event: Ev) -> None:
    conn = ClientConnection(SERVER, CLIENT)
    conn._state = state
    with pytest.raises(DlmsStateError):
        conn._fire(event)
    assert conn.state is state  # nothing changed


def test_methods_refuse_the_wrong_state() -> None:
    conn = ClientConnection(SERVER, CLIENT)
    with pytest.raises(DlmsStateError):
        conn.associate(Aarq(0, 1024))
    with pytest.raises(DlmsStateError):
        conn.request(GetRequest(1, Obis(0, 0, 96, 1, 0, 255), 2))
    with pytest.raises(DlmsStateError):
        conn.disconnect()
    conn.connect()
    with pytest.raises(DlmsStateError):
        conn.connect()


def test_a_real_session_replayed_byte_for_byte() -> None:
    conn = ClientConnection(SERVER, CLIENT)
    assert conn.connect() == SNRM
    assert state_of(conn) is State.AWAITING_UA
    for byte in UA:  # any split
        conn.receive_data(bytes([byte]))
    event = conn.next_event()
    assert event == Connected(HdlcParameters(154, 154, 1, 1))
    assert state_of(conn) is State.CONNECTED
    assert conn.associate(Aarq(0x001E1D, 0xFFFF)) == AARQ_FRAME
    conn.receive_data(b"\x00\x13" + AARE_FRAME[:20])
    assert conn.next_event() is NEED_DATA
    conn.receive_data(AARE_FRAME[20:])
    event = conn.next_event()
    assert isinstance(event, Associated) and event.aare.max_pdu_size == 0x04C8
    assert state_of(conn) is State.ASSOCIATED


def test_request_response_release_disconnect() -> None:
    conn = associated()
    request = GetRequest(3, Obis(1, 0, 1, 8, 0, 255), 2)
    frame = HdlcFrame.from_bytes(conn.request(request))
    assert (frame.kind, frame.send_seq, frame.recv_seq) == (FrameKind.I, 1, 1)
    reply = GetResponse(0xC1, Data(Tag.DOUBLE_LONG_UNSIGNED, 5009)).to_bytes()
    conn.receive_data(server_frame(FrameKind.I, LLC_RESPONSE + reply, ns=1, nr=2))
    event = conn.next_event()
    assert isinstance(event, Response) and event.apdu == GetResponse(
        0xC1, Data(Tag.DOUBLE_LONG_UNSIGNED, 5009))
    conn.release(ReleaseRequest())
    conn.receive_data(server_frame(FrameKind.I, LLC_RESPONSE + bytes.fromhex("6303800100"),
                                   ns=2, nr=3))
    assert isinstance(conn.next_event(), Released) and state_of(conn) is State.CONNECTED
    assert HdlcFrame.from_bytes(conn.disconnect()).kind is FrameKind.DISC
    conn.receive_data(server_frame(FrameKind.UA))
    assert conn.next_event() == Disconnected(by_dm=False)
    assert state_of(conn) is State.DISCONNECTED


def test_rejected_association_returns_to_connected() -> None:
    conn = ClientConnection(SERVER, CLIENT)
    conn.connect()
    conn.receive_data(UA)
    conn.next_event()
    conn.associate(Aarq(0x10, 1024, 1, b"wrong"))
    aare = Aare(result=1, diagnostic=13).to_bytes()
    conn.receive_data(server_frame(FrameKind.I, LLC_RESPONSE + aare, ns=0, nr=1))
    event = conn.next_event()
    assert isinstance(event, Rejected) and event.aare.diagnostic == 13
    assert state_of(conn) is State.CONNECTED


def test_segmented_response_is_acknowledged_and_reassembled() -> None:
    conn = associated()
    conn.request(GetRequest(7, Obis(0, 0, 99, 98, 4, 255), 2))
    value = Data(Tag.OCTET_STRING, bytes(range(200)))
    message = LLC_RESPONSE + GetResponse(0xC1, value).to_bytes()
    parts = [message[:100], message[100:]]
    conn.receive_data(server_frame(FrameKind.I, parts[0], ns=1, nr=2, segmented=True))
    assert conn.next_event() is NEED_DATA
    rr = HdlcFrame.from_bytes(conn.data_to_send())
    assert (rr.kind, rr.recv_seq) == (FrameKind.RR, 2)
    assert conn.data_to_send() == b""
    conn.receive_data(server_frame(FrameKind.I, parts[1], ns=2, nr=2))
    event = conn.next_event()
    assert isinstance(event, Response) and event.apdu == GetResponse(0xC1, value)


def test_long_request_goes_in_segments_one_per_rr() -> None:
    conn = ClientConnection(SERVER, CLIENT)
    conn.connect()
    small = HdlcParameters(max_info_tx=128, max_info_rx=32)
    conn.receive_data(server_frame(FrameKind.UA, small.to_bytes()))
    conn.next_event()
    first = HdlcFrame.from_bytes(conn.associate(Aarq(0x001015, 1024, 1, b"0123456789abcdef")))
    assert first.segmented and len(first.info) == 32
    sent = first.info
    nr = 0
    while True:
        conn.receive_data(server_frame(FrameKind.RR, nr=(nr + 1) % 8))
        assert conn.next_event() is NEED_DATA
        frame = HdlcFrame.from_bytes(conn.data_to_send())
        nr += 1
        sent += frame.info
        if not frame.segmented:
            break
    assert Aarq.from_bytes(sent[3:]).password == b"0123456789abcdef"


def test_dm_while_waiting_means_the_link_was_dropped() -> None:
    conn = associated()
    conn.request(GetRequest(1, Obis(0, 0, 96, 1, 0, 255), 2))
    conn.receive_data(server_frame(FrameKind.DM))
    assert conn.next_event() == Disconnected(by_dm=True)
    assert state_of(conn) is State.DISCONNECTED


def test_frames_for_others_are_ignored_and_bad_sequences_raise() -> None:
    conn = associated()
    conn.request(GetRequest(1, Obis(0, 0, 96, 1, 0, 255), 2))
    other = HdlcAddress(1, 18)
    conn.receive_data(server_frame(FrameKind.I, LLC_RESPONSE + b"\xc4\x01\xc1\x01\x04",
                                   ns=1, nr=2, source=other))
    assert conn.next_event() is NEED_DATA and conn.foreign_frames == 1
    conn.receive_data(server_frame(FrameKind.I, LLC_RESPONSE + b"\xc4\x01\xc1\x01\x04",
                                   ns=5, nr=2))
    with pytest.raises(DlmsProtocolError, match="N\\(S\\)"):
        conn.next_event()
    conn.reset()
    assert state_of(conn) is State.DISCONNECTED


def test_frmr_drops_the_link_and_a_missing_llc_is_a_protocol_error() -> None:
    conn = associated()
    conn.request(GetRequest(1, Obis(0, 0, 96, 1, 0, 255), 2))
    conn.receive_data(server_frame(FrameKind.FRMR, b"\x00\x00\x00"))
    assert conn.next_event() == Disconnected(by_dm=True)
    assert state_of(conn) is State.DISCONNECTED
    conn = associated()
    conn.request(GetRequest(1, Obis(0, 0, 96, 1, 0, 255), 2))
    conn.receive_data(server_frame(FrameKind.I, b"\xc4\x01\xc1\x01\x04", ns=1, nr=2))
    with pytest.raises(DlmsProtocolError, match="LLC"):
        conn.next_event()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=6))
def test_arbitrary_bytes_into_a_connection_parse_or_raise(chunks: list[bytes]) -> None:
    conn = associated()
    conn.request(GetRequest(1, Obis(0, 0, 96, 1, 0, 255), 2))
    for chunk in chunks:
        conn.receive_data(chunk)
        try:
            conn.next_event()
        except DlmsProtocolError:
            return  # the driver resets the link here


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=6), st.sampled_from([0, 1, 2, 3]))
def test_a_frame_with_any_information_parses_or_raises(chunks: list[bytes], ns: int) -> None:
    conn = associated()
    conn.request(GetRequest(1, Obis(0, 0, 96, 1, 0, 255), 2))
    for chunk in chunks:  # well-formed frames, arbitrary contents
        conn.receive_data(server_frame(FrameKind.I, chunk, ns=ns, nr=2))
        try:
            conn.next_event()
        except DlmsProtocolError:
            return
