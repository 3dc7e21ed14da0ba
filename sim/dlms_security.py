"""A simulated IS 15959 meter's security: HLS-GMAC, ciphered APDUs, its counters, faults.

The server's side of the Green Book (IEC 62056-5-3:2017) §9.2.7.4 HLS mechanism 5
(GMAC) and §9.2.7.2 APDU protection with security suite 0, as ``sim.dlms_meter``
uses it for the utility-settings client 0x30:

  AARQ     context LN with ciphering, mechanism 5, an 8-byte calling-AP-title, a
           CtoS of 8..64 bytes and a glo-initiateRequest that deciphers with the
           global key under that title, its counter above the last one seen from
           that title. Otherwise: rejected-permanent, authentication-failure (13).
           Accepted: diagnostic authentication-required (14), our system title, a
           16-byte StoC (the AARE stays under 128 bytes: dlms-cosem 21.3.2 writes
           and reads one-byte BER lengths only) and a glo-initiateResponse.
  pass 3   ACTION 15 / 0.0.40.0.0.255 / 1 with f(StoC), verified (its counter above
           the AARQ's: dlms-cosem 21.3.2 reuses the counter of the ciphered ACTION
           that carries it, so equal to that one is let through); answered with
           f(CtoS). A wrong f(StoC): action-result other-reason, association gone.
  APDUs    ciphered requests in any of the four forms, deciphered with the global
           or the association's dedicated key; the answer goes back in the form and
           with the security control of its request, under our title and counter.
           A tag that does not verify: ExceptionResponse deciphering-error; a
           counter not above the last: ExceptionResponse invocation-counter-error
           with the lowest counter we would take.
  counters our own: one per protected APDU, and never below the clock in tenths of
           a second since 2025-01-01 (so a restarted simulator stays above what an
           agent saw before; it only runs ahead when it answers over 10 a second);
           the client's: the last seen per client title (global key, at most
           MAX_CLIENT_TITLES titles) and per association (dedicated key).
  faults   ``wrong_key``: the meter's keys are others (every bit flipped), as if it
           had been given other keys; ``replay_counter``: it reuses its last counter.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Final

from agent.drivers.dlms.apdu import (
    DIAG_AUTHENTICATION_FAILURE,
    DIAG_AUTHENTICATION_REQUIRED,
    MECHANISM_HLS_GMAC,
    REJECTED_PERMANENT,
    SERVICE_DECIPHERING,
    SERVICE_INVOCATION_COUNTER,
    Aare,
    Aarq,
    ActionRequest,
    ActionResponse,
    CipheredApdu,
    ExceptionResponse,
    InitiateRequest,
    InitiateResponse,
)
from agent.drivers.dlms.axdr import Data, Tag
from agent.drivers.dlms.ciphered import IC_MAX, SC_AUTHENTICATED
from agent.drivers.dlms.ciphering import check_hls_value, hls_value, protect, unprotect
from agent.drivers.dlms.cosem import OTHER_REASON
from agent.drivers.dlms.errors import DlmsProtocolError, DlmsSecurityError

if TYPE_CHECKING:
    from agent.clock import Clock

STOC_BYTES: Final = 16
MAX_CLIENT_TITLES: Final = 64
IC_EPOCH_S: Final = 1_735_689_600  # 2025-01-01T00:00Z


class MeterSecurity:
    """One simulated meter's keys, title, counters and HLS state (see the module doc)."""

    def __init__(self, title: bytes, ek: bytes, ak: bytes, *, clock: Clock, seed: int) -> None:
        self.title = title
        self._ek, self._ak = ek, ak
        self._clock = clock
        self._rng = random.Random(seed)
        self.wrong_key = False
        self.replay_counter = False
        self._ic = 1
        self._last_ic: int | None = None
        self._client_ic: dict[bytes, int] = {}  # global key: last counter per client title
        self.hls_failures = 0
        self.reset()

    def reset(self) -> None:
        """No association any more (RLRQ, SNRM, DISC, a failed pass 3)."""
        self.client_title: bytes | None = None
        self.ctos: bytes | None = None
        self.stoc: bytes | None = None
        self.dedicated_key: bytes | None = None
        self.authenticated = False
        self._aarq_ic = -1
        self._ded_client_ic = -1

    @property
    def ek(self) -> bytes:
        return bytes(b ^ 0xFF for b in self._ek) if self.wrong_key else self._ek

    @property
    def ak(self) -> bytes:
        return bytes(b ^ 0xFF for b in self._ak) if self.wrong_key else self._ak

    def next_ic(self) -> int:
        if self.replay_counter and self._last_ic is not None:
            return self._last_ic
        floor = max(1, int((self._clock.time_s() - IC_EPOCH_S) * 10))
        ic = min(max(self._ic, floor), IC_MAX - 1)
        self._ic, self._last_ic = ic + 1, ic
        return ic

    # -- association -------------------------------------------------------------------
    def accept_aarq(self, aarq: Aarq) -> InitiateRequest | Aare:
        """The deciphered InitiateRequest of an HLS AARQ, or the AARE that refuses it."""
        self.reset()
        title, ctos = aarq.calling_title, aarq.password
        refused = Aare(REJECTED_PERMANENT, DIAG_AUTHENTICATION_FAILURE, context=aarq.context)
        if (title is None or ctos is None or not 8 <= len(ctos) <= 64
                or aarq.ciphered_initiate is None or title == self.title):
            return refused
        if title not in self._client_ic and len(self._client_ic) >= MAX_CLIENT_TITLES:
            return refused
        try:
            glo = CipheredApdu.from_bytes(aarq.ciphered_initiate)
            if glo.tag != 0x21 or not glo.security_control & SC_AUTHENTICATED:
                return refused
            initiate = InitiateRequest.from_bytes(
                unprotect(glo, system_title=title, ek=self.ek, ak=self.ak))
        except (DlmsProtocolError, DlmsSecurityError):
            self.hls_failures += 1
            return refused
        if glo.invocation_counter <= self._client_ic.get(title, -1):
            return refused
        if initiate.dedicated_key is not None and len(initiate.dedicated_key) != 16:
            return refused
        self._client_ic[title] = self._aarq_ic = glo.invocation_counter
        self.client_title, self.ctos = title, ctos
        self.dedicated_key = initiate.dedicated_key
        return initiate

    def aare(self, aarq: Aarq, conformance: int, max_pdu_size: int) -> Aare:
        """The accepting AARE after ``accept_aarq``: StoC and a glo-initiateResponse."""
        self.stoc = self._rng.randbytes(STOC_BYTES)
        initiate = InitiateResponse(conformance, max_pdu_size).to_bytes()
        glo = protect(initiate, form="glo", sc=0x30, system_title=self.title,
                      ic=self.next_ic(), ek=self.ek, ak=self.ak)
        return Aare(0, DIAG_AUTHENTICATION_REQUIRED, context=aarq.context,
                    responding_title=self.title, mechanism=MECHANISM_HLS_GMAC,
                    challenge=self.stoc, ciphered_initiate=glo.to_bytes())

    def pass3(self, request: ActionRequest) -> ActionResponse:
        """reply_to_HLS_authentication: f(StoC) verified, f(CtoS) back."""
        data = request.data
        value = data.octets if data is not None and data.tag is Tag.OCTET_STRING else b""
        assert self.client_title is not None and self.stoc is not None
        assert self.ctos is not None
        try:
            ic = check_hls_value(value, self.client_title, self.ek, self.ak, self.stoc)
        except DlmsSecurityError:
            ic = -1
        if ic <= self._aarq_ic:
            self.hls_failures += 1
            self.reset()
            return ActionResponse(request.invoke, OTHER_REASON)
        title = self.client_title
        self._client_ic[title] = max(ic, self._client_ic.get(title, -1))
        self.authenticated = True
        reply = hls_value(self.title, self.next_ic(), self.ek, self.ak, self.ctos)
        return ActionResponse(request.invoke, 0, Data(Tag.OCTET_STRING, reply))

    # -- APDUs -------------------------------------------------------------------------
    def decipher(self, ciphered: CipheredApdu) -> bytes | ExceptionResponse:
        """The plain request, or the ExceptionResponse that refuses it."""
        title = self.client_title
        key = self.dedicated_key if ciphered.dedicated else self.ek
        refused = ExceptionResponse(1, SERVICE_DECIPHERING)
        if (title is None or key is None or not ciphered.security_control & SC_AUTHENTICATED
                or (ciphered.general and ciphered.system_title != title)):
            return refused
        try:
            plain = unprotect(ciphered, system_title=title, ek=key, ak=self.ak)
        except (DlmsProtocolError, DlmsSecurityError):
            return refused
        ic = ciphered.invocation_counter
        last = self._ded_client_ic if ciphered.dedicated else self._client_ic.get(title, -1)
        if ic <= last:
            return ExceptionResponse(1, SERVICE_INVOCATION_COUNTER, min(last + 1, IC_MAX))
        if ciphered.dedicated:
            self._ded_client_ic = ic
        else:
            self._client_ic[title] = ic
        return plain

    def encipher(self, plain: bytes, request: CipheredApdu) -> bytes:
        """``plain`` protected as ``request`` was: same form, same security control."""
        key = self.dedicated_key if request.dedicated else self.ek
        assert key is not None
        return protect(plain, form=request.form, sc=request.security_control,
                       system_title=self.title, ic=self.next_ic(), ek=key,
                       ak=self.ak).to_bytes()
