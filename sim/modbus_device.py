"""Simulated Modbus devices: Eastron SDM120/SDM630 meters and a coil relay module.

Each device answers one ``Request`` with a ``Response`` (or None: not for
it). Answers follow the real devices: float32 registers high word first,
reads restricted to the documented register areas (words inside an area
that hold no parameter read 0, like Eastron's "X" parameters; a read that
leaves the areas gets exception 2), at most 30 parameters (60 words) per
read (exception 3 beyond), an unsupported function gets exception 1.

The energy and load model (daily profile, exact integer energy, relay cut,
register faults) is ``sim.load.LoadModel``, shared with the other protocols'
simulated meters. A meter set ``silent`` (``sim.faults``) answers nothing.
"""

from __future__ import annotations

import math
import struct
from decimal import Decimal
from typing import Final, Protocol

from agent.clock import Clock
from agent.drivers.modbus.codec import Request, Response
from sim.load import LoadModel

ILLEGAL_FUNCTION: Final = 1
ILLEGAL_DATA_ADDRESS: Final = 2
ILLEGAL_DATA_VALUE: Final = 3
MAX_READ_WORDS: Final = 60  # Eastron: at most 30 float parameters per request


class SimDevice(Protocol):
    unit: int

    def handle(self, request: Request) -> Response | None: ...


