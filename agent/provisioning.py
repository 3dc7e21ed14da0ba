"""Meters provisioned by command (``meter_add`` / ``meter_remove``), durably.

The board config is the base; commands overlay it. The overlay lives in the
store, so a meter fed into billing by the head-end stays provisioned across
restarts and power loss without anyone editing the config on the pole.

``registry`` (``agent.meters.MeterRegistry``) holds the meters in service; this
module alone replaces its contents, after each ``add`` and ``remove``.
"""

from __future__ import annotations

import json

from agent.buffer.store import Store
from agent.config import Config, MeterConfig, parse_meter
from agent.errors import CommandError, ConfigError
from agent.meters import MeterRegistry

SCHEMA = """
CREATE TABLE IF NOT EXISTS provisioned (
  meter TEXT PRIMARY KEY,
  op    TEXT NOT NULL,   -- add | remove
  body  TEXT NOT NULL,   -- the [[meter]] table as JSON (add), '{}' (remove)
  t     INTEGER NOT NULL
)
"""


class Provisioning:
    def __init__(self, store: Store, cfg: Config) -> None:
        self.store = store
        self.cfg = cfg
        with store.tx():
            store.conn.execute(SCHEMA)
        self.registry = MeterRegistry(self.meters())

    def meters(self) -> tuple[MeterConfig, ...]:
        """The config's meters, less the removed ones, plus the added ones (in order)."""
        rows = self.store.conn.execute(
            "SELECT meter, op, body FROM provisioned ORDER BY t, meter").fetchall()
        removed = {meter for meter, op, _ in rows if op == "remove"}
        meters = [m for m in self.cfg.meters if m.id not in removed]
        for _meter, op, body in rows:
            if op == "add":
                meters.append(parse_meter(json.loads(body), self.cfg, tuple(meters)))
        return tuple(meters)

    def add(self, table: object, now_s: int) -> MeterConfig:
        """Inside the caller's transaction. CommandError(invalid_args) names the bad key."""
        try:
            meter = parse_meter(table, self.cfg, self.meters())
        except ConfigError as exc:
            raise CommandError("invalid_args", str(exc)) from exc
        self.store.conn.execute(
            "INSERT INTO provisioned (meter, op, body, t) VALUES (?, 'add', ?, ?) "
            "ON CONFLICT(meter) DO UPDATE SET op = 'add', body = excluded.body, t = excluded.t",
            (meter.id, json.dumps(table, sort_keys=True), now_s))
        self.registry.replace(self.meters())
        return meter

    def remove(self, meter_id: str, now_s: int) -> None:
        if meter_id not in {m.id for m in self.meters()}:
            raise CommandError("unknown_meter", f"no meter {meter_id!r}")
        self.store.conn.execute(
            "INSERT INTO provisioned (meter, op, body, t) VALUES (?, 'remove', '{}', ?) "
            "ON CONFLICT(meter) DO UPDATE SET op = 'remove', body = '{}', t = excluded.t",
            (meter_id, now_s))
        self.registry.replace(self.meters())
