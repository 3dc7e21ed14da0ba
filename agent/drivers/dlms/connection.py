"""The DLMS client's connection: a state table, and the HDLC link under it, sans-IO.

All states and transitions of the client live in ``TRANSITIONS`` below (one
table, the only place they are written); ``ClientConnection`` moves through it
with ``_fire`` and an event the table does not list raises
``DlmsStateError``. The link procedures follow IEC 62056-46 §6.4.4 (NRM, one
secondary, window 1): SNRM/UA opens the link (UA carries the negotiated
parameters), I frames carry the APDU with the LLC header in the first segment,
N(S)/N(R) count modulo 8, a message longer than the peer's maximum
information field goes in segments (S bit set) and each segment is answered
with RR before the next, DISC/UA (or DM) closes it; DM or FRMR while waiting
means the meter dropped (or no longer trusts) the link: ``Disconnected``.

    state              event                 next state
    DISCONNECTED       snrm_sent             AWAITING_UA
    AWAITING_UA        ua                    CONNECTED
    AWAITING_UA        dm                    DISCONNECTED
    CONNECTED          aarq_sent             AWAITING_AARE
    AWAITING_AARE      aare_accepted         ASSOCIATED
    AWAITING_AARE      aare_rejected         CONNECTED
    ASSOCIATED         request_sent          AWAITING_RESPONSE
    AWAITING_RESPONSE  response              ASSOCIATED
    ASSOCIATED         rlrq_sent             AWAITING_RLRE
    AWAITING_RLRE      rlre                  CONNECTED
    CONNECTED          disc_sent             AWAITING_DISC_UA
    ASSOCIATED         disc_sent             AWAITING_DISC_UA
    AWAITING_DISC_UA   ua | dm               DISCONNECTED
    AWAITING_*         dm (or FRMR)          DISCONNECTED  (the meter dropped the link)
    any                link_lost             DISCONNECTED  (timeout, bad frame: start over)

Usage (``device.py``): write ``connect()``, feed what arrives to
``receive_data``, call ``next_event`` until it returns an event; after each
call write ``data_to_send()`` if it is not empty (RR for the next segment, or
our own next segment). When giving up, call ``deadline_passed()`` (raises)
and ``reset()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final

from agent.drivers.dlms.apdu import (
    Aare,
    Aarq,
    ActionResponse,
    Apdu,
    CipheredApdu,
    ConfirmedServiceError,
    ExceptionResponse,
    GetResponse,
    GetResponseBlock,
    GetResponseList,
    ReleaseResponse,
    decode_apdu,
)
from agent.drivers.dlms.errors import DlmsProtocolError, DlmsStateError
from agent.drivers.dlms.hdlc import (
    LLC_COMMAND,
    LLC_RESPONSE,
    FrameKind,
    HdlcAddress,
    HdlcFrame,
    HdlcParameters,
)
from agent.drivers.dlms.reader import FrameReader
from agent.drivers.sansio import NEED_DATA, NeedData

# A response reassembled from segments is bounded by the max PDU size we
# announce (an APDU can never exceed 65535) plus the LLC header.
MAX_MESSAGE_BYTES: Final = 0xFFFF + 3


class State(Enum):
    DISCONNECTED = "disconnected"
    AWAITING_UA = "awaiting_ua"
    CONNECTED = "connected"
    AWAITING_AARE = "awaiting_aare"
    ASSOCIATED = "associated"
    AWAITING_RESPONSE = "awaiting_response"
    AWAITING_RLRE = "awaiting_rlre"
    AWAITING_DISC_UA = "awaiting_disc_ua"


class Ev(Enum):
    SNRM_SENT = "snrm_sent"
    UA = "ua"
    DM = "dm"
    AARQ_SENT = "aarq_sent"
    AARE_ACCEPTED = "aare_accepted"
    AARE_REJECTED = "aare_rejected"
    REQUEST_SENT = "request_sent"
    RESPONSE = "response"
    RLRQ_SENT = "rlrq_sent"
    RLRE = "rlre"
    DISC_SENT = "disc_sent"
    LINK_LOST = "link_lost"


S = State
TRANSITIONS: Final[dict[tuple[State, Ev], State]] = {
    (S.DISCONNECTED, Ev.SNRM_SENT): S.AWAITING_UA,
    (S.AWAITING_UA, Ev.UA): S.CONNECTED,
    (S.AWAITING_UA, Ev.DM): S.DISCONNECTED,
    (S.CONNECTED, Ev.AARQ_SENT): S.AWAITING_AARE,
    (S.AWAITING_AARE, Ev.AARE_ACCEPTED): S.ASSOCIATED,
    (S.AWAITING_AARE, Ev.AARE_REJECTED): S.CONNECTED,
    (S.AWAITING_AARE, Ev.DM): S.DISCONNECTED,
    (S.ASSOCIATED, Ev.REQUEST_SENT): S.AWAITING_RESPONSE,
    (S.AWAITING_RESPONSE, Ev.RESPONSE): S.ASSOCIATED,
    (S.AWAITING_RESPONSE, Ev.DM): S.DISCONNECTED,
    (S.ASSOCIATED, Ev.RLRQ_SENT): S.AWAITING_RLRE,
    (S.AWAITING_RLRE, Ev.RLRE): S.CONNECTED,
    (S.AWAITING_RLRE, Ev.DM): S.DISCONNECTED,
    (S.CONNECTED, Ev.DISC_SENT): S.AWAITING_DISC_UA,
    (S.ASSOCIATED, Ev.DISC_SENT): S.AWAITING_DISC_UA,
    (S.AWAITING_DISC_UA, Ev.UA): S.DISCONNECTED,
    (S.AWAITING_DISC_UA, Ev.DM): S.DISCONNECTED,
    **{(state, Ev.LINK_LOST): S.DISCONNECTED for state in State},
}
del S


@dataclass(frozen=True, slots=True)
class Connected:
    params: HdlcParameters


@dataclass(frozen=True, slots=True)
class Associated:
    aare: Aare


@dataclass(frozen=True, slots=True)
class Rejected:
    aare: Aare


@dataclass(frozen=True, slots=True)
class Response:
    apdu: Apdu  # GetResponse, GetResponseBlock, ActionResponse, ExceptionResponse, or
    # a CipheredApdu the session deciphers (the link knows no keys)


@dataclass(frozen=True, slots=True)
class Released:
    rlre: ReleaseResponse


@dataclass(frozen=True, slots=True)
class Disconnected:
    by_dm: bool  # True: the meter answered DM (it was not, or no longer, connected)


ConnectionEvent = Connected | Associated | Rejected | Response | Released | Disconnected


class ClientConnection:
    """One client's link and association to one server (see the module doc)."""

    def __init__(self, server: HdlcAddress, client: HdlcAddress) -> None:
        self.server = server
        self.client = client
        self.reader = FrameReader()
        self._state = State.DISCONNECTED
        self._params = HdlcParameters()
        self._send_seq = 0  # V(S): N(S) of our next I frame
        self._recv_seq = 0  # V(R): N(S) we expect of the server's next I frame
        self._rx = bytearray()  # the response being reassembled from segments
        self._tx: list[bytes] = []  # our own segments still to send (after an RR)
        self._outbox = b""
        self.foreign_frames = 0  # frames for another address, ignored

    @property
    def state(self) -> State:
        return self._state

    @property
    def params(self) -> HdlcParameters:
        return self._params

    def _fire(self, event: Ev) -> None:
        try:
            self._state = TRANSITIONS[(self._state, event)]
        except KeyError:
            raise DlmsStateError(f"{event.value} in state {self._state.value}") from None

    def _frame(self, kind: FrameKind, info: bytes = b"", segmented: bool = False) -> bytes:
        frame = HdlcFrame(
            kind,
            self.server,
            self.client,
            info,
            send_seq=self._send_seq if kind is FrameKind.I else 0,
            recv_seq=self._recv_seq,
            segmented=segmented,
        )
        if kind is FrameKind.I:
            self._send_seq = (self._send_seq + 1) % 8
        return frame.to_bytes()

    def connect(self) -> bytes:
        """SNRM with no parameters: the §6.4.4.4.3.2 defaults are proposed."""
        self._fire(Ev.SNRM_SENT)
        return self._frame(FrameKind.SNRM)

    def associate(self, aarq: Aarq) -> bytes:
        self._fire(Ev.AARQ_SENT)
        return self._send_message(aarq.to_bytes())

    def request(self, apdu: Apdu) -> bytes:
        self._fire(Ev.REQUEST_SENT)
        return self._send_message(apdu.to_bytes())

    def release(self, rlrq: Apdu) -> bytes:
        self._fire(Ev.RLRQ_SENT)
        return self._send_message(rlrq.to_bytes())

    def disconnect(self) -> bytes:
        self._fire(Ev.DISC_SENT)
        return self._frame(FrameKind.DISC)

    def reset(self) -> None:
        """Forget the link (timeout, bad frame): the next step is ``connect()``."""
        self._fire(Ev.LINK_LOST)
        self._rx.clear()
        self._tx.clear()
        self._outbox = b""

    def deadline_passed(self) -> None:
        self.reader.deadline_passed()

    def data_to_send(self) -> bytes:
        out, self._outbox = self._outbox, b""
        return out

    def receive_data(self, data: bytes) -> None:
        self.reader.receive_data(data)

    def _send_message(self, apdu: bytes) -> bytes:
        message = LLC_COMMAND + apdu
        size = self._params.max_info_rx  # the server's receive limit
        chunks = [message[i : i + size] for i in range(0, len(message), size)]
        self._rx.clear()
        self._tx = chunks[1:]
        return self._frame(FrameKind.I, chunks[0], segmented=bool(self._tx))

    def next_event(self) -> ConnectionEvent | NeedData:
        while True:
            frame = self.reader.next_event()
            if isinstance(frame, NeedData):
                return NEED_DATA
            if frame.destination.upper != self.client.upper or frame.source != self.server:
                self.foreign_frames += 1
                continue
            event = self._on_frame(frame)
            if event is not None:
                return event

    def _on_frame(self, frame: HdlcFrame) -> ConnectionEvent | None:
        state, kind = self._state, frame.kind
        if kind is FrameKind.DM or kind is FrameKind.FRMR:
            # FRMR: the meter rejected a frame (a sequence it did not expect,
            # after another client reset its link): the link is as good as
            # gone, and a fresh SNRM is the way back, as after a DM.
            self._fire(Ev.DM)
            return Disconnected(by_dm=True)
        if kind is FrameKind.UA:
            if state is State.AWAITING_UA:
                self._params = HdlcParameters.from_bytes(frame.info)
                self._send_seq = self._recv_seq = 0
                self._fire(Ev.UA)
                return Connected(self._params)
            self._fire(Ev.UA)  # raises unless a DISC is pending
            return Disconnected(by_dm=False)
        if state not in (State.AWAITING_AARE, State.AWAITING_RESPONSE, State.AWAITING_RLRE):
            raise DlmsStateError(f"{kind.value} frame in state {state.value}")
        if kind is FrameKind.RR:
            return self._on_rr(frame)
        if kind is not FrameKind.I:
            raise DlmsProtocolError(f"unexpected {kind.value} frame from the meter")
        if frame.send_seq != self._recv_seq:
            raise DlmsProtocolError(f"N(S) {frame.send_seq}, expected {self._recv_seq}")
        if frame.recv_seq != self._send_seq:
            raise DlmsProtocolError(f"N(R) {frame.recv_seq}, expected {self._send_seq}")
        self._recv_seq = (self._recv_seq + 1) % 8
        if len(self._rx) + len(frame.info) > MAX_MESSAGE_BYTES:
            raise DlmsProtocolError(f"segmented response over {MAX_MESSAGE_BYTES} bytes")
        self._rx += frame.info
        if frame.segmented:
            self._outbox += self._frame(FrameKind.RR)  # ask for the next segment
            return None
        return self._on_message(bytes(self._rx))

    def _on_rr(self, frame: HdlcFrame) -> ConnectionEvent | None:
        if not self._tx or frame.recv_seq != self._send_seq:
            raise DlmsProtocolError(f"unexpected RR (N(R) {frame.recv_seq}) from the meter")
        chunk = self._tx.pop(0)
        self._outbox += self._frame(FrameKind.I, chunk, segmented=bool(self._tx))
        return None

    def _on_message(self, message: bytes) -> ConnectionEvent:
        self._rx.clear()
        if self._tx:
            raise DlmsProtocolError("the meter answered before our message was complete")
        if not message.startswith(LLC_RESPONSE):
            raise DlmsProtocolError(f"response without the LLC header E6 E7 00: {message.hex()}")
        apdu = decode_apdu(message[3:])
        if self._state is State.AWAITING_AARE:
            if isinstance(apdu, Aare):
                self._fire(Ev.AARE_ACCEPTED if apdu.accepted else Ev.AARE_REJECTED)
                return Associated(apdu) if apdu.accepted else Rejected(apdu)
            if isinstance(apdu, ExceptionResponse | ConfirmedServiceError):
                self._fire(Ev.AARE_REJECTED)
                return Rejected(Aare(result=1, diagnostic=1))
        elif self._state is State.AWAITING_RLRE:
            if isinstance(apdu, ReleaseResponse):
                self._fire(Ev.RLRE)
                return Released(apdu)
        elif isinstance(
            apdu,
            GetResponse | GetResponseBlock | GetResponseList | ActionResponse
            | ExceptionResponse | ConfirmedServiceError | CipheredApdu,
        ):
            self._fire(Ev.RESPONSE)
            return Response(apdu)
        raise DlmsProtocolError(f"{type(apdu).__name__} in state {self._state.value}")
