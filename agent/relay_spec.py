"""A meter's ``relay`` text (CONTRACT 2; docs/config.md): the one parser, for the board
config (``agent.config``) and the ``meter_add`` command (``agent.uplink.commands``).

    meter | none | modbus-coil:[<bus>:]<unit 1..247>:<coil 0..65535> | gpio:<line 0..1023>

``<bus>`` names the Modbus bus of the coil module when it is not the meter's own (an
IEC 62056-21 meter switched by a relay module on a Modbus bus). Numbers are ASCII
digits, at most five ("²".isdigit() is True; int() also takes signs, blanks and "_").
Whether the buses named exist and speak Modbus is the config's question.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.config_reader import ID_RE

MAX_DIGITS = 5  # 65535, the largest number of a spelling


@dataclass(frozen=True, slots=True)
class RelaySpec:
    kind: str  # meter | modbus-coil | gpio | none
    unit: int | None = None
    coil: int | None = None
    line: int | None = None
    bus: str | None = None  # modbus-coil: the module's bus, when not the meter's own


def _number(text: str, lo: int, hi: int) -> int | None:
    if not (text.isascii() and text.isdigit() and len(text) <= MAX_DIGITS):
        return None
    value = int(text)
    return value if lo <= value <= hi else None


def parse_relay(text: str) -> RelaySpec:
    """The spec ``text`` spells; ValueError (with the config's message) if none."""
    parts = text.split(":")
    kind = parts[0]
    if kind in ("meter", "none") and len(parts) == 1:
        return RelaySpec(kind)
    if kind == "modbus-coil" and len(parts) in (3, 4):
        bus = parts[1] if len(parts) == 4 else None
        unit, coil = _number(parts[-2], 1, 247), _number(parts[-1], 0, 65535)
        if unit is not None and coil is not None and (bus is None or ID_RE.match(bus)):
            return RelaySpec(kind, unit=unit, coil=coil, bus=bus)
    if kind == "gpio" and len(parts) == 2:
        line = _number(parts[1], 0, 1023)
        if line is not None:
            return RelaySpec(kind, line=line)
    raise ValueError(
        "must be meter | modbus-coil:[<bus>:]<unit 1..247>:<coil 0..65535> | gpio:<line> "
        "| none"
    )
