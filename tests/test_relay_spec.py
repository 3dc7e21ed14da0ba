"""agent/relay_spec.py: the one parser of a meter's relay text, for the board config and
the meter_add command."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.relay_spec import RelaySpec, parse_relay
from agent.uplink.commands import check_args

CONFIG_MESSAGE = ("must be meter | modbus-coil:[<bus>:]<unit 1..247>:<coil 0..65535> | "
                  "gpio:<line> | none")
COMMAND_MESSAGE = ("args.relay must be meter | modbus-coil:<unit 1..247>:<coil 0..65535> | "
                   "gpio:<line 0..1023> | none")
METER = {"id": "SDM-0009", "bus": "rs485-0", "address": 9, "model": "eastron-sdm120",
         "account": "ACC-0001"}


@pytest.mark.parametrize(("text", "spec"), [
    ("meter", RelaySpec("meter")),
    ("none", RelaySpec("none")),
    ("modbus-coil:1:0", RelaySpec("modbus-coil", unit=1, coil=0)),
    ("modbus-coil:247:65535", RelaySpec("modbus-coil", unit=247, coil=65535)),
    ("modbus-coil:rs485-0:10:2", RelaySpec("modbus-coil", unit=10, coil=2, bus="rs485-0")),
    ("gpio:0", RelaySpec("gpio", line=0)),
    ("gpio:1023", RelaySpec("gpio", line=1023)),
    ("gpio:00017", RelaySpec("gpio", line=17)),
])
def test_every_spelling(text: str, spec: RelaySpec) -> None:
    assert parse_relay(text) == spec


@pytest.mark.parametrize("text", [
    "", "coil:1", "meter:1", "none:", "modbus-coil:0:1", "modbus-coil:248:1",
    "modbus-coil:1:65536", "modbus-coil:1", "modbus-coil:a b:1:2", "modbus-coil::1:2",
    "modbus-coil:b:1:2:3", "gpio:1024", "gpio:", "gpio:-1", "gpio:+1", "gpio: 1",
    "gpio:1_0", "gpio:\u00b2", "gpio:\u0663", "gpio:000017", "gpio:1:2", "GPIO:1",
])
def test_what_is_no_spelling(text: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_relay(text)
    assert str(exc.value) == CONFIG_MESSAGE
    assert check_args("meter_add", {**METER, "relay": text}) == [COMMAND_MESSAGE]


def test_the_command_takes_contract_2s_spellings_only() -> None:
    """A coil module on another bus (``modbus-coil:<bus>:...``) is the config's alone."""
    assert parse_relay("modbus-coil:rs485-0:10:2").bus == "rs485-0"
    assert check_args("meter_add", {**METER, "relay": "modbus-coil:rs485-0:10:2"}) == \
        [COMMAND_MESSAGE]
    assert check_args("meter_add", {**METER, "relay": 7}) == [COMMAND_MESSAGE]


@given(st.text(alphabet="meternodbus-cilgp:0123456789\u00b2 +_", max_size=24))
def test_the_command_agrees_with_the_config(text: str) -> None:
    try:
        spec: RelaySpec | None = parse_relay(text)
    except ValueError:
        spec = None
    command_ok = not check_args("meter_add", {**METER, "relay": text})
    assert command_ok == (spec is not None and spec.bus is None)
