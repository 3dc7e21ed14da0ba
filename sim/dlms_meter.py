"""A simulated IS 15959 meter's COSEM application: association, GET, ACTION, event logs.

The HDLC link in front of it is ``sim.dlms_line``; energy and load are
``sim.load.LoadModel`` (relay open: no power, no energy). What it serves:

  association  AARQ, LN context: no authentication only for the public client
               (0x10, which may read the serial, the logical device name and
               the clock), LLS with the meter's password for any client (all
               objects). A wrong password is rejected-permanent with diagnostic
               13 (authentication-failure). Negotiated conformance: GET, ACTION,
               block transfer with GET, multiple references (GET-With-List);
               ``server_conformance`` narrows it.
  security     with HLS keys (``ek``, ``ak``) the meter is an IS 15959 meter with
               security (``sim.dlms_security``): client 0x10 public only, 0x20
               LLS only, 0x30 HLS-GMAC with ciphering only (any other client as
               above); the relay (ACTION on class 70) only from an HLS
               association, read-write-denied from the others; in an HLS
               association every request must be ciphered (plain: service-not-
               allowed) and every answer is, in the request's form. Without keys
               (the model before security) LLS may do everything and HLS gets
               diagnostic 11. Faults: ``wrong_key``, ``replay_counter``.
  GET          registers (class 3: value, scaler_unit), serial (class 1),
               clock (class 8), disconnect control (class 70: output_state,
               control_state, control_mode), event logs (class 7: buffer,
               capture_objects, entries), event code objects (class 1). A
               response longer than the client's max PDU goes in blocks
               (GET-Response-With-Datablock, GET-Request-Next).
  ACTION       class 70 methods 1 remote_disconnect and 2 remote_reconnect.
  relay        the Blue Book disconnect-control state machine for
               control_mode 0 (always connected), 1 (remote_reconnect
               connects) and 2 (remote_reconnect arms: ready_for_reconnection,
               "armed", until the consumer presses the button: ``press_button``).
  event logs   the IS 15959 logs 0.0.99.98.x.255, FIFO, PROFILE_ENTRIES each,
               entries {date-time, event code, import energy}; switching the
               relay logs 301/302; ``inject_event(code)`` and ``tamper(kind)``
               (sim.faults) add others.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Final

from agent.drivers.dlms import cosem
from agent.drivers.dlms.apdu import (
    ACTION,
    BLOCK_TRANSFER_WITH_GET,
    CONTEXT_LN,
    CONTEXT_LN_CIPHERED,
    DIAG_AUTHENTICATION_FAILURE,
    DIAG_CONTEXT_NOT_SUPPORTED,
    DIAG_MECHANISM_NOT_RECOGNISED,
    DIAG_MECHANISM_REQUIRED,
    DIAG_NO_REASON,
    GENERAL_PROTECTION,
    GET,
    MECHANISM_HLS_GMAC,
    MULTIPLE_REFERENCES,
    REJECTED_PERMANENT,
    Aare,
    Aarq,
    ActionRequest,
    ActionResponse,
    Apdu,
    CipheredApdu,
    ExceptionResponse,
    GetRequest,
    GetRequestList,
    GetRequestNext,
    GetResponse,
    GetResponseBlock,
    GetResponseList,
    InitiateRequest,
    Obis,
    ReleaseRequest,
    ReleaseResponse,
    decode_apdu,
    encode_results,
)
from agent.drivers.dlms.axdr import Data, Tag
from agent.drivers.dlms.errors import DlmsProtocolError
from agent.drivers.dlms.hdlc import PUBLIC_CLIENT
from agent.drivers.dlms.security import ASSOCIATION_LN, REPLY_TO_HLS
from sim.dlms_objects import CONNECTED, DISCONNECTED, PROFILE_ENTRIES, READY, object_model
from sim.dlms_security import MeterSecurity
from sim.load import LoadModel

if TYPE_CHECKING:
    from agent.clock import Clock

SERVER_CONFORMANCE: Final = GET | ACTION | BLOCK_TRANSFER_WITH_GET | MULTIPLE_REFERENCES
SERVER_MAX_PDU: Final = 512
MIN_CLIENT_PDU: Final = 64  # below this not even a register fits: refuse the association
LOAD_SWITCH_DISCONNECTED: Final = 301
LOAD_SWITCH_CONNECTED: Final = 302
TAMPER_EVENT_CODES: Final = {
    "magnet": 201,
    "neutral_missing": 203,
    "cover_open": 251,
    "reverse_current": 51,
    "other": 205,
}
PUBLIC_OBJECTS: Final = frozenset({cosem.SERIAL, cosem.LOGICAL_DEVICE_NAME, cosem.CLOCK})
# IS 15959's clients and the one mechanism each may use, on a meter with HLS keys.
CLIENT_MECHANISMS: Final = {0x10: None, 0x20: cosem.MECHANISM_LLS, 0x30: MECHANISM_HLS_GMAC}

# Blue Book class 70: (control_mode, state, trigger) -> next state. Triggers:
# remote_disconnect (transitions b, c), remote_reconnect (a in mode 2, d in
# mode 1), button = manual_reconnect (e) / manual_disconnect (f).
CONTROL_TABLE: Final = {
    (1, CONNECTED, "remote_disconnect"): DISCONNECTED,
    (1, READY, "remote_disconnect"): DISCONNECTED,
    (1, DISCONNECTED, "remote_reconnect"): CONNECTED,
    (1, READY, "button"): CONNECTED,
    (1, CONNECTED, "button"): READY,
    (2, CONNECTED, "remote_disconnect"): DISCONNECTED,
    (2, READY, "remote_disconnect"): DISCONNECTED,
    (2, DISCONNECTED, "remote_reconnect"): READY,
    (2, READY, "button"): CONNECTED,
    (2, CONNECTED, "button"): READY,
}


class SimDlmsMeter(LoadModel):
    """One IS 15959 single-phase meter (see the module doc)."""

    def __init__(self, address: int, *, clock: Clock, serial: int, seed: int = 0,
                 speed: float = 1.0, load_scale: float = 1.0, utc_offset_s: int = 19_800,
                 import_wh: int | None = None, password: bytes = b"00000000",
                 control_mode: int = 1, keys: tuple[bytes, bytes] | None = None,
                 system_title: bytes | None = None) -> None:
        super().__init__(clock=clock, serial=serial, seed=seed, speed=speed,
                         load_scale=load_scale, utc_offset_s=utc_offset_s, import_wh=import_wh)
        self.address = address
        self.password = password
        self.control_mode = control_mode
        self.server_conformance = SERVER_CONFORMANCE
        self.control_state = CONNECTED
        self.deviation_min = -(utc_offset_s // 60)  # minutes from local time to UTC
        self.logs: dict[int, deque[tuple[int, int, int]]] = {
            category: deque(maxlen=PROFILE_ENTRIES) for category in range(7)
        }
        self.association: str | None = None  # None | "public" | "lls" | "hls-pending" | "hls"
        self.security: MeterSecurity | None = None
        if keys is not None:
            title = system_title or b"SIM" + (serial % 2**40).to_bytes(5, "big")
            self.security = MeterSecurity(title, keys[0], keys[1], clock=clock, seed=seed)
        self.client_max_pdu = SERVER_MAX_PDU
        self.conformance = 0
        self._blocks: list[bytes] = []  # the rest of a block-transferred GET
        self._block_number = 0
        self.associations = 0
        self.rejections = 0
        self.blocks_sent = 0
        self.relay_actions = 0  # ACTIONs on disconnect control that reached the meter

    @property
    def clock(self) -> Clock:
        return self._clock

    # -- test and fault API ------------------------------------------------------------
    def inject_event(self, code: int, t: int | None = None) -> None:
        """Log IS 15959 event ``code`` at ``t`` (default: the meter's clock now)."""
        self.advance()
        when = int(self.sim_time_s) if t is None else t
        self.logs[cosem.event_category(code)].append((when, code, self.import_wh))

    def tamper(self, kind: str) -> None:
        """A tamper of CONTRACT kind ``kind`` (sim.faults' control socket)."""
        self.inject_event(TAMPER_EVENT_CODES[kind])

    def press_button(self) -> None:
        """The consumer presses the meter's button (manual reconnect / disconnect)."""
        self._switch("button")

    def snapshot(self) -> dict[str, int | bool]:
        out = super().snapshot()
        out["control_state"] = self.control_state
        return out

    def reset_association(self) -> None:
        """The HDLC link was (re)set or closed: no association any more."""
        self.association = None
        self._blocks = []
        if self.security is not None:
            self.security.reset()

    def _secure(self) -> MeterSecurity:
        if self.security is None:
            raise ValueError("this simulated meter has no HLS keys")
        return self.security

    @property
    def wrong_key(self) -> bool:
        """Fault: the meter holds other keys than the agent's."""
        return self.security is not None and self.security.wrong_key

    @wrong_key.setter
    def wrong_key(self, on: bool) -> None:
        self._secure().wrong_key = on

    @property
    def replay_counter(self) -> bool:
        """Fault: the meter reuses its last invocation counter."""
        return self.security is not None and self.security.replay_counter

    @replay_counter.setter
    def replay_counter(self, on: bool) -> None:
        self._secure().replay_counter = on

    # -- relay -------------------------------------------------------------------------
    def _switch(self, trigger: str) -> bool:
        """Apply a trigger; False if this control_mode does not allow it here."""
        before = self.control_state
        after = CONTROL_TABLE.get((self.control_mode, before, trigger))
        if after is None:
            # remote_disconnect of a disconnected meter, remote_reconnect of a
            # connected one: nothing to do, and not an error
            return trigger != "button" and self.control_mode != 0
        self.advance()  # energy up to now at the old state
        self.control_state = after
        self.connected = after == CONNECTED
        if before == CONNECTED and after != CONNECTED:
            self.inject_event(LOAD_SWITCH_DISCONNECTED)
        elif after == CONNECTED:
            self.inject_event(LOAD_SWITCH_CONNECTED)
        return True

    # -- APDUs -------------------------------------------------------------------------
    def handle_apdu(self, raw: bytes, client: int) -> bytes:
        """One request APDU from ``client`` (its HDLC address) -> the response APDU."""
        try:
            apdu = decode_apdu(raw)
        except DlmsProtocolError:
            return ExceptionResponse(2, 2).to_bytes()  # service-unknown, not-supported
        if isinstance(apdu, CipheredApdu):
            return self._ciphered(apdu, client)
        if self.association in ("hls", "hls-pending") and not isinstance(
                apdu, Aarq | ReleaseRequest):
            return ExceptionResponse(1, 1).to_bytes()  # plain in a ciphered association
        return self._answer(apdu, client).to_bytes()

    def _ciphered(self, request: CipheredApdu, client: int) -> bytes:
        if self.security is None or self.association not in ("hls", "hls-pending"):
            return ExceptionResponse(1, 1).to_bytes()
        plain = self.security.decipher(request)
        if isinstance(plain, ExceptionResponse):
            return plain.to_bytes()
        try:
            inner = decode_apdu(plain)
        except DlmsProtocolError:
            return ExceptionResponse(2, 2).to_bytes()
        if isinstance(inner, Aarq | ReleaseRequest | CipheredApdu):
            return ExceptionResponse(2, 2).to_bytes()
        answer = self._answer(inner, client)
        if isinstance(answer, ExceptionResponse):
            return answer.to_bytes()  # it has no ciphered form
        return self.security.encipher(answer.to_bytes(), request)

    def _answer(self, apdu: Apdu, client: int) -> Apdu:
        if isinstance(apdu, Aarq):
            return self._associate(apdu, client)
        if isinstance(apdu, ReleaseRequest):
            self.reset_association()
            return ReleaseResponse(0)
        if self.association is None:
            return ExceptionResponse(1, 1)  # service-not-allowed, operation-not-possible
        if self.association == "hls-pending":
            if (isinstance(apdu, ActionRequest) and apdu.class_id == 15
                    and apdu.obis == ASSOCIATION_LN and apdu.method == REPLY_TO_HLS):
                response = self._secure().pass3(apdu)
                self.association = "hls" if response.result == 0 else None
                return response
            return ExceptionResponse(1, 1)  # nothing else before pass 3
        if isinstance(apdu, GetRequest):
            return self._get(apdu)
        if isinstance(apdu, GetRequestNext):
            return self._next_block(apdu)
        if isinstance(apdu, GetRequestList) and self.conformance & MULTIPLE_REFERENCES:
            return self._get_list(apdu)
        if isinstance(apdu, ActionRequest):
            return self._action(apdu)
        return ExceptionResponse(2, 2)

    def _associate(self, aarq: Aarq, client: int) -> Aare:
        self.reset_association()
        diagnostic = self._diagnostic(aarq, client)
        if diagnostic is not None:
            self.rejections += 1
            return Aare(REJECTED_PERMANENT, diagnostic, context=aarq.context)
        hls = aarq.mechanism == MECHANISM_HLS_GMAC
        initiate: InitiateRequest | Aare = InitiateRequest(
            aarq.conformance, aarq.max_pdu_size, aarq.dlms_version)
        if hls:
            initiate = self._secure().accept_aarq(aarq)
        if isinstance(initiate, Aare):
            self.rejections += 1
            return initiate
        if initiate.dlms_version < 6 or initiate.max_pdu_size < MIN_CLIENT_PDU:
            self.rejections += 1
            error = 1 if initiate.dlms_version < 6 else 3  # version too low, PDU too short
            return Aare(REJECTED_PERMANENT, DIAG_NO_REASON, initiate_error=error,
                        context=aarq.context)
        self.client_max_pdu = initiate.max_pdu_size
        granted = self.server_conformance | (GENERAL_PROTECTION if hls else 0)
        self.conformance = initiate.conformance & granted
        self.associations += 1
        if hls:
            self.association = "hls-pending"
            return self._secure().aare(aarq, self.conformance, SERVER_MAX_PDU)
        self.association = "public" if aarq.mechanism is None else "lls"
        return Aare(0, conformance=self.conformance, max_pdu_size=SERVER_MAX_PDU)

    def _diagnostic(self, aarq: Aarq, client: int) -> int | None:
        """Why the AARQ is refused (an AARE diagnostic), or None."""
        hls = aarq.mechanism == MECHANISM_HLS_GMAC and self.security is not None
        if self.security is not None and client in CLIENT_MECHANISMS:
            wanted = CLIENT_MECHANISMS[client]
            if aarq.mechanism != wanted:
                return DIAG_MECHANISM_REQUIRED if aarq.mechanism is None \
                    else DIAG_MECHANISM_NOT_RECOGNISED
        if aarq.context != (CONTEXT_LN_CIPHERED if hls else CONTEXT_LN):
            return DIAG_CONTEXT_NOT_SUPPORTED
        if aarq.mechanism is None:
            return None if client == PUBLIC_CLIENT else DIAG_MECHANISM_REQUIRED
        if aarq.mechanism == cosem.MECHANISM_LLS:
            return None if aarq.password == self.password else DIAG_AUTHENTICATION_FAILURE
        return None if hls else DIAG_MECHANISM_NOT_RECOGNISED

    def _get(self, request: GetRequest) -> Apdu:
        self._blocks = []
        if request.access_selection:
            return GetResponse(request.invoke, error=cosem.OTHER_REASON)
        self.advance()
        value = self._readable(request.class_id, request.obis, request.attribute)
        if isinstance(value, int):
            return GetResponse(request.invoke, error=value)
        response = GetResponse(request.invoke, value)
        if len(response.to_bytes()) <= self.client_max_pdu:
            return response
        return self._start_blocks(request.invoke, value.to_bytes())

    def _get_list(self, request: GetRequestList) -> Apdu:
        self._blocks = []
        self.advance()
        results = tuple(self._readable(*attribute) for attribute in request.attributes)
        response = GetResponseList(request.invoke, results)
        if len(response.to_bytes()) <= self.client_max_pdu:
            return response
        return self._start_blocks(request.invoke, encode_results(results))

    def _readable(self, class_id: int, obis: Obis, attribute: int) -> Data | int:
        if self.association == "public" and obis not in PUBLIC_OBJECTS:
            return cosem.READ_WRITE_DENIED
        return self._attribute(class_id, obis, attribute)

    def _start_blocks(self, invoke: int, raw: bytes) -> Apdu:
        if not self.conformance & BLOCK_TRANSFER_WITH_GET:
            return GetResponse(invoke, error=cosem.OTHER_REASON)
        size = self.client_max_pdu - 16  # the With-Datablock header and length field
        self._blocks = [raw[i : i + size] for i in range(0, len(raw), size)]
        self._block_number = 0
        return self._send_block(invoke)

    def _send_block(self, invoke: int) -> GetResponseBlock:
        self._block_number += 1
        self.blocks_sent += 1
        chunk = self._blocks.pop(0)
        return GetResponseBlock(invoke, not self._blocks, self._block_number, chunk)

    def _next_block(self, request: GetRequestNext) -> Apdu:
        if not self._blocks:
            return GetResponseBlock(request.invoke, True, request.block_number, error=16)
        if request.block_number != self._block_number:
            self._blocks = []
            return GetResponseBlock(request.invoke, True, request.block_number, error=19)
        return self._send_block(request.invoke)

    def _action(self, request: ActionRequest) -> ActionResponse:
        if (request.class_id, request.obis) != (70, cosem.DISCONNECT_CONTROL):
            return ActionResponse(request.invoke, cosem.OBJECT_UNDEFINED)
        self.relay_actions += 1
        # IS 15959: only the utility-settings (HLS) client may switch the supply
        if self.association != ("hls" if self.security is not None else "lls"):
            return ActionResponse(request.invoke, cosem.READ_WRITE_DENIED)
        if request.method not in (1, 2):
            return ActionResponse(request.invoke, cosem.OBJECT_UNAVAILABLE)
        trigger = "remote_disconnect" if request.method == 1 else "remote_reconnect"
        ok = self._switch(trigger)
        return ActionResponse(request.invoke, 0 if ok else cosem.OTHER_REASON)

    # -- the object model --------------------------------------------------------------
    def _attribute(self, class_id: int, obis: Obis, attribute: int) -> Data | int:
        """The attribute's value, or a data-access-result."""
        objects = self._objects()
        if obis not in objects:
            return cosem.OBJECT_UNDEFINED
        real_class, attributes = objects[obis]
        if real_class != class_id:
            return cosem.OBJECT_CLASS_INCONSISTENT
        if attribute == 1:
            return Data(Tag.OCTET_STRING, obis.to_bytes())
        value = attributes.get(attribute)
        return cosem.OBJECT_UNDEFINED if value is None else value

    def _objects(self) -> dict[Obis, tuple[int, dict[int, Data]]]:
        """Every object with its attributes now (tests override it to vary the model)."""
        return object_model(self)
