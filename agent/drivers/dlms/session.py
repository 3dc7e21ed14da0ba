"""One client's link and association to one DLMS meter, and the COSEM services over it.

The codecs and the connection table below it do no I/O; ``DlmsSession``
writes frames to a ``Transport``, reads bytes with deadlines, and offers
GET (one attribute, or a list), block transfer and ACTION to ``device.py``.

Association: SNRM/UA, then AARQ from the client address, either with low-level
security (the password in calling-authentication-value, mechanism
2.16.756.5.8.2.1; none for the public client), or, given a ``DlmsSecurity``,
with HLS-GMAC and ciphering (``security.py``: the AARQ/AARE, pass 3 and pass 4,
then every request protected and every response verified). A rejection raises
``DlmsAssociationError`` with the AARE's result and diagnostic (an HLS one with
authentication-failure: ``DlmsSecurityError`` why "auth_failed"); a failed HLS
pass or a response that does not verify raises ``DlmsSecurityError`` and drops
the link, so the next call starts a fresh association. The association is
kept between calls and opened again: when it has been idle for
IDLE_REASSOCIATE_S (meters drop a quiet link after their HDLC inactivity
time-out, 120 s by default); after any error (timeout, bad frame: the next
call starts with a fresh SNRM, which resets the meter's link too); and once,
at once, if the meter answers a request with DM or FRMR (it had dropped the
link, or another client had reset it). ``association``
counts the associations made (diagnostics). ``close()`` releases (RLRQ) and
disconnects (DISC), best effort.

Errors: ``TimeoutError_`` (no complete frame within the allowance),
``DlmsChecksumError`` (HCS/FCS), ``DlmsProtocolError`` (anything malformed),
``DlmsAssociationError``, ``DlmsSecurityError``, ``DeviceException`` (an
ExceptionResponse, a confirmedServiceError, an action-result other than success;
``.code``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final

from agent.clock import Clock, SystemClock
from agent.drivers.dlms import cosem
from agent.drivers.dlms.apdu import (
    ACTION,
    BLOCK_TRANSFER_WITH_GET,
    DIAG_AUTHENTICATION_FAILURE,
    GET,
    MAX_LIST,
    MECHANISM_LLS,
    MULTIPLE_REFERENCES,
    Aare,
    Aarq,
    ActionRequest,
    ActionResponse,
    Apdu,
    CipheredApdu,
    ConfirmedServiceError,
    ExceptionResponse,
    GetRequest,
    GetRequestList,
    GetRequestNext,
    GetResponse,
    GetResponseBlock,
    GetResponseList,
    ReleaseRequest,
    decode_results,
)
from agent.drivers.dlms.axdr import Data, Tag, decode
from agent.drivers.dlms.connection import (
    Associated,
    ClientConnection,
    Connected,
    ConnectionEvent,
    Disconnected,
    Rejected,
    Response,
    State,
)
from agent.drivers.dlms.errors import (
    DlmsAssociationError,
    DlmsIncompleteError,
    DlmsProtocolError,
    DlmsSecurityError,
)
from agent.drivers.dlms.hdlc import HdlcAddress
from agent.drivers.dlms.obis import Obis
from agent.drivers.dlms.security import DlmsSecurity, SecureAssociation
from agent.drivers.sansio import NeedData
from agent.drivers.transport import Transport, frame_time_s
from agent.errors import DeviceException, DriverError, TimeoutError_

# What a meter may take to start answering a frame, on top of the frame's
# line time. IEC 62056-46 leaves it to the meter; IS 15959 meters answer in
# 50-500 ms, so 1 s is generous without stalling a poll cycle for long.
RESPONSE_LATENCY_S: Final = 1.0
# Inside a frame a quiet gap this long means the sender stopped (USB adapters
# deliver in bursts of up to 16 ms).
FRAME_GAP_S: Final = 0.05
MAX_READ_BYTES: Final = 4096
# Re-associate before the meter's inactivity time-out (120 s default) drops us.
IDLE_REASSOCIATE_S: Final = 90.0
MAX_PDU_SIZE: Final = 1024  # the client-max-receive-pdu-size we announce
# A block-transferred GET longer than this many blocks is refused (64 KiB at
# our PDU size: a whole profile generic of a real meter is far less).
MAX_BLOCKS: Final = 64
PROPOSED_CONFORMANCE: Final = GET | ACTION | BLOCK_TRANSFER_WITH_GET | MULTIPLE_REFERENCES

Attribute = tuple[int, Obis, int]


class DlmsSession:
    """The client side of one meter's link (see the module doc)."""

    def __init__(self, transport: Transport, address: int, *, password: bytes | None,
                 client_address: int, clock: Clock | None = None,
                 security: DlmsSecurity | None = None) -> None:
        self._transport = transport
        self._address = address
        self._password = password
        self._security = security
        self._secure: SecureAssociation | None = None  # the HLS association, once accepted
        self._random: Callable[[int], bytes] = (
            security.random_bytes if security is not None and security.random_bytes
            else os.urandom)
        self._clock: Clock = clock or SystemClock()
        self._conn = ClientConnection(HdlcAddress.server(address), HdlcAddress(client_address))
        self._last_ok_s = float("-inf")
        self._invoke = 0
        self.conformance = 0  # what the meter's AARE granted
        self.association = 0  # associations made so far
        self.link_seen = False  # the meter answered an SNRM at least once

    @property
    def state(self) -> State:
        return self._conn.state

    # -- frames on the wire ------------------------------------------------------------
    def _frame_allowance_s(self, timeout_s: float | None) -> float:
        latency_s = RESPONSE_LATENCY_S if timeout_s is None else timeout_s
        longest = self._conn.params.max_info_tx + 20  # flags, format, addresses, HCS, FCS
        return latency_s + frame_time_s(longest, self._transport.baudrate)

    def _exchange(self, frame: bytes, timeout_s: float | None) -> ConnectionEvent:
        """Write ``frame``; the next event (segments and RRs in between are handled)."""
        allowance_s = self._frame_allowance_s(timeout_s)
        gap_s = FRAME_GAP_S + frame_time_s(4, self._transport.baudrate)
        conn, clock = self._conn, self._clock
        try:
            # Bytes still buffered (a late answer to a request that timed out)
            # must not be taken for this frame's answer.
            self._transport.reset_input()
            self._transport.write(frame)
            deadline_s = clock.monotonic_s() + allowance_s
            while True:
                remaining_s = deadline_s - clock.monotonic_s()
                if remaining_s <= 0:
                    conn.deadline_passed()
                listening = conn.reader.in_frame or conn.reader.failed_since_frame > 0
                wait_s = min(remaining_s, gap_s) if listening else remaining_s
                conn.receive_data(self._transport.read(MAX_READ_BYTES, max(wait_s, 0.0)))
                event = conn.next_event()
                more = conn.data_to_send()
                if more:
                    self._transport.write(more)
                    deadline_s = clock.monotonic_s() + allowance_s
                if not isinstance(event, NeedData):
                    return event
        except DlmsIncompleteError as exc:
            self._drop()
            raise TimeoutError_(f"DLMS meter {self._address}: {exc}") from exc
        except DriverError:
            self._drop()
            raise

    def _drop(self) -> None:
        """Forget the link: the next call starts with a fresh SNRM."""
        self._secure = None
        if self._conn.state is not State.DISCONNECTED:
            self._conn.reset()

    def _associate(self, timeout_s: float | None) -> None:
        idle = self._clock.monotonic_s() - self._last_ok_s > IDLE_REASSOCIATE_S
        if self._conn.state is State.ASSOCIATED and not idle:
            return
        self._drop()  # a fresh SNRM resets the meter's side as well
        event = self._exchange(self._conn.connect(), timeout_s)
        if not isinstance(event, Connected):
            raise DriverError(f"DLMS meter {self._address}: SNRM answered with DM")
        self.link_seen = True
        if self._security is not None:
            self.conformance = self._associate_hls(self._security, timeout_s)
        else:
            mechanism = None if self._password is None else MECHANISM_LLS
            aarq = Aarq(PROPOSED_CONFORMANCE, MAX_PDU_SIZE, mechanism, self._password)
            self.conformance = self._aare(aarq, timeout_s).conformance
        self.association += 1
        self._last_ok_s = self._clock.monotonic_s()

    def _aare(self, aarq: Aarq, timeout_s: float | None, *, hls: bool = False) -> Aare:
        """The meter's accepting AARE to ``aarq``; a refusal raises."""
        event = self._exchange(self._conn.associate(aarq), timeout_s)
        if isinstance(event, Rejected):
            aare = event.aare
            self._drop()
            message = (f"DLMS meter {self._address}: association refused, result {aare.result}"
                       f", diagnostic {aare.diagnostic} "
                       f"({cosem.diagnostic_name(aare.diagnostic)})")
            if hls and aare.diagnostic == DIAG_AUTHENTICATION_FAILURE:
                raise DlmsSecurityError(f"{message}: wrong keys or system title?",
                                        "auth_failed")
            raise DlmsAssociationError(message, aare.result, aare.diagnostic)
        if not isinstance(event, Associated):  # DM: the meter dropped the new link
            self._drop()
            raise DriverError(f"DLMS meter {self._address}: AARQ answered with DM")
        return event.aare

    def _associate_hls(self, security: DlmsSecurity, timeout_s: float | None) -> int:
        """Passes 1-4 of HLS-GMAC; the negotiated conformance."""
        secure = SecureAssociation(security, self._random)
        aare = self._aare(secure.aarq(PROPOSED_CONFORMANCE, MAX_PDU_SIZE), timeout_s, hls=True)
        try:
            initiate = secure.accept(aare)
            self._secure = secure  # pass 3 already goes out ciphered
            response = self._send(secure.pass3(self._next_invoke()), timeout_s)
            if response is None:
                raise DriverError(f"DLMS meter {self._address}: the link dropped during HLS")
            secure.pass4(response)
        except DriverError:
            self._drop()
            raise
        return initiate.conformance

    def _send(self, apdu: Apdu, timeout_s: float | None) -> Apdu | None:
        """``apdu`` out (protected in an HLS association), the response in (verified);
        None when the meter answered DM or FRMR (the link is then dropped)."""
        secure = self._secure
        wire = secure.protect(apdu) if secure is not None else apdu
        event = self._exchange(self._conn.request(wire), timeout_s)
        if isinstance(event, Disconnected):
            self._drop()
            return None
        if not isinstance(event, Response):
            self._drop()
            raise DlmsProtocolError(f"unexpected {type(event).__name__}")
        if secure is None:
            if isinstance(event.apdu, CipheredApdu):
                self._drop()
                raise DlmsProtocolError("a ciphered response in an unciphered association")
            return event.apdu
        try:
            return secure.unprotect(event.apdu)
        except DriverError:
            self._drop()  # a fresh association (and HLS) next time, not this link
            raise

    def _request(self, apdu: Apdu, timeout_s: float | None, *, retry: bool = True) -> Apdu:
        # Bound: one re-association when the meter says DM (it dropped the link).
        for _ in range(2 if retry else 1):
            self._associate(timeout_s)
            response = self._send(apdu, timeout_s)
            if response is None:
                continue
            self._last_ok_s = self._clock.monotonic_s()
            if isinstance(response, ExceptionResponse):
                raise DeviceException(
                    f"DLMS meter {self._address}: exception response, state error "
                    f"{response.state_error}, service error {response.service_error}",
                    response.service_error,
                )
            if isinstance(response, ConfirmedServiceError):
                raise DeviceException(
                    f"DLMS meter {self._address}: confirmed service error "
                    f"{response.service}/{response.error_class}/{response.error}",
                    response.error,
                )
            invoke = getattr(response, "invoke", None)
            if invoke is not None and invoke & 0x0F != getattr(apdu, "invoke", 0) & 0x0F:
                self._drop()
                raise DlmsProtocolError(f"invoke id {invoke & 0x0F} answers another request")
            return response
        raise DriverError(f"DLMS meter {self._address}: the link dropped again (DM)")

    def _next_invoke(self) -> int:
        self._invoke = (self._invoke + 1) % 16
        return 0xC0 | self._invoke

    # -- COSEM services ---------------------------------------------------------------
    def get(self, class_id: int, obis: Obis, attribute: int, timeout_s: float | None) -> Data:
        invoke = self._next_invoke()
        what = f"GET {class_id}/{obis}/{attribute}"
        response = self._request(GetRequest(class_id, obis, attribute, invoke), timeout_s)
        if isinstance(response, GetResponse):
            if response.error is not None:
                raise DeviceException(
                    f"{what}: {cosem.access_result_name(response.error)}", response.error
                )
            assert response.data is not None
            return response.data
        return decode(self._blocks(response, invoke, what, timeout_s))

    def _blocks(self, response: Apdu, invoke: int, what: str, timeout_s: float | None) -> bytes:
        """The raw data of a block transfer that ``response`` starts (GET-Request-Next)."""
        raw = bytearray()
        for expected in range(1, MAX_BLOCKS + 1):
            if not isinstance(response, GetResponseBlock) or response.block_number != expected:
                self._drop()
                raise DlmsProtocolError(f"{what}: block {expected} expected, got {response}")
            if response.error is not None:
                raise DeviceException(
                    f"{what}: {cosem.access_result_name(response.error)}", response.error
                )
            raw += response.raw
            if response.last:
                return bytes(raw)
            response = self._request(GetRequestNext(expected, invoke), timeout_s, retry=False)
        self._drop()
        raise DlmsProtocolError(f"{what}: more than {MAX_BLOCKS} blocks")

    def get_many(
        self, attributes: list[Attribute], timeout_s: float | None
    ) -> list[Data | int]:
        """Each attribute's value or data-access-result: one GET-With-List per MAX_LIST
        when the meter granted multiple-references, else one GET each."""
        if len(attributes) == 1 or not self.conformance & MULTIPLE_REFERENCES:
            results: list[Data | int] = []
            for class_id, obis, attribute in attributes:
                try:
                    results.append(self.get(class_id, obis, attribute, timeout_s))
                except DeviceException as exc:
                    results.append(exc.code)
            return results
        results = []
        for start in range(0, len(attributes), MAX_LIST):
            chunk = tuple(attributes[start : start + MAX_LIST])
            invoke = self._next_invoke()
            what = f"GET list of {len(chunk)}"
            response = self._request(GetRequestList(chunk, invoke), timeout_s)
            if isinstance(response, GetResponseList):
                part = response.results
            else:
                part = decode_results(self._blocks(response, invoke, what, timeout_s))
            if len(part) != len(chunk):
                self._drop()
                raise DlmsProtocolError(f"{what}: {len(part)} results")
            results.extend(part)
        return results

    def action(self, class_id: int, obis: Obis, method: int, timeout_s: float | None) -> None:
        request = ActionRequest(class_id, obis, method, Data(Tag.INTEGER, 0), self._next_invoke())
        response = self._request(request, timeout_s)
        if not isinstance(response, ActionResponse):
            raise DlmsProtocolError(f"ACTION answered with {type(response).__name__}")
        if response.result != 0 or response.error is not None:
            code = response.result or (response.error or 0)
            raise DeviceException(
                f"ACTION {class_id}/{obis}/{method}: {cosem.access_result_name(code)}", code
            )

    def close(self, *, timeout_s: float | None = None) -> None:
        """Release the association and the link (best effort: errors are swallowed)."""
        try:
            if self._secure is not None:
                self._secure.finish()  # the meter's counters seen so far, to disk
            if self._conn.state is State.ASSOCIATED:
                self._exchange(self._conn.release(ReleaseRequest()), timeout_s)
            if self._conn.state in (State.CONNECTED, State.ASSOCIATED):
                self._exchange(self._conn.disconnect(), timeout_s)
        except DriverError:
            pass  # the meter's inactivity time-out ends the link anyway
        finally:
            self._drop()

