"""DlmsMeter with HLS-GMAC and ciphering against the simulated IS 15959 meter, in process.

The rig of test_dlms_device (a transport into ``sim.dlms_line``, simulated time).
The simulated meter has HLS keys, so it behaves as an IS 15959 meter with security:
0x10 public, 0x20 LLS, 0x30 HLS-GMAC, and the relay only from 0x30. Every failure
case checks that the disconnect control never moved and that no ACTION on it
reached the meter (``relay_actions``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.clock import SimClock
from agent.drivers.dlms import ciphering
from agent.drivers.dlms.apdu import (
    Aare,
    ActionRequest,
    ActionResponse,
    Apdu,
    ConfirmedServiceError,
    ExceptionResponse,
    GetRequest,
    GetResponse,
    ReleaseRequest,
    decode_apdu,
)
from agent.drivers.dlms.axdr import Data, Tag
from agent.drivers.dlms.ciphered import FORMS, IC_MAX, CipheredApdu
from agent.drivers.dlms.connection import State
from agent.drivers.dlms.cosem import SERIAL
from agent.drivers.dlms.counters import InvocationCounters
from agent.drivers.dlms.device import DlmsMeter
from agent.drivers.dlms.errors import (
    DlmsAssociationError,
    DlmsProtocolError,
    DlmsSecurityError,
)
from agent.drivers.dlms.hdlc import HdlcFrame
from agent.drivers.dlms.security import DlmsSecurity, SecureAssociation, key_id
from agent.errors import DeviceException, ProtocolError
from sim.dlms_meter import SimDlmsMeter
from sim.dlms_objects import CONNECTED
from tests.drivers.test_dlms_device import LoopTransport, association, rig, sim_meter

EK = bytes.fromhex("000102030405060708090A0B0C0D0E0F")
AK = bytes.fromhex("D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF")
OTHER = bytes.fromhex("0F0E0D0C0B0A09080706050403020100")
CLIENT_TITLE = bytes.fromhex("4D41470102030405")  # "MAG" + 5 bytes
DISCONNECT_DESCRIPTOR = bytes.fromhex("0046000060030AFF")  # class 70, 0.0.96.3.10.255


@pytest.fixture
def clock() -> SimClock:
    return SimClock()


def keyed(clock: SimClock, keys: tuple[bytes, bytes] = (EK, AK)) -> SimDlmsMeter:
    return sim_meter(clock, keys=keys)


def security(counters: InvocationCounters | None = None, *, form: str = "general-glo",
             server_title: bytes | None = None) -> DlmsSecurity:
    return DlmsSecurity(client_title=CLIENT_TITLE, ek=EK, ak=AK,
                        counters=counters or InvocationCounters(None, "M5"),
                        server_title=server_title, form=form)


def meter_on(transport: LoopTransport, clock: SimClock, sec: DlmsSecurity,
             client: int = 0x20) -> DlmsMeter:
    return DlmsMeter(transport, 5, client_address=client, clock=clock, security=sec,
                     password=b"00000000" if client == 0x20 else None)


def untouched(sim: SimDlmsMeter) -> bool:
    return sim.relay_actions == 0 and sim.control_state == CONNECTED and sim.connected


# -- the three clients -----------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
def test_readings_through_lls_and_the_relay_through_hls(clock: SimClock, form: str) -> None:
    sim = keyed(clock)
    transport = rig(sim, clock=clock)
    meter = meter_on(transport, clock, security(form=form))
    assert meter.read("M5", 0).values["import_wh"] == 1_234_567
    assert sim.association == "lls" and sim.associations == 1
    transport.writes.clear()
    meter.relay_set(False)
    assert sim.association == "hls" and sim.associations == 2
    assert (meter.relay_state(), sim.connected) == ("open", False)
    assert sim.associations == 2  # relay_set and its read-back share one association
    # the disconnect command never crossed the wire in clear
    assert not any(DISCONNECT_DESCRIPTOR in w for w in transport.writes)
    assert meter.read("M5", 15).values["p_w"] == 0
    assert sim.association == "lls" and sim.associations == 3  # back to the reader
    meter.relay_set(True)
    assert meter.relay_state() == "closed" and sim.connected
    meter.close()
    assert association(sim) is None and meter.state is State.DISCONNECTED


def test_the_utility_settings_client_reads_and_switches_on_one_association(
    clock: SimClock
) -> None:
    sim = keyed(clock)
    meter = meter_on(rig(sim, clock=clock), clock, security(), client=0x30)
    assert meter.read("M5", 0).serial == "12345678"
    meter.relay_set(False)
    assert meter.relay_state() == "open"
    assert meter.read_events() == []  # the load switch logs 301, a relay event, not tamper
    assert sim.associations == 1 and sim.association == "hls"


def test_the_meter_refuses_the_relay_to_the_reader_and_the_public_client(
    clock: SimClock
) -> None:
    sim = keyed(clock)
    transport = rig(sim, clock=clock)
    reader = DlmsMeter(transport, 5, client_address=0x20, clock=clock)  # LLS, no keys
    assert reader.relay_state() == "closed"  # reading the state is allowed
    with pytest.raises(DeviceException) as err:
        reader.relay_set(False)
    assert err.value.code == 3  # read-write-denied, as an IS 15959 meter answers
    assert sim.control_state == CONNECTED and sim.connected
    reader.close()
    public = DlmsMeter(transport, 5, password=None, clock=clock)  # 0x10, no authentication
    assert public.read_serial() == "12345678"
    with pytest.raises(DeviceException):
        public.relay_state()
    public.close()
    for client, password in ((0x10, b"00000000"), (0x30, b"00000000"), (0x20, None)):
        wrong = DlmsMeter(transport, 5, client_address=client, password=password, clock=clock)
        with pytest.raises(DlmsAssociationError) as refused:
            wrong.read_serial()
        assert refused.value.diagnostic in (11, 12)  # not this client's mechanism


def test_without_keys_the_simulator_keeps_the_model_before_security(clock: SimClock) -> None:
    sim = sim_meter(clock)  # no keys: LLS from any client may switch the relay
    meter = DlmsMeter(rig(sim, clock=clock), 5, client_address=0x20, clock=clock)
    meter.relay_set(False)
    assert meter.relay_state() == "open"
    with pytest.raises(DlmsAssociationError) as err:  # and HLS is unknown to it
        meter_on(rig(sim_meter(clock), clock=clock), clock, security()).relay_set(True)
    assert err.value.diagnostic == 2  # the ciphered context is not supported


# -- wrong keys, replays, tampering: never a relay change ---------------------------------
def test_a_meter_with_other_keys_is_never_switched(clock: SimClock) -> None:
    sim = keyed(clock, keys=(OTHER, AK))
    meter = meter_on(rig(sim, clock=clock), clock, security())
    assert meter.read("M5", 0).values["import_wh"] == 1_234_567  # LLS does not need keys
    for call in (lambda: meter.relay_set(False), meter.relay_state):
        with pytest.raises(DlmsSecurityError) as err:
            call()
        assert err.value.why == "auth_failed"
        assert not isinstance(err.value, ProtocolError)  # the bus does not retry it
    assert untouched(sim) and sim.security is not None and sim.security.hls_failures == 2


def test_wrong_key_fault_at_association_and_within_one(clock: SimClock) -> None:
    sim = keyed(clock)
    meter = meter_on(rig(sim, clock=clock), clock, security())
    sim.wrong_key = True
    with pytest.raises(DlmsSecurityError, match="authentication-failure") as err:
        meter.relay_set(False)
    assert err.value.why == "auth_failed" and untouched(sim)
    sim.wrong_key = False
    assert meter.relay_state() == "closed"  # an HLS association is open now
    sim.wrong_key = True  # the meter's keys change under it
    with pytest.raises(DlmsSecurityError) as err:
        meter.relay_set(False)
    assert err.value.why == "bad_tag" and untouched(sim)  # deciphering-error: not switched
    assert meter.state is State.DISCONNECTED  # dropped: the next call re-associates


def test_a_replayed_counter_at_association_stops_hls(clock: SimClock) -> None:
    sim = keyed(clock)
    meter = meter_on(rig(sim, clock=clock), clock, security())
    sim.replay_counter = True  # f(CtoS) comes with the AARE's counter again
    with pytest.raises(DlmsSecurityError) as err:
        meter.relay_set(False)
    assert err.value.why == "replayed_counter" and untouched(sim)


def test_a_replayed_response_is_refused_never_taken_for_a_state(clock: SimClock) -> None:
    sim = keyed(clock)
    meter = meter_on(rig(sim, clock=clock), clock, security())
    assert meter.relay_state() == "closed"
    sim.replay_counter = True
    with pytest.raises(DlmsSecurityError) as err:
        meter.relay_state()
    assert err.value.why == "replayed_counter"
    with pytest.raises(DlmsSecurityError):
        meter.relay_set(False)  # a fresh association fails its pass 4 the same way
    assert untouched(sim)
    sim.replay_counter = False
    meter.relay_set(False)
    assert meter.relay_state() == "open" and sim.relay_actions == 1


def test_a_tampered_response_is_a_bad_tag(clock: SimClock) -> None:
    sim = keyed(clock)
    transport = rig(sim, clock=clock)
    meter = meter_on(transport, clock, security())
    assert meter.relay_state() == "closed"

    def flip_a_tag_bit(raw: bytes) -> bytes:
        frame = HdlcFrame.from_bytes(raw)
        info = bytearray(frame.info)
        info[-5] ^= 0x10  # inside the GCM tag; the HDLC FCS is made right again
        return dataclasses.replace(frame, info=bytes(info)).to_bytes()

    transport.mangle = flip_a_tag_bit
    with pytest.raises(DlmsSecurityError) as err:
        meter.relay_state()
    assert err.value.why == "bad_tag" and meter.state is State.DISCONNECTED
    assert meter.relay_state() == "closed"  # a fresh association, a good answer


def test_a_swapped_meter_is_refused_by_its_system_title(clock: SimClock) -> None:
    sim = keyed(clock)
    counters = InvocationCounters(None, "M5")  # one store: the meter saw our counters
    meter = meter_on(rig(sim, clock=clock), clock,
                     security(counters, server_title=b"SIMOTHER"))
    with pytest.raises(DlmsSecurityError, match="not the configured") as err:
        meter.relay_set(False)
    assert err.value.why == "system_title_mismatch" and untouched(sim)
    assert sim.security is not None
    right = meter_on(rig(sim, clock=clock), clock,
                     security(counters, server_title=sim.security.title))
    right.relay_set(False)
    assert right.relay_state() == "open"


def test_the_meters_refusal_of_our_f_stoc_is_auth_failed(
    clock: SimClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = keyed(clock)
    meter = meter_on(rig(sim, clock=clock), clock, security())
    real = ciphering.hls_value

    def off_by_one_bit(*args: bytes | int) -> bytes:
        value = real(*args)  # type: ignore[arg-type]
        return value[:-1] + bytes((value[-1] ^ 1,))

    monkeypatch.setattr(ciphering, "hls_value", off_by_one_bit)  # the client's only
    with pytest.raises(DlmsSecurityError, match="refused our f") as err:
        meter.relay_set(False)
    assert err.value.why == "auth_failed" and untouched(sim)


def test_a_wrong_f_ctos_from_the_meter_is_auth_failed(clock: SimClock) -> None:
    sim = keyed(clock)
    assert sim.security is not None
    pass3 = sim.security.pass3

    def lying(request: ActionRequest) -> ActionResponse:
        response = pass3(request)
        assert response.data is not None
        value = bytearray(response.data.octets)
        value[-1] ^= 0x80
        return dataclasses.replace(response, data=dataclasses.replace(
            response.data, value=bytes(value)))

    sim.security.pass3 = lying  # type: ignore[method-assign]
    meter = meter_on(rig(sim, clock=clock), clock, security())
    with pytest.raises(DlmsSecurityError, match="does not verify") as err:
        meter.relay_set(False)
    assert err.value.why == "auth_failed" and untouched(sim)


# -- counters ----------------------------------------------------------------------------
def test_an_exhausted_counter_sends_nothing(clock: SimClock, tmp_path: Path) -> None:
    (tmp_path / "M5.ic.json").write_text(json.dumps(
        {"version": 1, "client": {key_id(EK): IC_MAX}, "server": {}}))
    sim = keyed(clock)
    meter = meter_on(rig(sim, clock=clock), clock, security(InvocationCounters(tmp_path, "M5")))
    with pytest.raises(DlmsSecurityError, match="new key") as err:
        meter.relay_set(False)
    assert err.value.why == "counter_exhausted" and untouched(sim)
    assert sim.associations == 0  # not even the AARQ went out


def test_counters_carry_over_to_the_next_driver(clock: SimClock, tmp_path: Path) -> None:
    sim = keyed(clock)
    transport = rig(sim, clock=clock)
    first = meter_on(transport, clock, security(InvocationCounters(tmp_path, "M5")))
    first.relay_set(False)
    first.close()
    second = meter_on(transport, clock, security(InvocationCounters(tmp_path, "M5")))
    second.relay_set(True)  # the meter takes it: our counter went on, above the first's
    assert second.relay_state() == "closed"
    second.close()
    forgetful = meter_on(transport, clock, security(InvocationCounters(None, "M5")))
    with pytest.raises(DlmsSecurityError) as err:  # counters from 1 again: the meter
        forgetful.relay_set(False)  # refuses them as replays of ours
    assert err.value.why == "auth_failed" and sim.relay_actions == 2


def test_a_replayed_aare_is_refused_after_a_restart(clock: SimClock, tmp_path: Path) -> None:
    sim = keyed(clock)
    before = SecureAssociation(security(InvocationCounters(tmp_path, "M5")), os.urandom)
    aare = decode_apdu(sim.handle_apdu(before.aarq(0x1C0019, 1024).to_bytes(), 0x30))
    before.accept(aare)  # type: ignore[arg-type]
    before.finish()
    after = SecureAssociation(security(InvocationCounters(tmp_path, "M5")), os.urandom)
    with pytest.raises(DlmsSecurityError) as err:
        after.accept(aare)  # type: ignore[arg-type]
    assert err.value.why == "replayed_counter"


def test_the_meter_answers_in_the_form_it_was_asked_in(clock: SimClock) -> None:
    for form, tag in (("glo", 0xCC), ("ded", 0xD4), ("general-glo", 0xDB),
                      ("general-ded", 0xDC)):
        sim = keyed(clock)
        assert sim.security is not None
        secure = SecureAssociation(security(form=form), os.urandom)
        aare = decode_apdu(sim.handle_apdu(secure.aarq(0x1C0019, 1024).to_bytes(), 0x30))
        secure.accept(aare)  # type: ignore[arg-type]
        pass4 = decode_apdu(sim.handle_apdu(secure.protect(secure.pass3(0xC1)).to_bytes(),
                                            0x30))
        secure.pass4(secure.unprotect(pass4))
        get = GetRequest(1, SERIAL, 2, 0xC2)
        answer = decode_apdu(sim.handle_apdu(secure.protect(get).to_bytes(), 0x30))
        assert isinstance(answer, CipheredApdu) and answer.tag == tag, form
        assert (answer.system_title == sim.security.title) == form.startswith("general")
        assert (sim.security.dedicated_key is not None) == form.endswith("ded")
        # a plain request inside a ciphered association is refused, a release is not
        assert sim.handle_apdu(get.to_bytes(), 0x30) == bytes.fromhex("D80101")
        assert sim.handle_apdu(ReleaseRequest().to_bytes(), 0x30) == bytes.fromhex("6303800100")


def test_the_meter_refuses_an_old_client_counter(clock: SimClock) -> None:
    sim = keyed(clock)
    secure = SecureAssociation(security(), os.urandom)
    aare = decode_apdu(sim.handle_apdu(secure.aarq(0x1C0019, 1024).to_bytes(), 0x30))
    secure.accept(aare)  # type: ignore[arg-type]
    request = secure.protect(secure.pass3(0xC1)).to_bytes()
    secure.pass4(secure.unprotect(decode_apdu(sim.handle_apdu(request, 0x30))))
    again = decode_apdu(sim.handle_apdu(request, 0x30))  # the same request, replayed
    with pytest.raises(DlmsSecurityError) as err:
        secure.unprotect(again)
    assert err.value.why == "replayed_counter"


# -- hygiene -------------------------------------------------------------------------------
def test_keys_are_never_in_messages_or_reprs(clock: SimClock) -> None:
    sec = security()
    assert EK.hex() not in repr(sec).lower() and AK.hex() not in repr(sec).lower()
    messages = []
    sim = keyed(clock, keys=(OTHER, AK))
    for meter in (meter_on(rig(sim, clock=clock), clock, sec),
                  meter_on(rig(keyed(clock), clock=clock), clock,
                           security(server_title=b"SIMOTHER"))):
        with pytest.raises(DlmsSecurityError) as err:
            meter.relay_set(False)
        messages.append(str(err.value).lower())
    for text in messages:
        for key in (EK, AK, OTHER):
            assert key.hex() not in text and key.hex()[:8] not in text


def test_security_settings_are_checked() -> None:
    counters = InvocationCounters(None, "M5")
    for kwargs in ({"ek": EK[:15]}, {"client_title": b"short"}, {"server_title": b"x"},
                   {"form": "plain"}, {"suite": 1}, {"challenge_bytes": 7},
                   {"challenge_bytes": 65}):
        base = {"client_title": CLIENT_TITLE, "ek": EK, "ak": AK, "counters": counters}
        with pytest.raises(ValueError):
            DlmsSecurity(**{**base, **kwargs})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SecureAssociation(security(), lambda n: b"\x00" * (n - 1))


def test_the_security_faults_through_the_control_socket(clock: SimClock) -> None:
    import contextlib

    from sim.faults import apply_control

    keyed_meter, plain = keyed(clock), sim_meter(clock)
    meters = {"D1": keyed_meter, "D2": plain}

    def control(message: dict[str, object]) -> dict[str, object]:
        return apply_control(message, meters, lambda _m: contextlib.nullcontext())

    assert control({"meter": "D1", "fault": "wrong_key"}) == {
        "ok": True, "meter": "D1", "wrong_key": True}
    assert keyed_meter.wrong_key
    assert control({"meter": "D1", "fault": "wrong_key", "on": False})["wrong_key"] is False
    assert control({"meter": "D1", "fault": "replay_counter", "on": True})["replay_counter"]
    assert (keyed_meter.replay_counter, keyed_meter.wrong_key) == (True, False)
    refused = control({"meter": "D2", "fault": "wrong_key"})  # no keys: nothing to make wrong
    assert not refused["ok"] and "cannot do it" in str(refused["error"])
    with pytest.raises(ValueError, match="no HLS keys"):
        plain.replay_counter = True


def _associated(clock: SimClock, form: str = "general-glo") -> tuple[SimDlmsMeter,
                                                                     SecureAssociation, Aare]:
    sim = keyed(clock)
    secure = SecureAssociation(security(form=form), os.urandom)
    aare = decode_apdu(sim.handle_apdu(secure.aarq(0x1C0019, 1024).to_bytes(), 0x30))
    assert isinstance(aare, Aare)
    secure.accept(aare)
    return sim, secure, aare


@pytest.mark.parametrize(("change", "error", "match"), [
    ({"mechanism": 2}, DlmsProtocolError, "mechanism 2"),
    ({"responding_title": None}, DlmsProtocolError, "responding-AP-title"),
    ({"responding_title": CLIENT_TITLE}, DlmsSecurityError, "our own"),
    ({"challenge": b"1234567"}, DlmsProtocolError, "StoC of 7"),
    ({"challenge": None}, DlmsProtocolError, "StoC of 0"),
    ({"ciphered_initiate": None}, DlmsSecurityError, "not ciphered"),
])
def test_an_aare_that_breaks_hls_rules_is_refused(clock: SimClock, change: dict[str, Any],
                                                   error: type[Exception], match: str) -> None:
    sim = keyed(clock)
    secure = SecureAssociation(security(), os.urandom)
    aare = decode_apdu(sim.handle_apdu(secure.aarq(0x1C0019, 1024).to_bytes(), 0x30))
    assert isinstance(aare, Aare)
    with pytest.raises(error, match=match):
        secure.accept(dataclasses.replace(aare, **change))


def test_an_aare_with_an_unauthenticated_initiate_response_is_a_bad_tag(
    clock: SimClock
) -> None:
    sim = keyed(clock)
    secure = SecureAssociation(security(), os.urandom)
    aare = decode_apdu(sim.handle_apdu(secure.aarq(0x1C0019, 1024).to_bytes(), 0x30))
    assert isinstance(aare, Aare) and sim.security is not None
    clear = ciphering.protect(b"\x08\x00\x06\x5f\x1f\x04\x00\x00\x10\x1d\x02\x00\x00\x07",
                              form="glo", sc=0x20, system_title=sim.security.title, ic=10**9,
                              ek=EK, ak=AK)  # encryption only: no tag
    with pytest.raises(DlmsSecurityError, match="not an authenticated") as err:
        secure.accept(dataclasses.replace(aare, ciphered_initiate=clear.to_bytes()))
    assert err.value.why == "bad_tag"


def test_responses_that_the_association_must_refuse(clock: SimClock) -> None:
    sim, secure, _ = _associated(clock)
    assert sim.security is not None
    title, plain = sim.security.title, GetResponse(0xC1, Data(Tag.ENUM, 1))
    cases: list[tuple[Apdu, str]] = [
        (plain, "bad_tag"),  # not protected at all
        (ciphering.protect(plain.to_bytes(), form="general-glo", sc=0x20, system_title=title,
                           ic=10**9, ek=EK, ak=AK), "bad_tag"),  # not authenticated
        (ciphering.protect(plain.to_bytes(), form="general-glo", sc=0x30,
                           system_title=b"SIMOTHER", ic=10**9, ek=EK, ak=AK),
         "system_title_mismatch"),
        (ciphering.protect(plain.to_bytes(), form="general-ded", sc=0x30, system_title=title,
                           ic=10**9, ek=EK, ak=AK), "key_missing"),  # we sent no dedicated key
        (ExceptionResponse(1, 5), "bad_tag"),  # the meter could not decipher ours
        (ExceptionResponse(1, 6, 77), "replayed_counter"),  # it found our counter used
    ]
    for response, why in cases:
        with pytest.raises(DlmsSecurityError) as err:
            secure.unprotect(response)
        assert err.value.why == why, response
    for harmless in (ExceptionResponse(1, 1), ConfirmedServiceError(5, 1, 2)):
        assert secure.unprotect(harmless) == harmless  # no value in them to distrust
    good = ciphering.protect(plain.to_bytes(), form="glo", sc=0x10, system_title=title,
                             ic=10**9, ek=EK, ak=AK)  # authenticated only is enough
    assert secure.unprotect(good) == plain
    with pytest.raises(DlmsSecurityError, match="a replay"):
        secure.unprotect(good)


def test_the_dedicated_key_counters_belong_to_the_association(clock: SimClock) -> None:
    sim, secure, _ = _associated(clock, form="general-ded")
    assert sim.security is not None and secure.dedicated_key is not None
    assert sim.security.dedicated_key == secure.dedicated_key
    reply = GetResponse(0xC1, Data(Tag.ENUM, 1)).to_bytes()
    first = ciphering.protect(reply, form="general-ded", sc=0x30, system_title=sim.security.title,
                              ic=1, ek=secure.dedicated_key, ak=AK)  # low: its own counter
    assert isinstance(secure.unprotect(first), GetResponse)
    with pytest.raises(DlmsSecurityError) as err:
        secure.unprotect(first)
    assert err.value.why == "replayed_counter"
    other = _associated(clock, form="general-ded")[1]
    assert other.dedicated_key != secure.dedicated_key  # a fresh key each association


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([0xCC, 0xCF, 0xD4, 0xDB, 0xDC, 0x28, 0xD8, 0xC4]), st.binary(max_size=80))
def test_any_response_bytes_are_refused_or_parsed_never_anything_else(tag: int,
                                                                      rest: bytes) -> None:
    """Whatever comes back in an HLS association: a verified APDU, or the codec's errors."""
    _, secure, aare = _associated(SimClock())
    raw = bytes((tag,)) + rest
    try:
        response = secure.unprotect(decode_apdu(raw))
    except (DlmsProtocolError, DlmsSecurityError):
        pass
    else:
        assert isinstance(response, ExceptionResponse | ConfirmedServiceError)  # no forgery
    fresh = SecureAssociation(security(), os.urandom)
    with pytest.raises((DlmsProtocolError, DlmsSecurityError)):  # no tag is ever guessed
        fresh.accept(dataclasses.replace(aare, ciphered_initiate=raw))
