"""DLMS/COSEM over HDLC on one simulated bus: the ``build_bus`` plug-in for ``sim.meters``.

Every ``[[meter]]`` of the bus is a simulated IS 15959 meter (``sim.dlms_meter``)
at server address: logical device 1, physical address = its ``address``. Each
keeps one HDLC link as a secondary station in normal response mode (IEC
62056-46 §6.4.4):
  SNRM    opens (or resets) the link and drops any association; the UA carries
          the negotiated parameters (maximum information field MAX_INFO_FIELD
          each way, window 1)
  DISC    closes it: UA (with the parameters again), or DM if it was not open
  I       N(S) is checked: a repeat (the client retrying after a lost reply)
          gets the last reply again, any other gap FRMR; the first segment
          carries the LLC header; a reply longer than the client's maximum
          information field goes in segments (S bit), one per RR
  I, RR   while disconnected: DM
A link quiet for INACTIVITY_S is dropped, as a real meter's inactivity
time-out does. Frames to another address, and everything while a meter is
``silent`` (sim.faults), get no reply.

A meter's keys, password and system title come from the same ``[[meter]]`` keys
the agent reads (``ek_file``, ``ak_file``, ``password_file``, ``system_title``), so
the simulated meter expects what the agent was given; without ``system_title``
its title is b"SIM" + the first 5 bytes of SHA-256(meter id).
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Final

from agent.drivers.dlms.errors import DlmsProtocolError
from agent.drivers.dlms.hdlc import (
    LLC_COMMAND,
    LLC_RESPONSE,
    MANAGEMENT_LOGICAL_DEVICE,
    FrameKind,
    HdlcAddress,
    HdlcFrame,
    HdlcParameters,
)
from agent.drivers.dlms.keys import read_key_file
from agent.drivers.dlms.reader import FrameReader
from sim.dlms_meter import SimDlmsMeter
from sim.line import BusBuild, FramedLineServer, SimEnv, SimMeter
from sim.load import serial_number

if TYPE_CHECKING:
    from agent.config import BusConfig, MeterConfig

log = logging.getLogger("sim.dlms")

MAX_INFO_FIELD: Final = 128  # the §6.4.4.4.3.2 default, what most meters keep
INACTIVITY_S: Final = 120.0  # IEC 62056-46 default inactivity time-out
MAX_REQUEST_BYTES: Final = 0xFFFF + 3  # a reassembled request is at most one APDU + LLC


class HdlcServerLink:
    """One meter's side of the HDLC link (secondary station, see the module doc)."""

    def __init__(self, meter: SimDlmsMeter) -> None:
        self.meter = meter
        self.connected = False
        self.client: HdlcAddress | None = None
        self.params = HdlcParameters()
        self._send_seq = 0  # V(S)
        self._recv_seq = 0  # V(R)
        self._rx = bytearray()
        self._tx: list[bytes] = []
        self._last_reply: HdlcFrame | None = None
        self._last_frame_s = meter.clock.monotonic_s()

    def _reply(self, request: HdlcFrame, kind: FrameKind, info: bytes = b"",
               segmented: bool = False) -> HdlcFrame:
        frame = HdlcFrame(kind, request.source, request.destination, info,
                          send_seq=self._send_seq if kind is FrameKind.I else 0,
                          recv_seq=self._recv_seq, segmented=segmented)
        if kind is FrameKind.I:
            self._send_seq = (self._send_seq + 1) % 8
        self._last_reply = frame
        return frame

    def _close(self) -> None:
        self.connected = False
        self.client = None
        self._rx.clear()
        self._tx.clear()
        self._last_reply = None
        self.meter.reset_association()

    def handle(self, frame: HdlcFrame) -> HdlcFrame | None:
        now_s = self.meter.clock.monotonic_s()
        if self.connected and now_s - self._last_frame_s > INACTIVITY_S:
            self._close()  # the client went quiet too long: the link is gone
        self._last_frame_s = now_s
        kind = frame.kind
        if kind is FrameKind.SNRM:
            return self._snrm(frame)
        if kind is FrameKind.UI:
            return None
        if not self.connected or frame.source != self.client:
            return self._reply(frame, FrameKind.DM)
        if kind is FrameKind.DISC:
            self._close()
            # The UA repeats the link parameters, as many meters do (an empty
            # UA is allowed too, but dlms-cosem 21.3.2 cannot parse one).
            return HdlcFrame(FrameKind.UA, frame.source, frame.destination,
                             self.params.to_bytes())
        if kind is FrameKind.RR:
            if self._tx and frame.recv_seq == self._send_seq:
                chunk = self._tx.pop(0)
                return self._reply(frame, FrameKind.I, chunk, segmented=bool(self._tx))
            if self._last_reply is not None and frame.recv_seq != self._send_seq:
                return self._last_reply  # the client missed our last segment
            return self._reply(frame, FrameKind.RR)
        if kind is not FrameKind.I:
            return self._reply(frame, FrameKind.FRMR)
        return self._information(frame)

    def _snrm(self, frame: HdlcFrame) -> HdlcFrame:
        self._close()
        try:
            proposed = HdlcParameters.from_bytes(frame.info)
        except DlmsProtocolError:
            return self._reply(frame, FrameKind.DM)
        # The client's receive limit bounds what we send, and the other way round.
        self.params = HdlcParameters(
            max_info_tx=min(proposed.max_info_rx, MAX_INFO_FIELD),
            max_info_rx=min(proposed.max_info_tx, MAX_INFO_FIELD),
        )
        self.connected, self.client = True, frame.source
        self._send_seq = self._recv_seq = 0
        return self._reply(frame, FrameKind.UA, self.params.to_bytes())

    def _information(self, frame: HdlcFrame) -> HdlcFrame | None:
        if frame.send_seq == (self._recv_seq - 1) % 8 and self._last_reply is not None:
            return self._last_reply  # a repeat: our reply was lost, send it again
        if frame.send_seq != self._recv_seq or len(frame.info) > self.params.max_info_rx:
            return self._reply(frame, FrameKind.FRMR)
        self._recv_seq = (self._recv_seq + 1) % 8
        if len(self._rx) + len(frame.info) > MAX_REQUEST_BYTES:
            self._rx.clear()
            return self._reply(frame, FrameKind.FRMR)
        self._rx += frame.info
        if frame.segmented:
            return self._reply(frame, FrameKind.RR)
        message, self._rx = bytes(self._rx), bytearray()
        if not message.startswith(LLC_COMMAND):
            log.info("meter %d: I frame without the LLC header dropped", self.meter.address)
            return None
        response = LLC_RESPONSE + self.meter.handle_apdu(message[3:], frame.source.upper)
        size = self.params.max_info_tx
        chunks = [response[i : i + size] for i in range(0, len(response), size)]
        self._tx = chunks[1:]
        return self._reply(frame, FrameKind.I, chunks[0], segmented=bool(self._tx))


