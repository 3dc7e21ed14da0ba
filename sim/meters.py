"""Simulated meters on ptys, every protocol (CONTRACT 10).

    python -m sim.meters -c FILE [--speed X] [--load-scale X] [--turnaround-ms N]
                         [--seed N] [--state-file PATH] [--control PATH]
                         [--corrupt-rate P] [--silent-rate P] [--slow-rate P]
                         [--slow-ms N] [--noise-rate P] [--extra-meter [BUS:]ADDRESS]

For every ``[[bus]]``: a pty whose slave the bus's ``port`` path becomes a
symlink to, one thread serving it, and the protocol's plug-in
(``PROTOCOL_MODULES``: ``build_bus(bus, meters, env) -> BusBuild``, see
``sim/line.py``) for its devices. This module owns the line timing: a
request occupies the wire for its own line time at the speed the device
listens at, the reply starts ``--turnaround-ms`` after it, and each reply
byte is written when it would have left a real UART at the reply's baud
rate (11 bits a character), so a pty behaves like a wire of that speed.
Line faults and the control socket are ``sim.faults``. ``--extra-meter``
serves a meter that is not in the config (discovery tests), id
``extra-<bus>-<address>``, on the first bus unless a bus is named.
``--state-file`` is rewritten atomically every STATE_EVERY_S as
``{"meters": {id: {import_wh, export_wh, p_w, connected}}, "pid": N}``.
Runs until SIGTERM/SIGINT, then removes its symlinks and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import json
import logging
import os
import select
import signal
import sys
import threading
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo

from agent.clock import Clock, SystemClock
from agent.drivers.transport import character_time_s
from sim.faults import ControlServer, FaultInjector, FaultRates, apply_control
from sim.line import BuildBus, BusBuild, SimEnv, SimMeter

if TYPE_CHECKING:
    from agent.config import BusConfig, Config, MeterConfig

log = logging.getLogger("sim.meters")

STATE_EVERY_S: Final = 0.2
# No byte for this long ends a request (a real slave waits t3.5; a pty
# delivers a request at once, so this only matters for a half-written one).
SILENCE_S: Final = 0.05
PACE_S: Final = 0.005  # reply bytes are written in slices of about this much line time
PACE_MAX_CHUNK: Final = 16
STATE_KEYS: Final = ("import_wh", "export_wh", "p_w", "connected")
PROTOCOL_MODULES: Final = {
    "modbus": "sim.modbus_line",
    "iec62056-21": "sim.iec_line",
    "dlms": "sim.dlms_line",  # delivered with the DLMS driver
}
DEFAULT_MODELS: Final = {"modbus": "eastron-sdm120", "iec62056-21": "iec62056-21",
                         "dlms": "dlms-is15959"}


def builder(protocol: str) -> BuildBus:
    """The protocol's ``build_bus``; ValueError (a clear one) if it is not there."""
    name = PROTOCOL_MODULES.get(protocol)
    if name is None:
        raise ValueError(f"no simulator for protocol {protocol!r}; "
                         f"known: {', '.join(PROTOCOL_MODULES)}")
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        raise ValueError(f"protocol {protocol!r}: the simulator module {name} is not "
                         f"installed yet ({name.replace('.', '/')}.py comes with that "
                         "protocol's driver)") from exc
    build: BuildBus = module.build_bus
    return build


@dataclass
class BusSim:
    cfg: BusConfig
    port: Path
    build: BusBuild
    lock: threading.Lock = field(default_factory=threading.Lock)
    master_fd: int = -1
    slave_fd: int = -1
    slave_name: str = ""


def extra_meters(config: Config, specs: list[str]) -> list[MeterConfig]:
    """``[BUS:]ADDRESS`` -> meters that are served but not configured."""
    from agent.config import MeterConfig

    out = []
    for spec in specs:
        bus_name, _, address = spec.rpartition(":")
        bus = next((b for b in config.buses if b.name == bus_name), None) if bus_name \
            else (config.buses[0] if config.buses else None)
        if bus is None or not address.isdigit() or not 1 <= int(address) <= 247:
            raise ValueError(f"--extra-meter {spec!r}: expected [BUS:]ADDRESS (1..247)")
        out.append(MeterConfig(id=f"extra-{bus.name}-{address}", bus=bus.name,
                               address=int(address), model=DEFAULT_MODELS[bus.protocol],
                               account=""))
    return out


