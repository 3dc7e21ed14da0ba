"""One thread per physical bus: the only code that talks on that wire.

The thread owns the port and the drivers and does the I/O; what to do and what
its outcome means is ``schedule.BusSchedule``'s (the policy: job order, retries,
quarantine, the event-log cadence, scans and discovery, and their bounds). The
thread loops: ask the schedule for the next action at the clock's ``now``, execute
it (the only I/O), hand the result back, post the typed events (``events.py``)
it returns into the runtime's inbox. It runs one action at a time, so there are
never two frames in flight, whatever the protocol: Modbus devices share one
``ModbusClient``, IEC 62056-21 and DLMS drivers share the bus's transport. What it
knows of its protocol (the line's data bits, the shared client, the driver, the
probe and its cost) it asks the protocol's ``ProtocolSpec`` (``protocol.py``). The
thread never touches the store. The simulation drives the same schedule with its
own execute (``sim/neighbourhood/simbus.py``).

Bounds (and what happens at them), besides the schedule's:
- ``REOPEN_MIN_S`` .. ``REOPEN_MAX_S``: a port that failed is opened again after
  this back-off, doubling; every meter is reported offline once meanwhile.
- ``RELAY_TRIES`` (``agent/relay/base.py``) attempts to switch and read back a relay:
  a ``Switch`` runs through ``switch_and_confirm`` with the relay's backend
  (``relay/meter.py``, ``relay/modbus_coil.py``).
- ``DISCOVERY_TIMEOUT_S`` a discovery probe's answer allowance.
- The thread waits at most 1 s at a time when idle, so its heartbeat (``beat_s``)
  stays fresh for the supervisor.
- ``READINGS_HOLD_S``, ``READINGS_HOLD_SHARE``, ``READINGS_HOLD_MAX``: a poll cycle's
  readings are posted a burst at a time, not one by one. Every post may wake the
  runtime's loop, and a wake-up costs more CPU than charging a reading (issue 14), and
  a transaction's COMMIT more again, so the routine readings (``ReadingTaken``) wait in
  the thread until the first of them is READINGS_HOLD_S old, or READINGS_HOLD_SHARE of
  the poll interval if that is less (1 s at 5 s polls, 0.25 s at 1 s: a reading is
  charged within a quarter of its cycle), looked at after each action (a slow one, a
  dead meter's timeout, adds its own time), or READINGS_HOLD_MAX wait, or the bus has
  no poll to make for longer than that (it idles, or probes for new meters);
  every other event (a relay's outcome, an on-demand read, a meter going offline)
  posts them first, then itself, at once: the order of a bus's events is kept. The
  runtime charges a burst in one transaction.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from agent.clock import Clock, SystemClock
from agent.config import BusConfig, MeterConfig
from agent.drivers.actions import (
    Action,
    Discover,
    Idle,
    NotAttempted,
    Poll,
    Read,
    ReadEvents,
    ScanStep,
    Switch,
)
from agent.drivers.driver import EventDriver, MeterDriver
from agent.drivers.events import BusEvent, ReadingTaken
from agent.drivers.modbus.client import ModbusClient
from agent.drivers.protocol import protocol_spec
from agent.drivers.scan import SCAN_TIMEOUT_S, probe_once
from agent.drivers.schedule import BusSchedule, MeterStats
from agent.drivers.transport import SerialTransport, Transport
from agent.errors import DriverError, PortError, RelayError
from agent.relay.base import Relay, switch_outcome
from agent.relay.meter import meter_relay
from agent.relay.modbus_coil import ModbusCoilRelay
from agent.supervisor import guarded

log = logging.getLogger("agent.bus")

REOPEN_MIN_S = 1.0  # a port that failed is opened again after this, doubling up to
REOPEN_MAX_S = 30.0  # this; back to the minimum once it opens
IDLE_WAIT_MAX_S = 1.0  # the longest wait between two loop turns (the heartbeat)
DISCOVERY_TIMEOUT_S = 0.1  # discovery's answer allowance; a scan may give more
READINGS_HOLD_S = 1.0  # a routine reading waits this long to be posted (and the
READINGS_HOLD_MAX = 64  # action then running), with at most this many (module doc),
READINGS_HOLD_SHARE = 0.25  # and no longer than this share of the bus's poll interval


def default_transport(bus: BusConfig) -> Transport:
    """The bus's serial port: the protocol's data bits (IEC 62056-21 is 7E1), the
    config's parity."""
    return SerialTransport(bus.port, baudrate=bus.baudrate, parity=bus.parity,
                           bytesize=protocol_spec(bus.protocol).bytesize)


def probe_cost_s(bus: BusConfig) -> float:
    """About what one discovery probe holds the bus (an absent address: a timeout)."""
    return protocol_spec(bus.protocol).probe_cost_s(bus.baudrate, DISCOVERY_TIMEOUT_S)


