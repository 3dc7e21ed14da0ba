"""The board config and keys of one simulated gateway, written into its work dir.

Keys are derived from the gateway's seed (a run must not depend on ``secrets``).
``[store] min_free_bytes = 0`` because the real free space of the host's disk
would otherwise decide when readings are dropped; the byte cap (``max_bytes``,
1 MiB in some seeds) is what fills.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from agent.config import Config, parse_config
from sim.neighbourhood.plan import GatewaySpec, WorldPlan
from sim.neighbourhood.world import (
    BILLING_DAY,
    DUTY_BP,
    FIXED_PER_DAY,
    HOLIDAYS,
    SLABS,
    TARIFF_NAME,
    TIMEZONE,
    Household,
)

POLICY_PROTECTED_HOURS = "18:00-08:00"
ALERT_LEVELS = (30, 10, 0)
PAYMENT_OUTAGE_H = 6
MIN_NOTICE_H = 24


def derive_key(seed: int, what: str) -> bytes:
    return hashlib.sha256(f"meter-agent-sim:{seed}:{what}".encode()).digest()


def write_config(plan: WorldPlan, spec: GatewaySpec, households: list[Household],
                 workdir: Path) -> tuple[Config, bytes, bytes]:
    """(config, command key, token key)."""
    keys = workdir / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    cmd_key, token_key = derive_key(spec.seed, "cmd"), derive_key(spec.seed, "token")
    (keys / "cmd.key").write_text(cmd_key.hex() + "\n")
    (keys / "token.key").write_text(token_key.hex() + "\n")
    raw: dict[str, Any] = {
        "gateway": {"id": spec.id, "data_dir": str(workdir / "data"), "timezone": TIMEZONE},
        "mqtt": {"host": "sim.invalid", "port": 1883, "prefix": "gw"},
        "security": {"command_key_file": str(keys / "cmd.key"),
                     "token_key_file": str(keys / "token.key")},
        "bus": [{"name": "rs485-0", "port": "sim://rs485-0", "baudrate": 9600,
                 "protocol": "modbus", "poll_interval_s": plan.poll_s}],
        "meter": [{"id": hh.meter, "bus": "rs485-0", "address": hh.address,
                   "model": "eastron-sdm120", "account": hh.account,
                   "relay": f"modbus-coil:{hh.coil_unit}:{hh.coil}"} for hh in households],
        "tariff": {TARIFF_NAME: {
            "fixed_per_day": FIXED_PER_DAY, "duty_bp": DUTY_BP, "billing_day": BILLING_DAY,
            "slabs": [{"upto_kwh": upto, "rate": rate} if upto is not None else {"rate": rate}
                      for upto, rate in SLABS]}},
        "account": [{"id": hh.account, "tariff": TARIFF_NAME} for hh in households],
        "policy": {
            "protected_hours": POLICY_PROTECTED_HOURS, "protected_weekdays": ["sun"],
            "holidays": list(HOLIDAYS), "emergency_credit": plan.emergency_credit,
            "alert_levels_pct": list(ALERT_LEVELS), "payment_outage_h": PAYMENT_OUTAGE_H,
            "min_notice_h": MIN_NOTICE_H,
            "max_disconnects_per_hour": plan.max_disconnects_per_hour,
            "disconnect_on_tamper": False,
        },
        "store": {"min_free_bytes": 0},
    }
    if plan.store_max_bytes:
        raw["store"]["max_bytes"] = plan.store_max_bytes
    return parse_config(raw), cmd_key, token_key
