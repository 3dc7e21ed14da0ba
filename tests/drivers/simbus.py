"""Board configs for the driver tests that run the simulator on real ptys."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from agent.config import Config, load_config

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
    relay: str = "none",
) -> Config:
    """One bus of ``protocol`` with a meter ``M<address>`` at each address."""
    from agent.drivers.driver import known_models

    model = known_models(protocol)[0]  # the config checks a model against its bus protocol
    text = HEAD.format(tmp=tmp_path, baudrate=baudrate, protocol=protocol,
                       parity="E" if protocol == "iec62056-21" else "N",
                       poll_interval_s=poll_interval_s, timeout_s=timeout_s)
    for i, address in enumerate(addresses):
        spec = f"modbus-coil:100:{i}" if relays else relay
        text += METER.format(id=f"M{address}", address=address, model=model, relay=spec)
    path = tmp_path / "board.toml"
    path.write_text(text)
    config = load_config(path)
    return config