class BusScheduler(threading.Thread):
    def __init__(
        self,
        bus: BusConfig,
        meters: list[MeterConfig],
        post: Callable[[BusEvent], None],
        *,
        clock: Clock | None = None,
        transport_factory: Callable[[BusConfig], Transport] | None = None,
        discover: bool = True,
        relayed: Iterable[MeterConfig] = (),
        data_dir: Path | None = None,
        system_title: bytes | None = None,
    ) -> None:
        """``relayed``: meters of other buses whose relay module is on this one
        (``modbus-coil:<bus>:<unit>:<coil>``): this bus switches them, never reads them."""
        super().__init__(name=f"bus-{bus.name}", daemon=True)
        self.bus = bus
        self.spec = protocol_spec(bus.protocol)
        # DLMS HLS: invocation counters under data_dir/dlms (None: in memory, a warning),
        # and the gateway's system title ([gateway] system_title).
        self.data_dir = data_dir
        self.system_title = system_title
        self.post = post
        self.clock = clock or SystemClock()
        self._factory = transport_factory or default_transport
        self._lock = threading.Lock()  # the schedule: this thread and the callers' threads
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self.schedule = BusSchedule(bus, meters, relayed=relayed, discover=discover,
                                    probe_cost_s=probe_cost_s(bus))
        self.transport: Transport | None = None
        self.client: ModbusClient | None = None
        self._drivers: dict[str, tuple[MeterConfig, MeterDriver]] = {}
        self.port_error = ""
        self._reopen_s = REOPEN_MIN_S
        self.beat_s: float | None = None  # monotonic s of the thread's last loop turn
        self._held: list[BusEvent] = []  # routine readings not posted yet (module doc)
        self._held_since_s = 0.0
        self._hold_s = min(READINGS_HOLD_S, READINGS_HOLD_SHARE * bus.poll_interval_s)

    @property
    def meters(self) -> dict[str, MeterConfig]:
        return self.schedule.meters

    @property
    def relayed(self) -> dict[str, MeterConfig]:
        return self.schedule.relayed

    @property
    def stats(self) -> dict[str, MeterStats]:
        return self.schedule.stats

    # -- called from other threads ---------------------------------------------
    def set_meters(self, meters: list[MeterConfig], relayed: Iterable[MeterConfig] = ()) -> None:
        with self._lock:
            self.schedule.set_meters(meters, relayed)
        self._wake.set()

    def switch_relay(self, meter_id: str, connected: bool) -> bool:
        with self._lock:
            queued = self.schedule.switch_relay(meter_id, connected)
        if queued:
            self._wake.set()
        return queued

    def read_now(self, meter_id: str, ref: str) -> bool:
        with self._lock:
            queued = self.schedule.read_now(meter_id, ref)
        if queued:
            self._wake.set()
        return queued

    def scan(self, addresses: Iterable[int], ref: str, *,
             timeout_s: float = SCAN_TIMEOUT_S) -> bool:
        """Probe ``addresses`` between polls; one ``ScanDone`` event when done.

        False if a scan is already running. ValueError for addresses outside 1..247.
        """
        with self._lock:
            started = self.schedule.scan(addresses, ref, timeout_s=timeout_s)
        if started:
            self._wake.set()
        return started

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def mark_offline(self, meter_ids: Iterable[str]) -> None:
        """These meters were reported offline (a bus thread before this one died): the
        first good reading of each reports it online again."""
        with self._lock:
            self.schedule.mark_offline(meter_ids)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # -- the bus thread ------------------------------------------------------
    def run(self) -> None:
        guarded(self.name, self._run)()

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                self.beat_s = self.clock.monotonic_s()
                if self.transport is None and not self._open():
                    self._stopping.wait(self._reopen_s)
                    self._reopen_s = min(REOPEN_MAX_S, self._reopen_s * 2)
                    continue
                self._step()
        finally:
            self._post_held()
            self._close_port(release=True)

    def _step(self) -> None:
        """One action of the schedule: executed, its outcome posted."""
        with self._lock:
            action = self.schedule.next_action(self.clock.monotonic_s())
        if isinstance(action, Idle):
            wait_s = min(action.wait_s, IDLE_WAIT_MAX_S)
            if self._held and (self.clock.monotonic_s() + wait_s
                               >= self._held_since_s + self._hold_s):
                self._post_held()  # before the wait, not a wake-up later
            self._wake.wait(wait_s)
            self._wake.clear()
            return
        if self._held and isinstance(action, Discover):
            self._post_held()  # discovery runs only with no poll due soon: the cycle is done
        result = self._execute(action)
        now_s = self.clock.monotonic_s()
        with self._lock:
            events = self.schedule.outcome(action, result, now_s)
        if isinstance(result, PortError):  # the port, not a meter: close it, open it again
            log.warning("event=port_lost bus=%s error=%s", self.bus.name, result)
            self.port_error = str(result)
            self._close_port()
        self._post(events, now_s)

    def _post(self, events: Iterable[BusEvent], now_s: float) -> None:
        """Post ``events`` in order, holding the routine readings (module doc)."""
        for event in events:
            if isinstance(event, ReadingTaken):
                if not self._held:
                    self._held_since_s = now_s
                self._held.append(event)
            else:
                self._post_held()
                self.post(event)
        if self._held and (len(self._held) >= READINGS_HOLD_MAX
                           or now_s - self._held_since_s >= self._hold_s):
            self._post_held()

    def _post_held(self) -> None:
        held, self._held = self._held, []
        for event in held:
            self.post(event)

    def _close_port(self, *, release: bool = False) -> None:
        """Forget the drivers and close the transport; ``release``: DLMS associations are
        released first (a clean stop; a lost port cannot carry it)."""
        drivers, self._drivers = self._drivers, {}
        for _cfg, driver in drivers.values() if release else ():
            try:
                driver.close(timeout_s=self.bus.timeout_s)  # DLMS: release the association
            except DriverError as exc:
                log.info("event=driver_close_failed bus=%s error=%s", self.bus.name, exc)
        transport, self.transport, self.client = self.transport, None, None
        if transport is not None:
            try:
                transport.close()
            except DriverError as exc:
                log.info("event=port_close_failed bus=%s error=%s", self.bus.name, exc)

    def _open(self) -> bool:
        try:
            self.transport = self._factory(self.bus)
        except DriverError as exc:
            if str(exc) != self.port_error:
                log.warning("event=bus_open_failed bus=%s error=%s retry_s=%.0f",
                            self.bus.name, exc, self._reopen_s)
            self.port_error = str(exc)
            with self._lock:
                events = self.schedule.port_lost(str(exc))
            self._post(events, self.clock.monotonic_s())
            return False
        self.port_error = ""
        self._reopen_s = REOPEN_MIN_S
        self.client = self.spec.client(self.transport, self.clock)
        discovery = self.schedule.discovery
        if discovery.enabled and not self.spec.available:
            discovery.enabled = False
            log.warning("event=discovery_off bus=%s reason=no %s driver", self.bus.name,
                        self.bus.protocol)
        log.info("event=bus_open bus=%s port=%s baud=%d protocol=%s", self.bus.name,
                 self.bus.port, self.bus.baudrate, self.bus.protocol)
        return True

    # -- execute: the only I/O -----------------------------------------------------
    def _execute(self, action: Action) -> Any:
        """What the wire answered to ``action``, as ``BusSchedule.outcome`` takes it; a
        ``DriverError`` is returned, not raised."""
        assert self.transport is not None
        if isinstance(action, Poll):
            return self._read(action.meter)
        if isinstance(action, Read):
            if action.meter is None:
                return NotAttempted(DriverError(
                    f"meter {action.meter_id} is not on bus {self.bus.name}"))
            return self._read(action.meter)
        try:
            if isinstance(action, ReadEvents):
                driver = self._driver(action.meter)
                if not isinstance(driver, EventDriver):
                    return []
                return driver.read_events(timeout_s=self.bus.timeout_s)
            if isinstance(action, Switch):
                return self._switch(action)
            if isinstance(action, ScanStep):
                if action.address is None:
                    return None, ""
                return probe_once(self.transport, self.bus.protocol, action.address,
                                  timeout_s=action.timeout_s, clock=self.clock)
            assert isinstance(action, Discover)
            return probe_once(self.transport, self.bus.protocol, action.address,
                              timeout_s=DISCOVERY_TIMEOUT_S, clock=self.clock)
        except DriverError as exc:
            return exc

    def _driver(self, cfg: MeterConfig) -> MeterDriver:
        assert self.transport is not None
        known = self._drivers.get(cfg.id)
        if known is not None and known[0] == cfg:
            return known[1]
        driver = self.spec.make_driver(self.transport, cfg, client=self.client,
                                       clock=self.clock, data_dir=self.data_dir,
                                       system_title=self.system_title)
        self._drivers[cfg.id] = (cfg, driver)
        return driver

    def _read(self, cfg: MeterConfig) -> Any:
        """One attempt: a Reading, the DriverError it raised, or NotAttempted."""
        try:
            driver = self._driver(cfg)
        except DriverError as exc:
            return NotAttempted(exc)
        try:
            return driver.read(cfg.id, int(self.clock.time_s()), timeout_s=self.bus.timeout_s)
        except DriverError as exc:
            return exc

    def _switch(self, action: Switch) -> tuple[str, str]:
        """(state, "") or ("", error); raises a DriverError the schedule must know of (the
        port, a meter's security, no driver for it)."""
        return switch_outcome(lambda: self._relay(action), action.connected)

    def _relay(self, action: Switch) -> Relay:
        """The backend of the relay ``action`` switches; RelayError if it has none here."""
        cfg, kind = action.meter, action.kind
        if cfg is not None and kind == "meter":
            return meter_relay(self._driver(cfg), cfg.id, timeout_s=self.bus.timeout_s)
        if cfg is not None and kind == "modbus-coil" and self.client is not None:
            assert cfg.relay_spec.unit is not None and cfg.relay_spec.coil is not None
            return ModbusCoilRelay(self.client, cfg.relay_spec.unit, cfg.relay_spec.coil,
                                   timeout_s=self.bus.timeout_s)
        raise RelayError(f"relay kind {kind!r} is not switchable on this bus")


def post_to_queue(inbox: queue.Queue[Any]) -> Callable[[BusEvent], None]:
    """Bus events block the bus thread when the inbox is full: back-pressure, not loss."""
    return lambda event: inbox.put(event)
