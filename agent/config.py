"""Board config: TOML (CONTRACT 2) into frozen dataclasses.

Every error names its key path (``meter[2].address: must be 1..247``; array
indexes count from 0) and all errors of a file are collected before raising
one ``ConfigError``, so a technician fixes a file in one pass. Unknown keys are
errors: a typo must never silently fall back to a default.

Relative paths (data_dir, key files, port) are relative to the working
directory the agent is started in (systemd: ``WorkingDirectory``).

The key-path reader (``Table``, ``Errors``, ``ID_RE``) is ``agent.config_reader``:
public, because the ``tariff`` and ``policy`` commands are read with it too
(``read_tariff``, ``read_policy``).
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agent.config_reader import ID_RE, Errors, Table
from agent.drivers.models import models_for
from agent.drivers.protocol import REGISTRY
from agent.errors import ConfigError
from agent.ledger.policy import Policy, parse_protected_hours
from agent.ledger.tariff import Slab, Tariff, TodWindow

# a meter's relay text is parsed in agent.relay_spec (the meter_add command checks it there too)
from agent.relay_spec import RelaySpec, parse_relay

DEFAULT_CONFIG = "board_configs/sim.toml"

_HHMM_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
LIVE_READINGS = ("series", "table")  # [mqtt] live_readings


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    id: str
    data_dir: Path
    timezone: str
    # DLMS HLS: the gateway's system title (8 bytes); default_system_title(id) if not given
    system_title: bytes | None = None


def default_system_title(gateway_id: str) -> bytes:
    """b"MAG" (not a registered FLAG id) + the first 5 bytes of SHA-256(gateway id)."""
    return b"MAG" + hashlib.sha256(gateway_id.encode()).digest()[:5]


@dataclass(frozen=True, slots=True)
class MqttConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = "gw"
    keepalive_s: int = 30
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    protocol: str = "3.1.1"  # "3.1.1" | "5"
    session_expiry_s: int = 7 * 24 * 3600  # MQTT 5 only: how long the broker keeps our session
    # how live readings go on up/readings: "series" (CONTRACT 4) or "table" (one message a
    # poll cycle, docs/mqtt-api.md "The table form"); only a head-end that knows it asks
    live_readings: str = "series"


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    command_key_file: Path
    token_key_file: Path


@dataclass(frozen=True, slots=True)
class BusConfig:
    name: str
    port: str
    baudrate: int = 9600
    parity: str = "N"
    protocol: str = "modbus"
    poll_interval_s: float = 15.0
    timeout_s: float = 0.5  # per request, on top of the frame time


def relay_bus(meter: MeterConfig) -> str:
    """The bus that switches ``meter``'s relay (its own, or its coil module's)."""
    return meter.relay_spec.bus or meter.bus


@dataclass(frozen=True, slots=True)
class MeterConfig:
    id: str
    bus: str
    address: int
    model: str
    account: str
    relay: str = "none"
    relay_spec: RelaySpec = field(default_factory=lambda: RelaySpec("none"))
    # DLMS only: the low-level-security password (a file, like the keys) and the client
    # SAP to associate as. IS 15959 meter readers usually log in as client 0x20.
    password_file: Path | None = None
    client: int | None = None
    # DLMS HLS (docs/dlms.md): the meter's expected system title, the key files (global
    # unicast encryption key, authentication key), and the reading association's security.
    system_title: bytes | None = None
    ek_file: Path | None = None
    ak_file: Path | None = None
    security: str | None = None  # none | lls | hls-gmac; None: the default (dlms/params.py)


@dataclass(frozen=True, slots=True)
class AccountConfig:
    id: str
    tariff: str


@dataclass(frozen=True, slots=True)
class LocalConfig:
    http_port: int = 0  # 0: the status page is off
    bind: str = "127.0.0.1"
    password_file: Path | None = None


@dataclass(frozen=True, slots=True)
class StoreConfig:
    max_bytes: int = 512 * 1024 * 1024  # the outbox's byte cap; at it, readings are dropped
    min_free_bytes: int = 64 * 1024 * 1024  # free-disk floor; below it, the same


DEFAULT_STORE = StoreConfig()


@dataclass(frozen=True, slots=True)
class Config:
    gateway: GatewayConfig
    mqtt: MqttConfig
    security: SecurityConfig
    buses: tuple[BusConfig, ...]
    meters: tuple[MeterConfig, ...]
    tariffs: tuple[Tariff, ...]
    accounts: tuple[AccountConfig, ...]
    policy: Policy
    local: LocalConfig
    store: StoreConfig
    source: Path | None = None

    def tariff(self, name: str) -> Tariff:
        for tariff in self.tariffs:
            if tariff.name == name:
                return tariff
        raise KeyError(name)

    def bus(self, name: str) -> BusConfig:
        for bus in self.buses:
            if bus.name == name:
                return bus
        raise KeyError(name)


def _range(lo: int, hi: int) -> Callable[[Any], str | None]:
    return lambda v: None if lo <= v <= hi else f"must be {lo}..{hi}"


def _positive(v: Any) -> str | None:
    return None if v > 0 else "must be > 0"


def _non_negative(v: Any) -> str | None:
    return None if v >= 0 else "must be >= 0"


def _ident(v: Any) -> str | None:
    return None if ID_RE.match(v) else "must match [A-Za-z0-9_-]{1,64}"


def _timezone(v: Any) -> str | None:
    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {v!r}"
    return None


def _one_of(options: tuple[str, ...]) -> Callable[[Any], str | None]:
    return lambda v: None if v in options else "must be one of " + " | ".join(options)


def _hhmm(text: str) -> int | None:
    m = _HHMM_RE.match(text)
    return int(m.group(1)) * 60 + int(m.group(2)) if m else None


def _optional_path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _array(root: Table, name: str) -> list[Table]:
    raw = root.get(name, list, [])
    return [Table(item, f"{name}[{i}]", root.errors) for i, item in enumerate(raw)]


def _read_gateway(root: Table) -> GatewayConfig:
    t = Table(root.get("gateway", dict, None, required=True) or {}, "gateway", root.errors)
    gw_id = t.get("id", str, "gw", required=True, check=_ident)
    title = _system_title(t)
    gw = GatewayConfig(
        id=gw_id,
        data_dir=Path(t.get("data_dir", str, "var/gw", required=True)),
        timezone=t.get("timezone", str, "UTC", check=_timezone),
        system_title=title if title is not None else default_system_title(gw_id),
    )
    t.finish()
    return gw


def _system_title(t: Table) -> bytes | None:
    """``system_title``: 16 hex digits (a DLMS system title), or None if absent."""
    from agent.drivers.dlms.keys import parse_system_title  # late: only DLMS needs it

    def check(v: str) -> str | None:
        try:
            parse_system_title(v)
        except ValueError as exc:
            return str(exc)
        return None

    text = t.get("system_title", str, None, check=check)
    return parse_system_title(text) if text is not None else None


def _key_file(t: Table, name: str) -> Path | None:
    """A DLMS key file path, checked now (mode 0600, 32 hex digits): check-config tells."""
    value = t.get(name, str, None)
    if not value:
        return None
    from agent.drivers.dlms.keys import KeyFileError, read_key_file

    try:
        read_key_file(Path(value))
    except KeyFileError as exc:
        t.errors.add(t.key(name), str(exc))
    return Path(value)


def _read_mqtt(root: Table) -> MqttConfig:
    t = Table(root.get("mqtt", dict, {}), "mqtt", root.errors)

    def path(name: str) -> Path | None:
        value = t.get(name, str, None)
        return Path(value) if value else None

    cfg = MqttConfig(
        host=t.get("host", str, "127.0.0.1"),
        port=t.get("port", int, 1883, check=_range(1, 65535)),
        prefix=t.get("prefix", str, "gw", check=_ident),
        keepalive_s=t.get("keepalive_s", int, 30, check=_range(5, 3600)),
        username=t.get("username", str, None),
        password=t.get("password", str, None),
        tls=t.get("tls", bool, False),
        ca_file=path("ca_file"),
        cert_file=path("cert_file"),
        key_file=path("key_file"),
        protocol=t.get("protocol", str, "3.1.1", check=_one_of(("3.1.1", "5"))),
        session_expiry_s=t.get("session_expiry_s", int, 7 * 24 * 3600, check=_non_negative),
        live_readings=t.get("live_readings", str, "series", check=_one_of(LIVE_READINGS)),
    )
    if (cfg.cert_file is None) != (cfg.key_file is None):
        root.errors.add("mqtt.cert_file", "cert_file and key_file go together")
    if cfg.password is not None and cfg.username is None:
        root.errors.add("mqtt.password", "a password needs a username")
    t.finish()
    return cfg


def _read_security(root: Table) -> SecurityConfig:
    t = Table(root.get("security", dict, None, required=True) or {}, "security", root.errors)
    cfg = SecurityConfig(
        command_key_file=Path(t.get("command_key_file", str, "", required=True)),
        token_key_file=Path(t.get("token_key_file", str, "", required=True)),
    )
    t.finish()
    return cfg


def _read_buses(root: Table) -> tuple[BusConfig, ...]:
    buses = []
    for t in _array(root, "bus"):
        buses.append(
            BusConfig(
                name=t.get("name", str, "", required=True, check=_ident),
                port=t.get("port", str, "", required=True),
                baudrate=t.get("baudrate", int, 9600, check=_range(300, 921600)),
                parity=t.get("parity", str, "N", check=_one_of(("N", "E", "O"))),
                protocol=t.get("protocol", str, "modbus", check=_one_of(tuple(REGISTRY))),
                poll_interval_s=float(
                    t.get("poll_interval_s", (int, float), 15, check=_range(0, 86400))
                ),
                timeout_s=float(t.get("timeout_s", (int, float), 0.5, check=_range(0, 30))),
            )
        )
        if buses[-1].poll_interval_s <= 0:
            root.errors.add(t.key("poll_interval_s"), "must be > 0")
        t.finish()
    _unique(root.errors, "bus", [b.name for b in buses], "name")
    return tuple(buses)


def _read_meter(t: Table, buses: tuple[BusConfig, ...]) -> MeterConfig:
    relay = t.get("relay", str, "none")
    try:
        spec = parse_relay(relay)
    except ValueError as exc:
        t.errors.add(t.key("relay"), str(exc))
        spec = RelaySpec("none")
    m = MeterConfig(
        id=t.get("id", str, "", required=True, check=_ident),
        bus=t.get("bus", str, "", required=True),
        address=t.get("address", int, 0, required=True, check=_range(1, 247)),
        model=t.get("model", str, "", required=True),
        account=t.get("account", str, "", required=True),
        relay=relay,
        relay_spec=spec,
        password_file=_optional_path(t.get("password_file", str, None)),
        client=t.get("client", int, None, check=_range(1, 127)),
        system_title=_system_title(t),
        ek_file=_key_file(t, "ek_file"),
        ak_file=_key_file(t, "ak_file"),
        security=t.get("security", str, None, check=_one_of(("none", "lls", "hls-gmac"))),
    )
    protocol = {b.name: b.protocol for b in buses}.get(m.bus)
    proto = REGISTRY.get(protocol) if protocol is not None else None
    for key, value in (("password_file", m.password_file), ("client", m.client),
                       ("system_title", m.system_title), ("ek_file", m.ek_file),
                       ("ak_file", m.ak_file), ("security", m.security)):
        if value is not None and protocol is not None and (
                proto is None or key not in proto.meter_keys):
            owners = " or ".join(p.title for p in REGISTRY.values() if key in p.meter_keys)
            t.errors.add(t.key(key), f"is for {owners} meters; bus {m.bus!r} speaks {protocol}")
    if (m.ek_file is None) != (m.ak_file is None):
        missing = "ak_file" if m.ak_file is None else "ek_file"
        t.errors.add(t.key(missing), "ek_file and ak_file go together (HLS needs both)")
    elif m.security == "hls-gmac" and m.ek_file is None:
        t.errors.add(t.key("security"), "hls-gmac needs ek_file and ak_file")
    elif m.security in ("none", "lls") and m.client == 0x30 and m.ek_file is not None:
        t.errors.add(t.key("security"), "client 0x30 with keys is the HLS utility-settings "
                     "client: security must be hls-gmac (or give another client)")
    if m.bus and protocol is None:
        t.errors.add(t.key("bus"), f"no [[bus]] named {m.bus!r}")
    if m.model and protocol is not None:
        models = models_for(protocol)
        if m.model not in models:
            t.errors.add(t.key("model"), f"unknown model {m.model!r} for a {protocol} bus "
                         f"(known: {', '.join(models) or 'none'})")
    if spec.kind == "modbus-coil" and spec.bus is None and protocol is not None and (
            proto is None or not proto.coil_modules):
        t.errors.add(t.key("relay"), f"bus {m.bus!r} speaks {protocol}: a modbus-coil relay "
                     "names the Modbus bus of its module (modbus-coil:<bus>:<unit>:<coil>)")
    elif spec.bus is not None:
        relay_protocol = {b.name: b.protocol for b in buses}.get(spec.bus)
        module_bus = REGISTRY.get(relay_protocol) if relay_protocol is not None else None
        if relay_protocol is None:
            t.errors.add(t.key("relay"), f"no [[bus]] named {spec.bus!r}")
        elif module_bus is None or not module_bus.coil_modules:
            t.errors.add(t.key("relay"), f"bus {spec.bus!r} speaks {relay_protocol}: a "
                         "modbus-coil relay module needs a modbus bus")
    t.finish()
    return m


def _read_meters(root: Table, buses: tuple[BusConfig, ...]) -> tuple[MeterConfig, ...]:
    meters = [_read_meter(t, buses) for t in _array(root, "meter")]
    _unique(root.errors, "meter", [m.id for m in meters], "id")
    seen: dict[tuple[str, int], int] = {}
    for i, m in enumerate(meters):
        if m.address == 0:  # invalid, already reported
            continue
        if (m.bus, m.address) in seen:
            root.errors.add(f"meter[{i}].address", f"address {m.address} is already used on "
                            f"bus {m.bus!r} by meter[{seen[(m.bus, m.address)]}]")
        seen.setdefault((m.bus, m.address), i)
    for i, m in enumerate(meters):  # a relay module's unit is no meter's address
        spec = m.relay_spec
        if spec.kind == "modbus-coil" and spec.unit is not None \
                and (relay_bus(m), spec.unit) in seen:
            root.errors.add(f"meter[{i}].relay", f"unit {spec.unit} on bus {relay_bus(m)!r} "
                            f"is meter[{seen[(relay_bus(m), spec.unit)]}]'s address")
    return tuple(meters)


def read_tariff(name: str, t: Table) -> Tariff:
    """One tariff table (also the `tariff` command's args); errors go to ``t.errors``."""
    slabs: list[Slab] = []
    raw_slabs = t.get("slabs", list, [], required=True)
    for i, raw in enumerate(raw_slabs):
        s = Table(raw, t.key(f"slabs[{i}]"), t.errors)
        upto = s.get("upto_kwh", int, None, check=_positive)
        rate = s.get("rate", int, 0, required=True, check=_non_negative)
        s.finish()
        if slabs and upto is not None and slabs[-1].upto_kwh is not None \
                and upto <= slabs[-1].upto_kwh:
            t.errors.add(s.key("upto_kwh"), "must be larger than the previous slab's")
        if slabs and slabs[-1].upto_kwh is None:
            t.errors.add(s.path, "follows the open top slab (the one without upto_kwh)")
        slabs.append(Slab(rate=rate, upto_kwh=upto))
    if raw_slabs and slabs and slabs[-1].upto_kwh is not None:
        t.errors.add(t.key("slabs"), "the last slab must have no upto_kwh (it is open-ended)")
    tod: list[TodWindow] = []
    for i, raw in enumerate(t.get("tod", list, [])):
        w = Table(raw, t.key(f"tod[{i}]"), t.errors)
        start = w.get("from", str, "00:00", required=True)
        end = w.get("to", str, "00:00", required=True)
        pct = w.get("pct", int, 100, required=True, check=_range(0, 1000))
        w.finish()
        a, b = _hhmm(start), _hhmm(end)
        if a is None:
            t.errors.add(w.key("from"), "must be HH:MM")
        if b is None:
            t.errors.add(w.key("to"), "must be HH:MM")
        if a is not None and b is not None:
            tod.append(TodWindow(from_min=a, to_min=b, pct=pct))
    tariff = Tariff(
        name=name,
        fixed_per_day=t.get("fixed_per_day", int, 0, check=_non_negative),
        slabs=tuple(slabs),
        duty_bp=t.get("duty_bp", int, 0, check=_range(0, 10000)),
        billing_day=t.get("billing_day", int, 1, check=_range(1, 28)),
        tod=tuple(tod),
    )
    t.finish()
    return tariff


def _read_tariffs(root: Table) -> tuple[Tariff, ...]:
    table = Table(root.get("tariff", dict, {}), "tariff", root.errors)
    tariffs = []
    for name in sorted(table.data):
        table.used.add(name)
        if not ID_RE.match(name):
            root.errors.add(f"tariff.{name}", "name must match [A-Za-z0-9_-]{1,64}")
        tariffs.append(read_tariff(name, Table(table.data[name], f"tariff.{name}", root.errors)))
    return tuple(tariffs)


def _read_accounts(root: Table, tariffs: tuple[Tariff, ...]) -> tuple[AccountConfig, ...]:
    names = {t.name for t in tariffs}
    accounts = []
    for t in _array(root, "account"):
        a = AccountConfig(
            id=t.get("id", str, "", required=True, check=_ident),
            tariff=t.get("tariff", str, "", required=True),
        )
        if a.tariff and a.tariff not in names:
            root.errors.add(t.key("tariff"), f"no [tariff.{a.tariff}]")
        accounts.append(a)
        t.finish()
    _unique(root.errors, "account", [a.id for a in accounts], "id")
    return tuple(accounts)


def read_policy(t: Table, base: Policy) -> Policy:
    """The [policy] table (also the `policy` command's args) over ``base``."""
    default = base
    hours = default.protected_hours
    text = t.get("protected_hours", str, None)
    if text is not None:
        try:
            hours = parse_protected_hours(text)
        except ValueError as exc:
            t.errors.add(t.key("protected_hours"), str(exc))

    def weekdays(v: Any) -> str | None:
        bad = [d for d in v if not isinstance(d, str) or d.lower() not in _WEEKDAYS]
        return f"unknown weekday(s) {bad}; use {', '.join(_WEEKDAYS)}" if bad else None

    def dates(v: Any) -> str | None:
        for d in v:
            try:
                date.fromisoformat(d)
            except (TypeError, ValueError):
                return f"{d!r} is not a date YYYY-MM-DD"
        return None

    def levels(v: Any) -> str | None:
        if not v or any(isinstance(x, bool) or not isinstance(x, int) or not 0 <= x <= 100
                        for x in v):
            return "must be a non-empty array of integers 0..100"
        if 0 not in v:
            return "must include 0 (the level at which credit is exhausted)"
        return None

    days = t.get("protected_weekdays", list, None, check=weekdays)
    hol = t.get("holidays", list, None, check=dates)
    lv = t.get("alert_levels_pct", list, None, check=levels)
    policy = Policy(
        protected_hours=hours,
        protected_weekdays=default.protected_weekdays if days is None
        else tuple(sorted({_WEEKDAYS.index(d.lower()) for d in days})),
        holidays=default.holidays if hol is None else tuple(sorted(set(hol))),
        emergency_credit=t.get("emergency_credit", int, default.emergency_credit,
                               check=_range(0, 10_000_000)),
        alert_levels_pct=default.alert_levels_pct if lv is None
        else tuple(sorted(set(lv), reverse=True)),
        payment_outage_h=t.get("payment_outage_h", int, default.payment_outage_h,
                               check=_range(0, 24 * 365)),
        min_notice_h=t.get("min_notice_h", int, default.min_notice_h, check=_range(0, 24 * 60)),
        max_disconnects_per_hour=t.get("max_disconnects_per_hour", int,
                                       default.max_disconnects_per_hour, check=_range(0, 100_000)),
        disconnect_on_tamper=t.get("disconnect_on_tamper", bool, default.disconnect_on_tamper),
    )
    t.finish()
    return policy


def _read_local(root: Table) -> LocalConfig:
    t = Table(root.get("local", dict, {}), "local", root.errors)
    pw = t.get("password_file", str, None)
    cfg = LocalConfig(
        http_port=t.get("http_port", int, 0, check=_range(0, 65535)),
        bind=t.get("bind", str, "127.0.0.1"),
        password_file=Path(pw) if pw else None,
    )
    if cfg.http_port and cfg.password_file is None and cfg.bind not in ("127.0.0.1", "::1",
                                                                       "localhost"):
        root.errors.add("local.password_file", "is required when bind is not loopback")
    t.finish()
    return cfg


def _read_store(root: Table) -> StoreConfig:
    t = Table(root.get("store", dict, {}), "store", root.errors)
    cfg = StoreConfig(
        max_bytes=t.get("max_bytes", int, DEFAULT_STORE.max_bytes,
                        check=_range(1 << 20, 1 << 40)),
        min_free_bytes=t.get("min_free_bytes", int, DEFAULT_STORE.min_free_bytes,
                             check=_non_negative),
    )
    t.finish()
    return cfg


def _unique(errors: Errors, array: str, values: list[str], key: str) -> None:
    first: dict[str, int] = {}
    for i, v in enumerate(values):
        if v in first:
            errors.add(f"{array}[{i}].{key}", f"duplicate {v!r} (also {array}[{first[v]}])")
        first.setdefault(v, i)


def parse_meter(table: Any, cfg: Config, existing: tuple[MeterConfig, ...]) -> MeterConfig:
    """One ``[[meter]]`` table (the ``meter_add`` command), checked against the running
    config: its bus and account exist, its id and its bus address are free."""
    errors = Errors()
    meter = _read_meter(Table(table, "meter", errors), cfg.buses)
    if meter.account and meter.account not in {a.id for a in cfg.accounts}:
        errors.add("meter.account", f"no [[account]] with id {meter.account!r}")
    for other in existing:
        if other.id == meter.id:
            errors.add("meter.id", f"meter {meter.id!r} exists already")
        elif (other.bus, other.address) == (meter.bus, meter.address):
            errors.add("meter.address", f"address {meter.address} is already used on bus "
                       f"{meter.bus!r} by {other.id!r}")
    if errors.items:
        raise ConfigError(errors.items)
    return meter


def parse_config(data: dict[str, Any], source: Path | None = None) -> Config:
    """Validate a decoded TOML document; raise ConfigError listing every problem."""
    errors = Errors()
    root = Table(data, "", errors)
    gateway = _read_gateway(root)
    mqtt = _read_mqtt(root)
    security = _read_security(root)
    buses = _read_buses(root)
    meters = _read_meters(root, buses)
    tariffs = _read_tariffs(root)
    accounts = _read_accounts(root, tariffs)
    account_ids = {a.id for a in accounts}
    for i, m in enumerate(meters):
        if m.account and m.account not in account_ids:
            errors.add(f"meter[{i}].account", f"no [[account]] with id {m.account!r}")
    policy = read_policy(Table(root.get("policy", dict, {}), "policy", errors), Policy())
    local = _read_local(root)
    store = _read_store(root)
    root.finish()
    if errors.items:
        raise ConfigError(errors.items)
    return Config(gateway, mqtt, security, buses, meters, tariffs, accounts, policy, local,
                  store, source)


def load_config(path: str | Path) -> Config:
    """Read and validate one board config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([(str(p), f"cannot read: {exc.strerror or exc}")]) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([(str(p), f"not valid TOML: {exc}")]) from exc
    return parse_config(data, p)
