"""COSE_Mac0 with HMAC 256/256 (RFC 9052 6.2/6.3), against the COSE WG's own vectors.

Vectors: github.com/cose-wg/Examples, folder mac0-tests/, commit 3d0ee8fb6ce6 (HMac-01,
mac-fail-02/04/06/07, mac-pass-02) and 4df599e6cc39 / 37285080eeca (mac-fail-01/03).
All use the key "our-secret" (CEK_hex below) and the payload "This is the content.".
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import AgentError, CommandError, ConfigError
from agent.uplink import cbor, cose

KEY = bytes.fromhex("849B57219DAE48DE646D07DBB533566E976686457C1491BE3A76DCEA6C427188")
CONTENT = b"This is the content."

# HMac-01.json: 17([h'A10105', {}, h'5468...2E', h'A1A8...8C58'])
HMAC_01 = bytes.fromhex(
    "D18443A10105A054546869732069732074686520636F6E74656E742E5820A1A848D3471F9D61EE49018D24"
    "4C824772F223AD4F935293F1789FC3A08D8C58")
HMAC_01_TO_MAC = bytes.fromhex(
    "84644D41433043A101054054546869732069732074686520636F6E74656E742E")

FAILURES = {
    # mac-fail-01.json, "ChangeCBORTag": 992 -> not a COSE_Mac0 at all
    "mac-fail-01": ("D903E08443A10105A054546869732069732074686520636F6E74656E742E5820A1A848D3"
                    "471F9D61EE49018D244C824772F223AD4F935293F1789FC3A08D8C58", "malformed"),
    # mac-fail-02.json, "ChangeTag": last byte of the MAC changed
    "mac-fail-02": ("D18443A10105A054546869732069732074686520636F6E74656E742E5820A1A848D3471F"
                    "9D61EE49018D244C824772F223AD4F935293F1789FC3A08D8C59", "bad_mac"),
    # mac-fail-03.json, alg -999 in the protected header
    "mac-fail-03": ("D18445A1013903E6A054546869732069732074686520636F6E74656E742E5820A1A848D3"
                    "471F9D61EE49018D244C824772F223AD4F935293F1789FC3A08D8C58", "bad_mac"),
    # mac-fail-04.json, alg "Unknown"
    "mac-fail-04": ("D1844AA10167556E6B6E6F776EA054546869732069732074686520636F6E74656E742E58"
                    "20A1A848D3471F9D61EE49018D244C824772F223AD4F935293F1789FC3A08D8C58",
                    "bad_mac"),
    # mac-fail-06.json, "AddProtected" ctyp 0 after the MAC was computed
    "mac-fail-06": ("D18445A201050300A054546869732069732074686520636F6E74656E742E5820A1A848D3"
                    "471F9D61EE49018D244C824772F223AD4F935293F1789FC3A08D8C58", "bad_mac"),
    # mac-fail-07.json, MAC over {1: 5, 3: 0}, then ctyp removed from the header
    "mac-fail-07": ("D18443A10105A054546869732069732074686520636F6E74656E742E5820BB9E11EF2BD6"
                    "73F766A398D4E3FAD78E0F0BE2806BF73FB647471E40B3D98734", "bad_mac"),
    # mac-pass-02.json: valid COSE (alg unprotected, external AAD) but not our profile
    "mac-pass-02": ("D18440A1010554546869732069732074686520636F6E74656E742E58200FECAEC59BB46C"
                    "C8A488AACA4B205E322DD52696B75A45768D3C302DD4BAE2F7", "bad_mac"),
}


def test_hmac_01_sign_matches_the_vector() -> None:
    assert cose.mac_input(bytes.fromhex("A10105"), CONTENT) == HMAC_01_TO_MAC
    assert cose.sign_mac0(KEY, CONTENT) == HMAC_01


def test_hmac_01_verifies() -> None:
    assert cose.verify_mac0(KEY, HMAC_01) == CONTENT


@pytest.mark.parametrize("name", sorted(FAILURES))
def test_cose_wg_failure_vectors(name: str) -> None:
    hexdata, code = FAILURES[name]
    with pytest.raises(CommandError) as err:
        cose.verify_mac0(KEY, bytes.fromhex(hexdata))
    assert err.value.code == code


def test_wrong_key_is_bad_mac() -> None:
    with pytest.raises(CommandError) as err:
        cose.verify_mac0(bytes(32), HMAC_01)
    assert err.value.code == "bad_mac"


def _mac0(*parts: object, tag: int = 17) -> bytes:
    return cbor.dumps(cbor.Tag(tag, list(parts)))


GOOD_TAG = bytes.fromhex(HMAC_01.hex()[-64:])


@pytest.mark.parametrize("data, code", [
    (b"", "malformed"),
    (b"not cbor at all \xff", "malformed"),
    (cbor.dumps([b"\xa1\x01\x05", {}, CONTENT, GOOD_TAG]), "malformed"),  # untagged
    (_mac0(b"\xa1\x01\x05", {}, CONTENT, GOOD_TAG, tag=18), "malformed"),  # COSE_Sign1 tag
    (_mac0(b"\xa1\x01\x05", {}, CONTENT), "malformed"),  # 3 items
    (_mac0(b"\xa1\x01\x05", {}, None, GOOD_TAG), "malformed"),  # detached payload
    (_mac0({1: 5}, {}, CONTENT, GOOD_TAG), "malformed"),  # protected not a bstr
    (_mac0(b"\xa1\x01\x05", [], CONTENT, GOOD_TAG), "malformed"),  # unprotected not a map
    (_mac0(b"\xa1\x01\x05", {}, "text", GOOD_TAG), "malformed"),
    (cbor.dumps(cbor.Tag(17, b"\x00")), "malformed"),
    (HMAC_01 + b"\x00", "malformed"),  # trailing byte
    (_mac0(b"", {1: 5}, CONTENT, GOOD_TAG), "bad_mac"),  # alg only unprotected
    (_mac0(b"\xa1\x01\x18\x05", {}, CONTENT, GOOD_TAG), "bad_mac"),  # {1: 5}, longer spelling
    (_mac0(b"\xa1\x01\x05", {}, CONTENT, GOOD_TAG[:16]), "bad_mac"),  # truncated MAC
    (_mac0(b"\xa1\x01\x05", {4: b"kid"}, CONTENT, GOOD_TAG), "ok"),  # unprotected: ignored
])
def test_refusals(data: bytes, code: str) -> None:
    if code == "ok":
        assert cose.verify_mac0(KEY, data) == CONTENT
        return
    with pytest.raises(CommandError) as err:
        cose.verify_mac0(KEY, data)
    assert err.value.code == code
    assert err.value.command_id is None


def test_oversize_input_is_malformed_before_decoding() -> None:
    data = cose.sign_mac0(KEY, b"x" * (cbor.MAX_COMMAND_BYTES + 1))
    with pytest.raises(CommandError) as err:
        cose.verify_mac0(KEY, data)
    assert err.value.code == "malformed"


keys = st.binary(min_size=32, max_size=64)


@given(keys, st.binary(max_size=300))
def test_round_trip(key: bytes, payload: bytes) -> None:
    assert cose.verify_mac0(key, cose.sign_mac0(key, payload)) == payload


@settings(max_examples=200)
@given(keys, st.binary(max_size=64), st.data())
def test_any_changed_byte_is_refused(key: bytes, payload: bytes, data: st.DataObject) -> None:
    signed = bytearray(cose.sign_mac0(key, payload))
    i = data.draw(st.integers(0, len(signed) - 1))
    signed[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(CommandError) as err:
        cose.verify_mac0(key, bytes(signed))
    assert err.value.code in ("malformed", "bad_mac")


def test_short_key_is_refused() -> None:
    with pytest.raises(AgentError, match="at least 32 bytes"):
        cose.sign_mac0(b"short", CONTENT)


# -- key files --------------------------------------------------------------------------
def test_read_hex_key(tmp_path: Path) -> None:
    f = tmp_path / "gw.cmd.key"
    f.write_text("  " + KEY.hex()[:32] + "\n" + KEY.hex()[32:].upper() + "\n")
    assert cose.read_hex_key(f) == KEY


@pytest.mark.parametrize("content, why", [
    ("ab" * 31, "64 hex digits"),
    ("ab" * 33, "64 hex digits"),
    ("zz" * 32, "only hex digits"),
    (None, "cannot read"),
])
def test_read_hex_key_refuses(tmp_path: Path, content: str | None, why: str) -> None:
    f = tmp_path / "k.key"
    if content is not None:
        f.write_text(content)
    with pytest.raises(ConfigError, match=why) as err:
        cose.read_hex_key(f)
    assert str(f) in str(err.value)
    assert "ab" * 31 not in str(err.value)  # the key itself is never echoed
