"""The simulation's bus runs the agent's own BusSchedule: its quarantine, retries and
event-log cadence are the shipped ones, in both modes (direct and codec)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from agent.clock import SimClock
from agent.config import BusConfig, MeterConfig
from agent.drivers.events import (
    BusEvent,
    MeterOffline,
    MeterOnline,
    ReadingTaken,
    RelaySwitched,
    TamperSeen,
)
from agent.drivers.reading import Reading
from agent.drivers.schedule import (
    EVENTS_EVERY,
    OFFLINE_AFTER,
    QUARANTINE_MAX_S,
    RETRIES,
    BusSchedule,
)
from agent.relay_spec import parse_relay
from sim.neighbourhood import simbus, simline
from sim.neighbourhood.simbus import SimBus
from sim.neighbourhood.world import Household

START_S = 1_772_000_000


class _Field:
    """One household on the line, silent or not, with a tamper log."""

    def __init__(self, clock: SimClock) -> None:
        self.clock = clock
        self.silent = False
        self.corrupt_pct = 0
        self.tampers: list[dict[str, Any]] = []
        self.served: list[Reading] = []
        self.hh = Household(index=1, meter="M1", account="A1", address=1, coil_unit=101,
                            coil=0, seed=7, size_pct=40, daytime=False, habit="planner",
                            start_balance=10_000, reg_ws=3_600_000, serial=12_345_678,
                            last_t=START_S)
        self._rng = random.Random(1)

    def household(self, meter_id: str) -> Household | None:
        return self.hh if meter_id == "M1" else None

    def advance_us(self, micros: int) -> None:
        self.clock.advance(micros / 1_000_000)

    def fault(self, meter_id: str) -> tuple[bool, int]:
        return self.silent, self.corrupt_pct

    def coil_set(self, meter_id: str, connected: bool) -> None:
        self.hh.connected = connected

    def served_reading(self, reading: Reading, serial: int) -> None:
        self.served.append(reading)

    def tamper_due(self, meter_id: str) -> list[dict[str, Any]]:
        due, self.tampers = self.tampers, []
        return due

    @property
    def rng(self) -> random.Random:
        return self._rng


def _bus(mode: str, interval_s: float) -> tuple[SimBus, _Field, SimClock, list[BusEvent]]:
    clock = SimClock(start_s=START_S)
    field = _Field(clock)
    cfg = BusConfig(name="b0", port="sim://", baudrate=9600, poll_interval_s=interval_s,
                    timeout_s=0.2)
    meter = MeterConfig("M1", "b0", 1, "eastron-sdm120", "A1", "modbus-coil:101:0",
                        parse_relay("modbus-coil:101:0"))
    events: list[BusEvent] = []
    bus = SimBus(cfg, [meter], events.append, clock=clock, field=field, mode=mode,
                 on_switch=lambda _m, _c: None)
    return bus, field, clock, events


def _serve_until_due(bus: SimBus, clock: SimClock) -> None:
    due = bus.next_due_mono()
    assert due is not None
    if due > clock.monotonic_s():
        clock.advance(due - clock.monotonic_s())
    bus.service()


def test_no_copy_of_the_policy_is_left_in_the_simulation() -> None:
    for name in ("MAX_JOBS", "RETRIES", "OFFLINE_AFTER", "QUARANTINE_MIN_S",
                 "QUARANTINE_MAX_S", "RELAY_TRIES"):
        assert not hasattr(simbus, name), name
    bus, *_ = _bus("direct", 1800.0)
    assert type(bus.schedule) is BusSchedule


@pytest.mark.parametrize("mode", ["direct", "codec"])
def test_a_silent_meter_is_quarantined_with_the_shipped_backoff(mode: str) -> None:
    bus, field, clock, events = _bus(mode, 1800.0)
    field.silent = True
    for _ in range(OFFLINE_AFTER):
        _serve_until_due(bus, clock)
    stats = bus.stats["M1"]
    assert [e.meter for e in events if isinstance(e, MeterOffline)] == ["M1"]  # once
    assert stats.timeouts == OFFLINE_AFTER * (RETRIES + 1)
    assert stats.backoff_s == QUARANTINE_MAX_S  # max(5 s, the 30-min interval), capped
    before = clock.monotonic_s()
    _serve_until_due(bus, clock)
    assert clock.monotonic_s() - before >= QUARANTINE_MAX_S
    assert stats.timeouts == OFFLINE_AFTER * (RETRIES + 1) + 1  # one attempt, no retry
    field.silent = False
    _serve_until_due(bus, clock)
    assert [type(e) for e in events[-2:]] == [MeterOnline, ReadingTaken]


@pytest.mark.parametrize("mode", ["direct", "codec"])
def test_the_event_log_is_read_at_the_schedules_cadence(mode: str) -> None:
    bus, field, clock, events = _bus(mode, 60.0)
    field.tampers.append({"kind": "magnet", "code": 201, "t": START_S})
    _serve_until_due(bus, clock)  # the first good poll reads the log
    assert [e for e in events if isinstance(e, TamperSeen)] == [
        TamperSeen("M1", "magnet", 201, START_S)]
    field.tampers.append({"kind": "cover_open", "code": 251, "t": START_S + 60})
    for _ in range(EVENTS_EVERY - 1):
        _serve_until_due(bus, clock)
    assert len([e for e in events if isinstance(e, TamperSeen)]) == 1  # not yet
    _serve_until_due(bus, clock)
    assert [e.code for e in events if isinstance(e, TamperSeen)] == [201, 251]
    assert len(field.served) == EVENTS_EVERY + 1


@pytest.mark.parametrize("mode", ["direct", "codec"])
def test_relays_are_switched_through_switch_and_confirm(mode: str) -> None:
    bus, field, clock, events = _bus(mode, 60.0)
    assert bus.switch_relay("M1", False)
    bus.service()
    assert events[0] == RelaySwitched("M1", False, "open", "")
    assert not field.hh.connected
    assert bus.switch_relay("M1", True) and bus.switch_relay("NOPE", True)
    bus.service()
    assert events[-2:] == [RelaySwitched("M1", True, "closed", ""), RelaySwitched(
        "NOPE", None, "", "relay kind 'unknown meter' is not switchable on this bus")]


# -- the other protocols (--protocols mixed) ----------------------------------------------
def _mixed_bus(protocol: str, *, relay: str, mode: str = "direct", meter_bus: str = "b0",
               relayed: tuple[MeterConfig, ...] = ()
               ) -> tuple[SimBus, _Field, SimClock, list[BusEvent]]:
    clock = SimClock(start_s=START_S)
    field = _Field(clock)
    cfg = BusConfig(name="b0", port="sim://", baudrate=9600, protocol=protocol,
                    poll_interval_s=60.0, timeout_s=0.2)
    model = {"modbus": "eastron-sdm120", "iec62056-21": "iec62056-21",
             "dlms": "dlms-is15959"}[protocol]
    meters = [MeterConfig("M1", meter_bus, 1, model, "A1", relay, parse_relay(relay))] \
        if not relayed else []
    events: list[BusEvent] = []
    bus = SimBus(cfg, meters, events.append, clock=clock, field=field, mode=mode,
                 on_switch=lambda _m, _c: None, relayed=relayed)
    return bus, field, clock, events


@pytest.mark.parametrize(("protocol", "relay", "quantities"), [
    ("iec62056-21", "modbus-coil:b9:10:0", simbus.IEC_QUANTITIES),
    ("dlms", "meter", simbus.DLMS_QUANTITIES)])
def test_iec_and_dlms_readings_are_the_households_in_their_drivers_quantities(
        protocol: str, relay: str, quantities: frozenset[str]) -> None:
    from agent.drivers.dlms.cosem import REGISTERS
    from agent.drivers.iec62056.obis import QUANTITIES

    assert simbus.DLMS_QUANTITIES == {r.quantity for r in REGISTERS}
    assert simbus.IEC_QUANTITIES == {q for q, _u, _f in QUANTITIES.values()}
    bus, field, clock, events = _mixed_bus(protocol, relay=relay)
    before = clock.monotonic_s()
    bus.service()
    (taken,) = [e for e in events if isinstance(e, ReadingTaken)]
    reading = taken.reading
    assert set(reading.values) == quantities
    assert reading.values["import_wh"] == field.hh.wh  # exact Wh, not float32 kWh
    assert reading.serial == str(field.hh.serial)
    spent = clock.monotonic_s() - before
    if protocol == "iec62056-21":  # the sign-on and identification at 300 baud
        assert spent > 0.5 + 2 * simline.IEC_REACTION_S
    else:  # SNRM, AARQ, the serial and the first GET-With-List (with scalers)
        assert 0.1 < spent < 1.0
        _serve_until_due(bus, clock)
        after = clock.monotonic_s()
        _serve_until_due(bus, clock)
        # the association is kept: a later poll is one GET-With-List
        assert clock.monotonic_s() - after - 60.0 < spent / 2


def test_a_dlms_meter_switches_itself_through_the_shipped_meter_relay(
        monkeypatch: pytest.MonkeyPatch) -> None:
    bus, field, clock, events = _mixed_bus("dlms", relay="meter")
    calls: list[tuple[str, bool]] = []
    from agent.relay.meter import MeterRelay
    from agent.relay.meter import meter_relay as real

    def spy(driver: Any, name: str, *, timeout_s: float | None = None) -> MeterRelay:
        calls.append((type(driver).__name__, name == "M1"))
        return real(driver, name, timeout_s=timeout_s)

    monkeypatch.setattr(simbus, "meter_relay", spy)
    bus.service()  # a poll: the reader's association is open
    assert bus.switch_relay("M1", False)
    before = clock.monotonic_s()
    bus.service()
    assert calls == [("_DlmsDirect", True)]
    assert events[-1] == RelaySwitched("M1", False, "open", "")
    assert not field.hh.connected
    assert bus.dlms_link("M1").association == "settings"
    assert clock.monotonic_s() - before > 0.2  # release, SNRM, AARQ (HLS), reply, ACTION, GET
    field.silent = True  # its breaker is inside it: a silent meter cannot be switched
    assert bus.switch_relay("M1", True)
    bus.service()
    assert isinstance(events[-1], RelaySwitched) and events[-1].connected is None
    assert not field.hh.connected
    field.silent = False
    assert bus.switch_relay("M1", True)
    bus.service()
    assert events[-1] == RelaySwitched("M1", True, "closed", "")
    assert field.hh.connected


@pytest.mark.parametrize("mode", ["direct", "codec"])
def test_an_iec_meters_coil_is_switched_by_the_modbus_bus(mode: str) -> None:
    iec = MeterConfig("M1", "b1", 1, "iec62056-21", "A1", "modbus-coil:b0:10:2",
                      parse_relay("modbus-coil:b0:10:2"))
    bus, field, _clock, events = _mixed_bus("modbus", relay="", mode=mode, relayed=(iec,))
    assert not bus.meters and bus.schedule.busy_addresses() == {10: "relay of M1"}
    assert bus.switch_relay("M1", False)
    bus.service()
    assert events == [RelaySwitched("M1", False, "open", "")]
    assert not field.hh.connected


def test_a_dlms_bus_is_direct_in_both_modes() -> None:
    assert _mixed_bus("dlms", relay="meter", mode="codec")[0].mode == "direct"


def test_the_iec_codec_reads_what_direct_mode_builds() -> None:
    """Codec mode: the shipped IecMeter over the in-memory IEC line (sign-on at 300 baud,
    option select, the data message at 9600 with its BCC); the same values as direct
    mode's, and a garbled data message is a checksum error the driver catches."""
    direct, field_d, _clock, events_d = _mixed_bus("iec62056-21", relay="modbus-coil:b9:10:0")
    codec, field_c, clock, events_c = _mixed_bus("iec62056-21", relay="modbus-coil:b9:10:0",
                                                 mode="codec")
    direct.service()
    codec.service()
    (a,), (b,) = ([e.reading for e in ev if isinstance(e, ReadingTaken)]
                  for ev in (events_d, events_c))
    assert a.values == b.values and a.serial == b.serial == str(field_c.hh.serial)
    from agent.drivers.iec62056.device import IecMeter
    assert isinstance(codec._devices["M1"], IecMeter)
    field_c.corrupt_pct = 100
    _serve_until_due(codec, clock)
    assert codec.stats["M1"].crc_errors == RETRIES + 1
