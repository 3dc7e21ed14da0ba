"""HLS-GMAC and the APDU protection of one association, the client's side, sans-IO.

Implements the client's part of the DLMS UA Green Book (IEC 62056-5-3:2017)
§9.2.7.4 four-pass high-level security with mechanism 5, 2.16.756.5.8.2.5
(GMAC), and §9.2.7.2 APDU protection with security suite 0, as the IS 15959
"utility settings" client (0x30) uses them:

    pass 1  AARQ: context LN with ciphering, calling-AP-title = our system title,
            mechanism 5, CtoS (``challenge_bytes`` random bytes), user-information
            = a glo-initiateRequest (carrying a fresh dedicated key when the
            ``form`` is a ded- one)
    pass 2  AARE: responding-AP-title = the meter's system title (it must be the
            configured one), StoC, a glo-initiateResponse, deciphered with that title
    pass 3  ACTION 15 / 0.0.40.0.0.255 / 1 reply_to_HLS_authentication, ciphered,
            with f(StoC) = SC || IC || GMAC(SC || AK || StoC)
    pass 4  its response carries the meter's f(CtoS), verified here: only then is
            the association usable (``authenticated``)

Every xDLMS APDU after pass 2 goes out with authenticated encryption (SC 0x30) in
``form``; every response must come back authenticated (SC 0x10 or 0x30), from the
meter's title, with an invocation counter above the last one seen from it; a plain
ExceptionResponse or confirmedServiceError is let through (it carries no value).
The global key's counters are durable (``counters.py``, injected as a
``CounterStore``); a dedicated key is random per association, so its counters live
in memory. Each check raises ``DlmsSecurityError`` (errors.py) with its ``why``; a
tag is verified before its counter is recorded, so a forged frame cannot push the
recorded counter up.
``DlmsSecurity`` is the configuration (keys, titles, counters); a
``SecureAssociation`` is one association's state. No I/O: the random source is
injected too.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from agent.drivers.dlms import ciphering
from agent.drivers.dlms.acse import CHALLENGE_MAX, CHALLENGE_MIN
from agent.drivers.dlms.apdu import (
    CONTEXT_LN_CIPHERED,
    GENERAL_PROTECTION,
    MECHANISM_HLS_GMAC,
    SERVICE_DECIPHERING,
    SERVICE_INVOCATION_COUNTER,
    Aare,
    Aarq,
    ActionRequest,
    ActionResponse,
    Apdu,
    CipheredApdu,
    ConfirmedServiceError,
    ExceptionResponse,
    InitiateRequest,
    InitiateResponse,
    decode_apdu,
)
from agent.drivers.dlms.axdr import Data, Tag
from agent.drivers.dlms.ciphered import (
    FORMS,
    IC_MAX,
    SC_AUTHENTICATED,
    SC_AUTHENTICATED_ENCRYPTED,
    SUITE_0,
    TITLE_BYTES,
)
from agent.drivers.dlms.errors import DlmsProtocolError, DlmsSecurityError
from agent.drivers.dlms.obis import Obis

ASSOCIATION_LN: Final = Obis(0, 0, 40, 0, 0, 255)  # the current association, class 15
REPLY_TO_HLS: Final = 1  # class 15 method 1 reply_to_HLS_authentication
DEFAULT_CHALLENGE_BYTES: Final = 32
DEDICATED_KEY_BYTES: Final = 16
_KEY_ID_LABEL: Final = b"meter-agent/dlms/invocation-counter"


def key_id(key: bytes) -> str:
    """A one-way fingerprint of ``key``: names its counters without revealing it."""
    return hmac.new(key, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]


class CounterStore(Protocol):
    """Invocation counters of one meter (``counters.InvocationCounters``)."""

    def next_client(self, key_id: str) -> int: ...

    def last_server(self, key_id: str, title: bytes) -> int: ...

    def see_server(self, key_id: str, title: bytes, ic: int) -> None: ...

    def persist(self) -> None: ...


@dataclass(frozen=True, slots=True)
class DlmsSecurity:
    """HLS-GMAC with suite 0 for one meter. ``server_title`` None: any title the meter
    gives is taken (a swapped meter then goes unnoticed). Keys never show in repr."""

    client_title: bytes
    ek: bytes = field(repr=False)  # global unicast encryption key (GUEK)
    ak: bytes = field(repr=False)  # authentication key (GAK)
    counters: CounterStore
    server_title: bytes | None = None
    form: str = "general-glo"  # ciphered.FORMS: how requests are protected
    suite: int = SUITE_0
    challenge_bytes: int = DEFAULT_CHALLENGE_BYTES
    random_bytes: Callable[[int], bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.suite != SUITE_0:
            raise ValueError(f"security suite {self.suite} is not implemented (only 0)")
        if len(self.ek) != ciphering.KEY_BYTES or len(self.ak) != ciphering.KEY_BYTES:
            raise ValueError(f"suite 0 keys are {ciphering.KEY_BYTES} bytes")
        for title in (self.client_title, self.server_title):
            if title is not None and len(title) != TITLE_BYTES:
                raise ValueError(f"a system title is {TITLE_BYTES} bytes")
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}")
        if not CHALLENGE_MIN <= self.challenge_bytes <= CHALLENGE_MAX:
            raise ValueError(f"challenge_bytes must be {CHALLENGE_MIN}..{CHALLENGE_MAX}")


def _random(source: Callable[[int], bytes], size: int) -> bytes:
    value = source(size)
    if len(value) != size:
        raise ValueError(f"the random source gave {len(value)} bytes, not {size}")
    return value


class SecureAssociation:
    """One HLS association's state (see the module doc); made afresh for each AARQ."""

    def __init__(self, security: DlmsSecurity, random_bytes: Callable[[int], bytes]) -> None:
        self.security = security
        self._kid = key_id(security.ek)
        self.ctos = _random(random_bytes, security.challenge_bytes)
        self.dedicated_key = (_random(random_bytes, DEDICATED_KEY_BYTES)
                              if security.form in ("general-ded", "ded") else None)
        self.server_title: bytes | None = None
        self.stoc: bytes | None = None
        self.authenticated = False
        self._aare_ic = -1
        self._ded_client_ic = 0
        self._ded_server_ic = -1

    # -- passes 1 to 4 -----------------------------------------------------------------
    def aarq(self, conformance: int, max_pdu_size: int) -> Aarq:
        s = self.security
        if s.form.startswith("general"):
            conformance |= GENERAL_PROTECTION
        initiate = InitiateRequest(conformance, max_pdu_size, 6, self.dedicated_key)
        glo = self._protect_global(initiate.to_bytes(), "glo")
        return Aarq(0, 0, mechanism=MECHANISM_HLS_GMAC, password=self.ctos, dlms_version=0,
                    context=CONTEXT_LN_CIPHERED, calling_title=s.client_title,
                    ciphered_initiate=glo.to_bytes())

    def accept(self, aare: Aare) -> InitiateResponse:
        """The deciphered InitiateResponse of an accepted AARE, after every check."""
        s = self.security
        if aare.mechanism != MECHANISM_HLS_GMAC:
            raise DlmsProtocolError(f"HLS-GMAC answered with mechanism {aare.mechanism}")
        title = aare.responding_title
        if title is None:
            raise DlmsProtocolError("HLS AARE without a responding-AP-title")
        if s.server_title is not None and title != s.server_title:
            raise DlmsSecurityError(f"the meter's system title is {title.hex()}, not the "
                                    f"configured {s.server_title.hex()}: another meter?",
                                    "system_title_mismatch")
        if title == s.client_title:
            raise DlmsSecurityError("the meter gives our own system title",
                                    "system_title_mismatch")
        stoc = aare.challenge
        if stoc is None or not CHALLENGE_MIN <= len(stoc) <= CHALLENGE_MAX:
            raise DlmsProtocolError(f"StoC of {len(stoc or b'')} bytes (it is 8..64)")
        if aare.ciphered_initiate is None:
            raise DlmsSecurityError("the AARE's InitiateResponse is not ciphered", "bad_tag")
        glo = CipheredApdu.from_bytes(aare.ciphered_initiate)
        if glo.tag != 0x28 or not glo.security_control & SC_AUTHENTICATED:
            raise DlmsSecurityError("the AARE's InitiateResponse is not an authenticated "
                                    "glo-initiateResponse", "bad_tag")
        plain = ciphering.unprotect(glo, system_title=title, ek=s.ek, ak=s.ak)
        self._see(title, glo.invocation_counter, "the AARE")
        self.server_title, self.stoc = title, stoc
        self._aare_ic = glo.invocation_counter
        return InitiateResponse.from_bytes(plain)

    def pass3(self, invoke: int) -> ActionRequest:
        """reply_to_HLS_authentication with f(StoC) (to be protected like any request)."""
        s = self.security
        if self.stoc is None:
            raise DlmsProtocolError("pass 3 before an accepted AARE")
        ic = s.counters.next_client(self._kid)
        value = ciphering.hls_value(s.client_title, ic, s.ek, s.ak, self.stoc)
        return ActionRequest(15, ASSOCIATION_LN, REPLY_TO_HLS, Data(Tag.OCTET_STRING, value),
                             invoke)

    def pass4(self, response: Apdu) -> None:
        """Verify the meter's f(CtoS): DlmsSecurityError auth_failed unless it is right."""
        s = self.security
        if not isinstance(response, ActionResponse):
            raise DlmsProtocolError(f"pass 3 answered with {type(response).__name__}")
        if response.result != 0 or response.error is not None:
            raise DlmsSecurityError(f"the meter refused our f(StoC) (action-result "
                                    f"{response.result}): wrong keys?", "auth_failed")
        if response.data is None or response.data.tag is not Tag.OCTET_STRING:
            raise DlmsSecurityError("pass 4 without the meter's f(CtoS)", "auth_failed")
        assert self.server_title is not None
        ic = ciphering.check_hls_value(response.data.octets, self.server_title, s.ek, s.ak,
                                       self.ctos)
        if ic <= self._aare_ic:
            raise DlmsSecurityError(f"f(CtoS) counter {ic} is not above the AARE's "
                                    f"{self._aare_ic}", "replayed_counter")
        s.counters.see_server(self._kid, self.server_title, ic)
        s.counters.persist()
        self.authenticated = True

    def finish(self) -> None:
        """The association ends: the meter's counters seen so far go to disk."""
        self.security.counters.persist()

    # -- APDUs -------------------------------------------------------------------------
    def _protect_global(self, plain: bytes, form: str) -> CipheredApdu:
        s = self.security
        ic = s.counters.next_client(self._kid)
        return ciphering.protect(plain, form=form, sc=SC_AUTHENTICATED_ENCRYPTED,
                                 system_title=s.client_title, ic=ic, ek=s.ek, ak=s.ak)

    def protect(self, apdu: Apdu) -> CipheredApdu:
        s = self.security
        if self.dedicated_key is None:
            return self._protect_global(apdu.to_bytes(), s.form)
        if self._ded_client_ic >= IC_MAX - 1:  # 2^32 requests in one association: never
            raise DlmsSecurityError("the dedicated key's counter is used up",
                                    "counter_exhausted")
        self._ded_client_ic += 1
        return ciphering.protect(apdu.to_bytes(), form=s.form, sc=SC_AUTHENTICATED_ENCRYPTED,
                                 system_title=s.client_title, ic=self._ded_client_ic,
                                 ek=self.dedicated_key, ak=s.ak)

    def unprotect(self, apdu: Apdu) -> Apdu:
        """The plain response inside ``apdu``, verified; raises DlmsSecurityError."""
        s = self.security
        if isinstance(apdu, ExceptionResponse):
            if apdu.service_error == SERVICE_DECIPHERING:
                raise DlmsSecurityError("the meter could not decipher our request (wrong "
                                        "key?)", "bad_tag")
            if apdu.service_error == SERVICE_INVOCATION_COUNTER:
                raise DlmsSecurityError(f"the meter refused our invocation counter as used "
                                        f"(it expects {apdu.invocation_counter})",
                                        "replayed_counter")
            return apdu  # an error without a value: nothing to trust or distrust
        if isinstance(apdu, ConfirmedServiceError):
            return apdu  # likewise (a meter may send it plain)
        if not isinstance(apdu, CipheredApdu):
            raise DlmsSecurityError(f"an unprotected {type(apdu).__name__} in a ciphered "
                                    "association", "bad_tag")
        if not apdu.security_control & SC_AUTHENTICATED:
            raise DlmsSecurityError("a response without authentication (security control "
                                    f"{apdu.security_control:#04x})", "bad_tag")
        title = self.server_title
        assert title is not None
        if apdu.general and apdu.system_title != title:
            other = (apdu.system_title or b"").hex()
            raise DlmsSecurityError(f"a response from system title {other}, not the "
                                    f"associated {title.hex()}", "system_title_mismatch")
        if apdu.dedicated:
            if self.dedicated_key is None:
                raise DlmsSecurityError("a ded-ciphered response, but no dedicated key",
                                        "key_missing")
            plain = ciphering.unprotect(apdu, system_title=title, ek=self.dedicated_key,
                                        ak=s.ak)
            if apdu.invocation_counter <= self._ded_server_ic:
                raise DlmsSecurityError(
                    f"response counter {apdu.invocation_counter} is not above "
                    f"{self._ded_server_ic} (dedicated key): a replay", "replayed_counter")
            self._ded_server_ic = apdu.invocation_counter
        else:
            plain = ciphering.unprotect(apdu, system_title=title, ek=s.ek, ak=s.ak)
            self._see(title, apdu.invocation_counter, "response")
        return decode_apdu(plain)

    def _see(self, title: bytes, ic: int, what: str) -> None:
        counters = self.security.counters
        last = counters.last_server(self._kid, title)
        if ic <= last:
            raise DlmsSecurityError(f"{what} counter {ic} is not above {last}, the last seen "
                                    "from this meter: a replay", "replayed_counter")
        counters.see_server(self._kid, title, ic)
