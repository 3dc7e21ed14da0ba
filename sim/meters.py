"""Simulated Modbus meters on ptys (CONTRACT 10).

    python -m sim.meters -c FILE [--speed X] [--load-scale X] [--turnaround-ms N]
                         [--seed N] [--state-file PATH]

For every ``[[bus]]`` with protocol "modbus": a pty whose slave the bus's
``port`` path becomes a symlink to, one thread serving it. Every
``[[meter]]`` of the bus is a simulated Eastron meter at its ``address``;
a meter whose relay is ``modbus-coil:<unit>:<coil>`` is gated by a simulated
coil module at that unit (coils start ON). Replies come after the turnaround
and take the line time of the bus's baud rate (11 bits a character); a
request to an absent unit gets no reply, as on a real bus. ``--state-file``
is rewritten atomically every STATE_EVERY_S (tests read relay state from
it). Runs until SIGTERM/SIGINT, then removes its symlinks and exits 0.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import logging
import os
import select
import signal
import sys
import threading
import time
import tty
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo

from agent.clock import Clock, SystemClock
from agent.drivers.modbus.codec import ModbusProtocolError, Request, RequestReader
from agent.drivers.transport import character_time_s
from sim.modbus_device import SimCoilModule, SimDevice, SimEastronMeter, SimSDM120, SimSDM630

if TYPE_CHECKING:
    from agent.config import Config

log = logging.getLogger("sim.meters")

STATE_EVERY_S: Final = 0.2
# No byte for this long ends a request (a real slave waits t3.5; a pty
# delivers a request at once, so this only matters for a half-written one).
SILENCE_S: Final = 0.05
PACE_CHUNK: Final = 16  # reply bytes written at a time, each at its line time
MODELS: Final = {"eastron-sdm120": SimSDM120, "eastron-sdm630": SimSDM630}
COILS_PER_MODULE: Final = 8


@dataclass
class BusSim:
    name: str
    port: Path
    baudrate: int
    devices: dict[int, SimDevice]
    lock: threading.Lock = field(default_factory=threading.Lock)
    master_fd: int = -1
    slave_fd: int = -1
    slave_name: str = ""


def _serial_number(seed: int, meter_id: str) -> int:
    digest = hashlib.sha256(f"{seed}:{meter_id}".encode()).digest()
    return 10_000_000 + int.from_bytes(digest[:4], "big") % 90_000_000


def build(
    config: Config, *, clock: Clock, speed: float, load_scale: float, seed: int
) -> tuple[list[BusSim], dict[str, tuple[BusSim, SimEastronMeter]]]:
    """The simulated devices of every Modbus bus, and each meter by id."""
    offset = datetime.now(ZoneInfo(config.gateway.timezone)).utcoffset()
    utc_offset_s = int(offset.total_seconds()) if offset is not None else 0
    buses: list[BusSim] = []
    meters: dict[str, tuple[BusSim, SimEastronMeter]] = {}
    for bus_cfg in config.buses:
        if bus_cfg.protocol != "modbus":
            continue
        bus = BusSim(bus_cfg.name, Path(bus_cfg.port), bus_cfg.baudrate, {})
        modules: dict[int, SimCoilModule] = {}
        for index, m in enumerate(config.meters):
            if m.bus != bus_cfg.name:
                continue
            cls = MODELS.get(m.model, SimSDM120)
            meter = cls(
                m.address,
                clock=clock,
                serial=_serial_number(seed, m.id),
                seed=seed * 1000 + index,
                speed=speed,
                load_scale=load_scale,
                utc_offset_s=utc_offset_s,
            )
            if m.address in bus.devices:
                raise ValueError(f"bus {bus.name}: two devices at unit {m.address}")
            bus.devices[m.address] = meter
            meters[m.id] = (bus, meter)
        for m in config.meters:
            spec = m.relay_spec
            if m.bus != bus_cfg.name or spec.kind != "modbus-coil":
                continue
            assert spec.unit is not None and spec.coil is not None
            if spec.unit not in modules:
                if spec.unit in bus.devices:
                    raise ValueError(f"bus {bus.name}: unit {spec.unit} is a meter and a relay")
                modules[spec.unit] = SimCoilModule(spec.unit, COILS_PER_MODULE)
                bus.devices[spec.unit] = modules[spec.unit]
            modules[spec.unit].attach(spec.coil, meters[m.id][1])
        buses.append(bus)
    return buses, meters


def _open_pty(bus: BusSim) -> None:
    master_fd, slave_fd = os.openpty()
    tty.setraw(slave_fd)  # no echo, no line editing: bytes pass as they are
    os.set_blocking(master_fd, False)
    bus.master_fd, bus.slave_fd = master_fd, slave_fd
    bus.slave_name = os.ttyname(slave_fd)
    # The slave fd stays open here: with no open slave, reads on the master
    # fail (EIO) between two clients.
    bus.port.parent.mkdir(parents=True, exist_ok=True)
    if bus.port.is_symlink():
        bus.port.unlink()
    elif bus.port.exists():
        raise FileExistsError(f"{bus.port} exists and is not a symlink; refusing to replace it")
    bus.port.symlink_to(bus.slave_name)
    log.info("bus %s: %s -> %s", bus.name, bus.port, bus.slave_name)


def _close_pty(bus: BusSim) -> None:
    try:
        if bus.port.is_symlink() and os.readlink(bus.port) == bus.slave_name:
            bus.port.unlink()
    except OSError as exc:
        log.warning("bus %s: cannot remove %s: %s", bus.name, bus.port, exc)
    for fd in (bus.master_fd, bus.slave_fd):
        if fd >= 0:
            os.close(fd)
    bus.master_fd = bus.slave_fd = -1


def _write_paced(bus: BusSim, frame: bytes, stop: threading.Event) -> None:
    """Write ``frame`` so that it takes its line time at the bus's baud rate."""
    char_s = character_time_s(bus.baudrate)
    start = time.monotonic()
    for offset in range(0, len(frame), PACE_CHUNK):
        chunk = frame[offset : offset + PACE_CHUNK]
        try:
            os.write(bus.master_fd, chunk)
        except BlockingIOError:
            # Nobody reads the slave and its buffer is full: drop, like a
            # line with no listener.
            log.warning("bus %s: reply dropped, pty buffer full", bus.name)
            return
        wait_s = start + (offset + len(chunk)) * char_s - time.monotonic()
        if wait_s > 0:
            stop.wait(wait_s)


