"""A meter's own breaker as a ``Relay`` (relay kind ``meter``, CONTRACT 2): DLMS
class 70 disconnect control, through the meter's driver (``RelayDriver`` in
``agent/drivers/driver.py``: ``relay_set`` / ``relay_state``).

The bus that reads the meter owns the driver and switches it, one action at a
time (``switch_and_confirm`` in ``base.py``); this backend only speaks for it, so
``close`` lets go of nothing: the driver's association is the bus's to release.
"""

from __future__ import annotations

from agent.drivers.driver import MeterDriver, RelayDriver
from agent.errors import RelayError


class MeterRelay:
    def __init__(self, driver: RelayDriver, name: str, *,
                 timeout_s: float | None = None) -> None:
        self.name = name
        self._driver = driver
        self._timeout_s = timeout_s  # what the meter may take to start answering

    def switch(self, connect: bool) -> None:
        self._driver.relay_set(connect, timeout_s=self._timeout_s)

    def read(self) -> str:
        return self._driver.relay_state(timeout_s=self._timeout_s)

    def close(self) -> None:
        pass


def meter_relay(driver: MeterDriver, name: str, *, timeout_s: float | None = None) -> MeterRelay:
    """The relay of the meter ``driver`` reads; RelayError if its driver has none (most
    Modbus and IEC meters)."""
    if not isinstance(driver, RelayDriver):
        raise RelayError("this meter's driver has no relay (relay kind 'meter')")
    return MeterRelay(driver, name, timeout_s=timeout_s)
