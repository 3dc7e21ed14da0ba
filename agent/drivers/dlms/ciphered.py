"""Ciphered xDLMS APDUs: their layout on the wire only (no cryptography here), sans-IO.

Implements the frame formats of the DLMS UA Green Book (DLMS UA 1000-2 Ed. 8,
IEC 62056-5-3:2017) §9.2.7 "cryptographic protection of xDLMS APDUs", with the
layouts of its Table 40 example (glo-get-request):

    service-specific glo-/ded- APDU  tag | length | SC | IC (4) | information
    general-glo-ciphering [219] DB   tag | 08 | system-title (8) | length | SC | IC | information
    general-ded-ciphering [220] DC   the same, protected with the dedicated key

SC is the security control byte (security suite in bits 0-3, authentication
bit 4, encryption bit 5, broadcast key bit 6, compression bit 7); IC the
invocation counter, big-endian. ``information`` is what the cipher made of the
APDU: ciphertext || tag (SC 0x30), APDU || tag (0x10) or ciphertext (0x20); the
cryptography is ``ciphering.py``. Only security suite 0 with the unicast key and
no compression is accepted: anything else raises ``DlmsProtocolError``, as does
a tag this module does not know, a length that does not match, a system title
that is not 8 bytes, or an authenticated APDU too short to hold its tag.

The service-specific tags (Green Book Table "xDLMS APDUs"): glo-initiateRequest
0x21 / -Response 0x28, glo-get-request 0xC8, glo-set-request 0xC9,
glo-event-notification 0xCA, glo-action-request 0xCB, glo-get-response 0xCC,
glo-set-response 0xCD, glo-action-response 0xCF; the ded- forms 0xD0..0xD7 of
the same services (there is no ded-initiate: the dedicated key travels in the
glo-initiateRequest).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from agent.drivers.dlms.axdr import MAX_LENGTH, decode_length, encode_length
from agent.drivers.dlms.errors import DlmsProtocolError

SC_AUTHENTICATED: Final = 0x10
SC_ENCRYPTED: Final = 0x20
SC_AUTHENTICATED_ENCRYPTED: Final = 0x30
SUITE_0: Final = 0  # AES-GCM-128; suites 1 and 2 are not implemented
_SC_UNSUPPORTED: Final = 0xCF  # suite bits, broadcast key, compression: must be 0

TITLE_BYTES: Final = 8  # a system title: 3 letters of manufacturer id + 5 bytes
TAG_BYTES: Final = 12  # the GCM tag is cut to its 12 leftmost bytes
IC_BYTES: Final = 4
IC_MAX: Final = 2**32 - 1  # at it the key must change (Green Book: a new key, not a wrap)
# The largest ciphered APDU accepted: one A-XDR length (an APDU is never longer);
# a longer one is a DlmsProtocolError before anything is deciphered.
MAX_CIPHERED_BYTES: Final = MAX_LENGTH

GENERAL_GLO: Final = 0xDB
GENERAL_DED: Final = 0xDC
# plain APDU tag -> its glo- and ded- forms
GLO_TAGS: Final = {0x01: 0x21, 0x08: 0x28, 0xC0: 0xC8, 0xC1: 0xC9, 0xC2: 0xCA, 0xC3: 0xCB,
                   0xC4: 0xCC, 0xC5: 0xCD, 0xC7: 0xCF}
DED_TAGS: Final = {0xC0: 0xD0, 0xC1: 0xD1, 0xC2: 0xD2, 0xC3: 0xD3, 0xC4: 0xD4, 0xC5: 0xD5,
                   0xC7: 0xD7}
PLAIN_TAG: Final = {**{v: k for k, v in GLO_TAGS.items()}, **{v: k for k, v in DED_TAGS.items()}}
CIPHERED_TAGS: Final = frozenset(PLAIN_TAG) | {GENERAL_GLO, GENERAL_DED}

# The forms a client may protect its requests with (``security.DlmsSecurity.form``).
FORMS: Final = ("general-glo", "general-ded", "glo", "ded")


def check_security_control(sc: int) -> None:
    """Suite 0, unicast key, no compression, and some protection; DlmsProtocolError else."""
    if sc & 0x0F != SUITE_0:
        raise DlmsProtocolError(f"security suite {sc & 0x0F} is not supported (only suite 0)")
    if sc & 0x40:
        raise DlmsProtocolError("broadcast-key ciphering is not supported")
    if sc & 0x80:
        raise DlmsProtocolError("compressed ciphered APDUs are not supported")
    if not sc & (SC_AUTHENTICATED | SC_ENCRYPTED):
        raise DlmsProtocolError("a ciphered APDU with neither authentication nor encryption")


def ciphered_tag(plain_tag: int, form: str) -> int:
    """The tag that carries an APDU of ``plain_tag`` in ``form`` (one of FORMS)."""
    if form == "general-glo":
        return GENERAL_GLO
    if form == "general-ded":
        return GENERAL_DED
    table = GLO_TAGS if form == "glo" else DED_TAGS
    if form not in ("glo", "ded") or plain_tag not in table:
        raise DlmsProtocolError(f"APDU {plain_tag:#04x} has no {form} form")
    return table[plain_tag]


@dataclass(frozen=True, slots=True)
class CipheredApdu:
    """One ciphered APDU; ``system_title`` is set exactly for the general forms."""

    tag: int
    security_control: int
    invocation_counter: int
    information: bytes
    system_title: bytes | None = None

    def __post_init__(self) -> None:
        if self.tag not in CIPHERED_TAGS:
            raise ValueError(f"{self.tag:#04x} is not a ciphered APDU tag")
        if (self.system_title is not None) != self.general:
            raise ValueError("a system title goes with the general forms only")
        if self.system_title is not None and len(self.system_title) != TITLE_BYTES:
            raise ValueError(f"a system title is {TITLE_BYTES} bytes")
        if not 0 <= self.invocation_counter <= IC_MAX:
            raise ValueError("invocation counter out of 0..2^32-1")

    @property
    def general(self) -> bool:
        return self.tag in (GENERAL_GLO, GENERAL_DED)

    @property
    def dedicated(self) -> bool:
        """Protected with the association's dedicated key (else the global one)."""
        return self.tag == GENERAL_DED or self.tag in DED_TAGS.values()

    @property
    def form(self) -> str:
        if self.general:
            return "general-ded" if self.dedicated else "general-glo"
        return "ded" if self.dedicated else "glo"

    @property
    def header(self) -> bytes:
        """SC || IC: the security header (it precedes the information)."""
        return bytes((self.security_control,)) + self.invocation_counter.to_bytes(4, "big")

    def to_bytes(self) -> bytes:
        content = self.header + self.information
        if self.system_title is None:
            return bytes((self.tag,)) + encode_length(len(content)) + content
        return (bytes((self.tag, TITLE_BYTES)) + self.system_title
                + encode_length(len(content)) + content)

    @classmethod
    def from_bytes(cls, data: bytes) -> CipheredApdu:
        if len(data) > MAX_CIPHERED_BYTES:
            raise DlmsProtocolError(f"ciphered APDU over {MAX_CIPHERED_BYTES} bytes")
        if not data or data[0] not in CIPHERED_TAGS:
            raise DlmsProtocolError(f"not a ciphered APDU: {data[:2].hex()}")
        tag, offset, title = data[0], 1, None
        if tag in (GENERAL_GLO, GENERAL_DED):
            size, offset = decode_length(data, offset)
            if size != TITLE_BYTES or offset + size > len(data):
                raise DlmsProtocolError(f"system title of {size} bytes (it is {TITLE_BYTES})")
            title, offset = bytes(data[offset : offset + size]), offset + size
        length, offset = decode_length(data, offset)
        if offset + length != len(data):
            raise DlmsProtocolError(f"ciphered APDU length {length}, {len(data) - offset} "
                                    "bytes follow")
        if length < 1 + IC_BYTES:
            raise DlmsProtocolError("ciphered APDU without its security header")
        sc = data[offset]
        check_security_control(sc)
        information = bytes(data[offset + 1 + IC_BYTES :])
        if sc & SC_AUTHENTICATED and len(information) < TAG_BYTES:
            raise DlmsProtocolError("authenticated APDU shorter than its tag")
        ic = int.from_bytes(data[offset + 1 : offset + 1 + IC_BYTES], "big")
        return cls(tag, sc, ic, information, title)


def is_ciphered(data: bytes) -> bool:
    """Does ``data`` start with a ciphered APDU's tag?"""
    return bool(data) and data[0] in CIPHERED_TAGS