def build(config: Config, env: SimEnv, extra: list[MeterConfig] | None = None) -> list[BusSim]:
    """The simulated devices of every bus, through each protocol's plug-in."""
    from agent.config import relay_bus
    from sim.modbus_line import ModbusLineServer, attach_relays

    meters = list(config.meters) + list(extra or [])
    buses = []
    for bus_cfg in config.buses:
        on_bus = [m for m in meters if m.bus == bus_cfg.name]
        buses.append(BusSim(bus_cfg, Path(bus_cfg.port),
                            builder(bus_cfg.protocol)(bus_cfg, on_bus, env)))
    served = {meter_id: sim for bus in buses for meter_id, sim in bus.build.meters.items()}
    for bus in buses:  # relay modules that gate another bus's meters
        gated = [(m, served[m.id]) for m in meters
                 if m.bus != bus.cfg.name and relay_bus(m) == bus.cfg.name]
        if gated:
            assert isinstance(bus.build.server, ModbusLineServer)  # config: a modbus bus
            attach_relays(bus.cfg, bus.build.server, gated)
    return buses


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
    log.info("bus %s (%s): %s -> %s", bus.cfg.name, bus.cfg.protocol, bus.port, bus.slave_name)


def _close_pty(bus: BusSim) -> None:
    try:
        if bus.port.is_symlink() and os.readlink(bus.port) == bus.slave_name:
            bus.port.unlink()
    except OSError as exc:
        log.warning("bus %s: cannot remove %s: %s", bus.cfg.name, bus.port, exc)
    for fd in (bus.master_fd, bus.slave_fd):
        if fd >= 0:
            os.close(fd)
    bus.master_fd = bus.slave_fd = -1


def _write_paced(bus: BusSim, frame: bytes, baudrate: int, start_s: float,
                 stop: threading.Event) -> None:
    """Write ``frame`` from ``start_s`` on, each slice when its last bit would have left."""
    char_s = character_time_s(baudrate)
    chunk = max(1, min(PACE_MAX_CHUNK, int(PACE_S / char_s)))
    for offset in range(0, len(frame), chunk):
        piece = frame[offset : offset + chunk]
        wait_s = start_s + (offset + len(piece)) * char_s - time.monotonic()
        if wait_s > 0 and stop.wait(wait_s):
            return
        try:
            os.write(bus.master_fd, piece)
        except BlockingIOError:
            # Nobody reads the slave and its buffer is full: drop, like a
            # line with no listener.
            log.warning("bus %s: reply dropped, pty buffer full", bus.cfg.name)
            return


def serve_bus(bus: BusSim, *, turnaround_s: float, stop: threading.Event,
              injector: FaultInjector) -> None:
    """Answer requests on one pty until ``stop`` is set (one thread per bus)."""
    server = bus.build.server
    request_end_s: float | None = None  # when the request being received ends on the wire
    while not stop.is_set():
        ready, _, _ = select.select([bus.master_fd], [], [], SILENCE_S)
        if not ready:
            with bus.lock:
                server.silence()
            request_end_s = None
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
            # The agent's UART would take the bytes' line time: they end that late.
            rx_baud = getattr(server, "rx_baudrate", bus.cfg.baudrate)
            now_s = time.monotonic()
            request_end_s = max(request_end_s or now_s, now_s) + \
                len(data) * character_time_s(rx_baud)
            with bus.lock:
                server.receive_data(data)
        while True:
            with bus.lock:
                reply = server.next_reply()
            if reply is None:
                break
            frame, baudrate = reply
            plan = injector.plan(frame)
            start_s = max(time.monotonic(), request_end_s or 0.0) + turnaround_s + plan.delay_s
            request_end_s = None
            if plan.frame is None:
                continue
            _write_paced(bus, plan.noise + plan.frame, baudrate,
                         start_s - len(plan.noise) * character_time_s(baudrate), stop)


def write_state(path: Path, buses: list[BusSim]) -> None:
    snapshot: dict[str, Any] = {}
    for bus in buses:
        with bus.lock:
            for meter_id, meter in bus.build.meters.items():
                meter.advance()
                full = meter.snapshot()
                snapshot[meter_id] = {k: full[k] for k in STATE_KEYS}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"meters": snapshot, "pid": os.getpid()}, sort_keys=True))
    os.replace(tmp, path)  # readers see the old file or the new one, never half


