"""Boots and crashes of the simulated agent process.

A crash abandons the Runtime mid-step without any shutdown. Where it happens is
part of the seeded plan (``Fault.text = point:count:how``):
  sql:N      a sqlite3 progress handler interrupts the N-th check of a statement
             (every ``PROGRESS_EVERY`` VM instructions), inside or outside a
             transaction, and every statement after it (the process is gone);
  publish:N  the N-th MQTT publish raises; switch:N the N-th relay switch *open*
             raises (the moment between a committed decision and the cut).
Then the lost transaction is rolled back, what was committed is read (``observe``)
and the connection closed; the link dies and the broker publishes the Last Will;
the inbox and everything in it is gone. After the downtime a new Runtime opens
the same data dir (boot + 1).

Clocks (``how``): a process crash keeps the kernel clock (and whether NTP had
synchronised it); a power cut restores it from fake-hwclock, behind by the
downtime and up to an hour, and NTP steps it right once the network is back;
``ahead:S`` boots with the clock S seconds fast (a bad RTC). The agent learns of
NTP only through the callable the runtime gives ``Disconnection`` (injected here).
"""

from __future__ import annotations

import queue
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

from agent.clock import SimClock
from agent.config import Config
from agent.drivers.bus import BusScheduler
from agent.runtime import Runtime
from agent.uplink.mqtt import MqttLink
from sim.neighbourhood.judge import BootTruth
from sim.neighbourhood.observe import Observer
from sim.neighbourhood.plan import Fault
from sim.neighbourhood.simlink import SimLink
from sim.neighbourhood.world import HOUR_S

if TYPE_CHECKING:
    from sim.neighbourhood.runner import GatewaySim

PROGRESS_EVERY = 97  # sqlite VM instructions between progress-handler calls
SYSTEMD_RESTART_S = 5  # an unexpected exception: systemd restarts the agent
# a publish crash that found no publish within an hour, or a switch crash that found no
# relay to open within three days, dies at the next SQL statement instead
FORCE_AFTER_S = {"publish": HOUR_S, "switch": 72 * HOUR_S}


class SimCrash(Exception):  # noqa: N818 - not an error: the simulated process dying
    """The simulated process dies here."""


