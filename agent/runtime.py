"""The imperative shell: the only place that wires the parts together and loops. The
ledger's and the commands' parts are made by its wiring (wiring.py); what it does with
each inbox event is handlers.py's (a bus's, the link's) and local_control.py's (the
CLI's); the status is status.py's, the buses buses.py's.

Threads: one per bus (``BusScheduler``), paho's network thread, and this one.
This thread alone owns the writable store; the others only post events into
one bounded inbox. Every loop turn:

  1. handle up to ``MAX_EVENTS_PER_TURN`` inbox events (readings, relay
     results, PUBACKs, commands, head-end state, link up/down); consecutive
     readings share one transaction (a bus posts its readings a burst at a time:
     ``READINGS_HOLD_S`` in drivers/bus.py);
  2. once a second: fixed charges and relay re-evaluation, message forming
     (``Delivery.tick``; a completed poll cycle at once, ``Delivery.cycle_complete``);
     every STATUS_EVERY_S, the status file;
  3. make each relay match its durable intent (through its bus);
  4. publish outbox rows (``Delivery``: a bounded in-flight window).

Between turns the thread sleeps until an event comes or the next periodic work of
step 2 or 3 is due, never longer than ``TICK_S``: it is not woken for nothing (each
wake-up costs CPU, issue 14). Everything that needs a turn arrives as an event.

A PUBACK deletes its outbox row; nothing else does.

A full disk (buffer/disk.py, buffer/room.py): a unit of work whose write finds no room
(StoreFullError) is run again after room is made (the reserve released, the oldest
readings dropped); start-up on a full disk releases the reserve and runs in the
degraded mode. Nothing of a failed transaction is kept, so running it again is
running it once.
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from agent import __version__
from agent.buffer.cycle import PollCycle
from agent.buffer.disk import DEGRADED, DiskGuard
from agent.buffer.journal import Journal
from agent.buffer.room import Room
from agent.buffer.store import WAL_PAGES, WAL_PAGES_FULL, Store
from agent.buses import Buses
from agent.clock import Clock, SystemClock
from agent.config import Config, MeterConfig
from agent.control import ControlRequest, ControlServer
from agent.drivers.bus import BusScheduler
from agent.drivers.events import ReadingTaken
from agent.errors import StoreError, StoreFullError
from agent.handlers import BusEvents, LinkEvents
from agent.local_control import LocalControl
from agent.preflight import check_installed, read_keys
from agent.provisioning import Provisioning
from agent.relay.base import sync
from agent.relay.disconnect import kernel_clock_synchronised
from agent.relay.gpio import open_relays
from agent.sdnotify import Notifier
from agent.status import Status
from agent.supervisor import Subsystem, Supervisor, contain
from agent.uplink import forming
from agent.uplink.delivery import Delivery
from agent.uplink.mqtt import LinkEvent, MqttLink
from agent.web import StatusServer
from agent.wiring import start_ledger, wire_dispatcher, wire_ledger

log = logging.getLogger("agent.runtime")
T = TypeVar("T")

INBOX_MAX = 10_000
MAX_EVENTS_PER_TURN = 500
READINGS_PER_TX = 256  # consecutive readings charged in one transaction (one fsync)
TICK_S = 1.0
# status.json and the page's snapshot: every meter's state, built and written as JSON
# (with 250 meters it was a tenth of the agent's CPU at one a second); the page itself
# refreshes every 5 s
STATUS_EVERY_S = 5.0
SEEN_CLEANUP_EVERY_S = 3600.0


_EVENT_NAMES: dict[type, str] = {}  # one entry per inbox event class
_WAKE = object()  # put by stop(): ends the loop's wait, handled as nothing


def _event_name(kind: type) -> str:
    """An inbox event's kind in words, for a log line: ReadingTaken -> reading_taken
    (worked out once per class: every PUBACK goes through here)."""
    name = _EVENT_NAMES.get(kind)
    if name is None:
        name = _EVENT_NAMES[kind] = re.sub(r"(?<!^)(?=[A-Z])", "_", kind.__name__).lower()
    return name


class Runtime:
    """The agent. ``run()`` starts the threads and loops; a simulation instead injects a
    clock, a link and bus schedulers that need no threads, and calls ``step()``."""

    def __init__(
        self,
        cfg: Config,
        *,
        clock: Clock | None = None,
        link_factory: Callable[..., MqttLink] | None = None,
        bus_factory: Callable[..., BusScheduler] | None = None,
        control: bool = True,
        clock_synchronised: Callable[[], bool] = kernel_clock_synchronised,
    ) -> None:
        """``clock_synchronised``: has NTP set the clock (the kernel's view by default; a
        simulation gives its own), one of the ways the clock becomes trusted."""
        self.cfg = cfg
        self.clock = clock or SystemClock()
        check_installed(cfg)
        self.command_key, self.token_key = read_keys(cfg)
        self.inbox: queue.Queue[Any] = queue.Queue(maxsize=INBOX_MAX)
        self.disk = DiskGuard(cfg.gateway.data_dir)
        self.room = Room(self.disk, self.clock, forming.ITEMS)
        self.store, self.boot = self.room.open_store(cfg.gateway.data_dir, Store)
        self.started = int(self.clock.time_s())
        self.journal = Journal(self.store, forming.entry_item)
        self.provisioning = Provisioning(self.store, cfg)
        self.meters = self.provisioning.registry  # read by all, replaced by provisioning
        provisioned = tuple(self.meters.values())
        self.ledger = wire_ledger(cfg, self.store, self.journal, self.meters,
                                  token_key=self.token_key,
                                  clock_synchronised=clock_synchronised)
        self.gpio_relays = open_relays(provisioned, lambda m: self.journal.meter(m).relay_intent)
        self.buses = Buses(cfg, provisioned, self.inbox.put, self.clock,
                           bus_factory or BusScheduler)
        self.dispatcher = wire_dispatcher(gw=cfg.gateway.id, boot=self.boot,
                                          key=self.command_key, store=self.store,
                                          journal=self.journal, ledger=self.ledger,
                                          meters=self.meters, read_meter=self._read_meter,
                                          on_meter_change=self.on_meter_change)
        self.link = (link_factory or MqttLink)(cfg, self.boot, self.inbox, manual_ack=True)
        self.control = ControlServer(cfg.gateway.data_dir, self.inbox.put) if control else None
        self._carried: collections.deque[Any] = collections.deque()  # see run
        # [mqtt] live_readings = "table": live readings go one message a poll cycle
        self.cycle = (PollCycle(self._poll_intervals(provisioned), forming.TABLE_LINGER_S)
                      if cfg.mqtt.live_readings == "table" else None)
        self.delivery = Delivery(self.store, self.link, self.clock, gw=cfg.gateway.id,
                                 boot=self.boot, limits=cfg.store, cycle=self.cycle,
                                 status=lambda: self.status.health())  # made next
        self.meter_online: dict[str, bool] = {}  # what the buses last said (BusEvents)
        self.status = Status(cfg, boot=self.boot, started=self.started, clock=self.clock,
                             store=self.store, journal=self.journal, meters=self.meters,
                             buses=self.buses, meter_online=self.meter_online,
                             link=self.link, delivery=self.delivery,
                             relays=self.ledger.relays, disk=self.disk, room=self.room)
        self.local_control = LocalControl(store=self.store, ops=self.dispatcher.ops,
                                          credit=self.ledger.credit, buses=self.buses,
                                          status=self.status.report)
        self.bus_events = BusEvents(store=self.store, meters=self.meters, ledger=self.ledger,
                                    buses=self.buses, dispatcher=self.dispatcher,
                                    control=self.local_control, status=self.status,
                                    cycle=self.cycle, online=self.meter_online)
        self.link_events = LinkEvents(link=self.link, delivery=self.delivery,
                                      dispatcher=self.dispatcher, relays=self.ledger.relays)
        self.supervisor = Supervisor()
        self.stop_event = threading.Event()
        self._next_tick = self._next_status = self._next_relay_check = 0.0
        self._relays_dirty = True  # any handled event may change a relay's intent
        self.notifier = Notifier()
        # The page's threads read the status snapshot (replaced whole every STATUS_EVERY_S).
        self.web = (StatusServer(lambda: {**self.status.snapshot, "running": True}, cfg.local)
                    if cfg.local.http_port and control else None)
        self._next_cleanup = self.clock.monotonic_s() + 60

    def _with_room(self, call: Callable[[], T], what: str) -> tuple[bool, T | None]:
        """``call()``, run again once room is made while it finds the disk full
        (buffer/room.py); (done, what it returned)."""
        return self.room.run(call, what)

    def _poll_intervals(self, meters: tuple[MeterConfig, ...]) -> dict[str, float]:
        return {m.id: self.cfg.bus(m.bus).poll_interval_s for m in meters}

    def _read_meter(self, meter_id: str, ref: str) -> bool:
        return self.buses.read_now(self.meters[meter_id], ref)

    # -- main loop ---------------------------------------------------------------
    def start(self) -> None:
        """Set up the ledger and start the link (and, unless simulated, the threads)."""
        log.info("event=start gw=%s boot=%d version=%s", self.cfg.gateway.id, self.boot,
                 __version__)
        if self.web is not None:
            self.web.start()
        self.disk.start(int(self.clock.time_s()))
        if self.disk.state == DEGRADED:  # started on a full disk
            self.store.wal_pages(WAL_PAGES_FULL)
        if not self._with_room(lambda: start_ledger(self.ledger, self.cfg, self.store,
                                                    self.journal, int(self.clock.time_s())),
                               "start-up: the ledger")[0]:
            raise StoreFullError(f"store {self.store.path}: no room to set up the ledger")
        for bus in self.buses.values():
            bus.start()
        self.link.start()
        if self.control is not None:
            self.control.start()

    def step(self, *, status_file: bool = True) -> None:
        """One loop turn: inbox events, the periodic work that is due, relays, publish."""
        self._drain_inbox()
        if self.bus_events.cycle_complete():  # the table form: a whole cycle goes at once
            self._with_room(self.delivery.cycle_complete, "table")
        mono = self.clock.monotonic_s()
        if mono >= self._next_tick:
            self._next_tick = mono + TICK_S
            self._with_room(self._tick, "tick")
        if status_file and mono >= self._next_status:
            self._next_status = mono + STATUS_EVERY_S
            self.status.write()
        if mono >= self._next_cleanup:
            self._next_cleanup = mono + SEEN_CLEANUP_EVERY_S
            self._with_room(lambda: self.store.forget_expired(int(self.clock.time_s())),
                            "seen cleanup")
        if self._relays_dirty or mono >= self._next_relay_check:
            self._relays_dirty = False
            self._next_relay_check = mono + TICK_S
            self._with_room(self._sync_relays, "relays")
        self._with_room(self.delivery.pump, "delivery")

    def run(self) -> None:
        self.start()
        self._supervise()
        # Started: a board with no network must still count as started (no MQTT wait).
        self.status.write()
        self.notifier.ready(f"gateway {self.cfg.gateway.id}, "
                            f"{len(self.meters)} meter(s)")
        try:
            while not self.stop_event.is_set():
                self.step()
                mono = self.clock.monotonic_s()  # the buses' heartbeats are on this clock
                self.supervisor.check(mono)
                if self.supervisor.healthy(mono):  # else systemd restarts the agent
                    self.notifier.maybe_watchdog(mono)
                try:  # the event that ends the wait is handled by the next turn
                    self._carried.append(self.inbox.get(timeout=self._idle_s(mono)))
                except queue.Empty:
                    pass
        finally:
            self._shutdown()

    def _idle_s(self, mono: float) -> float:
        """How long the loop may wait for an event: until step's next periodic work."""
        if self._relays_dirty:
            return 0.0
        due = min(self._next_tick, self._next_status, self._next_relay_check,
                  self._next_cleanup)
        return min(TICK_S, max(0.0, due - mono))

    def stop(self) -> None:
        self.stop_event.set()
        try:
            self.inbox.put_nowait(_WAKE)  # the loop sees the stop now, not after its wait
        except queue.Full:
            pass  # a full inbox: the loop is not waiting

    # -- the supervisor: every thread, started again when it dies ---------------------
    def _supervise(self) -> None:
        now = self.clock.monotonic_s()
        for name in self.buses:
            self.supervisor.add(self._bus_subsystem(name), now)
        self.supervisor.add(Subsystem("mqtt", alive=self.link.alive, restart=self.link.start),
                            now)
        if self.control is not None:
            self.supervisor.add(Subsystem("control", alive=self.control.alive,
                                          restart=self.control.start), now)
        if self.web is not None:
            self.supervisor.add(Subsystem("status-page", alive=self.web.alive,
                                          restart=self.web.restart), now)

    def _bus_subsystem(self, name: str) -> Subsystem:
        return Subsystem(f"bus {name}", alive=lambda: self.buses[name].is_alive(),
                         restart=lambda: self.buses.restart(name),
                         on_dead=lambda: self._bus_died(name),
                         heartbeat_s=lambda: self.buses[name].beat_s)

    def _bus_died(self, name: str) -> None:
        """A bus thread ended without being asked to: its meters are offline until a new
        one reads them (the supervisor starts it after its back-off)."""
        now = int(self.clock.time_s())
        self._with_room(lambda: self.bus_events.bus_died(name, now), f"bus {name} offline")

    def _shutdown(self) -> None:
        self.notifier.stopping()
        if self.web is not None:
            self.web.stop()
        if self.control is not None:
            self.control.stop()
        for bus in self.buses.values():
            bus.stop()
        try:
            if self.link.connected:
                self.link.publish("state", json.dumps({"online": False, "boot": self.boot})
                                  .encode(), retain=True)
                self.clock.sleep(0.2)
            self.link.stop()
        finally:
            for bus in self.buses.values():
                bus.join(timeout=5)
            for relay in self.gpio_relays.values():
                relay.close()
            self.store.close()
            log.info("event=stop gw=%s boot=%d", self.cfg.gateway.id, self.boot)

    def _drain_inbox(self) -> None:
        """Up to MAX_EVENTS_PER_TURN events. Readings that follow one another in the inbox
        (a poll cycle's) are charged in one transaction, at most READINGS_PER_TX of them:
        one commit, so one fsync, instead of one a reading. Everything else is handled on
        its own, as before: a command's reply commits before its message is acknowledged,
        a token entry commits itself."""
        batch: list[ReadingTaken] = []
        for event in self._inbox_events(MAX_EVENTS_PER_TURN):
            if not isinstance(event, ReadingTaken):
                self._handle_readings(batch)
                batch = []
                self._handle_one(event)
                continue
            if len(batch) == READINGS_PER_TX:
                self._handle_readings(batch)
                batch = []
            batch.append(event)
        self._handle_readings(batch)

    def _inbox_events(self, limit: int) -> Iterator[Any]:
        while self._carried and limit > 0:  # taken from the inbox by run's wait
            limit -= 1
            event = self._carried.popleft()
            if event is not _WAKE:
                yield event
        for _ in range(limit):
            try:
                event = self.inbox.get_nowait()
            except queue.Empty:
                return
            if event is not _WAKE:
                yield event

    def _handle_one(self, event: Any) -> None:
        done, _ = self._with_room(lambda: self._handle(event), _event_name(type(event)))
        if not done and isinstance(event, ControlRequest):  # the CLI waits for an answer
            event.reply(error="no room to write: the disk is full (docs/technician.md, "
                              "'A full disk')")

    def _handle_readings(self, batch: list[ReadingTaken]) -> None:
        if not batch:
            return
        _, failed = self._with_room(lambda: self._contained_tx(batch, "readings"), "readings")
        if failed is None:  # charged (or lost to a full disk: the next reading charges it)
            return
        # A reading's charge raised: the batch's transaction was undone. Again one
        # reading a transaction, so that only the faulty one goes uncharged.
        for event in batch:
            what = f"reading of {event.meter}"
            _, failed = self._with_room(
                lambda: self._contained_tx([event], what), what)  # noqa: B023 - called now
            if failed is not None:
                self.ledger.charging.reading_not_charged(event.reading, failed)
                self.status.charge_failed(event.meter)

    def _contained_tx(self, batch: list[ReadingTaken], what: str) -> Exception | None:
        """The readings' transaction; the exception of a charge that raised (a bug),
        logged; a StoreError propagates."""
        return contain(lambda: self._readings_tx(batch), what, passthrough=(StoreError,))[1]

    def _readings_tx(self, batch: list[ReadingTaken]) -> None:
        with self.store.tx():
            for reading in batch:
                self._handle(reading)

    def _handle(self, event: Any) -> None:
        now = int(self.clock.time_s())
        self._relays_dirty = True
        bus_handler = self.bus_events.table.get(type(event))
        if bus_handler is not None:
            bus_handler(event, now)
        elif isinstance(event, LinkEvent):
            self.link_events.handle(event, now)
        elif isinstance(event, ControlRequest):
            self.local_control.handle(event, now)
        else:
            raise AssertionError(f"unknown inbox event {event!r}")

    def on_meter_change(self, op: str, args: dict[str, Any], now: int) -> dict[str, Any]:
        """``meter_add`` / ``meter_remove`` (inside the command's transaction)."""
        if op == "meter_add":
            meter = self.provisioning.add(args, now)
            self.journal.meter(meter.id)
        else:
            self.provisioning.remove(str(args.get("meter")), now)
        meters = tuple(self.meters.values())
        self._apply_meters(meters)
        return {"meters": len(meters)}

    def _apply_meters(self, meters: tuple[MeterConfig, ...]) -> None:
        self.buses.set_meters(meters)
        if self.cycle is not None:
            self.cycle.set_meters(self._poll_intervals(meters))

    def _tick(self) -> None:
        now = int(self.clock.time_s())
        if self.disk.check(self.clock.monotonic_s(), now):
            self.store.wal_pages(WAL_PAGES)  # room again
        self.link_events.tick(now)  # the head-end still heard on this connection
        self.ledger.charging.tick(now)
        self.bus_events.watch_cycle(now)
        self.delivery.tick(now)  # forms what is due, sees whether the link is stuck

    def _sync_relays(self) -> None:
        """Each relay that differs from its intent, past its back-off (``actuation``: the
        only retry across time), is switched: a GPIO line here, any other by its bus.
        Asked at every turn until it reads back its intent: a bus that has the same
        switch queued or running takes no second one (``BusSchedule.switch_relay``), and
        one that refuses (full) is asked again at the next turn."""
        now = int(self.clock.time_s())
        jobs = self.ledger.actuation.jobs(now)
        if self.gpio_relays:
            sync(self.gpio_relays, jobs, lambda m, c, e, st: self.ledger.actuation.relay_result(
                m, c, e, now, state=st))
        for meter_id, connected in jobs:
            if meter_id not in self.gpio_relays:
                self.buses.switch_relay(self.meters[meter_id], connected)
