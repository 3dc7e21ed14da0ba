"""Board config: every board config validates; every error names its key path; exit 2."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.config import load_config, parse_config
from agent.errors import ConfigError
from sim.tomlw import dumps

ROOT = Path(__file__).resolve().parents[1]
SIM = ROOT / "board_configs" / "sim.toml"


def raw() -> dict[str, Any]:
    with open(SIM, "rb") as f:
        return tomllib.load(f)


def errors_of(doc: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    return dict(info.value.errors)


@pytest.mark.parametrize("path", sorted((ROOT / "board_configs").glob("*.toml")))
def test_every_board_config_is_valid(path: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths: its DLMS key files, made here (make keys)
    write_meter_keys(path)
    cfg = load_config(path)
    assert cfg.gateway.id
    assert main(["check-config", str(path)]) == 0


def write_meter_keys(config: Path) -> None:
    """The DLMS key files a board config names (relative to the working directory), as
    `make keys` writes them for the simulated gateway: they are never committed."""
    import tomllib

    from sim.keys import DLMS_KEY_BYTES, write_key

    for meter in tomllib.loads(config.read_text()).get("meter", []):
        for key in ("ek_file", "ak_file"):
            if key in meter:
                write_key(Path(meter[key]), DLMS_KEY_BYTES)


def test_sim_config_reads_into_typed_values() -> None:
    cfg = load_config(SIM)
    assert cfg.gateway.timezone == "Asia/Kolkata"
    assert [m.id for m in cfg.meters] == ["SDM-0001", "SDM-0002", "SDM-0003"]
    assert cfg.meters[0].relay_spec.kind == "modbus-coil"
    assert (cfg.meters[1].relay_spec.unit, cfg.meters[1].relay_spec.coil) == (10, 1)
    t = cfg.tariff("domestic")
    assert [s.rate for s in t.slabs] == [550, 650, 750]
    assert t.slabs[-1].upto_kwh is None and t.duty_bp == 500
    assert cfg.policy.protected_hours == ((18 * 60, 8 * 60),)
    assert cfg.policy.protected_weekdays == (6,)
    assert cfg.policy.alert_levels_pct == (30, 10, 0)


@pytest.mark.parametrize(
    ("mutate", "key", "fragment"),
    [
        (lambda d: d["meter"][2].__setitem__("address", 300), "meter[2].address", "1..247"),
        (lambda d: d["meter"][0].__setitem__("adress", 3), "meter[0].adress", "unknown key"),
        (lambda d: d["gateway"].__setitem__("id", "bad id!"), "gateway.id", "A-Za-z0-9"),
        (lambda d: d["gateway"].__setitem__("timezone", "Mars/Olympus"), "gateway.timezone",
         "unknown time zone"),
        (lambda d: d["bus"][0].__setitem__("parity", "X"), "bus[0].parity", "N | E | O"),
        (lambda d: d["bus"][0].__setitem__("baudrate", "9600"), "bus[0].baudrate",
         "an integer"),
        (lambda d: d["meter"][1].__setitem__("bus", "rs485-9"), "meter[1].bus", "no [[bus]]"),
        (lambda d: d["meter"][1].__setitem__("model", "acme-1"), "meter[1].model",
         "unknown model"),
        (lambda d: d["meter"][1].__setitem__("relay", "modbus-coil:0:1"), "meter[1].relay",
         "modbus-coil"),
        (lambda d: d["meter"][1].__setitem__("account", "ACC-9"), "meter[1].account",
         "no [[account]]"),
        (lambda d: d["meter"][1].__setitem__("address", 1), "meter[1].address",
         "already used"),
        (lambda d: d["account"][0].__setitem__("tariff", "nope"), "account[0].tariff",
         "no [tariff.nope]"),
        (lambda d: d["tariff"]["domestic"].__setitem__("duty_bp", -1),
         "tariff.domestic.duty_bp", "0..10000"),
        (lambda d: d["tariff"]["domestic"]["slabs"].pop(), "tariff.domestic.slabs",
         "open-ended"),
        (lambda d: d["policy"].__setitem__("protected_weekdays", ["sunday"]),
         "policy.protected_weekdays", "unknown weekday"),
        (lambda d: d["policy"].__setitem__("holidays", ["2026-13-01"]), "policy.holidays",
         "YYYY-MM-DD"),
        (lambda d: d["policy"].__setitem__("alert_levels_pct", [30, 10]),
         "policy.alert_levels_pct", "include 0"),
        (lambda d: d["policy"].__setitem__("disconnect_on_tamper", 1),
         "policy.disconnect_on_tamper", "true or false"),
        (lambda d: d["policy"].__setitem__("protected_hours", "25:00-08:00"),
         "policy.protected_hours", ""),
        (lambda d: d["mqtt"].__setitem__("port", True), "mqtt.port", "boolean"),
        (lambda d: d["mqtt"].__setitem__("live_readings", "columns"), "mqtt.live_readings",
         "series | table"),
        (lambda d: d["mqtt"].__setitem__("live_readings", 1), "mqtt.live_readings",
         "a string"),
        (lambda d: d.__setitem__("extra", {}), "extra", "unknown key"),
        (lambda d: d.pop("security"), "security", "required"),
        (lambda d: d["security"].pop("token_key_file"), "security.token_key_file", "required"),
    ],
)
def test_errors_name_the_key(mutate, key: str, fragment: str) -> None:  # type: ignore[no-untyped-def]
    doc = raw()
    mutate(doc)
    errors = errors_of(doc)
    assert key in errors, errors
    assert fragment in errors[key]


@pytest.mark.parametrize("value", ["series", "table", None])
def test_live_readings_is_series_unless_the_config_asks_for_table(value: str | None) -> None:
    doc = raw()
    doc["mqtt"].pop("live_readings", None)
    if value is not None:
        doc["mqtt"]["live_readings"] = value
    assert parse_config(doc).mqtt.live_readings == (value or "series")


def test_check_config_names_a_wrong_live_readings(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    doc = raw()
    doc["mqtt"]["live_readings"] = "Table"
    bad = tmp_path / "bad.toml"
    bad.write_text(dumps(doc))
    assert main(["check-config", str(bad)]) == 2
    assert "mqtt.live_readings: must be one of series | table" in capsys.readouterr().err


def test_all_errors_reported_at_once() -> None:
    doc = raw()
    doc["meter"][0]["address"] = 0
    doc["meter"][1]["relay"] = "relay?"
    doc["gateway"]["colour"] = "red"
    errors = errors_of(doc)
    assert {"meter[0].address", "meter[1].relay", "gateway.colour"} <= set(errors)


def test_check_config_cli_exit_2_and_names_key(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    doc = raw()
    doc["meter"][2]["address"] = 248
    bad = tmp_path / "bad.toml"
    bad.write_text(dumps(doc))
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "meter[2].address: must be 1..247" in err


def test_check_config_on_broken_toml(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "broken.toml"
    bad.write_text("[gateway\nid = 1\n")
    assert main(["check-config", str(bad)]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_missing_file_exit_2(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["check-config", "/nonexistent/agent.toml"]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_tomlw_round_trips_the_sim_config() -> None:
    doc = raw()
    assert tomllib.loads(dumps(doc)) == doc


def test_dlms_password_and_client_only_on_dlms_buses() -> None:
    doc = raw()
    doc["meter"][0]["password_file"] = "keys/meter.pw"
    doc["meter"][0]["client"] = 0x20
    errors = errors_of(doc)
    assert "is for DLMS meters" in errors["meter[0].password_file"]
    assert "is for DLMS meters" in errors["meter[0].client"]
    doc = raw()
    doc["bus"][0]["protocol"] = "dlms"
    doc["meter"] = doc["meter"][:1]
    doc["account"] = doc["account"][:1]
    doc["meter"][0].update(model="dlms-is15959", relay="meter", password_file="m.pw",
                           client=0x20)
    cfg = parse_config(doc)
    assert cfg.meters[0].password_file == Path("m.pw") and cfg.meters[0].client == 0x20


# -- DLMS security keys ------------------------------------------------------------------
def _dlms_doc(tmp_path: Path, **meter: object) -> dict[str, Any]:
    doc = raw()
    doc["bus"][0]["protocol"] = "dlms"
    doc["meter"] = doc["meter"][:1]
    doc["account"] = doc["account"][:1]
    doc["meter"][0].update(model="dlms-is15959", relay="meter", **meter)
    return doc


def _key(tmp_path: Path, name: str, text: str = "000102030405060708090a0b0c0d0e0f\n",
         mode: int = 0o600) -> str:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def test_dlms_keys_titles_and_security_read_into_the_meter(tmp_path: Path) -> None:
    doc = _dlms_doc(tmp_path, ek_file=_key(tmp_path, "m.ek"),
                    ak_file=_key(tmp_path, "m.ak", "D0D1D2D3 D4D5D6D7 D8D9DADB DCDDDEDF"),
                    system_title="4D4D4D0000BC614E", security="hls-gmac", client=0x30)
    doc["gateway"]["system_title"] = "4d41470102030405"
    cfg = parse_config(doc)
    meter = cfg.meters[0]
    assert meter.ek_file == tmp_path / "m.ek" and meter.ak_file == tmp_path / "m.ak"
    assert meter.system_title == bytes.fromhex("4D4D4D0000BC614E")
    assert meter.security == "hls-gmac" and meter.client == 0x30
    assert cfg.gateway.system_title == bytes.fromhex("4D41470102030405")


def test_the_gateway_system_title_defaults_to_one_derived_from_its_id() -> None:
    import hashlib

    cfg = parse_config(raw())
    digest = hashlib.sha256(cfg.gateway.id.encode()).digest()
    assert cfg.gateway.system_title == b"MAG" + digest[:5]
    other = raw()
    other["gateway"]["id"] = "gw-other"
    assert parse_config(other).gateway.system_title != cfg.gateway.system_title


@pytest.mark.parametrize(("mode", "shown"), [(0o644, "0644"), (0o640, "0640"), (0o604, "0604")])
def test_a_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int, shown: str) -> None:
    doc = _dlms_doc(tmp_path, ek_file=_key(tmp_path, "m.ek", mode=mode),
                    ak_file=_key(tmp_path, "m.ak"))
    errors = errors_of(doc)
    assert errors["meter[0].ek_file"].startswith(
        f"must not be readable by group or others (mode {shown})")
    assert "meter[0].ak_file" not in errors


@pytest.mark.parametrize(("text", "fragment"), [
    ("0001020304050607", "32 hex digits (16 bytes), found 16"),
    ("zz0102030405060708090a0b0c0d0e0f", "only hex digits"),
    ("\u00e9" * 16, "only hex digits"),
    ("00" * 200, "not a key file"),
])
def test_a_malformed_key_file_names_the_key_and_the_problem(tmp_path: Path, text: str,
                                                             fragment: str) -> None:
    doc = _dlms_doc(tmp_path, ek_file=_key(tmp_path, "m.ek"),
                    ak_file=_key(tmp_path, "m.ak", text))
    message = errors_of(doc)["meter[0].ak_file"]
    assert fragment in message and str(tmp_path / "m.ak") in message
    assert "000102030405" not in message  # never key material


def test_a_missing_key_file_names_the_key(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    doc = _dlms_doc(tmp_path, ek_file=str(tmp_path / "nowhere.ek"),
                    ak_file=_key(tmp_path, "m.ak"))
    assert "cannot read" in errors_of(doc)["meter[0].ek_file"]
    path = tmp_path / "board.toml"
    path.write_text(dumps(doc))
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "meter[0].ek_file: cannot read" in err and "No such file" in err


@pytest.mark.parametrize(("meter", "key", "fragment"), [
    ({"ek_file": "EK"}, "meter[0].ak_file", "go together"),
    ({"ak_file": "AK"}, "meter[0].ek_file", "go together"),
    ({"security": "hls-gmac"}, "meter[0].security", "needs ek_file and ak_file"),
    ({"security": "hls"}, "meter[0].security", "none | lls | hls-gmac"),
    ({"security": "lls", "client": 0x30, "ek_file": "EK", "ak_file": "AK"},
     "meter[0].security", "must be hls-gmac"),
    ({"system_title": "4D4D4D"}, "meter[0].system_title", "16 hex digits"),
    ({"system_title": "4D4D4D0000BC61XY"}, "meter[0].system_title", "hex digits 0-9 a-f"),
    ({"system_title": "4D4D 4D0000BC614"}, "meter[0].system_title", "hex digits 0-9 a-f"),
])
def test_dlms_security_mistakes(tmp_path: Path, meter: dict[str, object], key: str,
                                fragment: str) -> None:
    files = {"EK": _key(tmp_path, "m.ek"), "AK": _key(tmp_path, "m.ak")}
    meter = {k: files.get(v, v) if isinstance(v, str) else v for k, v in meter.items()}
    assert fragment in errors_of(_dlms_doc(tmp_path, **meter))[key]


def test_gateway_system_title_must_be_16_hex_digits() -> None:
    doc = raw()
    doc["gateway"]["system_title"] = "MAG12345"
    assert "16 hex digits" in errors_of(doc)["gateway.system_title"]


def test_dlms_security_keys_only_on_dlms_buses(tmp_path: Path) -> None:
    doc = raw()
    doc["meter"][0].update(ek_file=_key(tmp_path, "m.ek"), ak_file=_key(tmp_path, "m.ak"),
                           system_title="4D4D4D0000BC614E", security="lls")
    errors = errors_of(doc)
    for key in ("ek_file", "ak_file", "system_title", "security"):
        assert "is for DLMS meters" in errors[f"meter[0].{key}"]


def test_check_config_reads_dlms_keys_with_the_standard_library_only(tmp_path: Path) -> None:
    """flash.sh runs check-config before cryptography is installed on the board."""
    import os
    import subprocess
    import sys

    doc = _dlms_doc(tmp_path, ek_file=_key(tmp_path, "m.ek"), ak_file=_key(tmp_path, "m.ak"),
                    system_title="4D4D4D0000BC614E")
    path = tmp_path / "board.toml"
    path.write_text(dumps(doc))
    proc = subprocess.run([sys.executable, "-S", "-m", "agent.cli", "check-config", str(path)],
                          capture_output=True, text=True, timeout=60, cwd="/",
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "m.ak").chmod(0o644)
    proc = subprocess.run([sys.executable, "-S", "-m", "agent.cli", "check-config", str(path)],
                          capture_output=True, text=True, timeout=60, cwd="/",
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and "meter[0].ak_file: must not be readable" in proc.stderr
