"""The gateway's status, built from what the runtime holds: ``report()`` for the CLI
(``meter-agent status``, through the control socket), the local page and
``status.json``; ``health()``, the part of it the retained health report takes
(delivery.state_payload), every minute.

The runtime's thread alone builds them (they read the store); the page's threads read
``snapshot``, replaced whole each time ``write()`` runs (every STATUS_EVERY_S of the
runtime, 5 s), never SQLite.
A status file that cannot be written is logged when the reason changes and skipped:
metering, billing and relays do not depend on it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent import __version__
from agent.buffer.disk import DiskGuard, is_enospc
from agent.buffer.journal import Journal
from agent.buffer.room import Room
from agent.buffer.store import Store
from agent.clock import Clock
from agent.config import Config
from agent.drivers.bus import BusScheduler
from agent.meters import MeterRegistry
from agent.relay.disconnect import Disconnection
from agent.uplink.delivery import Delivery
from agent.uplink.mqtt import MqttLink

log = logging.getLogger("agent.runtime")  # its lines are the runtime's (docs/technician.md)


class Status:
    """The status of one runtime. The mappings are the runtime's, read here only:
    ``buses`` (a bus restarted replaces its entry), ``meter_online`` (what the buses last
    said of each meter)."""

    def __init__(self, cfg: Config, *, boot: int, started: int, clock: Clock, store: Store,
                 journal: Journal, meters: MeterRegistry, buses: Mapping[str, BusScheduler],
                 meter_online: Mapping[str, bool], link: MqttLink, delivery: Delivery,
                 relays: Disconnection, disk: DiskGuard, room: Room) -> None:
        self.cfg = cfg
        self.boot = boot
        self.started = started
        self.clock = clock
        self.store = store
        self.journal = journal
        self.meters = meters
        self.buses = buses
        self.meter_online = meter_online
        self.link = link
        self.delivery = delivery
        self.relays = relays
        self.disk = disk
        self.room = room
        self.last_readings: dict[str, dict[str, Any]] = {}  # meter -> its last reading
        self.charge_errors: dict[str, int] = {}  # meter -> readings whose charge raised
        self.snapshot: dict[str, Any] = {}  # the last report(), for the page's threads
        self._file_error: str | None = None  # why status.json could not be written

    def reading(self, meter: str, t: int, values: Mapping[str, Any]) -> None:
        self.last_readings[meter] = {"t": t, **values}

    def charge_failed(self, meter: str) -> None:
        self.charge_errors[meter] = self.charge_errors.get(meter, 0) + 1

    def health(self) -> dict[str, Any]:
        """What the retained health report takes from report() (delivery.state_payload),
        without the balances, relays and backlog it does not use: it goes out every
        minute."""
        meters = []
        for m in self.meters.values():
            stats = self.buses[m.bus].stats
            meters.append({"id": m.id, "online": self.meter_online.get(m.id),
                           "errors": stats[m.id].as_dict() if m.id in stats else {}})
        return {"version": __version__, "boot": self.boot, "started": self.started,
                "meters": meters, "disk_mode": self.disk.state}

    def report(self) -> dict[str, Any]:
        summary = self.store.backlog_summary()
        now = int(self.clock.time_s())
        balances = {a.id: a.balance for a in self.journal.accounts()}
        meters = []
        states = {m.id: m for m in self.journal.meters()}
        for m in self.meters.values():
            st = states.get(m.id)
            bus = self.buses[m.bus]
            meters.append({
                "id": m.id, "bus": m.bus, "address": m.address, "model": m.model,
                "account": m.account, "balance": balances.get(m.account),
                "online": self.meter_online.get(m.id),
                "reading": self.last_readings.get(m.id),
                "relay": {"intent": st.relay_intent if st else None,
                          "actual": st.relay_actual if st else None,
                          "reason": st.relay_reason if st else None},
                "errors": {**(bus.stats[m.id].as_dict() if m.id in bus.stats else {}),
                           "charge_errors": self.charge_errors.get(m.id, 0)},
            })
        return {
            "gateway": self.cfg.gateway.id, "version": __version__, "boot": self.boot,
            "pid": os.getpid(), "time": now, "started": self.started,
            "link": {"connected": self.link.connected, "reconnects": self.link.reconnects,
                     "inflight": len(self.delivery.inflight), "host": self.cfg.mqtt.host,
                     "port": self.cfg.mqtt.port},
            "headend": {"online": self.relays.headend.online,
                        "payments": self.relays.headend.payments,
                        "heard": self.relays.headend.heard_s},
            "clock_trusted": self.relays.clock_trusted,
            # mode "degraded": the disk was found full (docs/technician.md 'A full disk')
            "disk": {**self.disk.status(), "lost_writes": self.room.lost},
            "buses": [{"name": b.bus.name, "port": b.bus.port, "protocol": b.bus.protocol,
                       "error": b.port_error} for b in self.buses.values()],
            "meters": meters,
            "accounts": [{"id": k, "balance": v} for k, v in sorted(balances.items())],
            # pending: items stored but not yet formed into messages (the link is down)
            "backlog": {"messages": summary.messages, "pending": summary.pending,
                        "total": summary.total, "oldest_age_s": None
                        if summary.oldest_t is None else max(0, now - summary.oldest_t),
                        "bytes": summary.bytes},
        }

    def write(self) -> None:
        """The report for the page (``snapshot``, memory) and for readers of
        ``status.json``. A file that cannot be written (the disk is full, the card is
        read-only) is logged when the reason changes and skipped."""
        status = self.report()
        self.snapshot = status
        path = Path(self.cfg.gateway.data_dir) / "status.json"
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(status, separators=(",", ":")))
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):  # a part written holds blocks a full disk needs
                tmp.unlink(missing_ok=True)
            changed = exc.strerror != self._file_error
            if changed:
                log.warning("event=status_file_failed path=%s error=%s", path, exc.strerror)
            self._file_error = exc.strerror
            if changed and is_enospc(exc):
                # The disk is full, found here before the store found it: the same as
                # when the store does (the reserve released, the oldest readings
                # dropped), so that the ledger has room inside the store.
                self.room.make("status.json", release_all=False)
            return
        if self._file_error:
            log.info("event=status_file_ok path=%s", path)
            self._file_error = None