def _utc_offset_s(config: Config) -> int:
    offset = datetime.now(ZoneInfo(config.gateway.timezone)).utcoffset()
    return int(offset.total_seconds()) if offset is not None else 0


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
    faults: FaultRates | None = None,
    control: str | Path | None = None,
    extra: list[str] | None = None,
    built: list[BusSim] | None = None,
) -> None:
    """Serve every bus of ``config`` until ``stop_event`` is set; then clean up.

    ``ready_event`` is set once every symlink exists (and the first state file
    is written, when there is one). ``built`` (tests) receives the buses, so a
    test can look at the simulated meters' true registers.
    """
    env = SimEnv(clock=clock or SystemClock(), speed=speed, load_scale=load_scale, seed=seed,
                 utc_offset_s=_utc_offset_s(config))
    buses = build(config, env, extra_meters(config, extra or []))
    if built is not None:
        built.extend(buses)
    injector = FaultInjector(faults or FaultRates(), seed)
    meters: dict[str, SimMeter] = {}
    locks: dict[str, threading.Lock] = {}
    for bus in buses:
        for meter_id, meter in bus.build.meters.items():
            meters[meter_id], locks[meter_id] = meter, bus.lock
    threads: list[threading.Thread] = []
    state_path = Path(state_file) if state_file is not None else None
    try:
        for bus in buses:
            _open_pty(bus)
        if control is not None:
            threads.append(ControlServer(
                control, lambda m: apply_control(m, meters, lambda i: locks[i], injector),
                stop_event))
        for bus in buses:
            threads.append(threading.Thread(
                target=serve_bus, args=(bus,),
                kwargs={"turnaround_s": turnaround_ms / 1000, "stop": stop_event,
                        "injector": injector},
                name=f"sim-bus-{bus.cfg.name}", daemon=True))
        for thread in threads:
            thread.start()
        if state_path is not None:
            write_state(state_path, buses)
        if ready_event is not None:
            ready_event.set()
        while not stop_event.wait(STATE_EVERY_S):
            if state_path is not None:
                write_state(state_path, buses)
    finally:
        stop_event.set()
        for thread in threads:
            thread.join(timeout=5)
        for bus in buses:
            _close_pty(bus)


@contextlib.contextmanager
def serving(config: Config, **kwargs: Any) -> Iterator[list[BusSim]]:
    """``serve`` in a thread for tests and benchmarks; yields the buses once ready."""
    stop, ready = threading.Event(), threading.Event()
    built: list[BusSim] = []
    thread = threading.Thread(target=serve, args=(config,), daemon=True,
                              kwargs={**kwargs, "stop_event": stop, "ready_event": ready,
                                      "built": built})
    thread.start()
    try:
        if not ready.wait(10):
            raise RuntimeError("the simulator did not start")
        yield built
    finally:
        stop.set()
        thread.join(10)


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
    parser.add_argument("--control", default=None, help="unix socket for sim.faults")
    parser.add_argument("--corrupt-rate", type=float, default=0.0)
    parser.add_argument("--silent-rate", type=float, default=0.0)
    parser.add_argument("--slow-rate", type=float, default=0.0)
    parser.add_argument("--slow-ms", type=float, default=200.0)
    parser.add_argument("--noise-rate", type=float, default=0.0)
    parser.add_argument("--extra-meter", action="append", default=[],
                        help="[BUS:]ADDRESS: serve a meter the config does not list")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(message)s")
    from agent.config import load_config
    from agent.errors import ConfigError

    try:
        config = load_config(args.config)
        faults = FaultRates(args.corrupt_rate, args.silent_rate, args.slow_rate, args.slow_ms,
                            args.noise_rate)
    except (ConfigError, ValueError) as exc:
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
        serve(config, speed=args.speed, load_scale=args.load_scale,
              turnaround_ms=args.turnaround_ms, seed=args.seed, state_file=args.state_file,
              stop_event=stop, faults=faults, control=args.control, extra=args.extra_meter)
    except (FileExistsError, ValueError) as exc:
        print(f"sim.meters: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
