"""The RS-485 line of a simulated bus, in memory: SDM120 register files over the
world's households, Modbus coil modules for their relays, and ``MemLine``, a
``Transport`` on which a request written is answered at once by its device.

Line time is counted in whole microseconds (``Timing``), rounded up, so the codec
bus (frames through ``MemLine``) and the direct bus (``simbus``) move the clock by
the same integers in the same order, and give the same bytes for a seed.
"""

from __future__ import annotations

import math
import random
import struct
from decimal import Decimal
from typing import Any, Final, Protocol

from agent.config import BusConfig
from agent.drivers.iec62056.codec import (
    INITIAL_BAUD,
    DataSet,
    Identification,
    encode_data_message,
)
from agent.drivers.modbus.client import FRAME_GAP_S
from agent.drivers.modbus.codec import Request, RequestReader, Response, response_length
from agent.drivers.reading import Reading
from agent.drivers.transport import frame_time_s, silent_interval_s
from sim.iec_line import IDENT, MANUFACTURER, IecLineServer
from sim.neighbourhood.world import Household

TURNAROUND_S: Final = 0.03  # an SDM120 typically starts answering within 30 ms
_INPUT_AREAS: Final = ((0x0000, 0x0050), (0x0054, 0x0060), (0x0156, 0x015A))


class Field(Protocol):
    """What a bus needs from the world (``runner.GatewaySim``)."""

    def household(self, meter_id: str) -> Household | None: ...
    def advance_us(self, micros: int) -> None: ...
    def fault(self, meter_id: str) -> tuple[bool, int]: ...  # (silent, corrupt percent)
    def coil_set(self, meter_id: str, connected: bool) -> None: ...
    def served_reading(self, reading: Reading, serial: int) -> None: ...
    def tamper_due(self, meter_id: str) -> list[dict[str, Any]]: ...
    @property
    def rng(self) -> random.Random: ...


class Timing:
    """Line time in whole microseconds, rounded up, so that the codec bus and the direct
    bus move the clock by the same integers in the same order (the same seed then gives
    the same bytes in both modes)."""

    def __init__(self, bus: BusConfig) -> None:
        self.baud = bus.baudrate
        self.timeout_s = bus.timeout_s
        self.t35_s = silent_interval_s(bus.baudrate)
        # the client waits this long in silence after a bad frame, then drains as long
        self.gap_us = math.ceil((FRAME_GAP_S + self.t35_s) * 1e6) + 1

    def request_us(self, n_bytes: int) -> int:
        return math.ceil((frame_time_s(n_bytes, self.baud) + self.t35_s) * 1e6)

    def answer_us(self, n_bytes: int) -> int:
        return math.ceil((TURNAROUND_S + frame_time_s(n_bytes, self.baud)) * 1e6)

    def timeout_us(self, answer_bytes: int) -> int:
        """The driver's timeout (bus timeout + the answer's line time) and 1 us more, so
        the client's deadline has passed when the wait ends."""
        return math.ceil((self.timeout_s + frame_time_s(answer_bytes, self.baud)) * 1e6) + 1


