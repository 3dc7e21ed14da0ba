"""The board config and keys of one simulated gateway, written into its work dir.

Keys are derived from the gateway's seed (a run must not depend on ``secrets``).
``[store] min_free_bytes = 0`` because the real free space of the host's disk
would otherwise decide when readings are dropped; the byte cap (``max_bytes``,
1 MiB in some seeds) is what fills.

With ``--protocols mixed`` the board is board_configs/sim-mixed.toml's at scale: one
bus per protocol (each only if it has meters), Modbus meters switched by their coil,
IEC 62056-21 meters by a coil of the relay modules on the Modbus bus
(``modbus-coil:<bus>:<unit>:<coil>``), DLMS meters by their own disconnect control
(``relay = "meter"``), read as the IS 15959 meter reader (client 0x20, LLS) and
switched through the utility-settings client (0x30, HLS-GMAC) with per-meter key
files (mode 0600, derived from the seed like the other keys).
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
# The bus of each protocol: name, serial settings (IEC 62056-21 lines are 7E1; 9600 is
# the readout's speed after the sign-on at 300 baud).
BUSES = {"modbus": ("rs485-0", "N"), "iec62056-21": ("rs485-1", "E"), "dlms": ("rs485-2", "N")}
MODELS = {"modbus": "eastron-sdm120", "iec62056-21": "iec62056-21", "dlms": "dlms-is15959"}
READER_CLIENT = 0x20  # IS 15959's meter reader (LLS); the relay goes through 0x30 (HLS)


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
        "bus": [_bus(protocol, plan.poll_s) for protocol in BUSES
                if any(hh.protocol == protocol for hh in households)],
        "meter": [_meter(hh, spec.seed, keys) for hh in households],
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


def _bus(protocol: str, poll_s: int) -> dict[str, Any]:
    name, parity = BUSES[protocol]
    bus: dict[str, Any] = {"name": name, "port": f"sim://{name}", "baudrate": 9600,
                           "protocol": protocol, "poll_interval_s": poll_s}
    if parity != "N":
        bus["parity"] = parity
    return bus


def _meter(hh: Household, seed: int, keys: Path) -> dict[str, Any]:
    """A household's ``[[meter]]`` (the Modbus one as it always was)."""
    bus = BUSES[hh.protocol][0]
    meter: dict[str, Any] = {"id": hh.meter, "bus": bus, "address": hh.address,
                             "model": MODELS[hh.protocol], "account": hh.account}
    if hh.protocol == "modbus":
        meter["relay"] = f"modbus-coil:{hh.coil_unit}:{hh.coil}"
    elif hh.protocol == "iec62056-21":  # no breaker of its own: a coil on the Modbus bus
        meter["relay"] = f"modbus-coil:{BUSES['modbus'][0]}:{hh.coil_unit}:{hh.coil}"
    else:
        meter["relay"] = "meter"  # its disconnect control (class 70)
        meter["client"] = READER_CLIENT
        for name in ("ek", "ak"):
            path = keys / f"{hh.meter}.{name}"
            path.write_text(derive_key(seed, f"{hh.meter}:{name}")[:16].hex() + "\n")
            path.chmod(0o600)
            meter[f"{name}_file"] = str(path)
    return meter