class Lifecycle:
    def __init__(self, sim: GatewaySim) -> None:
        self.sim = sim
        self.crash: Fault | None = None
        self.count = 0
        self.crashing = False
        self.quiet = False  # the simulation's own statements run (sim_reads)
        self.offset_s = 0  # the agent's wall clock minus true time
        self.ntp = False  # synchronised since power-on
        self.ntp_pending = False
        self.crashes: list[tuple[int, int, str, str]] = []  # t, boot, point, how
        self.crash_steps: list[tuple[int, int, int]] = []  # t, boot, the step that died
        self.downtime: list[tuple[int, int]] = []
        self.errors: list[str] = []
        self.consistency: list[str] = []
        self.verified: dict[str, tuple[int, int]] = {}  # account -> (n, balance) checked

    # -- where a crash strikes ----------------------------------------------------------------
    def trip(self, point: str) -> None:
        crash = self.crash
        if crash is None or not crash.text.startswith(point + ":"):
            return
        if self.sim.now >= self.sim.plan.end_s:  # the settling hours have no faults
            self.crash = None
            return
        self.count += 1
        if self.count >= int(crash.text.split(":")[1]):
            self.crashing = True
            raise SimCrash(point)

    @contextmanager
    def sim_reads(self) -> Iterator[None]:
        """The simulation's own statements on the agent's connection (the observer, the
        checks): never a crash point, and not counted towards one."""
        self.quiet = True
        try:
            yield
        finally:
            self.quiet = False

    def _progress(self) -> int:
        if self.quiet:
            return 0
        if self.crashing:
            return 1  # everything after the crash point fails too: the process is gone
        if self.sim.now >= self.sim.plan.end_s:
            return 0
        try:
            self.trip("sql")
        except SimCrash:
            return 1
        return 0

    def arm(self, fault: Fault) -> None:
        rt = self.sim.rt
        if rt is None:
            return
        self.crash, self.count = fault, 0
        if fault.text.startswith("sql:"):
            rt.store.conn.set_progress_handler(self._progress, PROGRESS_EVERY)
        else:
            self.sim.at(self.sim.now + FORCE_AFTER_S[fault.text.split(":")[0]],
                        lambda: self._force(fault))

    def _force(self, fault: Fault) -> None:
        rt = self.sim.rt
        if self.crash is fault and rt is not None and self.sim.now < self.sim.plan.end_s:
            self.crash = Fault(fault.t, fault.kind, value=fault.value,
                               text="sql:1:" + fault.text.split(":", 2)[2])
            rt.store.conn.set_progress_handler(self._progress, 1)

    # -- dying ----------------------------------------------------------------------------------
    def died(self, exc: BaseException) -> None:
        sim = self.sim
        rt = sim.rt
        assert rt is not None
        fault = self.crash
        if (self.crashing or isinstance(exc, SimCrash)) and fault is not None:
            point, _, how = fault.text.split(":", 2)
            downtime = fault.value
        else:
            tb = "".join(traceback.format_exception(exc)[-3:]).strip().replace("\n", " | ")
            self.errors.append(f"t={sim.now} boot {sim.boot.index}: the agent raised "
                               f"{type(exc).__name__}: {exc} [{tb[-600:]}]")
            point, how, downtime = "exception", "process", SYSTEMD_RESTART_S
        conn = rt.store.conn
        conn.set_progress_handler(None, 0)
        if conn.in_transaction:
            conn.execute("ROLLBACK")  # what was not committed is lost, as at a power cut
        sim.obs.scan(conn, sim.now, sim.boot.index, self.offset_s)
        conn.close()
        if isinstance(rt.link, SimLink):
            sim.broker.detach(rt.link, clean=False)
        sim.judge.forget_step()
        self.crashes.append((sim.now, sim.boot.index, point, how))
        self.crash_steps.append((sim.now, sim.boot.index, sim.steps))
        sim.rt, sim.clock, sim.buses = None, None, {}
        self.crash, self.crashing = None, False
        sim.on_link("disconnected", sim.now)
        if how == "power":
            self.offset_s = -(downtime + sim.rng.randrange(HOUR_S))  # fake-hwclock
            self.ntp = False
        elif how.startswith("ahead:"):
            self.offset_s = int(how.split(":")[1])
            self.ntp = False
        self.ntp_pending = False
        self.downtime.append((sim.now, sim.now + downtime))
        sim.lost_controls(downtime)
        sim.at(sim.now + downtime, self.boot)

    def unexpected_count(self) -> int:
        return len(self.errors)

    # -- booting --------------------------------------------------------------------------------
    def boot(self) -> None:
        sim = self.sim
        sim.clock = clock = SimClock(float(sim.now + self.offset_s))
        clock.jump_wall(sim._now - sim.now)  # the fraction of a second, on the wall clock
        # SimLink and SimBus stand in for MqttLink and BusScheduler by their public surface
        # (duck typing): the casts say so to the type checker.
        rt = Runtime(sim.cfg, clock=clock,
                     link_factory=cast(Callable[[Config, int, "queue.Queue[Any]"], MqttLink],
                                       sim.make_link),
                     bus_factory=cast(Callable[..., BusScheduler], sim.make_bus),
                     control=False, clock_synchronised=lambda: self.ntp)
        rt.store.conn.execute("PRAGMA synchronous = OFF")  # power cuts are simulated instead
        # a larger page cache than the agent keeps on a board: speed only, same results
        rt.store.conn.execute("PRAGMA cache_size = -32768")
        # and fewer, larger checkpoints (the WAL grows to 40 MB, not 4 MB, before its
        # pages are copied back): speed only, the same commits
        rt.store.conn.execute("PRAGMA wal_autocheckpoint = 10000")
        Observer.install(rt.store.conn)
        sim.boot = BootTruth(rt.boot, sim.now, self.offset_s, ntp=self.ntp)
        self._check_store(rt)
        sim.judge.booted(rt.boot, [m for (m,) in rt.store.conn.execute(
            "SELECT id FROM meters WHERE relay_intent = 'open'") if sim.by_meter[m].connected])
        sim.rt = rt
        try:
            rt.start()
        except Exception as exc:  # noqa: BLE001 - the supervisor: record it, restart
            self.died(exc)
            return
        sim.obs.scan(rt.store.conn, sim.now, sim.boot.index, self.offset_s)

    def network_up(self, t: int) -> None:
        if not self.ntp and not self.ntp_pending:
            self.ntp_pending = True
            self.sim.at(t + self.sim.rng.randint(5, 60), self._ntp_sync)

    def _ntp_sync(self) -> None:
        self.ntp_pending = False
        sim = self.sim
        if sim.rt is None or sim.clock is None:
            return
        if self.offset_s:
            sim.clock.jump_wall(-self.offset_s)
            self.offset_s = 0
        self.ntp = True
        sim.boot.offset_s, sim.boot.ntp = 0, True

    def _check_store(self, rt: Runtime) -> None:
        """Crash consistency, each time the agent opens its store. Each account's balance
        is the sum of its entries, and n their count: summed from where the last boot's
        check ended (entries are never changed; the end checks read them all again)."""
        conn = rt.store.conn
        for acct, balance, n in conn.execute("SELECT id, balance, n FROM accounts").fetchall():
            done_n, done_sum = self.verified.get(acct, (0, 0))
            total, count, top = conn.execute(
                "SELECT COALESCE(SUM(amt), 0), COUNT(*), COALESCE(MAX(n), ?) FROM journal "
                "WHERE acct = ? AND n > ?", (done_n, acct, done_n)).fetchone()
            total, count = done_sum + total, done_n + count
            if balance != total or n != count or n != top:
                self.consistency.append(f"boot {rt.boot}: account {acct}: balance {balance} "
                                        f"vs sum {total}, n {n} vs {count} entries, max {top}")
                continue
            self.verified[acct] = (n, balance)
        top = conn.execute("SELECT MAX(seq) FROM outbox").fetchone()[0]
        next_seq = conn.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()[0]
        if top is not None and top >= next_seq:
            self.consistency.append(f"boot {rt.boot}: outbox seq {top} >= next_seq {next_seq}")
