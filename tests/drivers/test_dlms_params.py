"""agent/drivers/dlms/params.py: a DlmsMeter from a [[meter]] (via the DLMS ProtocolSpec)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.clock import SimClock
from agent.config import MeterConfig
from agent.drivers.dlms.device import DlmsMeter
from agent.drivers.dlms.errors import DlmsSecurityError
from agent.drivers.dlms.params import resolve_security
from agent.drivers.protocol import protocol_spec
from tests.drivers.test_dlms_device import rig, sim_meter

DLMS = protocol_spec("dlms")

EK_HEX = "000102030405060708090A0B0C0D0E0F"
AK_HEX = "D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF"
TITLE = bytes.fromhex("4D41470102030405")


def meter(tmp_path: Path, **kwargs: object) -> MeterConfig:
    for name, text in (("m.ek", EK_HEX), ("m.ak", AK_HEX)):
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o600)
    base: dict[str, object] = {"id": "M5", "bus": "b", "address": 5, "model": "dlms-is15959",
                               "account": "A", "relay": "meter"}
    return MeterConfig(**{**base, **kwargs})  # type: ignore[arg-type]


def keyed(tmp_path: Path, **kwargs: object) -> MeterConfig:
    return meter(tmp_path, ek_file=tmp_path / "m.ek", ak_file=tmp_path / "m.ak", **kwargs)


@pytest.mark.parametrize(("kwargs", "keys", "expected"), [
    ({}, False, "lls"),
    ({"client": 0x20}, False, "lls"),
    ({"client": 0x30}, False, "lls"),  # no keys: the behaviour before security
    ({"client": 0x30}, True, "hls-gmac"),
    ({"client": 0x20}, True, "lls"),  # readings by LLS, the relay by HLS
    ({"security": "none"}, True, "none"),
    ({"security": "hls-gmac", "client": 0x40}, True, "hls-gmac"),
])
def test_the_security_default(tmp_path: Path, kwargs: dict[str, object], keys: bool,
                              expected: str) -> None:
    cfg = keyed(tmp_path, **kwargs) if keys else meter(tmp_path, **kwargs)
    assert resolve_security(cfg) == expected


def test_a_keyed_meter_reads_by_lls_and_switches_by_hls_with_durable_counters(
    tmp_path: Path
) -> None:
    clock = SimClock()
    sim = sim_meter(clock, keys=(bytes.fromhex(EK_HEX), bytes.fromhex(AK_HEX)))
    transport = rig(sim, clock=clock)
    cfg = keyed(tmp_path, client=0x20)
    driver = DLMS.make_driver(transport, cfg, clock=clock, data_dir=tmp_path / "data",
                              system_title=TITLE)
    assert isinstance(driver, DlmsMeter)
    driver.read("M5", 0)
    assert sim.association == "lls"
    driver.relay_set(False)
    assert driver.relay_state() == "open" and sim.association == "hls"
    assert (tmp_path / "data" / "dlms" / "M5.ic.json").exists()


def test_hls_gmac_readings_default_to_client_0x30(tmp_path: Path) -> None:
    clock = SimClock()
    sim = sim_meter(clock, keys=(bytes.fromhex(EK_HEX), bytes.fromhex(AK_HEX)))
    driver = DLMS.make_driver(rig(sim, clock=clock), keyed(tmp_path, security="hls-gmac"),
                              clock=clock, data_dir=tmp_path, system_title=TITLE)
    assert isinstance(driver, DlmsMeter)
    driver.read("M5", 0)
    driver.relay_set(False)
    assert sim.association == "hls" and sim.associations == 1


def test_without_a_data_dir_the_counters_are_in_memory_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="agent.dlms"):
        DLMS.make_driver(rig(clock=SimClock()), keyed(tmp_path), system_title=TITLE)
    assert "event=dlms_counters_in_memory meter=M5" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="agent.dlms"):
        DLMS.make_driver(rig(clock=SimClock()), meter(tmp_path), system_title=TITLE)
    assert caplog.text == ""  # no keys, no counters


def test_missing_keys_and_titles_are_key_missing(tmp_path: Path) -> None:
    transport = rig(clock=SimClock())
    with pytest.raises(DlmsSecurityError, match="no client system title") as err:
        DLMS.make_driver(transport, keyed(tmp_path))
    assert err.value.why == "key_missing"
    cfg = keyed(tmp_path)
    (tmp_path / "m.ak").unlink()  # gone since check-config
    with pytest.raises(DlmsSecurityError, match="ak_file: cannot read") as err:
        DLMS.make_driver(transport, cfg, system_title=TITLE)
    assert err.value.why == "key_missing" and AK_HEX.lower() not in str(err.value).lower()
    (tmp_path / "m.ek").chmod(0o644)
    with pytest.raises(DlmsSecurityError, match="ek_file: must not be readable"):
        DLMS.make_driver(transport, cfg, system_title=TITLE)
    with pytest.raises(DlmsSecurityError, match="needs ek_file"):
        DLMS.make_driver(transport, meter(tmp_path, security="hls-gmac"), system_title=TITLE)