def _f32_words(value: float) -> tuple[int, int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return hi, lo


class SdmDevice:
    """An SDM120's register file over a household (codec mode)."""

    def __init__(self, field: Field, meter_id: str, unit: int) -> None:
        self.field = field
        self.meter_id = meter_id
        self.unit = unit

    def handle(self, request: Request) -> Response | None:
        hh = self.field.household(self.meter_id)
        if hh is None:
            return None
        if request.function == 3 and request.address == 0xFC00 and request.count == 2:
            return Response(self.unit, 3, 0xFC00, 2, (hh.serial >> 16, hh.serial & 0xFFFF))
        end = request.address + request.count
        if request.function != 4 or not any(lo <= request.address and end <= hi
                                            for lo, hi in _INPUT_AREAS):
            return Response(self.unit, request.function, exception_code=2)
        words: dict[int, int] = {}
        values = instant(hh)
        floats = {0x00: values["v_dv"] / 10, 0x06: values["i_ma"] / 1000,
                  0x0C: float(values["p_w"]), 0x1E: values["pf_milli"] / 1000,
                  0x46: values["f_chz"] / 100, 0x48: hh.wh / 1000, 0x4A: 0.0}
        for address, value in floats.items():
            words[address], words[address + 1] = _f32_words(value)
        return Response(self.unit, 4, request.address, request.count,
                        tuple(words.get(a, 0) for a in range(request.address, end)))


def instant(hh: Household) -> dict[str, int]:
    """Instantaneous values (not billed): fixed mains, the household's present load."""
    p_w = hh.power_w(hh.last_t // 3600, 100) if hh.connected else 0
    return {"v_dv": 2300, "i_ma": p_w * 1000 * 100 // (230 * 95) if p_w else 0, "p_w": p_w,
            "pf_milli": 950 if p_w else 1000, "f_chz": 5000}


class CoilModule:
    """A Modbus relay module: coil ON means supply connected (codec mode). The coils'
    state is the world's (``Household.connected``): it outlives the agent's process."""

    def __init__(self, field: Field, unit: int, coils: dict[int, str]) -> None:
        self.field = field
        self.unit = unit
        self.coils = coils  # coil -> meter id

    def handle(self, request: Request) -> Response | None:
        coil = request.address
        if coil not in self.coils or request.function not in (1, 5):
            return Response(self.unit, request.function, exception_code=2)
        meter_id = self.coils[coil]
        if request.function == 5:
            self.field.coil_set(meter_id, bool(request.values[0]))
            return Response(self.unit, 5, coil, 1, request.values)
        hh = self.field.household(meter_id)
        return Response(self.unit, 1, coil, 1, (int(hh is not None and hh.connected),))


class MemLine:
    """An RS-485 line in memory: a request written is answered at once by its device."""

    def __init__(self, field: Field, timing: Timing, devices: dict[int, Any]) -> None:
        self.field = field
        self.timing = timing
        self.devices = devices
        self.unit_meter: dict[int, str] = {}
        self._reader = RequestReader()
        self._out = b""
        self._expect = 0  # the answer's length, for a timeout
        self._answered = False  # an answer came since the last request (silence: a gap)

    @property
    def baudrate(self) -> int:
        return self.timing.baud

    def write(self, data: bytes) -> None:
        self.field.advance_us(self.timing.request_us(len(data)))
        self._reader.receive_data(data)
        request = self._reader.next_event()
        assert isinstance(request, Request), "the agent wrote a frame its own codec refuses"
        self._expect, self._answered, self._out = response_length(request), False, b""
        meter_id = self.unit_meter.get(request.unit)
        silent, corrupt_pct = self.field.fault(meter_id) if meter_id else (False, 0)
        device = self.devices.get(request.unit)
        response = device.handle(request) if device is not None and not silent else None
        if response is None:
            return
        frame = bytearray(response.to_bytes())
        self.field.advance_us(self.timing.answer_us(len(frame)))
        if corrupt_pct and self.field.rng.randrange(100) < corrupt_pct:
            frame[3 + self.field.rng.randrange(len(frame) - 5)] ^= 0x5A  # a data byte
        self._out = bytes(frame)

    def read(self, max_bytes: int, timeout_s: float) -> bytes:
        if not self._out:
            self.field.advance_us(self.timing.gap_us if self._answered
                                  else self.timing.timeout_us(self._expect))
            return b""
        self._answered = True
        data, self._out = self._out[:max_bytes], self._out[max_bytes:]
        return data

    def reset_input(self) -> None:
        self._out = b""

    def close(self) -> None:
        pass


# -- IEC 62056-21 mode C (codec mode) --------------------------------------------------------
IEC_IDENT: Final = Identification(MANUFACTURER, "5", IDENT)  # offers 9600 baud
IEC_REACTION_S: Final = 0.2  # the standard's shortest reaction time t_r (200 ms)
IEC_GAP_S: Final = 0.05  # the driver's SILENCE_GAP_S: a quiet line ends a bad answer


def iec_readout(hh: Household) -> list[DataSet]:
    """A mode C data message's data sets over a household, as sim/iec_line.py forms them
    (kWh with three decimals: the register's Wh are exact)."""
    values = instant(hh)

    def ds(code: str, value: str, unit: str = "") -> DataSet:
        return DataSet(code, ((value, unit),))

    def fixed(value: Decimal, places: int) -> str:
        return f"{value:0{places + 5}.{places}f}"

    return [ds("0.0.0", str(hh.serial)), ds("C.1.0", str(hh.serial)),
            ds("1.8.0", fixed(Decimal(hh.wh) / 1000, 3), "kWh"),
            ds("2.8.0", fixed(Decimal(0), 3), "kWh"),
            ds("1.7.0", fixed(Decimal(values["p_w"]) / 1000, 3), "kW"),
            ds("32.7.0", fixed(Decimal(values["v_dv"]) / 10, 1), "V"),
            ds("31.7.0", fixed(Decimal(values["i_ma"]) / 1000, 2), "A"),
            ds("14.7.0", fixed(Decimal(values["f_chz"]) / 100, 2), "Hz"),
            ds("13.7.0", f"{Decimal(values['pf_milli']) / 1000:.3f}"),
            ds("F.F", "00000000")]


class IecHousehold:
    """A household's meter as the IEC line sees it (``iec_line.LineMeter``, codec mode):
    it offers 9600 baud, is silent while its fault says so, and a corrupt fault flips a
    data byte of a data message (the BCC no longer matches)."""

    baud: Final = IEC_IDENT.baud

    def __init__(self, field: Field, meter_id: str) -> None:
        self.field = field
        self.meter_id = meter_id

    @property
    def silent(self) -> bool:
        return self.field.fault(self.meter_id)[0]

    def identification(self) -> Identification:
        return IEC_IDENT

    def data_message(self) -> bytes | None:
        hh = self.field.household(self.meter_id)
        if hh is None:
            return None
        corrupt_pct = self.field.fault(self.meter_id)[1]
        corrupt = bool(corrupt_pct) and self.field.rng.randrange(100) < corrupt_pct
        frame = bytearray(encode_data_message(iec_readout(hh)))
        if corrupt:
            frame[len(frame) // 2] ^= 0x01
        return bytes(frame)


class IecMemLine:
    """An IEC 62056-21 line in memory (a ``BaudSwitchable`` transport) over the session
    of ``sim.iec_line.IecLineServer``, the pty simulator's own: a sign-on for a meter's
    address is answered with its identification at 300 baud, the option select with its
    data message at the chosen speed; each frame moves the clock by its line time at the
    speed it travels at, a silent meter by the driver's wait."""

    def __init__(self, field: Field, baudrate: int, meters: dict[str, str]) -> None:
        self.field = field
        self._baud = baudrate
        self._server = IecLineServer({address: IecHousehold(field, meter_id)
                                      for address, meter_id in meters.items()})
        self._out = b""
        self._out_baud = INITIAL_BAUD

    @property
    def baudrate(self) -> int:
        return self._baud

    def set_baudrate(self, baudrate: int) -> None:
        self._baud = baudrate

    def _us(self, seconds: float) -> None:
        self.field.advance_us(math.ceil(seconds * 1e6))

    def write(self, data: bytes) -> None:
        self._us(frame_time_s(len(data), self._baud))
        self._server.receive_data(data)
        while (reply := self._server.next_reply()) is not None:
            self._out, self._out_baud = reply  # a later answer replaces one not read

    def read(self, max_bytes: int, timeout_s: float) -> bytes:
        if not self._out:
            self._us(timeout_s)
            self.field.advance_us(1)  # past the driver's deadline
            return b""
        self._us(IEC_REACTION_S + frame_time_s(len(self._out), self._out_baud))
        data, self._out = self._out[:max_bytes], b""
        return data

    def reset_input(self) -> None:
        self._out = b""

    def close(self) -> None:
        pass
