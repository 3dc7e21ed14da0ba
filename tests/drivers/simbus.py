"""The driver tests' rigs: board configs for the simulator on real ptys, and an
in-process bus of simulated Modbus devices."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from agent.clock import SimClock
from agent.config import Config, load_config
from agent.drivers.modbus.codec import Request, RequestReader
from sim.modbus_device import SimDevice

HEAD = """
[gateway]
id = "gw-test"
data_dir = "{tmp}/data"
timezone = "Asia/Kolkata"

[mqtt]
host = "127.0.0.1"
port = 1883

[security]
command_key_file = "{tmp}/keys/cmd.key"
token_key_file = "{tmp}/keys/token.key"

[[bus]]
name = "bus-0"
port = "{tmp}/tty/bus-0"
baudrate = {baudrate}
parity = "{parity}"
protocol = "{protocol}"
poll_interval_s = {poll_interval_s}
timeout_s = {timeout_s}

[tariff.domestic]
fixed_per_day = 300
slabs = [ {{ rate = 650 }} ]
duty_bp = 500
billing_day = 1
"""

METER = """
[[meter]]
id = "{id}"
bus = "bus-0"
address = {address}
model = "{model}"
account = "ACC-{id}"
relay = "{relay}"

[[account]]
id = "ACC-{id}"
tariff = "domestic"
"""


def board(
    tmp_path: Path,
    *,
    protocol: str = "modbus",
    baudrate: int = 9600,
    addresses: Sequence[int] = (1, 2),
    poll_interval_s: float = 15,
    timeout_s: float = 0.5,
    relays: bool = False,
    relay_unit: int = 100,
    relay: str = "none",
) -> Config:
    """One bus of ``protocol`` with a meter ``M<address>`` at each address, written to
    ``tmp_path / "board.toml"``. ``relays``: the i-th meter switches through coil i of a
    Modbus coil module at ``relay_unit``; otherwise every meter has ``relay``."""
    from agent.drivers.models import models_for

    model = models_for(protocol)[0]  # the config checks a model against its bus protocol
    text = HEAD.format(tmp=tmp_path, baudrate=baudrate, protocol=protocol,
                       parity="E" if protocol == "iec62056-21" else "N",
                       poll_interval_s=poll_interval_s, timeout_s=timeout_s)
    for i, address in enumerate(addresses):
        spec = f"modbus-coil:{relay_unit}:{i}" if relays else relay
        text += METER.format(id=f"M{address}", address=address, model=model, relay=spec)
    path = tmp_path / "board.toml"
    path.write_text(text)
    config = load_config(path)
    return config


class SimBusTransport:
    """An in-process bus: a request goes straight to the simulated devices; a read with
    nothing to deliver advances the SimClock by its timeout (a silent line)."""

    def __init__(self, clock: SimClock, devices: dict[int, SimDevice]) -> None:
        self.clock = clock
        self.devices = devices
        self.baudrate = 9600
        self.out = b""
        self.requests: list[Request] = []

    def write(self, data: bytes) -> None:
        reader = RequestReader()
        reader.receive_data(data)
        request = reader.next_event()
        assert isinstance(request, Request)
        self.requests.append(request)
        device = self.devices.get(request.unit)
        response = device.handle(request) if device is not None else None
        self.out = response.to_bytes() if response is not None else b""
        self.clock.advance(0.01)  # request, turnaround and answer on the wire

    def read(self, max_bytes: int, timeout_s: float) -> bytes:
        data, self.out = self.out[:max_bytes], self.out[max_bytes:]
        if not data:
            self.clock.advance(timeout_s)
        return data

    def reset_input(self) -> None:
        self.out = b""

    def close(self) -> None:
        pass
