"""AES-GCM-128 protection of xDLMS APDUs and the HLS-GMAC function, security suite 0.

Implements the DLMS UA Green Book (DLMS UA 1000-2 Ed. 8, IEC 62056-5-3:2017)
§9.2.3.3 "AES-GCM" and §9.2.7.2 for security suite 0, checked against its
Table 40 (glo-get-request, each protection) and Table 43 (HLS mechanism 5):

    IV = system title of the sender (8) || invocation counter (4, big-endian)
    T  = the 12 leftmost bytes of the GCM tag

    SC     plaintext P   additional authenticated data A   information
    0x10   (none)        SC || AK || APDU                  APDU || T
    0x20   APDU          (none)                            C          (no tag: no integrity)
    0x30   APDU          SC || AK                          C || T

    HLS mechanism 5 (GMAC): f(challenge) = SC || IC || T, SC = 0x10, P empty,
    A = SC || AK || challenge, keyed with the global encryption key and the
    system title of the side that computes it.

This is the one DLMS codec that needs a native library: AES-GCM is pyca/cryptography's
(OpenSSL's), never written here, so this module (unlike the pure codecs) does not run
on MicroPython. It does no I/O. Errors: ``DlmsSecurityError`` why "bad_tag" when a tag
does not verify (a wrong key, a tampered frame: nothing of the plaintext is returned),
why "auth_failed" when an HLS value does not; ``DlmsProtocolError`` for a ciphered APDU
that is malformed or carries another service than its tag says.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.drivers.dlms.ciphered import (
    IC_BYTES,
    IC_MAX,
    PLAIN_TAG,
    SC_AUTHENTICATED,
    SC_AUTHENTICATED_ENCRYPTED,
    SC_ENCRYPTED,
    TAG_BYTES,
    TITLE_BYTES,
    CipheredApdu,
    check_security_control,
    ciphered_tag,
    is_ciphered,
)
from agent.drivers.dlms.errors import DlmsProtocolError, DlmsSecurityError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers import AEADDecryptionContext
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 16  # suite 0: AES-128; the authentication key is 16 bytes too
# pyca/cryptography has no wheel for 32-bit ARM on PyPI: an armv7 board installs it as
# the dlms-security extra (Raspberry Pi OS takes it from piwheels). Without it, DLMS
# meters without keys (LLS, public) still work; the runtime refuses meters with keys
# at start (preflight.check_installed).
MISSING_HINT = ("DLMS security needs the cryptography package, which is not installed "
                "(on 32-bit ARM: pip install 'meter-agent[dlms-security]')")


def _aesgcm(ek: bytes) -> AESGCM:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ModuleNotFoundError:
        raise DlmsSecurityError(MISSING_HINT, "key_missing") from None
    return AESGCM(ek)


def _gcm(ek: bytes, iv: bytes, tag: bytes | None = None) -> AEADDecryptionContext:
    """A GCM mode cipher's decryptor (the tag may be truncated to 12 bytes)."""
    try:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    except ModuleNotFoundError:
        raise DlmsSecurityError(MISSING_HINT, "key_missing") from None
    mode = modes.GCM(iv) if tag is None else modes.GCM(iv, tag, min_tag_length=TAG_BYTES)
    return Cipher(algorithms.AES(ek), mode).decryptor()
HLS_VALUE_BYTES = 1 + IC_BYTES + TAG_BYTES  # SC || IC || T


def _iv(system_title: bytes, ic: int, ek: bytes, ak: bytes) -> bytes:
    if len(system_title) != TITLE_BYTES:
        raise ValueError(f"a system title is {TITLE_BYTES} bytes")
    if not 0 <= ic <= IC_MAX:
        raise ValueError("invocation counter out of 0..2^32-1")
    if len(ek) != KEY_BYTES or len(ak) != KEY_BYTES:
        raise ValueError(f"suite 0 keys are {KEY_BYTES} bytes")
    return system_title + ic.to_bytes(IC_BYTES, "big")


def _verify(ek: bytes, iv: bytes, tag: bytes, aad: bytes, ciphertext: bytes) -> bytes:
    """The plaintext once the 12-byte tag verifies; DlmsSecurityError otherwise.

    cryptography's AESGCM only takes whole 16-byte tags, so a truncated DLMS tag is
    checked with its GCM mode object, which accepts tags of 12 bytes and more.
    """
    decryptor = _gcm(ek, iv, tag)
    from cryptography.exceptions import InvalidTag  # _gcm has found the package

    decryptor.authenticate_additional_data(aad)
    plain = decryptor.update(ciphertext)
    try:
        decryptor.finalize()
    except InvalidTag:
        raise DlmsSecurityError("the GCM tag does not verify (wrong key or tampered frame)",
                                "bad_tag") from None
    return plain


