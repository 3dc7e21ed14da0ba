"""The energy and load model every simulated meter shares, whatever its protocol.

A household's load follows a daily profile (low at night, a morning peak, a
high evening peak) with noise and appliance bursts, over simulated time that
runs ``speed`` simulated seconds per real second (0 freezes it), scaled by
``load_scale``. Energy is kept as exact integers (watt-milliseconds); with the
relay open the load is cut (power 0, energy does not grow).

Faults a technician meets in the field are methods here, so the fault
injector (``sim.faults``) can apply them to any protocol's meter:
``reset_register`` (the register restarts at 0, same serial), ``replace``
(another meter at the same address: new serial, register near 0) and
``silent`` (the meter stops answering; each protocol's line server checks it).
"""

from __future__ import annotations

import hashlib
import math
import random
from typing import Final

from agent.clock import Clock

# One integration step at most this long (simulated): the profile is hourly,
# appliance bursts last minutes. A long gap is cut into at most MAX_STEPS
# steps (their length grows instead), so a huge --speed stays bounded.
STEP_S: Final = 60
MAX_STEPS: Final = 1440
WMS_PER_WH: Final = 3_600_000  # watt-milliseconds in a watt-hour
REPLACED_MAX_WH: Final = 50  # a new meter arrives with a few Wh from the factory test

# A household's mean load (W at load_scale 1) by local hour: low at night,
# a morning peak (cooking, water heating), a low day, a high evening peak
# (lights, TV, cooking, fans), interpolated linearly between hours.
HOUSEHOLD_PROFILE_W: Final = (
    180, 150, 140, 140, 150, 260, 650, 1100, 950, 600, 420, 380,
    400, 420, 380, 360, 420, 700, 1300, 1600, 1500, 1100, 650, 300,
)  # fmt: skip


def serial_number(seed: int, meter_id: str) -> int:
    """A stable 8-digit serial for a simulated meter."""
    digest = hashlib.sha256(f"{seed}:{meter_id}".encode()).digest()
    return 10_000_000 + int.from_bytes(digest[:4], "big") % 90_000_000


class LoadModel:
    """One consumer's load and the meter's energy registers."""

    def __init__(
        self,
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
        self.serial = serial
        self.silent = False
        self._clock = clock
        self._rng = random.Random(seed)
        self._speed = speed
        self._load_scale = load_scale
        self._utc_offset_s = utc_offset_s
        start_wh = import_wh if import_wh is not None else self._rng.randint(50_000, 5_000_000)
        self._import_wms = start_wh * WMS_PER_WH
        self._export_wms = export_wh * WMS_PER_WH
        self._mono_s = clock.monotonic_s()
        self._sim_s = clock.time_s()  # simulated wall time, moves at ``speed``
        self._burst_until_s = 0.0  # an appliance (kettle, iron) running until then
        self._pf = 0.95
        self.connected = True
        self._power_w = self._load_w(self._sim_s)

    @property
    def import_wh(self) -> int:
        return self._import_wms // WMS_PER_WH

    @property
    def export_wh(self) -> int:
        return self._export_wms // WMS_PER_WH

    @property
    def power_w(self) -> float:
        return self._power_w if self.connected else 0.0

    @property
    def sim_time_s(self) -> float:
        return self._sim_s

    def _load_w(self, sim_s: float) -> float:
        hour = ((sim_s + self._utc_offset_s) % 86_400) / 3600
        h0 = int(hour)
        a, b = HOUSEHOLD_PROFILE_W[h0], HOUSEHOLD_PROFILE_W[(h0 + 1) % 24]
        base = a + (b - a) * (hour - h0)
        if sim_s >= self._burst_until_s and self._rng.random() < 0.02:
            self._burst_until_s = sim_s + self._rng.uniform(60, 300)
        burst = 1500.0 if sim_s < self._burst_until_s else 0.0
        self._pf = min(0.99, max(0.85, self._pf + self._rng.uniform(-0.01, 0.01)))
        return max(0.0, (base * self._rng.uniform(0.85, 1.15) + burst) * self._load_scale)

    def advance(self) -> None:
        """Integrate energy from the last call to the clock's now."""
        now_s = self._clock.monotonic_s()
        sim_dt_s = max(0.0, now_s - self._mono_s) * self._speed
        self._mono_s = now_s
        steps = min(MAX_STEPS, math.ceil(sim_dt_s / STEP_S))
        for _ in range(steps):
            dt_s = sim_dt_s / steps
            self._sim_s += dt_s
            self._power_w = self._load_w(self._sim_s)
            if self.connected:
                self._import_wms += round(self._power_w * dt_s * 1000)

    def measurements(self) -> tuple[float, float, float, float]:
        """(volts, amps, watts, pf) as the meter would show them now."""
        volts = 230.0 + self._rng.gauss(0.0, 1.2)
        watts = self.power_w
        amps = watts / (volts * self._pf)
        return volts, amps, watts, self._pf if watts > 0 else 1.0

    def frequency_hz(self) -> float:
        return 50.0 + self._rng.gauss(0.0, 0.02)

    def snapshot(self) -> dict[str, int | bool]:
        return {
            "import_wh": self.import_wh,
            "export_wh": self.export_wh,
            "p_w": round(self.power_w),
            "connected": self.connected,
        }

    # -- faults (sim.faults) ---------------------------------------------------
    def reset_register(self) -> None:
        """The register restarts at 0 (a firmware fault or a tampered meter); same serial."""
        self.advance()
        self._import_wms = 0
        self._export_wms = 0

    def replace(self) -> int:
        """Another meter at this address: a new serial, its register near 0. Returns it."""
        self.advance()
        self.serial = 10_000_000 + (self.serial - 10_000_000 + 1 + self._rng.randrange(
            1, 1_000_000)) % 90_000_000
        self._import_wms = self._rng.randint(0, REPLACED_MAX_WH) * WMS_PER_WH
        self._export_wms = 0
        return self.serial
