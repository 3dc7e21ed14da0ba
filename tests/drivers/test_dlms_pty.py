"""DLMS over real ptys: our driver and an independent client against ``sim.meters``.

The simulator runs in a thread (``sim.meters.serving``) on a temp config with a
``protocol = "dlms"`` bus, with frozen time so register values are exact. The
independent client is dlms-cosem 21.3.2 (MIT; a test-only dependency) over its
own pyserial transport on the same pty.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import Config, load_config
from agent.drivers.dlms.device import DlmsMeter, probe
from agent.drivers.dlms.errors import DlmsAssociationError
from agent.drivers.driver import MeterEvent
from agent.drivers.transport import SerialTransport, frame_time_s
from sim.dlms_meter import SimDlmsMeter

ADDRESSES = (5, 130)  # 130: a four-byte server address
CONFIG = """
[gateway]
id = "gw-dlms"
data_dir = "{tmp}/data"
timezone = "Asia/Kolkata"

[mqtt]
host = "127.0.0.1"

[security]
command_key_file = "{tmp}/keys/cmd.key"
token_key_file = "{tmp}/keys/token.key"

[[bus]]
name = "rs485-dlms"
port = "{tmp}/tty/rs485-dlms"
baudrate = 9600
protocol = "dlms"

[tariff.domestic]
fixed_per_day = 300
slabs = [ {{ rate = 650 }} ]
duty_bp = 500
billing_day = 1
"""
METER = """
[[meter]]
id = "M{address}"
bus = "rs485-dlms"
address = {address}
model = "dlms-is15959"
account = "ACC-{address}"
relay = "meter"

[[account]]
id = "ACC-{address}"
tariff = "domestic"
"""


def board(tmp_path: Path) -> Config:
    text = CONFIG.format(tmp=tmp_path)
    text += "".join(METER.format(address=a) for a in ADDRESSES)
    path = tmp_path / "board.toml"
    path.write_text(text)
    return load_config(path)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, dict[str, SimDlmsMeter]]]:
    from sim.meters import serving

    config = board(tmp_path)
    with serving(config, speed=0.0, seed=3, turnaround_ms=2) as buses:
        meters = {k: v for k, v in buses[0].build.meters.items()
                  if isinstance(v, SimDlmsMeter)}
        assert len(meters) == len(ADDRESSES)
        yield config.buses[0].port, meters
    assert not Path(config.buses[0].port).is_symlink()


def test_our_driver_over_a_pty(served: tuple[str, dict[str, SimDlmsMeter]]) -> None:
    port, sims = served
    transport = SerialTransport(port, 9600)
    try:
        meter = DlmsMeter(transport, 5)
        started = time.monotonic()
        reading = meter.read("M5", 0)
        elapsed = time.monotonic() - started
        sim = sims["M5"]
        assert reading.values["import_wh"] == sim.import_wh  # frozen time: equal
        assert reading.values["p_w"] == round(sim.power_w)
        assert reading.serial == str(sim.serial)
        # SNRM/UA, AARQ/AARE, serial, then one GET-With-List of 14 attributes (two
        # segments) and its answer: about 450 bytes, whose line time is a floor
        assert elapsed >= frame_time_s(400, 9600)
        # relay: open, closed, and "armed" on a meter that waits for its button
        meter.relay_set(False)
        assert meter.relay_state() == "open" and sim.connected is False
        assert meter.read("M5", 15).values["p_w"] == 0
        meter.relay_set(True)
        assert (meter.relay_state(), sim.connected) == ("closed", True)
        sim.control_mode = 2
        meter.relay_set(False)
        meter.relay_set(True)
        assert meter.relay_state() == "armed"
        sim.press_button()
        assert meter.relay_state() == "closed"
        # tamper: a magnet, read once
        assert meter.read_events() == []
        sim.tamper("magnet")
        events = meter.read_events()
        assert events == [MeterEvent("magnet", 201, int(sim.sim_time_s))]
        assert meter.read_events() == []
        meter.close()
        # the meter at a four-byte address, and discovery
        far = DlmsMeter(transport, 130)
        assert far.read("M130", 0).values["import_wh"] == sims["M130"].import_wh
        far.close()
        assert probe(transport, 130, timeout_s=0.3) == str(sims["M130"].serial)
        assert probe(transport, 9, timeout_s=0.2) is None
        with pytest.raises(DlmsAssociationError):
            DlmsMeter(transport, 5, password=b"wrong-pw").read("M5", 0)
    finally:
        transport.close()


def _cosem_client(port: str, password: bytes) -> Any:
    from dlms_cosem import enumerations
    from dlms_cosem.clients.dlms_client import DlmsClient

    return DlmsClient.with_serial_hdlc_transport(
        serial_port=port, client_logical_address=0x20, server_logical_address=1,
        server_physical_address=5, authentication_method=enumerations.AuthenticationMechanism.LLS,
        password=password, timeout=3)


def test_dlms_cosem_reads_our_simulator(served: tuple[str, dict[str, SimDlmsMeter]]) -> None:
    from dlms_cosem import cosem, enumerations
    from dlms_cosem.utils import parse_as_dlms_data

    port, sims = served
    sim = sims["M5"]
    iface = enumerations.CosemInterface
    energy = cosem.CosemAttribute(iface.REGISTER, cosem.Obis(1, 0, 1, 8, 0, 255), 2)
    scaler_unit = cosem.CosemAttribute(iface.REGISTER, cosem.Obis(1, 0, 1, 8, 0, 255), 3)
    control = cosem.Obis(0, 0, 96, 3, 10, 255)
    state = cosem.CosemAttribute(iface.DISCONNECT_CONTROL, control, 3)
    serial = cosem.CosemAttribute(iface.DATA, cosem.Obis(0, 0, 96, 1, 0, 255), 2)
    client = _cosem_client(port, b"00000000")
    with client.session() as c:
        assert parse_as_dlms_data(c.get(energy)) == sim.import_wh
        assert parse_as_dlms_data(c.get(scaler_unit)) == [0, 30]  # 10^0 Wh
        assert parse_as_dlms_data(c.get(state)) == sim.control_state == 1
        assert bytes(parse_as_dlms_data(c.get(serial))) == str(sim.serial).encode()
        c.action(cosem.CosemMethod(iface.DISCONNECT_CONTROL, control, 1), b"\x0f\x00")
        assert parse_as_dlms_data(c.get(state)) == sim.control_state == 0
    assert sim.connected is False and sim.association is None  # released, link closed
    # our driver sees what dlms-cosem did, on the same wire
    transport = SerialTransport(port, 9600)
    try:
        meter = DlmsMeter(transport, 5)
        assert meter.relay_state() == "open"
        meter.relay_set(True)
        meter.close()
    finally:
        transport.close()
    with _cosem_client(port, b"00000000").session() as c:
        assert parse_as_dlms_data(c.get(state)) == 1
        assert parse_as_dlms_data(c.get(energy)) == sim.import_wh


def test_dlms_cosem_with_a_wrong_password_is_refused(
    served: tuple[str, dict[str, SimDlmsMeter]]
) -> None:
    from dlms_cosem.exceptions import DlmsClientException

    port, sims = served
    client = _cosem_client(port, b"11111111")
    client.connect()
    try:
        with pytest.raises(DlmsClientException, match="REJECTED_PERMANENT"):
            client.associate()
    finally:
        client.disconnect()
    assert sims["M5"].rejections == 1
