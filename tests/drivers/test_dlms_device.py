"""DlmsMeter against the simulated IS 15959 meter, in process, on simulated time.

The transport hands every written frame to ``sim.dlms_line``'s line server and
returns its replies; time is a SimClock that moves while the driver waits.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import agent.drivers.dlms.session as session_module
from agent.clock import SimClock
from agent.drivers.dlms import cosem
from agent.drivers.dlms.apdu import Obis
from agent.drivers.dlms.axdr import Data, Tag, structure
from agent.drivers.dlms.connection import State
from agent.drivers.dlms.device import DlmsMeter, event_kind, probe
from agent.drivers.dlms.errors import DlmsAssociationError, DlmsChecksumError, DlmsProtocolError
from agent.drivers.driver import EventDriver, MeterDriver, MeterEvent, RelayDriver
from agent.errors import ChecksumError, DeviceException, DriverError, TimeoutError_
from sim.dlms_line import DlmsLineServer, HdlcServerLink
from sim.dlms_meter import SimDlmsMeter
from sim.dlms_objects import PROFILE_ENTRIES

START_S = 1_767_225_600  # SimClock's default start, 2026-01-01T00:00Z


class LoopTransport:
    """Bytes written go to the line server; its replies come back on read."""

    baudrate = 9600

    def __init__(self, server: DlmsLineServer, clock: SimClock) -> None:
        self.server, self.clock = server, clock
        self.pending = b""
        self.writes: list[bytes] = []
        self.mangle: Callable[[bytes], bytes] | None = None

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.server.receive_data(data)
        while (reply := self.server.next_reply()) is not None:
            frame = reply[0]
            if self.mangle is not None:
                frame, self.mangle = self.mangle(frame), None
            self.pending += frame

    def read(self, max_bytes: int, timeout_s: float) -> bytes:
        if not self.pending:
            self.clock.advance(timeout_s)
            return b""
        out, self.pending = self.pending[:max_bytes], self.pending[max_bytes:]
        return out

    def reset_input(self) -> None:
        self.pending = b""

    def close(self) -> None:
        pass


def rig(*meters: SimDlmsMeter, clock: SimClock) -> LoopTransport:
    links = {m.address: HdlcServerLink(m) for m in meters}
    return LoopTransport(DlmsLineServer(links, 9600), clock)


def sim_meter(clock: SimClock, address: int = 5, **kwargs: object) -> SimDlmsMeter:
    return SimDlmsMeter(address, clock=clock, serial=12_345_678, seed=7, speed=0.0,
                        import_wh=1_234_567, **kwargs)  # type: ignore[arg-type]


def association(sim: SimDlmsMeter) -> str | None:
    """``sim.association`` read afresh: mypy keeps an attribute that an assert narrowed
    narrowed across the calls that change it, and would not check the rest of a test."""
    return sim.association


@pytest.fixture
def clock() -> SimClock:
    return SimClock()


def test_the_driver_implements_the_driver_protocols(clock: SimClock) -> None:
    meter = DlmsMeter(rig(sim_meter(clock), clock=clock), 5, clock=clock)
    assert isinstance(meter, MeterDriver)
    assert isinstance(meter, RelayDriver)
    assert isinstance(meter, EventDriver)


def test_read_gives_every_quantity_in_contract_units(clock: SimClock) -> None:
    sim = sim_meter(clock)
    meter = DlmsMeter(rig(sim, clock=clock), 5, clock=clock)
    reading = meter.read("M5", 1234)
    assert reading.meter == "M5" and reading.t == 1234 and reading.serial == "12345678"
    values = reading.values
    assert values["import_wh"] == sim.import_wh == 1_234_567
    assert values["export_wh"] == 0
    assert values["p_w"] == round(sim.power_w)
    assert 2250 <= values["v_dv"] <= 2350
    assert 4990 <= values["f_chz"] <= 5010
    assert 850 <= values["pf_milli"] <= 990
    assert abs(values["i_ma"] - sim.power_w / 230 / values["pf_milli"] * 1e6) < 100
    assert sim.associations == 1
    meter.read("M5", 1249)  # the association is kept between polls
    assert sim.associations == 1 and meter.state is State.ASSOCIATED


def test_one_exchange_per_poll_with_get_with_list(clock: SimClock) -> None:
    sim = sim_meter(clock)
    transport = rig(sim, clock=clock)
    meter = DlmsMeter(transport, 5, clock=clock)
    meter.read("M5", 0)  # SNRM, AARQ, serial, a 14-attribute list in two segments
    assert len(transport.writes) == 5
    transport.writes.clear()
    second = meter.read("M5", 15)
    assert len(transport.writes) == 1  # one GET-With-List of the 7 values
    assert second.values["import_wh"] == sim.import_wh


def test_without_multiple_references_one_get_each(clock: SimClock) -> None:
    from agent.drivers.dlms.apdu import MULTIPLE_REFERENCES

    sim = sim_meter(clock)
    sim.server_conformance &= ~MULTIPLE_REFERENCES
    transport = rig(sim, clock=clock)
    meter = DlmsMeter(transport, 5, clock=clock)
    first = meter.read("M5", 0)
    transport.writes.clear()
    second = meter.read("M5", 15)
    assert len(transport.writes) == len(cosem.REGISTERS)
    assert first.values.keys() == second.values.keys() == {r.quantity for r in cosem.REGISTERS}
    assert second.values["import_wh"] == sim.import_wh


class OddMeter(SimDlmsMeter):
    """Registers with other scalers and types, one missing, and one in the wrong unit."""

    overrides: dict[Obis, tuple[Data, int, int]] = {}
    missing: set[Obis] = set()

    def _objects(self) -> dict[Obis, tuple[int, dict[int, Data]]]:
        objects = super()._objects()
        for obis in self.missing:
            del objects[obis]
        for obis, (value, scaler, unit) in self.overrides.items():
            objects[obis] = (3, {2: value, 3: structure(Data(Tag.INTEGER, scaler),
                                                        Data(Tag.ENUM, unit))})
        return objects


def test_scaler_and_unit_are_applied_with_decimal(clock: SimClock) -> None:
    sim = OddMeter(5, clock=clock, serial=1, speed=0.0)
    regs = {r.quantity: r.obis for r in cosem.REGISTERS}
    sim.overrides = {
        regs["import_wh"]: (Data(Tag.DOUBLE_LONG_UNSIGNED, 1234), 3, cosem.UNIT_WH),  # kWh
        regs["export_wh"]: (Data(Tag.DOUBLE_LONG_UNSIGNED, 12_349), -1, cosem.UNIT_WH),
        regs["v_dv"]: (Data(Tag.FLOAT32, 230.1), 0, cosem.UNIT_V),
        regs["p_w"]: (Data(Tag.DOUBLE_LONG, -1500), 0, cosem.UNIT_W),  # exporting
        regs["pf_milli"]: (Data(Tag.LONG, -950), -3, cosem.UNIT_NONE),  # leading
    }
    sim.missing = {regs["f_chz"]}
    values = DlmsMeter(rig(sim, clock=clock), 5, clock=clock).read("M", 0).values
    assert values["import_wh"] == 1_234_000
    assert values["export_wh"] == 1234  # 1234.9 Wh: energy is never rounded up
    assert values["v_dv"] == 2301  # float32 230.1 read through its shortest repr
    assert values["p_w"] == -1500 and values["pf_milli"] == -950
    assert "f_chz" not in values  # not measured: absent, never zero


def test_a_register_in_the_wrong_unit_is_a_protocol_error(clock: SimClock) -> None:
    sim = OddMeter(5, clock=clock, serial=1, speed=0.0)
    sim.overrides = {cosem.REGISTERS[0].obis: (Data(Tag.DOUBLE_LONG_UNSIGNED, 5), 3, 32)}
    sim.missing = set()
    with pytest.raises(DlmsProtocolError, match="unit 32"):
        DlmsMeter(rig(sim, clock=clock), 5, clock=clock).read("M", 0)


def test_number_conversion_refuses_non_numbers() -> None:
    assert cosem.number(Data(Tag.LONG64, -(2**63))) == Decimal(-(2**63))
    with pytest.raises(DlmsProtocolError):
        cosem.number(Data(Tag.FLOAT64, float("inf")))
    with pytest.raises(DlmsProtocolError):
        cosem.number(Data(Tag.OCTET_STRING, b"12"))


def test_relay_disconnect_and_reconnect(clock: SimClock) -> None:
    sim = sim_meter(clock)
    meter = DlmsMeter(rig(sim, clock=clock), 5, clock=clock)
    assert meter.relay_state() == "closed"
    meter.relay_set(False)
    assert meter.relay_state() == "open"
    assert sim.connected is False and sim.power_w == 0
    assert meter.read("M5", 0).values["p_w"] == 0
    meter.relay_set(False)  # again: nothing to do, not an error
    meter.relay_set(True)
    assert meter.relay_state() == "closed" and sim.connected is True


def test_relay_armed_until_the_button_is_pressed(clock: SimClock) -> None:
    sim = sim_meter(clock, control_mode=2)
    meter = DlmsMeter(rig(sim, clock=clock), 5, clock=clock)
    meter.relay_set(False)
    meter.relay_set(True)  # mode 2: remote_reconnect only arms the switch
    assert meter.relay_state() == "armed"
    assert sim.connected is False
    sim.press_button()  # the consumer closes it locally
    assert (meter.relay_state(), sim.connected) == ("closed", True)
    meter.relay_set(False)
    assert meter.relay_state() == "open"


def test_relay_in_control_mode_0_refuses(clock: SimClock) -> None:
    meter = DlmsMeter(rig(sim_meter(clock, control_mode=0), clock=clock), 5, clock=clock)
    with pytest.raises(DeviceException) as info:
        meter.relay_set(False)
    assert info.value.code == cosem.OTHER_REASON
    assert meter.relay_state() == "closed"


def test_magnet_tamper_is_read_once(clock: SimClock) -> None:
    sim = sim_meter(clock)
    meter = DlmsMeter(rig(sim, clock=clock), 5, clock=clock)
    assert meter.read_events() == []
    sim.tamper("magnet")
    assert meter.read_events() == [MeterEvent("magnet", 201, START_S)]
    assert meter.read_events() == []
    meter.relay_set(False)  # load switch 301: a relay event, not tamper
    meter.relay_set(True)
    assert meter.read_events() == []


def test_every_tamper_kind_and_same_second_events(clock: SimClock) -> None:
    sim = sim_meter(clock)
    meter = DlmsMeter(rig(sim, clock=clock), 5, clock=clock)
    for kind in ("magnet", "neutral_missing", "cover_open", "reverse_current", "other"):
        sim.tamper(kind)
    sim.inject_event(202, START_S + 5)  # magnet restoration, later
    events = meter.read_events()
    assert sorted((e.kind, e.code) for e in events) == [
        ("cover_open", 251), ("magnet", 201), ("magnet", 202), ("neutral_missing", 203),
        ("other", 205), ("reverse_current", 51)]
    assert [e.t for e in events] == sorted(e.t for e in events)
    sim.inject_event(202, START_S + 5)  # a second one in the same second: still new
    assert meter.read_events() == [MeterEvent("magnet", 202, START_S + 5)]
    assert meter.read_events() == []


def test_event_marks_carry_over_to_a_new_driver(clock: SimClock) -> None:
    sim = sim_meter(clock)
    transport = rig(sim, clock=clock)
    first = DlmsMeter(transport, 5, clock=clock)
    sim.tamper("cover_open")
    assert len(first.read_events()) == 1
    first.close()
    second = DlmsMeter(transport, 5, clock=clock)
    second.event_marks = dict(first.event_marks)
    assert second.read_events() == []


def test_a_long_event_log_comes_by_block_transfer_and_segments(clock: SimClock) -> None:
    sim = sim_meter(clock)
    transport = rig(sim, clock=clock)
    meter = DlmsMeter(transport, 5, clock=clock)
    for i in range(PROFILE_ENTRIES + 20):  # the log keeps the newest PROFILE_ENTRIES
        sim.inject_event(251, START_S + i)
    events = meter.read_events()
    assert len(events) == PROFILE_ENTRIES
    assert events[0].t == START_S + 20 and events[-1].t == START_S + PROFILE_ENTRIES + 19
    assert sim.blocks_sent >= 2  # over our 1024-byte PDU: GET with blocks
    assert len(transport.writes) > 10  # and each block over several HDLC segments (RR)


def test_wrong_password_is_refused_with_the_aare_result(clock: SimClock) -> None:
    sim = sim_meter(clock)
    meter = DlmsMeter(rig(sim, clock=clock), 5, password=b"12345678", clock=clock)
    with pytest.raises(DlmsAssociationError) as info:
        meter.read("M5", 0)
    assert isinstance(info.value, DriverError)
    assert (info.value.result, info.value.diagnostic) == (1, 13)
    assert sim.rejections == 1 and meter.state is State.DISCONNECTED


def test_public_client_reads_only_the_serial(clock: SimClock) -> None:
    sim = sim_meter(clock)
    transport = rig(sim, clock=clock)
    assert probe(transport, 5, timeout_s=0.2, clock=clock) == "12345678"
    assert probe(transport, 6, timeout_s=0.2, clock=clock) is None
    public = DlmsMeter(transport, 5, password=None, clock=clock)
    with pytest.raises(DeviceException) as info:
        public.relay_state()
    assert info.value.code == cosem.READ_WRITE_DENIED
    assert sim.association is None or sim.association == "public"
    public.close()
    assert sim.association is None


def test_probe_of_a_meter_that_refuses_the_public_client(clock: SimClock) -> None:
    sim = sim_meter(clock)
    transport = rig(sim, clock=clock)
    assert probe(transport, 5, timeout_s=0.2, clock=clock) == "12345678"
    original = SimDlmsMeter._associate

    def refuse(self: SimDlmsMeter, aarq: object, client: int) -> object:
        from agent.drivers.dlms.apdu import Aare

        return Aare(1, 12)

    SimDlmsMeter._associate = refuse  # type: ignore[assignment,method-assign]
    try:
        assert probe(transport, 5, timeout_s=0.2, clock=clock) == ""
    finally:
        SimDlmsMeter._associate = original  # type: ignore[method-assign]


def test_silent_meter_times_out_then_recovers(clock: SimClock) -> None:
    sim = sim_meter(clock)
    meter = DlmsMeter(rig(sim, clock=clock), 5, clock=clock)
    meter.read("M5", 0)
    sim.silent = True
    started = clock.monotonic_s()
    with pytest.raises(TimeoutError_):
        meter.read("M5", 15, timeout_s=0.3)
    assert clock.monotonic_s() - started < 1.0  # one frame's allowance, not more
    assert meter.state is State.DISCONNECTED
    sim.silent = False
    reading = meter.read("M5", 30)  # a fresh SNRM, AARQ, and the serial again
    assert reading.serial == "12345678" and sim.associations == 2


def test_a_corrupted_reply_is_a_checksum_error_then_it_recovers(clock: SimClock) -> None:
    sim = sim_meter(clock)
    transport = rig(sim, clock=clock)
    meter = DlmsMeter(transport, 5, clock=clock)
    meter.read("M5", 0)

    def flip(frame: bytes) -> bytes:
        return frame[:12] + bytes([frame[12] ^ 0x10]) + frame[13:]

    transport.mangle = flip
    with pytest.raises(DlmsChecksumError) as info:
        meter.relay_state()
    assert isinstance(info.value, ChecksumError)
    assert meter.relay_state() == "closed"


def test_garbage_before_the_reply_is_skipped(clock: SimClock) -> None:
    sim = sim_meter(clock)
    transport = rig(sim, clock=clock)
    meter = DlmsMeter(transport, 5, clock=clock)
    meter.read("M5", 0)
    transport.mangle = lambda frame: b"\x7e\xa0\xff\x00\x13\x7e" + frame
    assert meter.relay_state() == "closed"


def test_idle_link_is_associated_again_before_the_meter_drops_it(clock: SimClock) -> None:
    sim = sim_meter(clock)
    meter = DlmsMeter(rig(sim, clock=clock), 5, clock=clock)
    meter.read("M5", 0)
    clock.advance(60)
    meter.read("M5", 60)
    assert sim.associations == 1
    clock.advance(session_module.IDLE_REASSOCIATE_S + 1)
    meter.read("M5", 200)
    assert sim.associations == 2


def test_link_dropped_by_the_meter_is_noticed_and_retried_once(
    clock: SimClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_module, "IDLE_REASSOCIATE_S", 10_000.0)
    sim = sim_meter(clock)
    meter = DlmsMeter(rig(sim, clock=clock), 5, clock=clock)
    meter.read("M5", 0)
    clock.advance(200)  # beyond the meter's inactivity time-out: it answers DM
    assert meter.relay_state() == "closed"
    assert sim.associations == 2


def test_close_releases_and_disconnects(clock: SimClock) -> None:
    sim = sim_meter(clock)
    transport = rig(sim, clock=clock)
    meter = DlmsMeter(transport, 5, clock=clock)
    meter.read("M5", 0)
    link = transport.server.links[5]
    assert link.connected and sim.association == "lls"
    meter.close()
    assert (link.connected, association(sim)) == (False, None)
    assert meter.state is State.DISCONNECTED
    meter.close()  # twice is harmless
    sim.silent = True
    with pytest.raises(TimeoutError_):
        meter.read_serial(timeout_s=0.1)
    meter.close(timeout_s=0.1)  # best effort: no error with a dead meter


def test_four_byte_server_address(clock: SimClock) -> None:
    sim = sim_meter(clock, address=200)
    meter = DlmsMeter(rig(sim, clock=clock), 200, clock=clock)
    assert meter.read("M200", 0).values["import_wh"] == 1_234_567


def test_event_kinds() -> None:
    assert event_kind(201) == "magnet" and event_kind(204) == "neutral_missing"
    assert event_kind(251) == "cover_open" and event_kind(55) == "reverse_current"
    assert event_kind(1) == "other" and event_kind(205) == "other"
    assert event_kind(301) is None and event_kind(302) is None


def test_a_swapped_meter_is_read_as_itself(clock: SimClock) -> None:
    sim = sim_meter(clock)
    meter = DlmsMeter(rig(sim, clock=clock), 5, clock=clock)
    assert meter.read("M5", 0).serial == "12345678"
    sim.silent = True  # the technician swaps the meter: off the bus for a while
    with pytest.raises(TimeoutError_):
        meter.read("M5", 15, timeout_s=0.2)
    new_serial = sim.replace()
    sim.silent = False
    reading = meter.read("M5", 30)
    assert reading.serial == str(new_serial)
    assert reading.values["import_wh"] == sim.import_wh < 1000


def test_dm_to_the_aarq_is_a_driver_error(clock: SimClock) -> None:
    sim = sim_meter(clock)
    transport = rig(sim, clock=clock)
    meter = DlmsMeter(transport, 5, clock=clock)
    original = HdlcServerLink._information

    def refuse(self: HdlcServerLink, frame: object) -> object:
        from agent.drivers.dlms.hdlc import FrameKind

        return self._reply(frame, FrameKind.DM)  # type: ignore[arg-type]

    HdlcServerLink._information = refuse  # type: ignore[assignment,method-assign]
    try:
        with pytest.raises(DriverError, match="AARQ answered with DM"):
            meter.read("M5", 0)
    finally:
        HdlcServerLink._information = original  # type: ignore[method-assign]
    assert meter.read("M5", 1).serial == "12345678"


def test_read_clock(clock: SimClock) -> None:
    sim = sim_meter(clock)
    meter = DlmsMeter(rig(sim, clock=clock), 5, clock=clock)
    assert meter.read_clock() == int(sim.sim_time_s) == START_S  # IST on the wire, UTC here


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_the_simulator_survives_any_bytes(chunks: list[bytes]) -> None:
    clock = SimClock()
    sim = sim_meter(clock)
    server = DlmsLineServer({5: HdlcServerLink(sim)}, 9600)
    for chunk in chunks:
        server.receive_data(chunk)
        server.silence()
    while server.next_reply() is not None:
        pass
    transport = LoopTransport(server, clock)  # and still answers a real client
    assert DlmsMeter(transport, 5, clock=clock).read_serial() == "12345678"