def encrypt(sc: int, system_title: bytes, ic: int, ek: bytes, ak: bytes, apdu: bytes) -> bytes:
    """The information field that protects ``apdu`` under security control ``sc``."""
    check_security_control(sc)
    iv = _iv(system_title, ic, ek, ak)
    head = bytes((sc,))
    if sc == SC_AUTHENTICATED:
        return apdu + _aesgcm(ek).encrypt(iv, b"", head + ak + apdu)[:TAG_BYTES]
    if sc == SC_ENCRYPTED:
        return _aesgcm(ek).encrypt(iv, apdu, None)[:-16]  # the 16-byte tag is not sent
    out = _aesgcm(ek).encrypt(iv, apdu, head + ak)
    return out[:-16] + out[-16 : -16 + TAG_BYTES]


def decrypt(sc: int, system_title: bytes, ic: int, ek: bytes, ak: bytes,
            information: bytes) -> bytes:
    """The APDU inside ``information`` (the inverse of ``encrypt``), verified."""
    check_security_control(sc)
    iv = _iv(system_title, ic, ek, ak)
    head = bytes((sc,))
    if sc == SC_ENCRYPTED:
        # Encryption only has no tag: GCM's counter mode undone, nothing to verify.
        return _gcm(ek, iv).update(information)
    if len(information) < TAG_BYTES:
        raise DlmsProtocolError("authenticated APDU shorter than its tag")
    body, tag = information[:-TAG_BYTES], information[-TAG_BYTES:]
    if sc == SC_AUTHENTICATED:
        _verify(ek, iv, tag, head + ak + body, b"")
        return body
    assert sc == SC_AUTHENTICATED_ENCRYPTED
    return _verify(ek, iv, tag, head + ak, body)


def gmac(system_title: bytes, ic: int, ek: bytes, ak: bytes, challenge: bytes) -> bytes:
    """T of HLS mechanism 5 over ``challenge`` (the other side's)."""
    iv = _iv(system_title, ic, ek, ak)
    return _aesgcm(ek).encrypt(iv, b"", bytes((SC_AUTHENTICATED,)) + ak + challenge)[:TAG_BYTES]


def hls_value(system_title: bytes, ic: int, ek: bytes, ak: bytes, challenge: bytes) -> bytes:
    """f(challenge) = SC || IC || GMAC: what pass 3 (client) or pass 4 (server) sends."""
    return (bytes((SC_AUTHENTICATED,)) + ic.to_bytes(IC_BYTES, "big")
            + gmac(system_title, ic, ek, ak, challenge))


def check_hls_value(value: bytes, system_title: bytes, ek: bytes, ak: bytes,
                    challenge: bytes) -> int:
    """The invocation counter of a verified f(challenge); DlmsSecurityError auth_failed."""
    if len(value) != HLS_VALUE_BYTES or value[0] != SC_AUTHENTICATED:
        raise DlmsSecurityError(f"HLS value of {len(value)} bytes, security control "
                                f"{value[:1].hex() or 'none'}: not SC || IC || GMAC",
                                "auth_failed")
    ic = int.from_bytes(value[1 : 1 + IC_BYTES], "big")
    iv = _iv(system_title, ic, ek, ak)
    try:
        _verify(ek, iv, value[1 + IC_BYTES :], value[:1] + ak + challenge, b"")
    except DlmsSecurityError:
        raise DlmsSecurityError("the HLS-GMAC value does not verify (wrong key, or not an "
                                "answer to our challenge)", "auth_failed") from None
    return ic


def protect(apdu: bytes, *, form: str, sc: int, system_title: bytes, ic: int, ek: bytes,
            ak: bytes) -> CipheredApdu:
    """``apdu`` (a plain xDLMS APDU) ciphered in ``form`` (ciphered.FORMS) by the party
    whose system title is ``system_title``; ``ek`` is the global or dedicated key."""
    if not apdu:
        raise ValueError("nothing to protect")
    tag = ciphered_tag(apdu[0], form)
    information = encrypt(sc, system_title, ic, ek, ak, apdu)
    title = system_title if form.startswith("general") else None
    return CipheredApdu(tag, sc, ic, information, title)


def unprotect(ciphered: CipheredApdu, *, system_title: bytes, ek: bytes, ak: bytes) -> bytes:
    """The plain APDU of ``ciphered``, sent by the party whose title is ``system_title``.

    A service-specific form must carry its own service (a glo-get-response holds a
    GET-Response); a general form may carry any but another ciphered APDU.
    """
    plain = decrypt(ciphered.security_control, system_title, ciphered.invocation_counter,
                    ek, ak, ciphered.information)
    if not plain:
        raise DlmsProtocolError("a ciphered APDU with nothing inside")
    expected = PLAIN_TAG.get(ciphered.tag)
    if expected is not None and plain[0] != expected:
        raise DlmsProtocolError(f"{ciphered.tag:#04x} carries APDU {plain[0]:#04x}, "
                                f"not {expected:#04x}")
    if expected is None and is_ciphered(plain):
        raise DlmsProtocolError("a ciphered APDU inside a ciphered APDU")
    return plain
