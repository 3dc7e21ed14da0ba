"""What the runtime's thread does with each event a bus or the link posts into its inbox:
``BusEvents`` (drivers/events.py, a table by type) and ``LinkEvents`` (mqtt.py's
``LinkEvent``: PUBACKs, connects, commands, the head-end's state).

Each handler runs on the runtime's thread, the store's one writer; what it writes it
writes in its own transaction, or in the caller's (a batch of readings shares one).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from agent import events as uplink_events
from agent.buffer.cycle import PollCycle
from agent.buffer.store import Store
from agent.dispatch import Dispatcher
from agent.drivers.bus import BusScheduler
from agent.drivers.events import (
    MeterDiscovered,
    MeterOffline,
    MeterOnline,
    MeterSecurity,
    ReadDone,
    ReadingTaken,
    RelaySwitched,
    ScanDone,
    TamperSeen,
)
from agent.local_control import LocalControl
from agent.meters import MeterRegistry
from agent.relay.disconnect import Disconnection
from agent.status import Status
from agent.uplink.delivery import Delivery
from agent.uplink.mqtt import LinkEvent, MqttLink
from agent.wiring import Ledger

log = logging.getLogger("agent.runtime")  # its lines are the runtime's (docs/technician.md)


class BusEvents:
    """What the runtime does with each kind of bus event, and what it learns of the
    meters from them: ``online`` (what the buses last said of each meter; read by the
    status) is written here alone."""

    def __init__(self, *, store: Store, meters: MeterRegistry, ledger: Ledger,
                 buses: Mapping[str, BusScheduler], dispatcher: Dispatcher,
                 control: LocalControl, status: Status, cycle: PollCycle | None,
                 online: MutableMapping[str, bool]) -> None:
        self.store = store
        self.meters = meters
        self.ledger = ledger
        self.buses = buses
        self.dispatcher = dispatcher
        self.control = control
        self.status = status
        self.cycle = cycle  # [mqtt] live_readings = "table": one message a poll cycle
        self.online = online
        self._cycle_news = False  # a reading since the cycle was last looked at
        self.table: dict[type, Callable[[Any, int], None]] = {
            ReadingTaken: self._reading, MeterOffline: self._offline,
            MeterOnline: self._online, RelaySwitched: self._relay_switched,
            TamperSeen: self._tamper, MeterSecurity: self._security,
            MeterDiscovered: self._discovered, ScanDone: self._scan_done,
            ReadDone: self._read_done}

    def cycle_complete(self) -> bool:
        """The table form: a reading came since the last look, and the poll cycle is
        complete with it (cycle.py)."""
        if not self._cycle_news or self.cycle is None:
            return False
        self._cycle_news = False
        return self.cycle.complete()

    def watch_cycle(self, now: int) -> None:
        """What the poll cycle learns besides readings: failed polls (the buses' counters)
        and the meters offline."""
        if self.cycle is None:
            return
        for bus in self.buses.values():
            for meter_id, stats in list(bus.stats.items()):
                self.cycle.watch(meter_id, stats.consecutive_failures, now)
        self.cycle.set_offline(m for m, online in self.online.items() if online is False)

    def bus_died(self, name: str, now: int) -> None:
        """A bus thread ended without being asked to: its meters are offline until a new
        one reads them (the supervisor starts it after its back-off)."""
        with self.store.tx():
            offline = [m for m in self.buses[name].meters.values()
                       if self.online.get(m.id) is not False]  # else reported already
            for meter in offline:
                self.ledger.events.emit(now, uplink_events.MeterOffline(
                    meter.id, meter.account, f"bus {name}: its thread ended"))
        for meter in offline:
            self.online[meter.id] = False

    def _reading(self, event: ReadingTaken, now: int) -> None:
        self.status.reading(event.meter, event.reading.t, event.reading.values)
        self.online[event.meter] = True
        if self.cycle is not None:  # first: a reading whose charge raises is still sent
            self.cycle.reading(event.meter, now)
            self._cycle_news = True
        self.ledger.charging.on_reading(event.reading)

    def _offline(self, event: MeterOffline, now: int) -> None:
        self._meter_health(event.meter, False, event.error, now)

    def _online(self, event: MeterOnline, now: int) -> None:
        self._meter_health(event.meter, True, "", now)

    def _meter_health(self, meter_id: str, online: bool, error: str, now: int) -> None:
        self.online[meter_id] = online
        meter = self.meters.get(meter_id)
        with self.store.tx():
            acct = meter.account if meter else None
            self.ledger.events.emit(now, uplink_events.MeterOnline(meter_id, acct) if online
                                    else uplink_events.MeterOffline(meter_id, acct, error))

    def _relay_switched(self, event: RelaySwitched, now: int) -> None:
        self.ledger.actuation.relay_result(event.meter, event.connected, event.error, now,
                                           state=event.state or None)

    def _tamper(self, event: TamperSeen, now: int) -> None:
        self.ledger.relays.on_tamper(event.meter, event.kind, event.code, event.t)

    def _security(self, event: MeterSecurity, now: int) -> None:
        """A wrong key, a replayed counter, a swapped meter."""
        meter = self.meters.get(event.meter)
        with self.store.tx():
            self.ledger.events.emit(now, uplink_events.MeterSecurity(
                event.meter, meter.account if meter else None, event.why, event.error[:200]))

    def _discovered(self, event: MeterDiscovered, now: int) -> None:
        with self.store.tx():
            self.ledger.events.emit(now, uplink_events.MeterDiscovered(
                event.bus, event.address, event.serial, event.protocol))

    def _scan_done(self, event: ScanDone, now: int) -> None:
        self.control.scan_done(event)

    def _read_done(self, event: ReadDone, now: int) -> None:
        result = None
        if event.reading is not None:
            result = {"m": event.reading.meter, "t": event.reading.t, **event.reading.values}
        self.dispatcher.read_done(event.ref, result, event.error, now)


class LinkEvents:
    """What the runtime does with each ``LinkEvent``; whether the head-end's state has been
    heard on this connection (``headend_heard``)."""

    def __init__(self, *, link: MqttLink, delivery: Delivery, dispatcher: Dispatcher,
                 relays: Disconnection) -> None:
        self.link = link
        self.delivery = delivery
        self.dispatcher = dispatcher
        self.relays = relays
        self.headend_heard = False  # the head-end's state, on this connection

    def handle(self, event: LinkEvent, now: int) -> None:
        if event.kind == "puback":
            self.delivery.on_puback(event.mid)
        elif event.kind == "connected":
            log.info("event=mqtt_connected session_present=%s",
                     event.extra.get("session_present"))
            self.delivery.on_connected()  # the birth (with health) goes out from pump()
            self.headend_heard = False
        elif event.kind == "disconnected":
            log.warning("event=mqtt_disconnected reason=%s", event.reason)
            self.delivery.on_disconnected()
            self.headend_heard = False
        elif event.kind == "message":
            if event.topic == self.link.cmd_topic:
                self.dispatcher.handle(event.payload, now)
            elif event.topic == self.link.headend_topic:
                self._headend_message(event.payload, now)
            self.link.ack(event)  # only now: the reply is committed (manual_ack=True)

    def tick(self, now: int) -> None:
        """Once a second: the head-end still counts as heard while its state came on this
        connection and the link is up."""
        if self.link.connected and self.headend_heard:
            self.relays.headend_still_heard(now)

    def _headend_message(self, payload: bytes, now: int) -> None:
        try:
            state = json.loads(payload)
            if not isinstance(state, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            log.warning("event=headend_state_bad error=%s", exc)
            return
        online = state.get("online")
        payments = state.get("payments")
        self.relays.headend_state(online if isinstance(online, bool) else None,
                                  payments if isinstance(payments, bool) else None, now)
        self.headend_heard = True
        log.info("event=headend_state online=%s payments=%s", online, payments)