def _words(value: float) -> tuple[int, int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return hi, lo


def _answer_read(
    request: Request, areas: tuple[tuple[int, int], ...], words: dict[int, int]
) -> Response:
    start, end = request.address, request.address + request.count
    if request.count > MAX_READ_WORDS:
        return _exception(request, ILLEGAL_DATA_VALUE)
    if not any(lo <= start and end <= hi for lo, hi in areas):
        return _exception(request, ILLEGAL_DATA_ADDRESS)
    values = tuple(words.get(a, 0) for a in range(start, end))
    return Response(request.unit, request.function, start, request.count, values)


def _exception(request: Request, code: int) -> Response:
    return Response(request.unit, request.function, exception_code=code)


class SimEastronMeter(LoadModel):
    """The part of an Eastron meter common to SDM120 and SDM630 (load: ``sim.load``)."""

    INPUT_AREAS: tuple[tuple[int, int], ...] = (
        (0x0000, 0x0050),
        (0x0054, 0x0060),
        (0x0156, 0x015A),
    )
    HOLDING_AREAS: tuple[tuple[int, int], ...] = ((0xFC00, 0xFC02),)
    SERIAL_ADDRESS: Final = 0xFC00

    def __init__(
        self,
        unit: int,
        *,
        clock: Clock,
        serial: int,
        seed: int = 0,
        speed: float = 1.0,
        load_scale: float = 1.0,
        utc_offset_s: int = 19_800,  # Asia/Kolkata
        import_wh: int | None = None,
        export_wh: int = 0,
    ) -> None:
        self.unit = unit
        super().__init__(clock=clock, serial=serial, seed=seed, speed=speed,
                         load_scale=load_scale, utc_offset_s=utc_offset_s,
                         import_wh=import_wh, export_wh=export_wh)

    def _measurements(self) -> tuple[float, float, float, float]:
        return self.measurements()

    def _common_floats(self) -> dict[int, float]:
        import_kwh = float(Decimal(self.import_wh) / 1000)
        export_kwh = float(Decimal(self.export_wh) / 1000)
        return {
            0x46: self.frequency_hz(),
            0x48: import_kwh,
            0x4A: export_kwh,
            0x0156: import_kwh + export_kwh,
        }

    def input_floats(self) -> dict[int, float]:
        raise NotImplementedError

    def handle(self, request: Request) -> Response | None:
        if request.unit != self.unit or self.silent:
            return None
        self.advance()
        if request.function == 4:
            words: dict[int, int] = {}
            for address, value in self.input_floats().items():
                words[address], words[address + 1] = _words(value)
            return _answer_read(request, self.INPUT_AREAS, words)
        if request.function == 3:
            serial = {self.SERIAL_ADDRESS: self.serial >> 16, self.SERIAL_ADDRESS + 1: self.serial}
            words = {a: v & 0xFFFF for a, v in serial.items()}
            return _answer_read(request, self.HOLDING_AREAS, words)
        if request.function == 16:
            return _exception(request, ILLEGAL_DATA_ADDRESS)  # nothing here is writable
        return _exception(request, ILLEGAL_FUNCTION)


class SimSDM120(SimEastronMeter):
    """Eastron SDM120-Modbus, single phase."""

    def input_floats(self) -> dict[int, float]:
        volts, amps, watts, pf = self._measurements()
        va = volts * amps
        floats = {
            0x00: volts,
            0x06: amps,
            0x0C: watts,
            0x12: va,
            0x18: math.sqrt(max(0.0, va * va - watts * watts)),
            0x1E: pf,
            0x24: math.degrees(math.acos(pf)),
        }
        floats.update(self._common_floats())
        return floats


class SimSDM630(SimEastronMeter):
    """Eastron SDM630-Modbus, three phase four wire; the load split over the phases."""

    def input_floats(self) -> dict[int, float]:
        volts, _, watts, pf = self._measurements()
        shares = (0.4, 0.35, 0.25)
        phase_v = [volts + self._rng.gauss(0.0, 0.8) for _ in shares]
        phase_p = [watts * s for s in shares]
        phase_i = [p / (v * pf) for p, v in zip(phase_p, phase_v, strict=True)]
        floats: dict[int, float] = {}
        for k in range(3):
            floats[0x00 + 2 * k] = phase_v[k]
            floats[0x06 + 2 * k] = phase_i[k]
            floats[0x0C + 2 * k] = phase_p[k]
            floats[0x1E + 2 * k] = pf
        floats.update(
            {
                0x2A: sum(phase_v) / 3,
                0x2E: sum(phase_i) / 3,
                0x30: sum(phase_i),
                0x34: watts,
                0x3E: pf,
            }
        )
        floats.update(self._common_floats())
        return floats


class SimCoilModule:
    """A Modbus relay module: coils 0..n_coils-1, each may gate one meter's load.

    Coils start ON (supply connected), as the contract reads a coil.
    """

    def __init__(self, unit: int, n_coils: int = 8) -> None:
        self.unit = unit
        self._coils = [True] * n_coils
        self._gated: dict[int, LoadModel] = {}

    def attach(self, coil: int, meter: LoadModel) -> None:
        """``meter`` (of any protocol: an IEC meter too) is supplied while ``coil`` is ON."""
        if not 0 <= coil < len(self._coils):
            raise ValueError(f"coil {coil} outside 0..{len(self._coils) - 1}")
        self._gated[coil] = meter
        meter.connected = self._coils[coil]

    def coil(self, coil: int) -> bool:
        return self._coils[coil]

    def _set(self, coil: int, on: bool) -> None:
        self._coils[coil] = on
        meter = self._gated.get(coil)
        if meter is not None:
            meter.advance()  # energy up to now at the old state
            meter.connected = on

    def handle(self, request: Request) -> Response | None:
        if request.unit not in (self.unit, 0):
            return None
        fn = request.function
        if fn not in (1, 5, 15):
            return None if request.unit == 0 else _exception(request, ILLEGAL_FUNCTION)
        if request.address + request.count > len(self._coils):
            return None if request.unit == 0 else _exception(request, ILLEGAL_DATA_ADDRESS)
        if fn == 1:
            bits = tuple(
                int(c) for c in self._coils[request.address : request.address + request.count]
            )
            return Response(self.unit, fn, request.address, request.count, bits)
        for offset, value in enumerate(request.values):
            self._set(request.address + offset, bool(value))
        if request.unit == 0:
            return None  # broadcast: acted on, never answered
        if fn == 5:
            return Response(self.unit, fn, request.address, 1, request.values)
        return Response(self.unit, fn, request.address, request.count)
