"""The object model of a simulated IS 15959 meter (``sim.dlms_meter``): what each
attribute reads as at this moment, with realistic types and scalers.

Serial and logical device name (class 1), clock (class 8, time and time zone),
disconnect control (class 70), the seven registers (class 3: energy
double-long-unsigned in Wh, voltage long-unsigned x 10^-2 V, current x 10^-3 A,
power factor long x 10^-3...), and per event category its profile generic (class 7,
FIFO, {clock, event code, import energy}) and its event code object (class 1).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Final

from agent.drivers.dlms import cosem
from agent.drivers.dlms.axdr import Data, DateTime, Tag, array, structure
from agent.drivers.dlms.obis import Obis

if TYPE_CHECKING:
    from sim.dlms_meter import SimDlmsMeter

PROFILE_ENTRIES: Final = 100  # per event log; the oldest entry goes first (FIFO)
DISCONNECTED, CONNECTED, READY = 0, 1, 2  # class 70 control_state


def object_model(meter: SimDlmsMeter) -> dict[Obis, tuple[int, dict[int, Data]]]:
    """The meter's objects (class, {attribute: value}) as they read at this moment."""
    volts, amps, watts, pf = meter.measurements()
    now = DateTime.from_unix(int(meter.sim_time_s), meter.deviation_min)

    def register(value: Data, scaler: int, unit: int) -> tuple[int, dict[int, Data]]:
        scaler_unit = structure(Data(Tag.INTEGER, scaler), Data(Tag.ENUM, unit))
        return 3, {2: value, 3: scaler_unit}

    objects: dict[Obis, tuple[int, dict[int, Data]]] = {
        cosem.SERIAL: (1, {2: Data(Tag.OCTET_STRING, str(meter.serial).encode())}),
        cosem.LOGICAL_DEVICE_NAME: (1, {2: Data(Tag.OCTET_STRING, b"SIM" + str(
            meter.serial).encode())}),
        cosem.CLOCK: (8, {2: Data(Tag.OCTET_STRING, now.to_bytes()),
                          3: Data(Tag.LONG, meter.deviation_min)}),
        cosem.DISCONNECT_CONTROL: (70, {
            2: Data(Tag.BOOLEAN, meter.control_state == CONNECTED),
            3: Data(Tag.ENUM, meter.control_state),
            4: Data(Tag.ENUM, meter.control_mode)}),
    }
    u32 = Tag.DOUBLE_LONG_UNSIGNED
    values = {
        "import_wh": (Data(u32, meter.import_wh % 2**32), 0, cosem.UNIT_WH),
        "export_wh": (Data(u32, meter.export_wh % 2**32), 0, cosem.UNIT_WH),
        "p_w": (Data(Tag.DOUBLE_LONG, round(watts)), 0, cosem.UNIT_W),
        "v_dv": (Data(Tag.LONG_UNSIGNED, round(volts * 100)), -2, cosem.UNIT_V),
        "i_ma": (Data(u32, round(amps * 1000)), -3, cosem.UNIT_A),
        "f_chz": (Data(Tag.LONG_UNSIGNED, round(meter.frequency_hz() * 100)), -2,
                  cosem.UNIT_HZ),
        "pf_milli": (Data(Tag.LONG, round(pf * 1000)), -3, cosem.UNIT_NONE),
    }
    for reg in cosem.REGISTERS:
        value, scaler, unit = values[reg.quantity]
        objects[reg.obis] = register(value, scaler, unit)
    for category, log in meter.logs.items():
        objects[cosem.event_log(category)] = (7, _profile(meter, category, log))
        last = log[-1][1] if log else 0
        objects[cosem.event_code_object(category)] = (1, {2: Data(Tag.LONG_UNSIGNED,
                                                                   last)})
    return objects

def _profile(meter: SimDlmsMeter, category: int,
         log: deque[tuple[int, int, int]]) -> dict[int, Data]:
    capture = array([
        cosem.capture_object(8, cosem.CLOCK, 2),
        cosem.capture_object(1, cosem.event_code_object(category), 2),
        cosem.capture_object(3, cosem.REGISTERS[0].obis, 2),
    ])
    entries = array([
        structure(
            Data(Tag.OCTET_STRING, DateTime.from_unix(t, meter.deviation_min).to_bytes()),
            Data(Tag.LONG_UNSIGNED, code),
            Data(Tag.DOUBLE_LONG_UNSIGNED, energy_wh % 2**32),
        )
        for t, code, energy_wh in log
    ])
    count = Data(Tag.DOUBLE_LONG_UNSIGNED, len(log))
    return {
        2: entries,
        3: capture,
        4: Data(Tag.DOUBLE_LONG_UNSIGNED, 0),  # capture_period 0: on events
        5: Data(Tag.ENUM, 1),  # sort_method fifo
        7: count,
        8: Data(Tag.DOUBLE_LONG_UNSIGNED, PROFILE_ENTRIES),
    }