class DlmsLineServer(FramedLineServer):
    """HDLC frames in (any split), replies out at the bus's baud rate."""

    def __init__(self, links: dict[int, HdlcServerLink], baudrate: int) -> None:
        super().__init__(FrameReader(), HdlcFrame, DlmsProtocolError, baudrate)
        self.links = links

    def answer(self, frame: HdlcFrame) -> bytes | None:
        destination = frame.destination
        if destination.upper != MANAGEMENT_LOGICAL_DEVICE or destination.lower is None:
            return None
        link = self.links.get(destination.lower)
        if link is None or link.meter.silent:
            return None
        reply = link.handle(frame)
        return reply.to_bytes() if reply is not None else None


def default_title(meter_id: str) -> bytes:
    """A simulated meter's system title when the config gives none."""
    return b"SIM" + hashlib.sha256(meter_id.encode()).digest()[:5]


def build_bus(bus: BusConfig, meters: list[MeterConfig], env: SimEnv) -> BusBuild:
    links: dict[int, HdlcServerLink] = {}
    by_id: dict[str, SimMeter] = {}
    for index, m in enumerate(meters):
        if m.address in links:
            raise ValueError(f"bus {bus.name}: two meters at DLMS address {m.address}")
        meter = SimDlmsMeter(
            m.address,
            clock=env.clock,
            serial=serial_number(env.seed, m.id),
            seed=env.seed * 1000 + index,
            speed=env.speed,
            load_scale=env.load_scale,
            utc_offset_s=env.utc_offset_s,
            # the meter expects the password the board config gives the agent for it
            password=(m.password_file.read_bytes().rstrip(b"\r\n") if m.password_file
                      else b"00000000"),
            keys=(read_key_file(m.ek_file), read_key_file(m.ak_file))
            if m.ek_file is not None and m.ak_file is not None else None,
            system_title=m.system_title or default_title(m.id),
        )
        links[m.address] = HdlcServerLink(meter)
        by_id[m.id] = meter
    return BusBuild(server=DlmsLineServer(links, bus.baudrate), meters=by_id)


__all__ = ["DlmsLineServer", "HdlcServerLink", "SimDlmsMeter", "build_bus", "default_title"]
