"""Applying the seeded plan: link, meter and head-end faults at their true times.

The head-end's own behaviour in an outage follows the seeds' stories: when
payments have been down for 12 hours it declares a moratorium for every account
(as Lucknow's utility did) until payments are back, plus a day.
"""

from __future__ import annotations

import json
from functools import partial
from typing import TYPE_CHECKING, Any

from sim.neighbourhood.plan import Fault
from sim.neighbourhood.world import DAY_S, HOUR_S, mix64

if TYPE_CHECKING:
    from sim.neighbourhood.runner import GatewaySim

OUTAGE_MORATORIUM_AFTER_S = 12 * HOUR_S


class FaultDriver:
    def __init__(self, sim: GatewaySim) -> None:
        self.sim = sim
        self.silent: dict[str, int] = {}
        self.corrupt: dict[str, tuple[int, int]] = {}
        self.tamper: dict[str, list[dict[str, Any]]] = {}

    def schedule(self) -> None:
        sim = self.sim
        for fault in sim.faults:
            sim.at(fault.t, partial(self.fault, fault))
        for fault in sim.plan.headend:
            sim.at(fault.t, partial(self.headend_fault, fault))

    def meter_state(self, meter: str, now: int) -> tuple[bool, int]:
        end, pct = self.corrupt.get(meter, (0, 0))
        return self.silent.get(meter, 0) > now, pct if end > now else 0

    # -- the gateway's faults -----------------------------------------------------------------
    def fault(self, f: Fault) -> None:
        sim, m = self.sim, f.target
        if f.kind == "outage":
            sim.broker.set_up(False)
            sim.at(f.end, lambda: sim.broker.set_up(True))
        elif f.kind == "stuck":
            link = sim.broker.link
            sim.broker.stuck = link is not None and link.connected
        elif f.kind == "ackloss":
            sim.broker.ackloss += 1
        elif f.kind == "crash":
            sim.life.arm(f)
        elif f.kind == "silent":
            self.silent[m] = max(self.silent.get(m, 0), f.end)
        elif f.kind == "corrupt":
            self.corrupt[m] = (f.end, f.value)
        elif f.kind == "reset":
            hh = sim.household(m)
            assert hh is not None
            hh.reset_register(sim.now)
        elif f.kind == "replace":  # off the bus while the electrician swaps it
            self.silent[m] = max(self.silent.get(m, 0), f.t + f.value)
            sim.at(f.t + f.value, lambda: self._replace(m, int(f.text)))
        elif f.kind == "magnet":
            self._magnet(m, True)
            sim.at(f.end, lambda: self._magnet(m, False))
        elif f.kind == "cover":
            self._tamper(m, "cover_open", 251)
        elif f.kind == "override":
            args: dict[str, Any] = {"meter": m, "action": f.text, "until": f.value}
            if not sim.command("relay", args, "override"):
                sim.at(sim.now + HOUR_S, lambda: self.fault(f))

    def _replace(self, meter: str, new_wh: int) -> None:
        sim = self.sim
        hh = sim.household(meter)
        assert hh is not None
        hh.replace(sim.now, 10_000_000 + mix64(hh.seed + sim.now) % 90_000_000, new_wh)

    def _magnet(self, meter: str, on: bool) -> None:
        hh = self.sim.household(meter)
        assert hh is not None
        hh.magnet = on
        self._tamper(meter, "magnet", 201 if on else 202)

    def _tamper(self, meter: str, kind: str, code: int) -> None:
        """The meter logs it; the bus reads the log at the next good poll."""
        self.tamper.setdefault(meter, []).append(
            {"kind": kind, "code": code, "t": self.sim.now + self.sim.life.offset_s})
        self.sim.tampers.append((self.sim.now, meter, kind, code))

    # -- the head-end's ----------------------------------------------------------------------
    def headend_fault(self, f: Fault) -> None:
        sim = self.sim
        he = sim.headend
        if f.kind == "payments_down":
            he.payments = False
            self._publish_state()
            sim.at(f.t + OUTAGE_MORATORIUM_AFTER_S, lambda: self._outage_moratorium(f))
            sim.at(f.end, lambda: self._payments_back(f))
        elif f.kind == "headend_offline":
            he.set_online(False)
            sim.broker.publish_headend_state(b'{"online": false}')  # its Last Will
            sim.at(f.end, self._headend_back)
        elif f.kind == "moratorium":
            args: dict[str, Any] = {"until": f.value, "reason": f.target}
            if f.text != "*":
                args["accounts"] = f.text.split(",")
            if not sim.command("moratorium", args, f"moratorium:{f.target}"):
                sim.at(sim.now + HOUR_S, lambda: self.headend_fault(f))

    def _publish_state(self) -> None:
        he = self.sim.headend
        self.sim.broker.publish_headend_state(json.dumps(
            {"online": he.online, "payments": he.payments}).encode())

    def _headend_back(self) -> None:
        self.sim.headend.set_online(True)
        self._publish_state()

    def _outage_moratorium(self, f: Fault) -> None:
        now = self.sim.now
        if now < f.end:
            self.headend_fault(Fault(now, "moratorium", "payments_down",
                                     value=now + 30 * DAY_S, text="*"))

    def _payments_back(self, f: Fault) -> None:
        self.sim.headend.payments = True
        self._publish_state()
        if f.end - f.t > OUTAGE_MORATORIUM_AFTER_S:
            now = self.sim.now
            self.headend_fault(Fault(now, "moratorium", "payments_restored",
                                     value=now + DAY_S, text="*"))
