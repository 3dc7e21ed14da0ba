"""IEC 62056-21 mode C sessions over a real pty against the simulator (sim/iec_line.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.drivers.iec62056.device import IecMeter
from agent.drivers.scan import Found, scan_bus
from agent.drivers.transport import SerialTransport, frame_time_s
from agent.errors import TimeoutError_
from sim.iec_line import SimIecMeter
from sim.meters import serving
from tests.drivers.simbus import board


class RecordingTransport(SerialTransport):
    """A SerialTransport that remembers every speed it was switched to."""

    def __init__(self, port: str, baudrate: int) -> None:
        super().__init__(port, baudrate, "E", bytesize=7)
        self.speeds: list[int] = []

    def set_baudrate(self, baudrate: int) -> None:
        self.speeds.append(baudrate)
        super().set_baudrate(baudrate)


def test_mode_c_session_switches_speed_and_reads_the_true_registers(tmp_path: Path) -> None:
    config = board(tmp_path, protocol="iec62056-21", baudrate=9600, addresses=(1, 2))
    with serving(config, speed=0.0, seed=5, turnaround_ms=2) as buses:
        sims = buses[0].build.meters
        truth = sims["M1"]
        assert isinstance(truth, SimIecMeter)
        transport = RecordingTransport(config.buses[0].port, 9600)
        try:
            meter = IecMeter(transport, "1", timeout_s=0.5)
            started = time.monotonic()
            reading = meter.read("M1", 1_700_000_000)
            elapsed = time.monotonic() - started
            # Sign-on at 300 baud, identification back at 300, then the switch.
            assert transport.speeds == [300, 9600, 9600]  # the last: back to the bus speed
            assert transport.baudrate == 9600  # back to the bus speed after the session
            assert meter.last_identification is not None
            assert meter.last_identification.baudrate == 9600
            ident_bytes = len(b"/SIM5IEC1PH-SIM\r\n")
            assert elapsed >= frame_time_s(6 + ident_bytes + 6, 300)  # paced at 300 baud
            assert reading.values["import_wh"] == truth.import_wh
            assert reading.values["export_wh"] == truth.export_wh
            assert reading.values["p_w"] == round(truth.power_w)
            assert 2250 <= reading.values["v_dv"] <= 2350
            assert reading.serial == str(truth.serial)
            assert meter.read_serial() == str(truth.serial)
            with pytest.raises(TimeoutError_):
                IecMeter(transport, "9", timeout_s=0.3).read("absent", 0)
            found = scan_bus(transport, "iec62056-21", [2, 3], timeout_s=0.3)
            assert found == [Found(2, "iec62056-21", str(sims["M2"].serial))]  # type: ignore[attr-defined]
        finally:
            transport.close()


def test_a_meter_offering_less_gets_its_own_speed(tmp_path: Path) -> None:
    """The bus allows 19200, the session runs at the speed the meter offers (here 9600)."""
    config = board(tmp_path, protocol="iec62056-21", baudrate=9600, addresses=(4,))
    with serving(config, speed=0.0, seed=1, turnaround_ms=2):
        transport = RecordingTransport(config.buses[0].port, 19200)
        try:
            meter = IecMeter(transport, "4", timeout_s=0.5)
            assert meter.read("M4", 0).values["import_wh"] > 0
            assert transport.speeds == [300, 9600, 19200]
        finally:
            transport.close()


def test_the_latency_counts_from_when_the_sign_on_has_left_the_line(tmp_path: Path) -> None:
    """A pty's flush returns at once, a USB adapter's before the last bit is out; at 300
    baud the sign-on alone takes 0.22 s. A meter answering within its latency after the
    request has left must be read at the first attempt, with a latency below 0.22 s."""
    config = board(tmp_path, protocol="iec62056-21", baudrate=9600, addresses=(1,))
    with serving(config, speed=0.0, seed=5, turnaround_ms=2):
        transport = RecordingTransport(config.buses[0].port, 9600)
        writes: list[bytes] = []
        real_write = transport.write

        def write(data: bytes) -> None:
            writes.append(data)
            real_write(data)

        transport.write = write  # type: ignore[method-assign]
        try:
            meter = IecMeter(transport, "1", timeout_s=0.15)
            meter.read("M1", 1_700_000_000)
            assert len(writes) == 2  # the sign-on and the ACK, once each: no timeout
        finally:
            transport.close()
