"""DLMS security suite 0 codecs: ciphered APDU layouts, AES-GCM, HLS-GMAC.

Vectors from tests/vectors/dlms_security.txt (Green Book Tables 40 and 43, a real
meter's push), each whole and with one bit flipped; dlms-cosem 21.3.2's own
``security`` functions (an independent implementation over the same library) as a
cross-check for random inputs; hypothesis for "parses or raises the codec's
errors, nothing else" and for round trips.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.drivers.dlms import ciphering
from agent.drivers.dlms.apdu import (
    SERVICE_INVOCATION_COUNTER,
    Aare,
    Aarq,
    CipheredApdu,
    ExceptionResponse,
    InitiateRequest,
    decode_apdu,
)
from agent.drivers.dlms.ciphered import (
    CIPHERED_TAGS,
    FORMS,
    GENERAL_GLO,
    IC_MAX,
    PLAIN_TAG,
    ciphered_tag,
    is_ciphered,
)
from agent.drivers.dlms.errors import DlmsProtocolError, DlmsSecurityError

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "dlms_security.txt"
EK = bytes.fromhex("000102030405060708090A0B0C0D0E0F")
AK = bytes.fromhex("D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF")
TITLE = bytes.fromhex("4D4D4D0000BC614E")


def _vectors(kind: str) -> list[tuple[dict[str, bytes], str]]:
    out = []
    for line in VECTORS.read_text(encoding="utf-8").splitlines():
        body, _, source = line.partition("#")
        words = body.split()
        if not words or words[0] != kind:
            continue
        assert source.strip(), f"vector without a source: {line!r}"
        fields = dict(word.split("=", 1) for word in words[1:])
        out.append(({k: bytes.fromhex(v) for k, v in fields.items()}, source.strip()))
    return out


PROTECT = _vectors("protect")
GMAC = _vectors("gmac")
DECIPHER = _vectors("decipher")


def test_every_vector_line_is_read() -> None:
    lines = [line for line in VECTORS.read_text().splitlines()
             if line.split("#")[0].strip()]
    assert len(lines) == len(PROTECT) + len(GMAC) + len(DECIPHER) == 7


def _flipped(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@pytest.mark.parametrize(("v", "source"), PROTECT, ids=[s[:40] for _, s in PROTECT])
def test_protect_vectors(v: dict[str, bytes], source: str) -> None:
    sc, ic = v["sc"][0], int.from_bytes(v["ic"], "big")
    form = "glo"  # the vectors are service-specific glo- APDUs
    made = ciphering.protect(v["plain"], form=form, sc=sc, system_title=v["title"], ic=ic,
                             ek=v["ek"], ak=v["ak"])
    assert made.to_bytes() == v["apdu"], source
    parsed = CipheredApdu.from_bytes(v["apdu"])
    assert parsed == made and decode_apdu(v["apdu"]) == made
    assert ciphering.unprotect(parsed, system_title=v["title"], ek=v["ek"], ak=v["ak"]) \
        == v["plain"]


@pytest.mark.parametrize(("v", "source"), PROTECT, ids=[s[:40] for _, s in PROTECT])
def test_one_flipped_bit_is_a_bad_tag(v: dict[str, bytes], source: str) -> None:
    """Every bit of the invocation counter and of the information, one at a time."""
    apdu = v["apdu"]
    if apdu[2] == 0x20:  # encryption only has no tag: a flip goes unnoticed, by design
        parsed = CipheredApdu.from_bytes(_flipped(apdu, 8 * 10))
        assert ciphering.unprotect(parsed, system_title=v["title"], ek=v["ek"],
                                   ak=v["ak"]) != v["plain"]
        return
    header = 3  # tag, length, SC
    for bit in range(8 * header, 8 * len(apdu)):
        parsed = CipheredApdu.from_bytes(_flipped(apdu, bit))
        with pytest.raises(DlmsSecurityError) as err:
            ciphering.unprotect(parsed, system_title=v["title"], ek=v["ek"], ak=v["ak"])
        assert err.value.why == "bad_tag", (source, bit)
    for wrong in (_flipped(v["ek"], 0), _flipped(v["ak"], 127)):
        with pytest.raises(DlmsSecurityError, match="does not verify"):
            ciphering.unprotect(CipheredApdu.from_bytes(apdu), system_title=v["title"],
                                ek=wrong, ak=v["ak"] if wrong != v["ak"] else wrong)
    with pytest.raises(DlmsSecurityError):
        ciphering.unprotect(CipheredApdu.from_bytes(apdu), system_title=_flipped(v["title"], 3),
                            ek=v["ek"], ak=v["ak"])


@pytest.mark.parametrize(("v", "source"), GMAC, ids=[s[:40] for _, s in GMAC])
def test_gmac_vectors(v: dict[str, bytes], source: str) -> None:
    ic = int.from_bytes(v["ic"], "big")
    assert ciphering.gmac(v["title"], ic, v["ek"], v["ak"], v["challenge"]) == v["tag"], source
    value = ciphering.hls_value(v["title"], ic, v["ek"], v["ak"], v["challenge"])
    assert value == b"\x10" + v["ic"] + v["tag"]
    assert ciphering.check_hls_value(value, v["title"], v["ek"], v["ak"], v["challenge"]) == ic
    for bit in range(8 * len(value)):
        with pytest.raises(DlmsSecurityError) as err:
            ciphering.check_hls_value(_flipped(value, bit), v["title"], v["ek"], v["ak"],
                                      v["challenge"])
        assert err.value.why == "auth_failed"
    with pytest.raises(DlmsSecurityError, match="auth|verify"):
        ciphering.check_hls_value(value, v["title"], v["ek"], v["ak"],
                                  _flipped(v["challenge"], 5))  # not our challenge
    with pytest.raises(DlmsSecurityError):
        ciphering.check_hls_value(value[:-1], v["title"], v["ek"], v["ak"], v["challenge"])


@pytest.mark.parametrize(("v", "source"), DECIPHER, ids=[s[:40] for _, s in DECIPHER])
def test_a_real_general_glo_ciphering_frame(v: dict[str, bytes], source: str) -> None:
    parsed = decode_apdu(v["apdu"])
    assert isinstance(parsed, CipheredApdu) and parsed.tag == GENERAL_GLO
    assert parsed.system_title == v["title"] and parsed.invocation_counter == 0x1E5
    assert parsed.to_bytes() == v["apdu"]
    assert ciphering.unprotect(parsed, system_title=v["title"], ek=v["ek"], ak=v["ak"]) \
        == v["plain"], source
    for bit in range(8 * 12, 8 * len(v["apdu"])):  # the IC, the ciphertext and the tag
        with pytest.raises(DlmsSecurityError):
            ciphering.unprotect(CipheredApdu.from_bytes(_flipped(v["apdu"], bit)),
                                system_title=v["title"], ek=v["ek"], ak=v["ak"])


def test_green_book_aarq_carries_the_vector_initiate_request() -> None:
    raw = bytes.fromhex(
        "6066A109060760857405080103A60A04084D4D4D0000BC614E8A0207808B0760857405080201AC0A8008"
        "3132333435363738BE34043221303001234567801302FF8A7874133D414CED25B42534D28DB004772060"
        "6B175BD52211BE6841DB204D39EE6FDB8E356855")
    aarq = decode_apdu(raw)
    assert isinstance(aarq, Aarq) and aarq.calling_title == TITLE and aarq.password == b"12345678"
    assert aarq.ciphered_initiate is not None
    glo = CipheredApdu.from_bytes(aarq.ciphered_initiate)
    initiate = InitiateRequest.from_bytes(ciphering.unprotect(glo, system_title=TITLE, ek=EK,
                                                              ak=AK))
    assert initiate.dedicated_key == bytes.fromhex("00112233445566778899AABBCCDDEEFF")
    assert initiate.max_pdu_size == 1200 and initiate.conformance == 0x007E1F
    hls = decode_apdu(bytes.fromhex(
        "6142A109060760857405080101A203020100A305A10302010E88020780890760857405080205AA0A80085036"
        "77524A323146BE10040E0800065F1F040000501F01F40007"))
    assert isinstance(hls, Aare) and hls.accepted and hls.diagnostic == 14
    assert hls.mechanism == 5 and hls.challenge == b"P6wRJ21F"


# -- dlms-cosem 21.3.2's security functions as an independent check -------------------
keys = st.binary(min_size=16, max_size=16)
titles = st.binary(min_size=8, max_size=8)
counters = st.integers(0, IC_MAX)


@settings(max_examples=150, deadline=None)
@given(keys, keys, titles, counters, st.binary(max_size=300))
def test_our_ciphering_is_dlms_cosems(ek: bytes, ak: bytes, title: bytes, ic: int,
                                      plain: bytes) -> None:
    from dlms_cosem import security

    sc = security.SecurityControlField(security_suite=0, authenticated=True, encrypted=True)
    ours = ciphering.encrypt(0x30, title, ic, ek, ak, plain)
    assert ours == security.encrypt(sc, title, ic, ek, plain, ak)
    assert security.decrypt(sc, title, ic, ek, ours, ak) == plain
    assert ciphering.decrypt(0x30, title, ic, ek, ak, ours) == plain
    auth = security.SecurityControlField(security_suite=0, authenticated=True)
    assert ciphering.gmac(title, ic, ek, ak, plain) == security.gmac(auth, title, ic, ek, ak,
                                                                     plain)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(FORMS), st.sampled_from([0x10, 0x20, 0x30]), keys, keys, titles,
       counters, st.sampled_from([0xC0, 0xC3, 0xC4, 0xC7]), st.binary(max_size=200))
def test_protect_unprotect_round_trip(form: str, sc: int, ek: bytes, ak: bytes, title: bytes,
                                      ic: int, tag: int, body: bytes) -> None:
    plain = bytes((tag,)) + body
    made = ciphering.protect(plain, form=form, sc=sc, system_title=title, ic=ic, ek=ek, ak=ak)
    wire = made.to_bytes()
    parsed = decode_apdu(wire)
    assert parsed == made and parsed.form == form
    assert ciphering.unprotect(parsed, system_title=title, ek=ek, ak=ak) == plain


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(sorted(CIPHERED_TAGS)), st.binary(max_size=120))
def test_arbitrary_bytes_parse_or_raise_the_codec_errors(tag: int, rest: bytes) -> None:
    raw = bytes((tag,)) + rest
    try:
        parsed = decode_apdu(raw)
    except DlmsProtocolError:
        return
    assert isinstance(parsed, CipheredApdu)
    try:
        ciphering.unprotect(parsed, system_title=parsed.system_title or TITLE, ek=EK, ak=AK)
    except (DlmsProtocolError, DlmsSecurityError):
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40), st.binary(max_size=40))
def test_arbitrary_hls_values_raise_auth_failed(value: bytes, challenge: bytes) -> None:
    with pytest.raises(DlmsSecurityError) as err:
        ciphering.check_hls_value(value, TITLE, EK, AK, challenge)
    assert err.value.why == "auth_failed"


# -- the layout's own rules -----------------------------------------------------------
@pytest.mark.parametrize(("sc", "why"), [(0x31, "suite 1"), (0x70, "broadcast"),
                                         (0xB0, "compressed"), (0x00, "neither")])
def test_unsupported_security_control_is_a_protocol_error(sc: int, why: str) -> None:
    raw = bytes((0xC8, 17, sc)) + bytes(16)
    with pytest.raises(DlmsProtocolError, match=why):
        CipheredApdu.from_bytes(raw)
    with pytest.raises(DlmsProtocolError):
        ciphering.encrypt(sc, TITLE, 1, EK, AK, b"\xc0")


@pytest.mark.parametrize("raw", [
    "C81F3001234567" + "00" * 24,  # length one more than what follows
    "C8043001234567",  # length short of the header
    "C8053001234567",  # a header, nothing else, yet authenticated
    "DB07" + "00" * 7 + "053001234567",  # a 7-byte system title
    "DB08" + "00" * 8,  # a title and nothing after it
    "C9",  # nothing at all
])
def test_malformed_ciphered_apdus(raw: str) -> None:
    with pytest.raises(DlmsProtocolError):
        CipheredApdu.from_bytes(bytes.fromhex(raw))


def test_a_service_specific_apdu_must_carry_its_service() -> None:
    get = ciphering.protect(b"\xc0\x01\xc1", form="glo", sc=0x30, system_title=TITLE, ic=5,
                            ek=EK, ak=AK)
    # The GCM tag covers SC, AK, IC (in the IV) and the APDU, not the outer tag: a
    # glo-get-request relabelled glo-action-request verifies, so the service is checked.
    action = CipheredApdu(0xCB, get.security_control, 5, get.information)
    with pytest.raises(DlmsProtocolError, match="carries APDU 0xc0"):
        ciphering.unprotect(action, system_title=TITLE, ek=EK, ak=AK)
    nested = ciphering.protect(get.to_bytes(), form="general-glo", sc=0x30, system_title=TITLE,
                               ic=7, ek=EK, ak=AK)
    with pytest.raises(DlmsProtocolError, match="inside"):
        ciphering.unprotect(nested, system_title=TITLE, ek=EK, ak=AK)


def test_tag_tables() -> None:
    assert ciphered_tag(0xC0, "glo") == 0xC8 and ciphered_tag(0xC4, "ded") == 0xD4
    assert ciphered_tag(0x01, "glo") == 0x21 and ciphered_tag(0xC7, "general-ded") == 0xDC
    assert all(PLAIN_TAG[ciphered_tag(t, "glo")] == t for t in (0x01, 0x08, 0xC0, 0xC7))
    with pytest.raises(DlmsProtocolError):
        ciphered_tag(0x01, "ded")  # there is no ded-initiateRequest
    with pytest.raises(DlmsProtocolError):
        ciphered_tag(0xD8, "glo")  # nor a ciphered ExceptionResponse
    assert is_ciphered(b"\xdb") and not is_ciphered(b"\xc0") and not is_ciphered(b"")


def test_inputs_out_of_range_are_value_errors() -> None:
    for title, ic, ek in ((TITLE[:7], 1, EK), (TITLE, IC_MAX + 1, EK), (TITLE, -1, EK),
                          (TITLE, 1, EK[:15])):
        with pytest.raises(ValueError):
            ciphering.encrypt(0x30, title, ic, ek, AK, b"\xc0")
    with pytest.raises(ValueError):
        CipheredApdu(0xC0, 0x30, 1, b"")  # not a ciphered tag
    with pytest.raises(ValueError):
        CipheredApdu(0xC8, 0x30, 1, b"", TITLE)  # a title on a service-specific form
    with pytest.raises(ValueError):
        ciphering.protect(b"", form="glo", sc=0x30, system_title=TITLE, ic=1, ek=EK, ak=AK)


def test_exception_response_with_the_expected_counter() -> None:
    raw = ExceptionResponse(1, SERVICE_INVOCATION_COUNTER, 100).to_bytes()
    assert raw == bytes.fromhex("D8010600000064")
    assert decode_apdu(raw) == ExceptionResponse(1, 6, 100)
    with pytest.raises(DlmsProtocolError):
        decode_apdu(bytes.fromhex("D80105000000"))  # a counter only after error 6


def test_security_error_vocabulary_is_fixed() -> None:
    with pytest.raises(ValueError):
        DlmsSecurityError("x", "oops")
    assert DlmsSecurityError("x", "bad_tag").why == "bad_tag"
