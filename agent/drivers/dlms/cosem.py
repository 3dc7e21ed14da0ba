"""The COSEM objects an IS 15959 meter exposes, and how their values read, sans-IO.

Object model after IEC 62056-6-2 (DLMS UA Blue Book) and its Indian companion
IS 15959 (Part 1, single-phase whole-current meters):
  class 1 Data           0.0.96.1.0.255 meter serial number; 0.0.96.11.x.255
                         the code of the last event of category x
  class 3 Register       value (attr 2) times 10^scaler in unit (attr 3,
                         structure {integer scaler, enum unit}), Blue Book 4.3.2
  class 7 Profile generic  buffer (attr 2), capture_objects (attr 3): the IS
                         15959 event logs 0.0.99.98.x.255, one per category
                         (0 voltage, 1 current, 2 power failure, 3 transaction,
                         4 other, 5 non-rollover, 6 control)
  class 8 Clock          0.0.1.0.0.255: time (attr 2), time_zone (attr 3)
  class 70 Disconnect control  0.0.96.3.10.255: control_state (attr 3) 0
                         disconnected, 1 connected, 2 ready_for_reconnection;
                         method 1 remote_disconnect, 2 remote_reconnect
Physical unit codes are the Blue Book's (Table "Enumerated values for physical
units"): 27 W, 30 Wh, 33 A, 35 V, 44 Hz, 255 no unit. Values are turned into
contract integers with ``Decimal`` (never float).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from agent.drivers.dlms.axdr import Data, DateTime, Tag
from agent.drivers.dlms.errors import DlmsProtocolError
from agent.drivers.dlms.obis import Obis

MECHANISM_LLS: Final = 1

SERIAL: Final = Obis(0, 0, 96, 1, 0, 255)
LOGICAL_DEVICE_NAME: Final = Obis(0, 0, 42, 0, 0, 255)
CLOCK: Final = Obis(0, 0, 1, 0, 0, 255)
DISCONNECT_CONTROL: Final = Obis(0, 0, 96, 3, 10, 255)

UNIT_W: Final = 27
UNIT_WH: Final = 30
UNIT_A: Final = 33
UNIT_V: Final = 35
UNIT_HZ: Final = 44
UNIT_NONE: Final = 255


@dataclass(frozen=True, slots=True)
class Register:
    """A class 3 register and the contract quantity it feeds (value x factor)."""

    quantity: str
    obis: Obis
    unit: int
    factor: Decimal


REGISTERS: Final = (
    Register("import_wh", Obis(1, 0, 1, 8, 0, 255), UNIT_WH, Decimal(1)),
    Register("export_wh", Obis(1, 0, 2, 8, 0, 255), UNIT_WH, Decimal(1)),
    Register("p_w", Obis(1, 0, 1, 7, 0, 255), UNIT_W, Decimal(1)),
    Register("v_dv", Obis(1, 0, 32, 7, 0, 255), UNIT_V, Decimal(10)),
    Register("i_ma", Obis(1, 0, 31, 7, 0, 255), UNIT_A, Decimal(1000)),
    Register("f_chz", Obis(1, 0, 14, 7, 0, 255), UNIT_HZ, Decimal(100)),
    Register("pf_milli", Obis(1, 0, 13, 7, 0, 255), UNIT_NONE, Decimal(1000)),
)

RELAY_STATES: Final = {0: "open", 1: "closed", 2: "armed"}

# The IS 15959 event logs read for tamper: voltage-related, current-related,
# other and non-rollover events. Power failure (2) and transaction (3) hold no
# tamper; control events (6, codes 301/302) are relay switching.
EVENT_LOGS: Final = tuple(Obis(0, 0, 99, 98, x, 255) for x in (0, 1, 4, 5))


def event_log(category: int) -> Obis:
    return Obis(0, 0, 99, 98, category, 255)


def event_code_object(category: int) -> Obis:
    return Obis(0, 0, 96, 11, category, 255)


def event_category(code: int) -> int:
    """The IS 15959 log of an event code: 1-50 voltage (0), 51-100 current (1), ...
    101 power (2), 151 transaction (3), 201 other (4), 251 non-rollover (5), 301 control (6)."""
    if not 1 <= code <= 350:
        raise ValueError(f"IS 15959 event codes are 1..350, got {code}")
    return (code - 1) // 50


# IS 15959 event codes with a tamper kind of CONTRACT 5 (occurrence and
# restoration alike); every other code of the tamper logs is "other".
TAMPER_CODES: Final = {
    51: "reverse_current",  # current-related: phase/neutral current reversal
    52: "reverse_current",
    53: "reverse_current",
    54: "reverse_current",
    55: "reverse_current",
    56: "reverse_current",
    201: "magnet",  # influence of permanent magnet or AC/DC electromagnet
    202: "magnet",
    203: "neutral_missing",  # neutral disturbance
    204: "neutral_missing",
    251: "cover_open",  # meter cover opening (non-rollover)
}

# Data-access-result (Green Book §9.3, also action-result) names.
ACCESS_RESULTS: Final = {
    0: "success",
    1: "hardware-fault",
    2: "temporary-failure",
    3: "read-write-denied",
    4: "object-undefined",
    9: "object-class-inconsistent",
    11: "object-unavailable",
    12: "type-unmatched",
    13: "scope-of-access-violated",
    14: "data-block-unavailable",
    15: "long-get-aborted",
    16: "no-long-get-in-progress",
    19: "data-block-number-invalid",
    250: "other-reason",
}
READ_WRITE_DENIED: Final = 3
OBJECT_UNDEFINED: Final = 4
OBJECT_CLASS_INCONSISTENT: Final = 9
OBJECT_UNAVAILABLE: Final = 11
TYPE_UNMATCHED: Final = 12
OTHER_REASON: Final = 250
ABSENT_RESULTS: Final = frozenset({OBJECT_UNDEFINED, OBJECT_UNAVAILABLE})

DIAGNOSTICS: Final = {
    0: "null",
    1: "no-reason-given",
    2: "application-context-name-not-supported",
    11: "authentication-mechanism-name-not-recognised",
    12: "authentication-mechanism-name-required",
    13: "authentication-failure",
    14: "authentication-required",
}


def access_result_name(code: int) -> str:
    return f"{code} {ACCESS_RESULTS.get(code, 'unknown result')}"


def diagnostic_name(code: int) -> str:
    return DIAGNOSTICS.get(code, "unknown diagnostic")


def text(value: Data) -> str:
    """A serial number or name: octet-string (ASCII, else hex), visible-string or integer."""
    if value.tag is Tag.OCTET_STRING:
        raw = value.octets
        printable = raw.isascii() and raw.decode("ascii").isprintable()
        return raw.decode("ascii") if printable else raw.hex().upper()
    if value.tag in (Tag.VISIBLE_STRING, Tag.UTF8_STRING) and isinstance(value.value, str):
        return value.value
    return str(value.integer)


def number(value: Data) -> Decimal:
    """A register value as a Decimal (integers exactly, floats by their shortest repr)."""
    if value.tag in (Tag.FLOAT32, Tag.FLOAT64) and isinstance(value.value, float):
        result = Decimal(repr(value.value))
        if not result.is_finite():
            raise DlmsProtocolError(f"register value {value.value} is not a number")
        return result
    return Decimal(value.integer)


def scaler_unit(value: Data) -> tuple[int, int]:
    """(scaler, unit) of a class 3 attribute 3: structure {integer, enum}."""
    items = value.items
    if len(items) != 2 or items[0].tag is not Tag.INTEGER or items[1].tag is not Tag.ENUM:
        raise DlmsProtocolError(f"scaler_unit is no {{integer, enum}}: {value}")
    return items[0].integer, items[1].integer


def capture_object(class_id: int, obis: Obis, attribute: int) -> Data:
    """A capture_objects element: {class id, logical name, attribute index, data index}."""
    return Data(
        Tag.STRUCTURE,
        (
            Data(Tag.LONG_UNSIGNED, class_id),
            Data(Tag.OCTET_STRING, obis.to_bytes()),
            Data(Tag.INTEGER, attribute),
            Data(Tag.LONG_UNSIGNED, 0),
        ),
    )


def event_columns(capture: Data) -> tuple[int, int]:
    """Columns of the clock time and of the event code in an event log's buffer."""
    clock_col = code_col = -1
    for index, column in enumerate(capture.items):
        fields = column.items
        if len(fields) != 4:
            raise DlmsProtocolError(f"capture object {index} has {len(fields)} fields, not 4")
        class_id, ln, attribute = fields[0].integer, fields[1].octets, fields[2].integer
        if attribute != 2 or len(ln) != 6:
            continue
        if class_id == 8 and ln == CLOCK.to_bytes() and clock_col < 0:
            clock_col = index
        elif class_id == 1 and ln[:4] == b"\x00\x00\x60\x0b" and code_col < 0:
            code_col = index
    if clock_col < 0 or code_col < 0:
        raise DlmsProtocolError("event log captures no clock or no event code")
    return clock_col, code_col


def date_time(value: Data) -> DateTime:
    """A COSEM date-time given as the date-time type or as a 12-byte octet-string."""
    if value.tag is Tag.DATE_TIME and isinstance(value.value, DateTime):
        return value.value
    return DateTime.from_bytes(value.octets)


def event_entries(
    buffer: Data, clock_col: int, code_col: int, default_deviation_min: int
) -> list[tuple[int, int]]:
    """(Unix seconds, event code) of each buffer entry, in buffer order."""
    entries = []
    for entry in buffer.items:
        fields = entry.items
        if len(fields) <= max(clock_col, code_col):
            raise DlmsProtocolError(f"event entry with {len(fields)} columns")
        when = date_time(fields[clock_col])
        entries.append((when.to_unix(default_deviation_min), fields[code_col].integer))
    return entries
