"""A DLMS/COSEM meter (IS 15959 object model) on a bus: the driver.

``DlmsMeter`` implements ``MeterDriver``, ``RelayDriver`` and ``EventDriver``
of ``agent.drivers.driver``; ``probe`` finds a meter at an address. The link,
the association and the GET/ACTION services are ``session.DlmsSession``;
this module knows what the objects mean (``cosem.py``): registers into
contract units, the disconnect control object into relay states, event logs
into tamper events.

A poll reads the registers with one GET-With-List when the meter grants
multiple-references (one GET each otherwise). scaler_unit, absent registers,
event-log columns and the clock's time zone are learnt once and learnt again
whenever the serial number is read (after a timeout, every
SERIAL_REFRESH_READS polls): a swapped meter is not read with the old one's
scalers.

Clients (IS 15959): readings go through the ``client_address`` association
(0x10 public, 0x20 meter reader with LLS, or 0x30 utility settings with HLS).
Given a ``DlmsSecurity``, the relay (``relay_set``, ``relay_state``) goes
through an HLS-GMAC, ciphered association as the utility-settings client 0x30,
as IS 15959 meters demand; readings then share it when ``client_address`` is
0x30, else they keep their own association. An HDLC link carries one
association at a time, so switching between the two releases and disconnects
the other first (RLRQ, DISC): a relay command costs one extra association each
way, which keeps the common case (polls) on one long-lived association. Without a
``DlmsSecurity`` the relay goes through the reading association (meters with no
HLS keys, and the simulator's pre-security model).

Errors (all ``DriverError``): ``TimeoutError_``, ``DlmsChecksumError``,
``DlmsProtocolError`` (anything malformed, including a register in another
unit than its quantity's), ``DlmsAssociationError`` (wrong password: the AARE
result and diagnostic), ``DlmsSecurityError`` (HLS or ciphering failed; ``why``),
``DeviceException`` (a data-access-result or action-result other than success;
``.code`` is it). A security failure never switches the relay: the ACTION goes
out only inside an association whose HLS verified both ways, and a read-back whose
response does not verify raises instead of returning a state.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN
from typing import Final, TypeVar

from agent.clock import Clock
from agent.drivers.dlms import cosem
from agent.drivers.dlms.axdr import Data
from agent.drivers.dlms.connection import State
from agent.drivers.dlms.errors import DlmsAssociationError, DlmsProtocolError
from agent.drivers.dlms.hdlc import PUBLIC_CLIENT
from agent.drivers.dlms.obis import Obis
from agent.drivers.dlms.security import DlmsSecurity
from agent.drivers.dlms.session import DlmsSession
from agent.drivers.driver import MeterEvent
from agent.drivers.reading import Reading
from agent.drivers.transport import Transport
from agent.errors import DeviceException, TimeoutError_

SERIAL_REFRESH_READS: Final = 96  # and after any timeout, as the Modbus driver does
METER_READER_CLIENT: Final = 0x20  # IS 15959: LLS
UTILITY_SETTINGS_CLIENT: Final = 0x30  # IS 15959: HLS, the one allowed to switch the relay

T = TypeVar("T")


def event_kind(code: int) -> str | None:
    """The tamper kind of an IS 15959 event code; None for relay (load switch) events."""
    if code in (301, 302):
        return None  # load switch disconnected / connected: relay events, not tamper
    return cosem.TAMPER_CODES.get(code, "other")


class DlmsMeter:
    """One IS 15959 meter at physical ``address`` (logical device 1) on a bus.

    ``password`` None associates without authentication (the public client
    reads only the serial number). ``security`` given: the relay goes through an
    HLS association as ``settings_client``, and so do readings if
    ``client_address`` is that client (module doc). ``timeout_s`` of each call is
    what the meter may take to start answering a frame (default
    RESPONSE_LATENCY_S, plus each frame's line time).
    """

    def __init__(
        self,
        transport: Transport,
        address: int,
        *,
        password: bytes | None = b"00000000",
        client_address: int = PUBLIC_CLIENT,
        clock: Clock | None = None,
        security: DlmsSecurity | None = None,
        settings_client: int = UTILITY_SETTINGS_CLIENT,
    ) -> None:
        self._address = address
        hls_reads = security is not None and client_address == settings_client
        self._session = DlmsSession(transport, address, password=password,
                                    client_address=client_address, clock=clock,
                                    security=security if hls_reads else None)
        self._settings = self._session
        if security is not None and not hls_reads:
            self._settings = DlmsSession(transport, address, password=None,
                                         client_address=settings_client, clock=clock,
                                         security=security)
        self._active = self._session
        self._serial: str | None = None
        self._serial_unsupported = False
        self._reads_since_serial = 0
        # Learnt from the meter; forgotten whenever its serial is read again
        # (after a timeout, every SERIAL_REFRESH_READS polls, on a swap).
        self._scaler_units: dict[Obis, tuple[int, int]] = {}
        self._absent: set[Obis] = set()
        self._event_columns: dict[Obis, tuple[int, int]] = {}
        self._deviation_min: int | None = None
        # Per event log: (time of the newest entry returned, how many entries
        # with exactly that time were returned). Restore it to resume.
        self.event_marks: dict[Obis, tuple[int, int]] = {}

    @property
    def address(self) -> int:
        return self._address

    @property
    def state(self) -> State:
        return self._active.state

    @property
    def link_seen(self) -> bool:
        return self._session.link_seen or self._settings.link_seen

    def _use(self, session: DlmsSession, timeout_s: float | None) -> DlmsSession:
        """``session``, after releasing the other one: one association on the link."""
        if session is not self._active:
            self._active.close(timeout_s=timeout_s)
            self._active = session
        return session

    def _get(self, class_id: int, obis: Obis, attribute: int, timeout_s: float | None) -> Data:
        return self._use(self._session, timeout_s).get(class_id, obis, attribute, timeout_s)

    def _forget(self) -> None:
        """Drop what was learnt about the meter: it may have been swapped for another."""
        self._scaler_units.clear()
        self._absent.clear()
        self._event_columns.clear()
        self._deviation_min = None

    def _guarded(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except TimeoutError_:
            self._serial = None  # off the bus: it may come back as another meter
            raise

    # -- the driver interface ---------------------------------------------------------
    def read_serial(self, *, timeout_s: float | None = None) -> str:
        """The meter's serial number (0.0.96.1.0.255)."""
        value = self._guarded(lambda: self._get(1, cosem.SERIAL, 2, timeout_s))
        serial = cosem.text(value)
        self._forget()  # learn scalers, absent registers, log columns afresh
        self._serial = serial
        self._reads_since_serial = 0
        return serial

    def read(self, meter_id: str, now_s: int, *, timeout_s: float | None = None) -> Reading:
        """Every register the meter has, in contract units; ``serial`` as last read."""
        return self._guarded(lambda: self._read(meter_id, now_s, timeout_s))

    def _read(self, meter_id: str, now_s: int, timeout_s: float | None) -> Reading:
        if not self._serial_unsupported and (
            self._serial is None or self._reads_since_serial >= SERIAL_REFRESH_READS
        ):
            try:
                self.read_serial(timeout_s=timeout_s)
            except DeviceException:
                self._serial_unsupported = True  # read no serial rather than no reading
        wanted = [r for r in cosem.REGISTERS if r.obis not in self._absent]
        unscaled = [r for r in wanted if r.obis not in self._scaler_units]
        results = self._use(self._session, timeout_s).get_many(
            [(3, r.obis, 3) for r in unscaled] + [(3, r.obis, 2) for r in wanted], timeout_s
        )
        for register, result in zip(unscaled, results[: len(unscaled)], strict=True):
            if self._present(register.obis, result):
                assert isinstance(result, Data)
                self._scaler_units[register.obis] = cosem.scaler_unit(result)
        values: dict[str, int] = {}
        for register, result in zip(wanted, results[len(unscaled) :], strict=True):
            if self._present(register.obis, result) and register.obis not in self._absent:
                assert isinstance(result, Data)
                values[register.quantity] = self._convert(register, result)
        self._reads_since_serial += 1
        return Reading(meter=meter_id, t=now_s, values=values, serial=self._serial)

    def _present(self, obis: Obis, result: Data | int) -> bool:
        """True for a value; False (remembered) for a register the meter does not have."""
        if not isinstance(result, int):
            return True
        if result in cosem.ABSENT_RESULTS:
            self._absent.add(obis)  # the meter does not measure it: absent, not zero
            return False
        raise DeviceException(f"GET {obis}: {cosem.access_result_name(result)}", result)

    def _convert(self, register: cosem.Register, raw: Data) -> int:
        scaler, unit = self._scaler_units[register.obis]
        if unit != register.unit:
            raise DlmsProtocolError(f"{register.obis}: unit {unit}, expected {register.unit}")
        value = cosem.number(raw).scaleb(scaler) * register.factor
        rounding = ROUND_FLOOR if register.quantity.endswith("_wh") else ROUND_HALF_EVEN
        return int(value.to_integral_value(rounding=rounding))

    def read_clock(self, *, timeout_s: float | None = None) -> int:
        """The meter's clock (0.0.1.0.0.255 time) in Unix seconds, for drift checks."""
        value = self._guarded(lambda: self._get(8, cosem.CLOCK, 2, timeout_s))
        if self._deviation_min is None:
            self._deviation_min = self._clock_deviation(timeout_s)
        return cosem.date_time(value).to_unix(self._deviation_min)

    def relay_set(self, connected: bool, *, timeout_s: float | None = None) -> None:
        """remote_reconnect (method 2) or remote_disconnect (method 1) on 0.0.96.3.10.255."""
        method = 2 if connected else 1
        settings = self._use(self._settings, timeout_s)
        self._guarded(lambda: settings.action(70, cosem.DISCONNECT_CONTROL, method, timeout_s))

    def relay_state(self, *, timeout_s: float | None = None) -> str:
        """control_state: 0 disconnected "open", 1 connected "closed", 2 ready "armed"."""
        settings = self._use(self._settings, timeout_s)
        value = self._guarded(lambda: settings.get(70, cosem.DISCONNECT_CONTROL, 3, timeout_s))
        state = cosem.RELAY_STATES.get(value.integer)
        if state is None:
            raise DlmsProtocolError(f"control_state {value.integer} is not 0, 1 or 2")
        return state

    def read_events(self, *, timeout_s: float | None = None) -> list[MeterEvent]:
        """Tamper entries of the IS 15959 event logs newer than those returned before."""
        return self._guarded(lambda: self._read_events(timeout_s))

    def _read_events(self, timeout_s: float | None) -> list[MeterEvent]:
        found: list[MeterEvent] = []
        for log in cosem.EVENT_LOGS:
            entries = self._log_entries(log, timeout_s)
            last_t, count = self.event_marks.get(log, (-(2**62), 0))
            at_last = 0  # entries stamped exactly last_t: the first ``count`` were returned
            for t, code in entries:
                if t < last_t:
                    continue
                if t == last_t:
                    at_last += 1
                    if at_last <= count:
                        continue
                kind = event_kind(code)
                if kind is not None:
                    found.append(MeterEvent(kind, code, t))
            if entries:
                newest_t = max(t for t, _ in entries)
                if newest_t > last_t:
                    self.event_marks[log] = (newest_t, sum(t == newest_t for t, _ in entries))
                elif newest_t == last_t:
                    self.event_marks[log] = (last_t, max(count, at_last))
        found.sort(key=lambda e: e.t)
        return found

    def _log_entries(self, log: Obis, timeout_s: float | None) -> list[tuple[int, int]]:
        """(t, code) of every entry of one profile generic, oldest first ([] if absent)."""
        if log in self._absent:
            return []
        try:
            if log not in self._event_columns:
                capture = self._get(7, log, 3, timeout_s)
                self._event_columns[log] = cosem.event_columns(capture)
            if self._deviation_min is None:
                self._deviation_min = self._clock_deviation(timeout_s)
            buffer = self._get(7, log, 2, timeout_s)
        except DeviceException as exc:
            if exc.code in cosem.ABSENT_RESULTS:
                self._absent.add(log)
                return []
            raise
        clock_col, code_col = self._event_columns[log]
        return cosem.event_entries(buffer, clock_col, code_col, self._deviation_min)

    def _clock_deviation(self, timeout_s: float | None) -> int:
        """The meter's time_zone (minutes local to UTC): for stamps without a deviation."""
        try:
            return self._get(8, cosem.CLOCK, 3, timeout_s).integer
        except DeviceException:
            return 0

    def close(self, *, timeout_s: float | None = None) -> None:
        """Release the association and the link (best effort: errors are swallowed)."""
        self._active.close(timeout_s=timeout_s)


def probe(transport: Transport, address: int, *, timeout_s: float,
          clock: Clock | None = None) -> str | None:
    """The serial of the meter at ``address`` via the public client (no password).

    None: nothing answered the SNRM. "": a meter answered but would not give
    its serial (the association or the GET was refused).
    """
    meter = DlmsMeter(transport, address, password=None, client_address=PUBLIC_CLIENT,
                      clock=clock)
    try:
        return meter.read_serial(timeout_s=timeout_s)
    except TimeoutError_:
        if meter.link_seen:
            return ""
        return None
    except (DlmsAssociationError, DeviceException):
        return ""
    finally:
        meter.close(timeout_s=timeout_s)


__all__ = ["METER_READER_CLIENT", "PUBLIC_CLIENT", "UTILITY_SETTINGS_CLIENT", "DlmsMeter",
           "DlmsSecurity", "MeterEvent", "event_kind", "probe"]
