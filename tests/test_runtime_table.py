"""The runtime with ``[mqtt] live_readings = "table"``, in-process (the e2e test runs it
as a process): what it sees of a poll cycle (readings, a failed poll in the bus's
counters, a meter offline) decides when the table goes; with the default nothing of it
is made."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, cast

from agent.buffer.store import LANE_READINGS
from agent.clock import SimClock
from agent.config import BusConfig, Config, MeterConfig
from agent.drivers.bus import BusScheduler
from agent.drivers.events import MeterOffline, ReadingTaken
from agent.drivers.reading import Reading
from agent.drivers.schedule import MeterStats
from agent.runtime import Runtime
from agent.uplink import cbor, table
from agent.uplink.mqtt import MqttLink
from agent.wiring import start_ledger
from tests.test_supervisor import _config

T0 = 1_767_225_600


class _Bus:
    """A bus that never talks; the test posts its events and sets its counters."""

    def __init__(self, bus: BusConfig, meters: list[MeterConfig], post: Any, **_: Any) -> None:
        self.bus = bus
        self.meters = {m.id: m for m in meters}
        self.stats = {m.id: MeterStats() for m in meters}
        self.port_error = ""
        self.beat_s = None

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def join(self, timeout: float | None = None) -> None: ...
    def set_meters(self, meters: list[MeterConfig], relayed: Any = ()) -> None: ...
    def switch_relay(self, meter_id: str, connected: bool) -> bool:
        return True


class _Link:
    connected = True
    cmd_topic = "gw/gw-test/cmd"
    headend_topic = "gw/headend/state"

    def __init__(self, *_: Any, **__: Any) -> None: ...
    def start(self) -> None: ...
    def publish(self, *_: Any, **__: Any) -> int:
        return 0


def table_config(tmp: Path, live: str = "table") -> Config:
    cfg = _config(tmp, meters=3)
    return dataclasses.replace(cfg, mqtt=dataclasses.replace(cfg.mqtt, live_readings=live))


def runtime(cfg: Config, clock: SimClock) -> Runtime:
    # the stand-ins have only what the runtime uses of a bus and a link
    rt = Runtime(cfg, clock=clock, control=False,
                 bus_factory=lambda *a, **k: cast(BusScheduler, _Bus(*a, **k)),
                 link_factory=lambda *a, **k: cast(MqttLink, _Link(*a, **k)))
    start_ledger(rt.ledger, rt.cfg, rt.store, rt.journal, int(clock.time_s()))
    return rt


def read(rt: Runtime, meter: str, clock: SimClock, wh: int) -> None:
    rt._handle(ReadingTaken(meter, Reading(meter, int(clock.time_s()),
                                                  {"import_wh": wh, "v_dv": 2300})))


def formed(rt: Runtime) -> list[dict[str, Any]]:
    out = []
    for row in rt.store.outbox_next(set(), 100):
        if row.lane == LANE_READINGS:
            message = cbor.loads(row.payload)
            assert isinstance(message, dict)
            out.append(message)
            rt.store.ack(row.seq)
    return out


def test_a_failed_poll_seen_in_the_bus_counters_completes_the_cycle(tmp_path: Path) -> None:
    clock = SimClock(T0)
    rt = runtime(table_config(tmp_path), clock)
    try:
        assert rt.cycle is not None and rt.cycle.linger_s == rt.cfg.buses[0].poll_interval_s
        read(rt, "M1", clock, 100)
        read(rt, "M2", clock, 200)
        rt._tick()
        assert formed(rt) == []  # M3 is due and not heard from
        rt.buses["rs485-0"].stats["M3"].consecutive_failures = 1  # its poll failed
        rt._tick()
        [message] = formed(rt)
        assert [(m, t) for m, t, _ in table.decode_table(message)] == [("M1", T0), ("M2", T0)]
    finally:
        rt.store.close()


def test_a_meter_offline_is_not_waited_for(tmp_path: Path) -> None:
    clock = SimClock(T0)
    rt = runtime(table_config(tmp_path), clock)
    try:
        rt._handle(MeterOffline("M3", error="timeout"))
        read(rt, "M1", clock, 100)
        rt._tick()
        assert formed(rt) == []
        read(rt, "M2", clock, 200)
        rt._tick()
        assert len(formed(rt)) == 1
    finally:
        rt.store.close()


def test_with_the_default_live_readings_are_series(tmp_path: Path) -> None:
    clock = SimClock(T0)
    rt = runtime(table_config(tmp_path, "series"), clock)
    try:
        assert rt.cycle is None
        for meter in ("M1", "M2", "M3"):
            read(rt, meter, clock, 100)
        clock.advance(5)
        rt._tick()
        [message] = formed(rt)
        assert "table" not in message and len(message["readings"]) == 3
    finally:
        rt.store.close()


def test_a_complete_cycle_is_formed_in_the_same_turn_not_at_the_next_tick(
        tmp_path: Path) -> None:
    """The last meter's reading completes the cycle: the loop turn that handles it forms
    the table (start-up to the first reading on the broker is one bus cycle, not a
    cycle plus up to a tick)."""
    clock = SimClock(T0)
    rt = runtime(table_config(tmp_path), clock)
    try:
        rt.step(status_file=False)  # the first tick is behind us
        for meter, wh in (("M1", 100), ("M2", 200)):
            rt.inbox.put(ReadingTaken(meter, Reading(meter, T0, {"import_wh": wh})))
        rt.step(status_file=False)
        assert formed(rt) == []  # M3 is due: no tick is due either
        rt.inbox.put(ReadingTaken("M3", Reading("M3", T0, {"import_wh": 300})))
        rt.step(status_file=False)  # still no tick due (SimClock has not moved)
        [message] = formed(rt)
        assert [m for m, _, _ in table.decode_table(message)] == ["M1", "M2", "M3"]
    finally:
        rt.store.close()
