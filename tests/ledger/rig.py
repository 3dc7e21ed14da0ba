"""A real agent ledger for tests: Store + Journal + the ledger's parts (wired as the
runtime wires them) in a temp dir, a simulated clock, a controllable clock-trust flag,
and restart (close and reopen everything)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from agent.buffer.journal import Account, Entry, Journal, MeterState
from agent.buffer.store import LANE_EVENTS, LANE_LEDGER, Store
from agent.config import Config, parse_config
from agent.drivers.reading import Reading
from agent.ledger.calendar import days_from_civil
from agent.meters import MeterRegistry
from agent.uplink import cbor, forming
from agent.wiring import start_ledger, wire_ledger

IST_S = 19_800  # Asia/Kolkata, UTC+05:30, no daylight saving
TOKEN_KEY = bytes(range(32))  # the docs/tokens.md test key: never in the field
UP_TABLE: dict[str, Any] = {  # ../shared/data/tariffs/up-lmv1-urban.toml
    "fixed_per_day": 733,
    "slabs": [{"upto_kwh": 150, "rate": 550}, {"upto_kwh": 300, "rate": 600},
              {"upto_kwh": 500, "rate": 650}, {"rate": 700}],
    "duty_bp": 500,
    "billing_day": 1,
}
# A policy under which a disconnection is allowed at once, changed by keyword.
OPEN_POLICY: dict[str, Any] = {
    "protected_hours": "", "protected_weekdays": [], "holidays": [], "emergency_credit": 0,
    "alert_levels_pct": [30, 10, 0], "payment_outage_h": 6, "min_notice_h": 0,
    "max_disconnects_per_hour": 60, "disconnect_on_tamper": False,
}


def decode(item: bytes) -> dict[str, Any]:
    """One CBOR map from the store (an event, an entry, a message)."""
    value = cbor.loads(item)
    assert isinstance(value, dict), value
    return value


def unix(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> int:
    """Unix seconds of a local (IST) wall time."""
    return days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + sec - IST_S


def make_config(tmp: Path, *, meters: int = 1, tariff: dict[str, Any] | None = None,
                policy: dict[str, Any] | None = None, relay: str = "meter",
                models: list[str] | None = None) -> Config:
    """``models``: one meter of each (``meters`` is then their number), each on a bus of
    its model's protocol; otherwise ``meters`` Eastron SDM120s on one Modbus bus."""
    from agent.drivers.models import model

    models = models or ["eastron-sdm120"] * meters
    meters = len(models)
    protocols = sorted({model(m).protocol for m in models})
    raw: dict[str, Any] = {
        "gateway": {"id": "gw-test", "data_dir": str(tmp / "data"), "timezone": "Asia/Kolkata"},
        "security": {"command_key_file": str(tmp / "cmd.key"),
                     "token_key_file": str(tmp / "token.key")},
        "bus": [{"name": "rs485-0" if p == "modbus" else f"bus-{p}", "port": str(tmp / p),
                 "protocol": p} for p in protocols],
        "meter": [{"id": f"M{i}", "address": i, "model": name, "account": f"A{i}",
                   "bus": "rs485-0" if model(name).protocol == "modbus"
                   else f"bus-{model(name).protocol}", "relay": relay}
                  for i, name in enumerate(models, start=1)],
        "tariff": {"dom": copy.deepcopy(tariff or UP_TABLE)},
        "account": [{"id": f"A{i}", "tariff": "dom"} for i in range(1, meters + 1)],
        "policy": {**OPEN_POLICY, **(policy or {})},
    }
    return parse_config(raw)


class Rig:
    def __init__(self, tmp: Path, *, now_s: int | None = None, trusted: bool = True,
                 headend: bool = True, fast: bool = False, **cfg: Any) -> None:
        self.cfg = make_config(tmp, **cfg)
        self.now = unix(2026, 3, 2, 10) if now_s is None else now_s  # a Monday, 10:00 IST
        self.synced = trusted
        self.headend_up = headend
        self.fast = fast
        self._open()
        self.setup()

    def setup(self) -> None:
        """What the runtime does at start (accounts, tariff versions, the first tick)."""
        start_ledger(self.ledger, self.cfg, self.store, self.journal, self.now)

    def _open(self) -> None:
        self.store = Store(self.cfg.gateway.data_dir)
        if self.fast:  # arithmetic tests only: durability is proven elsewhere
            self.store.conn.execute("PRAGMA synchronous = OFF")
        self.journal = Journal(self.store, forming.entry_item)
        self.meters = MeterRegistry(self.cfg.meters)
        self.ledger = wire_ledger(self.cfg, self.store, self.journal, self.meters,
                                  token_key=TOKEN_KEY, clock_synchronised=lambda: self.synced)
        if self.headend_up:
            self.ledger.relays.headend_state(True, True, self.now)

    def restart(self) -> None:
        """A restart: everything in memory is gone; only the store survives."""
        self.store.close()
        self._open()
        self.setup()

    def close(self) -> None:
        self.store.close()

    # -- driving ----------------------------------------------------------------
    def advance(self, seconds: int) -> None:
        self.now += seconds
        if self.headend_up:
            self.ledger.relays.headend_still_heard(self.now)

    def read(self, meter: str, import_wh: int, serial: str | None = None) -> None:
        self.ledger.charging.on_reading(Reading(meter, self.now, {"import_wh": import_wh}, serial))

    def tick(self) -> None:
        self.ledger.charging.tick(self.now)

    def topup(self, acct: str, amount: int, txn: str) -> tuple[bool, int]:
        return self.ledger.credit.topup(acct, amount, txn, self.now)

    def follow_relays(self) -> None:
        """The bus does what the intent says and reads it back."""
        for meter_id, connect in self.ledger.actuation.jobs(self.now):
            self.ledger.actuation.relay_result(meter_id, connect, "", self.now)

    # -- looking ------------------------------------------------------------------
    def account(self, acct: str = "A1") -> Account:
        return self.journal.account(acct)

    def meter(self, meter: str = "M1") -> MeterState:
        return self.journal.meter(meter)

    def entries(self, acct: str = "A1") -> list[Entry]:
        return self.journal.entries(acct, 1, limit=10**9)

    def events(self, type_: str | None = None, acct: str | None = None) -> list[dict[str, Any]]:
        out = []
        for item in self.store.pending_items(LANE_EVENTS):
            event = decode(item)
            if (type_ is None or event["type"] == type_) and (acct is None
                                                              or event.get("acct") == acct):
                out.append(event)
        return out

    def ledger_items(self) -> list[dict[str, Any]]:
        return [decode(i) for i in self.store.pending_items(LANE_LEDGER)]