def _answer(bus: BusSim, request: Request) -> bytes | None:
    with bus.lock:
        if request.unit == 0:  # broadcast: every device acts, none answers
            for each in bus.devices.values():
                each.handle(request)
            return None
        device = bus.devices.get(request.unit)
        response = device.handle(request) if device is not None else None
    return response.to_bytes() if response is not None else None


def serve_bus(bus: BusSim, *, turnaround_s: float, stop: threading.Event) -> None:
    """Answer requests on one pty until ``stop`` is set (one thread per bus)."""
    reader = RequestReader()
    while not stop.is_set():
        ready, _, _ = select.select([bus.master_fd], [], [], SILENCE_S)
        if not ready:
            reader.receive_data(b"")  # silence: no request spans it
        else:
            try:
                data = os.read(bus.master_fd, 4096)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno != errno.EIO:
                    raise
                stop.wait(SILENCE_S)  # EIO: no slave open right now
                continue
            reader.receive_data(data)
        while True:
            try:
                event = reader.next_event()
            except ModbusProtocolError as exc:
                log.info("bus %s: bad request ignored: %s", bus.name, exc)
                continue
            if not isinstance(event, Request):
                break
            frame = _answer(bus, event)
            log.debug("bus %s: %s -> %s", bus.name, event, frame.hex() if frame else None)
            if frame is not None:
                stop.wait(turnaround_s)
                _write_paced(bus, frame, stop)


def write_state(path: Path, meters: dict[str, tuple[BusSim, SimEastronMeter]]) -> None:
    snapshot: dict[str, Any] = {}
    for meter_id, (bus, meter) in meters.items():
        with bus.lock:
            meter.advance()
            snapshot[meter_id] = meter.snapshot()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"meters": snapshot, "pid": os.getpid()}, sort_keys=True))
    os.replace(tmp, path)  # readers see the old file or the new one, never half


def serve(
    config: Config,
    *,
    speed: float = 1.0,
    load_scale: float = 1.0,
    turnaround_ms: float = 5.0,
    seed: int = 0,
    state_file: str | Path | None = None,
    stop_event: threading.Event,
    ready_event: threading.Event | None = None,
    clock: Clock | None = None,
) -> None:
    """Serve every Modbus bus of ``config`` until ``stop_event`` is set; then clean up.

    ``ready_event`` is set once every symlink exists (and the first state file
    is written, when there is one).
    """
    buses, meters = build(
        config, clock=clock or SystemClock(), speed=speed, load_scale=load_scale, seed=seed
    )
    threads: list[threading.Thread] = []
    state_path = Path(state_file) if state_file is not None else None
    try:
        for bus in buses:
            _open_pty(bus)
        for bus in buses:
            thread = threading.Thread(
                target=serve_bus,
                args=(bus,),
                kwargs={"turnaround_s": turnaround_ms / 1000, "stop": stop_event},
                name=f"sim-bus-{bus.name}",
                daemon=True,
            )
            thread.start()
            threads.append(thread)
        if state_path is not None:
            write_state(state_path, meters)
        if ready_event is not None:
            ready_event.set()
        while not stop_event.wait(STATE_EVERY_S):
            if state_path is not None:
                write_state(state_path, meters)
    finally:
        stop_event.set()
        for thread in threads:
            thread.join(timeout=5)
        for bus in buses:
            _close_pty(bus)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sim.meters", description=__doc__.split("\n")[0]
    )
    parser.add_argument("-c", "--config", default="board_configs/sim.toml")
    parser.add_argument(
        "--speed", type=float, default=1.0, help="simulated s per real s (0: frozen)"
    )
    parser.add_argument("--load-scale", type=float, default=1.0)
    parser.add_argument("--turnaround-ms", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--state-file", default=None)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(message)s")
    from agent.config import load_config
    from agent.errors import ConfigError

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"sim.meters: {exc}", file=sys.stderr)
        return 2
    if args.speed < 0 or args.load_scale < 0 or args.turnaround_ms < 0:
        print("sim.meters: --speed, --load-scale and --turnaround-ms must be >= 0", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        serve(
            config,
            speed=args.speed,
            load_scale=args.load_scale,
            turnaround_ms=args.turnaround_ms,
            seed=args.seed,
            state_file=args.state_file,
            stop_event=stop,
        )
    except (FileExistsError, ValueError) as exc:
        print(f"sim.meters: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
