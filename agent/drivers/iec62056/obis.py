"""Data sets of an IEC 62056-21 readout -> contract units (CONTRACT 1), pure.

OBIS codes (IEC 62056-61) in a readout may be written short (``1.8.0``),
with medium and channel (``1-0:1.8.0``), with the billing-period group F
(``1.8.0*255`` current, ``1.8.0*01`` a past period) or with letters for
a value group (``C`` = 96, ``F`` = 97, ``L`` = 98, ``P`` = 99: ``F.F`` = 97.97).
``normalize`` reduces an address to ``C.D.E`` for the current value, or None
for a past billing period.

Values are parsed with ``Decimal`` and scaled by the unit the meter sent;
a quantity whose unit is missing takes the usual one (kWh, kW, V, A, Hz).
A unit we do not know raises ``IecProtocolError``: billing a register read in
the wrong unit would be worse than missing one reading.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Final

from agent.drivers.iec62056.codec import DataSet, IecProtocolError

# OBIS C.D.E -> (contract quantity, default unit, {unit: factor to contract units}).
_ENERGY: Final = {"kWh": Decimal(1000), "Wh": Decimal(1), "MWh": Decimal(1_000_000)}
_POWER: Final = {"kW": Decimal(1000), "W": Decimal(1), "MW": Decimal(1_000_000)}
QUANTITIES: Final[dict[str, tuple[str, str, dict[str, Decimal]]]] = {
    "1.8.0": ("import_wh", "kWh", _ENERGY),  # active energy import (+A), total
    "2.8.0": ("export_wh", "kWh", _ENERGY),  # active energy export (-A), total
    "1.7.0": ("p_w", "kW", _POWER),  # instantaneous active power import (+P)
    "32.7.0": ("v_dv", "V", {"V": Decimal(10), "kV": Decimal(10_000)}),  # voltage L1
    "31.7.0": ("i_ma", "A", {"A": Decimal(1000), "mA": Decimal(1)}),  # current L1
    "14.7.0": ("f_chz", "Hz", {"Hz": Decimal(100)}),  # supply frequency
    "13.7.0": ("pf_milli", "", {"": Decimal(1000)}),  # power factor, signed
}
# Sum active power (+P minus -P): used for p_w when 1.7.0 is absent.
NET_POWER: Final = "16.7.0"
# Where the meter's serial number may be, in order of preference: the
# device ID 1 (C.1.0 = 96.1.0) and the meter's own "0.0.0" address.
SERIAL_CODES: Final = ("96.1.0", "0.0.0")

_LETTERS: Final = {"C": "96", "F": "97", "L": "98", "P": "99"}


def normalize(address: str) -> str | None:
    """``C.D.E`` of a current value; None for a past billing period (``*F`` not 255)."""
    code = address.strip()
    if ":" in code:
        code = code.split(":", 1)[1]  # drop medium and channel "A-B:"
    code, star, period = code.partition("*")
    if star and period not in ("255", ""):
        return None
    if "&" in code:
        return None  # '&' also marks a past billing period
    parts = [_LETTERS.get(part, part) for part in code.split(".")]
    if len(parts) == 2:
        parts.append("0")  # "F.F" and other two-group short forms
    return ".".join(parts)


def _scaled(ds: DataSet, quantity: str, default_unit: str, units: dict[str, Decimal]) -> int:
    unit = ds.unit.strip() or default_unit
    factor = units.get(unit)
    if factor is None:
        raise IecProtocolError(f"{ds.address}: unit {ds.unit!r} is not one of {sorted(units)}")
    try:
        value = Decimal(ds.value.strip())
    except InvalidOperation as exc:
        raise IecProtocolError(f"{ds.address}: value {ds.value!r} is not a number") from exc
    if not value.is_finite():
        raise IecProtocolError(f"{ds.address}: value {ds.value!r} is not finite")
    return round(value * factor)  # half-even, once, on the exact decimal


def to_values(datasets: tuple[DataSet, ...]) -> dict[str, int]:
    """Every quantity the readout carries, in contract units (first occurrence wins)."""
    values: dict[str, int] = {}
    net_power: int | None = None
    for ds in datasets:
        code = normalize(ds.address)
        if code is None:
            continue
        if code == NET_POWER and net_power is None:
            net_power = _scaled(ds, "p_w", "kW", _POWER)
        spec = QUANTITIES.get(code)
        if spec is None or spec[0] in values:
            continue
        quantity, default_unit, units = spec
        values[quantity] = _scaled(ds, quantity, default_unit, units)
    if "p_w" not in values and net_power is not None:
        values["p_w"] = net_power
    return values


def serial_of(datasets: tuple[DataSet, ...]) -> str | None:
    """The meter's serial number from the readout, or None if it sends none."""
    found: dict[str, str] = {}
    for ds in datasets:
        code = normalize(ds.address)
        if code in SERIAL_CODES and code not in found and ds.value.strip():
            found[code] = ds.value.strip()
    for code in SERIAL_CODES:
        if code in found:
            return found[code]
    return None
