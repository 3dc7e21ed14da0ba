"""IEC 62056-21 mode C meters on one simulated bus: the ``build_bus`` plug-in.

Each ``[[meter]]`` of the bus is a meter whose device address is its
``address`` in decimal ("7"). A session follows IEC 62056-21:2002 6.4.3:
the sign-on ``/?7!`` is answered at 300 baud with the identification
``/SIMZIEC1PH-SIM`` (Z = the bus's configured speed, the most the meter
offers); the ACK option select for a data readout at Z' <= Z is answered with
the data message at Z' (``sim.meters`` paces it at that speed: the pty does
not really change speed, the line timing does); then the meter is back at
300 baud. A sign-on for another address, a programming-mode request or a
speed above the offer get no answer; so does a meter set silent.

The readout carries the quantities of ``agent.drivers.iec62056.obis``, in
the units meters use (kWh with 3 decimals, so Wh are exact).

``IecLineServer`` is that session, sans-IO: requests in, (frame, speed) replies out,
over any ``LineMeter``. ``sim.meters`` drives it on a pty (the meters here); the
neighbourhood simulation drives it in memory (``simline.IecMemLine``, its households).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Final, Protocol

from agent.drivers.iec62056.codec import (
    BAUD_RATES,
    INITIAL_BAUD,
    Break,
    DataSet,
    Identification,
    IecProtocolError,
    OptionSelect,
    RequestReader,
    SignOn,
    encode_data_message,
    encode_identification,
)
from sim.line import BusBuild, SimEnv, SimMeter
from sim.load import LoadModel, serial_number

if TYPE_CHECKING:
    from agent.clock import Clock
    from agent.config import BusConfig, MeterConfig

log = logging.getLogger("sim.iec")

MANUFACTURER: Final = "SIM"  # not a FLAG-registered id: this is the simulator
IDENT: Final = "IEC1PH-SIM"


class SimIecMeter(LoadModel):
    """A single-phase mode C meter; energy and load from ``sim.load``."""

    def __init__(self, address: str, max_baud: int, *, clock: Clock, serial: int,
                 seed: int = 0, speed: float = 1.0, load_scale: float = 1.0,
                 utc_offset_s: int = 19_800, import_wh: int | None = None) -> None:
        self.address = address
        rates = [c for c, r in BAUD_RATES.items() if r <= max_baud]
        self.baud = max(rates) if rates else "0"
        super().__init__(clock=clock, serial=serial, seed=seed, speed=speed,
                         load_scale=load_scale, utc_offset_s=utc_offset_s, import_wh=import_wh)

    def identification(self) -> Identification:
        return Identification(MANUFACTURER, self.baud, IDENT)

    def data_message(self) -> bytes:
        return encode_data_message(self.readout())

    def readout(self) -> list[DataSet]:
        self.advance()
        volts, amps, watts, pf = self.measurements()

        def fixed(value: float | Decimal, places: int) -> str:
            return f"{value:0{places + 5}.{places}f}"

        def ds(code: str, value: str, unit: str = "") -> DataSet:
            return DataSet(code, ((value, unit),))

        return [
            ds("0.0.0", str(self.serial)),
            ds("C.1.0", str(self.serial)),
            ds("1.8.0", fixed(Decimal(self.import_wh) / 1000, 3), "kWh"),
            ds("2.8.0", fixed(Decimal(self.export_wh) / 1000, 3), "kWh"),
            ds("1.7.0", fixed(Decimal(round(watts)) / 1000, 3), "kW"),
            ds("32.7.0", fixed(volts, 1), "V"),
            ds("31.7.0", fixed(amps, 2), "A"),
            ds("14.7.0", fixed(self.frequency_hz(), 2), "Hz"),
            ds("13.7.0", f"{pf:.3f}"),
            ds("F.F", "00000000"),
        ]


class LineMeter(Protocol):
    """A meter as the line sees it (``SimIecMeter``; ``simline.IecHousehold``)."""

    @property
    def baud(self) -> str: ...  # Z of its identification: the most it offers
    @property
    def silent(self) -> bool: ...  # answers no sign-on now
    def identification(self) -> Identification: ...
    def data_message(self) -> bytes | None: ...  # the readout's frame; None: no answer


class IecLineServer:
    """The meters' side of one line (6.4.3, mode C), sans-IO: sign-ons and option
    selects in (``receive_data``); identification and data messages out, each with the
    speed it goes at (``next_reply``). One session at a time: a sign-on opens it, the
    option select or a break ends it."""

    def __init__(self, meters: Mapping[str, LineMeter]) -> None:
        self.meters = meters
        self._reader = RequestReader()
        self._session: LineMeter | None = None
        self._replies: list[tuple[bytes, int]] = []
        self.rx_baudrate = INITIAL_BAUD  # the speed requests arrive at (sim.meters' timing)

    def receive_data(self, data: bytes) -> None:
        self._reader.receive_data(data)
        self._drain()

    def silence(self) -> None:
        self._reader.receive_data(b"")
        self._drain()

    def next_reply(self) -> tuple[bytes, int] | None:
        return self._replies.pop(0) if self._replies else None

    def _drain(self) -> None:
        while True:
            try:
                event = self._reader.next_event()
            except IecProtocolError as exc:
                log.info("bad request ignored: %s", exc)
                continue
            if isinstance(event, SignOn):
                self._sign_on(event.address)
            elif isinstance(event, OptionSelect):
                self._option_select(event)
            elif isinstance(event, Break):
                self._session = None
            else:
                return

    def _sign_on(self, address: str) -> None:
        meter = self.meters.get(address)
        if not address and len(self.meters) == 1:
            meter = next(iter(self.meters.values()))  # "/?!" on a one-meter line
        self._session = meter if meter is not None and not meter.silent else None
        if self._session is not None:
            self._replies.append((encode_identification(self._session.identification()),
                                  INITIAL_BAUD))

    def _option_select(self, select: OptionSelect) -> None:
        meter, self._session = self._session, None
        if meter is None or select.mode != "0" or select.baud > meter.baud:
            return  # programming mode is not simulated; a speed above the offer is refused
        frame = meter.data_message()
        if frame is not None:
            self._replies.append((frame, BAUD_RATES[select.baud]))


def build_bus(bus: BusConfig, meters: list[MeterConfig], env: SimEnv) -> BusBuild:
    by_address: dict[str, SimIecMeter] = {}
    by_id: dict[str, SimMeter] = {}
    for index, m in enumerate(meters):
        address = str(m.address)
        if address in by_address:
            raise ValueError(f"bus {bus.name}: two meters at address {address}")
        meter = SimIecMeter(address, bus.baudrate, clock=env.clock,
                            serial=serial_number(env.seed, m.id), seed=env.seed * 1000 + index,
                            speed=env.speed, load_scale=env.load_scale,
                            utc_offset_s=env.utc_offset_s)
        by_address[address] = meter
        by_id[m.id] = meter
    return BusBuild(server=IecLineServer(by_address), meters=by_id)
