"""ModbusClient and devices over transports: scripted, in-process simulator, real ptys.

The pty tests run the simulator (``sim.meters.serve`` in a thread, or
``python -m sim.meters`` as a process) and talk to it through SerialTransport,
and through pymodbus as an independent client.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.clock import SimClock
from agent.drivers.modbus.client import LAG_MARGIN_S, RELEARN_EVERY, ModbusClient
from agent.drivers.modbus.codec import (
    ModbusChecksumError,
    ModbusProtocolError,
    Request,
    Response,
)
from agent.drivers.modbus.device import RESPONSE_LATENCY_S, ModbusMeter, answer_timeout_s
from agent.drivers.transport import (
    SerialTransport,
    character_time_s,
    frame_time_s,
    silent_interval_s,
)
from agent.errors import DeviceException, DriverError, TimeoutError_
from agent.relay.modbus_coil import ModbusCoilRelay
from sim.modbus_device import SimCoilModule, SimSDM120
from tests.drivers.simbus import SimBusTransport, board

ROOT = Path(__file__).resolve().parents[2]


class ScriptedTransport:
    """Answers each write with the next scripted list of (delay_s, chunk); time is a SimClock."""

    baudrate = 9600

    def __init__(self, clock: SimClock, script: list[list[tuple[float, bytes]]]) -> None:
        self.clock = clock
        self.script = list(script)
        self.pending: list[tuple[float, bytes]] = []
        self.written: list[bytes] = []
        self.resets = 0

    def write(self, data: bytes) -> None:
        self.written.append(data)
        now = self.clock.monotonic_s()
        if self.script:
            self.pending = [(now + delay, chunk) for delay, chunk in self.script.pop(0)]

    def read(self, max_bytes: int, timeout_s: float) -> bytes:
        now = self.clock.monotonic_s()
        if self.pending and self.pending[0][0] <= now + timeout_s:
            due, chunk = self.pending.pop(0)
            self.clock.advance(max(0.0, due - now))
            return chunk[:max_bytes]
        self.clock.advance(timeout_s)
        return b""

    def reset_input(self) -> None:
        self.resets += 1

    def close(self) -> None:
        pass


REQ = Request(1, 4, 0x48, 2)
OK = Response(1, 4, 0x48, 2, (0x4640, 0xE400)).to_bytes()


# --- line timing ------------------------------------------------------------


def test_line_timing_functions() -> None:
    assert character_time_s(9600) == pytest.approx(11 / 9600)
    assert silent_interval_s(9600) == pytest.approx(3.5 * 11 / 9600)  # ~4.01 ms
    assert silent_interval_s(19200) == pytest.approx(3.5 * 11 / 19200)
    assert silent_interval_s(38400) == 0.00175
    assert frame_time_s(9, 9600) == pytest.approx(9 * 11 / 9600)
    with pytest.raises(ValueError):
        character_time_s(0)


# --- ModbusClient over a scripted transport --------------------------------


def test_client_returns_the_response_and_resets_input_first() -> None:
    clock = SimClock()
    transport = ScriptedTransport(clock, [[(0.02, b"\x00" + OK[:4]), (0.001, OK[4:])]])
    response = ModbusClient(transport, clock).execute(REQ, 0.5)
    assert response.values == (0x4640, 0xE400)
    assert transport.written == [REQ.to_bytes()] and transport.resets == 1


def test_client_no_answer_is_a_timeout_at_the_deadline() -> None:
    clock = SimClock()
    client = ModbusClient(ScriptedTransport(clock, [[]]), clock)
    with pytest.raises(TimeoutError_, match="no answer"):
        client.execute(REQ, 0.3)
    assert clock.monotonic_s() == pytest.approx(0.3)


def test_client_partial_answer_is_a_timeout() -> None:
    clock = SimClock()
    client = ModbusClient(ScriptedTransport(clock, [[(0.01, OK[:6])]]), clock)
    with pytest.raises(TimeoutError_, match="part of a frame"):
        client.execute(REQ, 0.3)


def test_client_bad_crc_is_reported_at_the_silence_and_the_line_drained() -> None:
    clock = SimClock()
    corrupted = OK[:-1] + bytes([OK[-1] ^ 0xFF])
    transport = ScriptedTransport(clock, [[(0.01, corrupted), (0.02, b"\x55\x55")]])
    with pytest.raises(ModbusChecksumError):
        ModbusClient(transport, clock).execute(REQ, 2.0)
    assert clock.monotonic_s() < 1.0  # not the full timeout
    assert transport.pending == []  # the late garbage was drained


def test_client_garbage_only_is_a_protocol_error() -> None:
    clock = SimClock()
    client = ModbusClient(ScriptedTransport(clock, [[(0.01, b"\xf0\xf1\xf2\xf3")]]), clock)
    with pytest.raises(ModbusProtocolError, match="none formed a frame"):
        client.execute(REQ, 0.3)


def test_client_exception_response_is_a_device_exception() -> None:
    clock = SimClock()
    frame = Response(1, 4, exception_code=2).to_bytes()
    client = ModbusClient(ScriptedTransport(clock, [[(0.01, frame)]]), clock)
    with pytest.raises(DeviceException, match="illegal data address") as info:
        client.execute(REQ, 0.3)
    assert info.value.code == 2


class CountingTransport(ScriptedTransport):
    def __init__(self, clock: SimClock, script: list[list[tuple[float, bytes]]]) -> None:
        super().__init__(clock, script)
        self.reads = 0

    def read(self, max_bytes: int, timeout_s: float) -> bytes:
        self.reads += 1
        return super().read(max_bytes, timeout_s)


def test_client_learns_a_units_lag_and_then_reads_its_answer_once() -> None:
    """The first answer is watched as it comes (here in two bursts) and the unit's lag
    measured; the next ones are slept through to their end and read at once, waking
    LAG_MARGIN_S after the answer is complete (one look before the sleep, one after)."""
    clock = SimClock()
    line_s = frame_time_s(len(OK), 9600)
    turnaround_s = 0.02
    bursts = [(turnaround_s + frame_time_s(4, 9600), OK[:4]),  # delays from the write
              (turnaround_s + line_s, OK[4:])]
    whole = [(turnaround_s + line_s, OK)]
    transport = CountingTransport(clock, [bursts, whole, whole])
    client = ModbusClient(transport, clock)
    assert client.execute(REQ, 0.5).values == (0x4640, 0xE400)
    assert transport.reads >= 2
    for _ in range(2):
        transport.reads = 0
        written_s = clock.monotonic_s()
        assert client.execute(REQ, 0.5).values == (0x4640, 0xE400)
        assert transport.reads == 2
        assert clock.monotonic_s() - written_s == pytest.approx(
            turnaround_s + line_s + LAG_MARGIN_S, abs=1e-6)


def test_a_slower_answer_is_read_as_it_comes_and_the_lag_grows() -> None:
    clock = SimClock()
    line_s = frame_time_s(len(OK), 9600)
    quick, slow = [(0.01 + line_s, OK)], [(0.05 + line_s, OK)]
    transport = CountingTransport(clock, [quick, slow, slow])
    client = ModbusClient(transport, clock)
    client.execute(REQ, 0.5)  # watched: lag 10 ms
    written_s = clock.monotonic_s()
    transport.reads = 0
    assert client.execute(REQ, 0.5).values == (0x4640, 0xE400)  # woke too early
    assert transport.reads == 3  # before and after the sleep nothing; the next waited
    assert clock.monotonic_s() - written_s == pytest.approx(0.05 + line_s, abs=1e-6)
    transport.reads = 0
    written_s = clock.monotonic_s()
    client.execute(REQ, 0.5)  # the lag it learned: slept through again
    assert transport.reads == 2
    assert clock.monotonic_s() - written_s == pytest.approx(0.05 + line_s + LAG_MARGIN_S,
                                                            abs=1e-6)


def test_every_relearn_every_answer_is_watched_again_and_a_quicker_meter_is_seen() -> None:
    clock = SimClock()
    line_s = frame_time_s(len(OK), 9600)
    slow, quick = [(0.05 + line_s, OK)], [(0.01 + line_s, OK)]
    transport = CountingTransport(clock, [slow] + [quick] * (RELEARN_EVERY + 2))
    client = ModbusClient(transport, clock)
    client.execute(REQ, 0.5)  # watched: 50 ms
    took = []
    for _ in range(RELEARN_EVERY + 2):
        written_s = clock.monotonic_s()
        client.execute(REQ, 0.5)
        took.append(clock.monotonic_s() - written_s)
    slept = 0.05 + line_s + LAG_MARGIN_S
    assert took[:RELEARN_EVERY] == pytest.approx([slept] * RELEARN_EVERY, abs=1e-6)
    assert took[RELEARN_EVERY] == pytest.approx(0.01 + line_s, abs=1e-6)  # watched
    assert took[-1] == pytest.approx(0.01 + line_s + LAG_MARGIN_S, abs=1e-6)


def test_silence_and_exceptions_teach_no_lag() -> None:
    """A timeout and an exception answer change nothing learned: the unit is watched
    again (it may have changed while silent), then slept through by its old lag."""
    clock = SimClock()
    line_s = frame_time_s(len(OK), 9600)
    exception = Response(1, 4, exception_code=2).to_bytes()
    answer = [(0.01 + line_s, OK)]
    transport = CountingTransport(clock, [answer, [], [(0.2, exception)], answer, answer])
    client = ModbusClient(transport, clock)
    client.execute(REQ, 0.5)  # lag 10 ms
    with pytest.raises(TimeoutError_):
        client.execute(REQ, 0.3)
    with pytest.raises(DeviceException):
        client.execute(REQ, 0.5)
    took = []
    for _ in range(2):
        written_s = clock.monotonic_s()
        client.execute(REQ, 0.5)
        took.append(clock.monotonic_s() - written_s)
    assert took == pytest.approx([0.01 + line_s, 0.01 + line_s + LAG_MARGIN_S], abs=1e-6)


def test_client_refuses_broadcast() -> None:
    clock = SimClock()
    with pytest.raises(ValueError):
        ModbusClient(ScriptedTransport(clock, []), clock).execute(Request(0, 5, 0, values=(1,)), 1)


# --- devices against the in-process simulator ---------------------------------


def sim_bus(
    import_wh: int = 1_234_567,
) -> tuple[SimClock, SimBusTransport, SimSDM120, SimCoilModule]:
    clock = SimClock()
    meter = SimSDM120(1, clock=clock, serial=20_250_001, seed=7, speed=0.0, import_wh=import_wh)
    relay = SimCoilModule(10)
    relay.attach(0, meter)
    return clock, SimBusTransport(clock, {1: meter, 10: relay}), meter, relay


def test_meter_reads_every_quantity_and_its_serial() -> None:
    clock, transport, meter, _ = sim_bus()
    reading = ModbusMeter(ModbusClient(transport, clock), 1, "eastron-sdm120").read(
        "M1", 1_700_000_000
    )
    assert reading.meter == "M1" and reading.t == 1_700_000_000
    assert reading.serial == "20250001"
    assert reading.values["import_wh"] == 1_234_567 == meter.import_wh
    assert reading.values["export_wh"] == 0
    assert 2250 <= reading.values["v_dv"] <= 2350
    assert 4990 <= reading.values["f_chz"] <= 5010
    assert reading.values["p_w"] == round(meter.power_w)
    assert [r.function for r in transport.requests] == [3, 4, 4]  # serial, then the plan


def test_meter_caches_the_serial_and_rereads_it_after_a_timeout() -> None:
    clock, transport, _, _ = sim_bus()
    meter = ModbusMeter(ModbusClient(transport, clock), 1, "eastron-sdm120")
    meter.read("M1", 0)
    meter.read("M1", 15)
    assert [r.function for r in transport.requests] == [3, 4, 4, 4, 4]
    devices = transport.devices
    transport.devices = {}
    with pytest.raises(TimeoutError_):
        meter.read("M1", 30, timeout_s=0.05)
    transport.devices = devices
    transport.requests.clear()
    assert meter.read("M1", 45).serial == "20250001"
    assert [r.function for r in transport.requests] == [3, 4, 4]


def test_default_timeout_is_latency_plus_line_time() -> None:
    clock = SimClock()
    meter = ModbusMeter(ModbusClient(ScriptedTransport(clock, [[]]), clock), 1, "eastron-sdm120")
    with pytest.raises(TimeoutError_):
        meter.read_serial()
    assert clock.monotonic_s() == pytest.approx(RESPONSE_LATENCY_S + frame_time_s(9, 9600))


def test_each_read_is_allowed_the_chosen_latency_plus_its_line_time() -> None:
    clock, transport, _, _ = sim_bus()

    class Recording(ModbusClient):
        allowed: list[tuple[Request, float]] = []

        def execute(self, request: Request, timeout_s: float) -> Response:
            self.allowed.append((request, timeout_s))
            return super().execute(request, timeout_s)

    client = Recording(transport, clock)
    meter = ModbusMeter(client, 1, "eastron-sdm120", timeout_s=0.2)
    for baudrate, per_call_s in ((9600, None), (9600, 0.1), (19200, None), (2400, 0.05)):
        transport.baudrate = baudrate  # the line time follows the transport's speed
        client.allowed.clear()
        meter.read("M1", 0, timeout_s=per_call_s)
        assert [r.function for r, _ in client.allowed][-2:] == [4, 4]
        assert client.allowed == [(r, answer_timeout_s(client, r, per_call_s, 0.2))
                                  for r, _ in client.allowed]
    ModbusMeter(client, 1, "eastron-sdm120").read("M1", 0)  # neither chooses: the default
    assert client.allowed[-1][1] == answer_timeout_s(client, client.allowed[-1][0])


def test_meter_with_unsupported_serial_register_still_reads() -> None:
    clock, transport, meter, _ = sim_bus()

    class NoSerial:
        unit = 1

        def handle(self, request: Request) -> Response | None:
            if request.function == 3:
                return Response(1, 3, exception_code=2)
            return meter.handle(request)

    transport.devices = {1: NoSerial()}
    device = ModbusMeter(ModbusClient(transport, clock), 1, "eastron-sdm120")
    assert device.read("M1", 0).serial is None
    with pytest.raises(DeviceException):
        device.read_serial()


def test_coil_relay_gates_the_meter() -> None:
    clock, transport, meter, _ = sim_bus()
    client = ModbusClient(transport, clock)
    relay = ModbusCoilRelay(client, 10, 0)
    assert relay.read() == "closed"
    relay.switch(False)
    assert relay.read() == "open" and meter.connected is False
    assert ModbusMeter(client, 1, "eastron-sdm120").read("M1", 0).values["p_w"] == 0
    relay.switch(True)
    assert relay.read() == "closed" and meter.connected is True


def test_sim_meter_energy_follows_the_profile_and_stops_when_open() -> None:
    clock = SimClock(start_s=1_767_225_600.0)  # 05:30 IST
    meter = SimSDM120(1, clock=clock, serial=1, seed=1, speed=3600.0, import_wh=0)
    clock.advance(1.0)  # one simulated hour
    meter.advance()
    morning_wh = meter.import_wh
    assert 100 < morning_wh < 3000
    meter.connected = False
    clock.advance(1.0)
    meter.advance()
    assert meter.import_wh == morning_wh and meter.power_w == 0.0


def test_sim_answers_exceptions_like_the_meter() -> None:
    _, transport, meter, relay = sim_bus()
    assert meter.handle(Request(1, 4, 0x0100, 2)) == Response(1, 4, exception_code=2)
    assert meter.handle(Request(1, 4, 0x0000, 62)) == Response(1, 4, exception_code=3)
    assert meter.handle(Request(1, 1, 0, 1)) == Response(1, 1, exception_code=1)
    assert relay.handle(Request(10, 4, 0, 2)) == Response(10, 4, exception_code=1)
    assert relay.handle(Request(10, 1, 7, 2)) == Response(10, 1, exception_code=2)
    gap = meter.handle(Request(1, 4, 0x0002, 4))
    assert gap is not None and gap.values[:2] == (0, 0)  # no parameter there: zeros
    assert meter.handle(Request(2, 4, 0, 2)) is None


# --- real ptys ------------------------------------------------------------------

def write_config(tmp_path: Path) -> tuple[Path, Path]:
    """Meters M1 and M2 at addresses 1 and 2, switched by coils 0 and 1 of unit 10;
    returns (the board file, the bus's port)."""
    config = board(tmp_path, addresses=(1, 2), relays=True, relay_unit=10)
    return tmp_path / "board.toml", Path(config.buses[0].port)


def read_state(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def wait_for(predicate: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """``serve()`` in a thread on a temp config, frozen time; yields (port, state file)."""
    from agent.config import load_config
    from sim.meters import serve

    config_path, port = write_config(tmp_path)
    state = tmp_path / "meters.json"
    stop, ready = threading.Event(), threading.Event()
    thread = threading.Thread(
        target=serve,
        args=(load_config(config_path),),
        kwargs={
            "speed": 0.0,
            "seed": 3,
            "turnaround_ms": 2,
            "state_file": state,
            "stop_event": stop,
            "ready_event": ready,
        },
        daemon=True,
    )
    thread.start()
    try:
        assert ready.wait(5), "simulator did not start"
        yield port, state
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    assert not port.is_symlink()  # serve() removes its symlink


def test_pty_read_meter_and_switch_coil(served: tuple[Path, Path]) -> None:
    port, state = served
    assert port.is_symlink()
    transport = SerialTransport(str(port), 9600, "N")
    try:
        client = ModbusClient(transport)
        started = time.monotonic()
        reading = ModbusMeter(client, 1, "eastron-sdm120").read("M1", 0)
        elapsed = time.monotonic() - started
        # serial + two reads at 9600 baud: their line time is a floor
        assert elapsed >= frame_time_s(9 + 69 + 17, 9600)
        sim = read_state(state)["meters"]["M1"]
        assert reading.values["import_wh"] == sim["import_wh"]  # frozen time: equal
        assert sim["connected"] is True and reading.serial is not None
        relay = ModbusCoilRelay(client, 10, 0)
        relay.switch(False)
        assert relay.read() == "open"
        wait_for(lambda: read_state(state)["meters"]["M1"]["connected"] is False)
        assert read_state(state)["meters"]["M1"]["p_w"] == 0
        assert read_state(state)["meters"]["M2"]["connected"] is True
        assert ModbusMeter(client, 1, "eastron-sdm120").read("M1", 1).values["p_w"] == 0
        with pytest.raises(TimeoutError_):
            ModbusMeter(client, 7, "eastron-sdm120").read("absent", 0, timeout_s=0.1)
        relay.switch(True)
        wait_for(lambda: read_state(state)["meters"]["M1"]["connected"] is True)
    finally:
        transport.close()


def test_pymodbus_reads_our_simulator(served: tuple[Path, Path]) -> None:
    from pymodbus.client import ModbusSerialClient

    port, state = served
    client = ModbusSerialClient(port=str(port), baudrate=9600, timeout=1, retries=0)
    assert client.connect()
    try:
        rr = client.read_input_registers(0x48, count=2, device_id=2)
        assert not rr.isError()
        kwh = client.convert_from_registers(rr.registers, data_type=client.DATATYPE.FLOAT32)
        assert isinstance(kwh, float)
        assert round(kwh * 1000) == read_state(state)["meters"]["M2"]["import_wh"]
        coils = client.read_coils(0, count=2, device_id=10)
        assert coils.bits[:2] == [True, True]
        bad = client.read_input_registers(0x0100, count=2, device_id=2)
        assert bad.isError() and bad.exception_code == 2
    finally:
        client.close()  # type: ignore[no-untyped-call]
    # and our own stack agrees with pymodbus
    transport = SerialTransport(str(port), 9600)
    try:
        ours = ModbusMeter(ModbusClient(transport), 2, "eastron-sdm120").read("M2", 0)
    finally:
        transport.close()
    assert ours.values["import_wh"] == round(kwh * 1000)


def test_serial_transport_open_failure_is_a_driver_error(tmp_path: Path) -> None:
    with pytest.raises(DriverError, match="cannot open"):
        SerialTransport(str(tmp_path / "no-such-tty"), 9600)
    with pytest.raises(DriverError, match="parity"):
        SerialTransport("loop://", 9600, "X")


def _sim_process(config: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "sim.meters", "-c", str(config), *extra],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_sim_process_runs_until_sigterm_and_cleans_up(tmp_path: Path) -> None:
    config, port = write_config(tmp_path)
    state = tmp_path / "state.json"
    proc = _sim_process(config, "--speed", "3600", "--state-file", str(state))
    try:
        wait_for(state.exists, 10)
        first = read_state(state)
        assert first["pid"] == proc.pid and set(first["meters"]) == {"M1", "M2"}
        assert port.is_symlink()
        wait_for(
            lambda: (
                read_state(state)["meters"]["M1"]["import_wh"]
                > first["meters"]["M1"]["import_wh"]
            )
        )
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(10) == 0
        assert not port.exists() and not port.is_symlink()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_sim_refuses_to_replace_a_regular_file(tmp_path: Path) -> None:
    config, port = write_config(tmp_path)
    port.parent.mkdir(parents=True)
    port.write_text("not a tty")
    proc = _sim_process(config)
    try:
        assert proc.wait(10) == 2
        assert proc.stderr is not None and b"refusing" in proc.stderr.read()
        assert port.read_text() == "not a tty"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_serial_transport_reads_a_pty_on_its_descriptor() -> None:
    """A device path is read with select/read on its descriptor: what arrived, up to
    max_bytes; b"" at the timeout; the other end gone is a PortError naming the port."""
    from agent.errors import PortError

    master, slave = os.openpty()
    path = os.ttyname(slave)
    transport = SerialTransport(path, 115200)
    try:
        assert transport._fd is not None  # the descriptor path, not pyserial's read
        started = time.monotonic()
        assert transport.read(64, 0.05) == b""
        assert time.monotonic() - started >= 0.05
        os.write(master, b"\x01\x03\x02\x00\x2a")
        got = b""
        while len(got) < 5:
            got += transport.read(3, 0.5)
            assert len(got) <= 5
        assert got == b"\x01\x03\x02\x00\x2a"
        os.close(master)
        master = -1
        with pytest.raises(PortError, match=path):
            transport.read(64, 0.5)
    finally:
        transport.close()
        os.close(slave)
        if master >= 0:
            os.close(master)


def test_serial_transport_writes_and_flushes_a_pty_on_its_descriptor(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A device path is written with write/tcdrain and flushed with tcflush on its
    descriptor; a line that takes no byte for WRITE_STALL_S is a PortError; a closed
    transport never writes to a descriptor number another file may hold by then."""
    from agent.drivers import transport as transport_mod
    from agent.errors import PortError

    master, slave = os.openpty()
    path = os.ttyname(slave)
    transport = SerialTransport(path, 115200)
    try:
        os.write(master, b"stale")  # a late answer waiting in the input
        time.sleep(0.05)
        transport.reset_input()
        assert transport.read(64, 0.05) == b""  # flushed, not taken for an answer
        transport.write(b"\x01\x03\x00\x00\x00\x02\xc4\x0b")
        assert os.read(master, 64) == b"\x01\x03\x00\x00\x00\x02\xc4\x0b"
        # nobody reads the other end: the pty's buffer fills and the write stalls
        monkeypatch.setattr(transport_mod, "WRITE_STALL_S", 0.2)
        started = time.monotonic()
        with pytest.raises(PortError, match="stalled"):
            for _ in range(1000):
                transport.write(bytes(4096))
        assert time.monotonic() - started < 30
    finally:
        transport.close()
        os.close(master)
        os.close(slave)
    assert transport._fd is None
    with pytest.raises(PortError, match=path):
        transport.write(b"\x01")
