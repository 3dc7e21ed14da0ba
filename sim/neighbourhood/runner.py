"""One gateway's month: the REAL ``agent.runtime.Runtime`` driven single-threaded.

Each turn of the loop takes the next instant (a scheduled world event, a meter due
on a bus, or 0.1 s later when the agent has work queued), moves true time
and the agent's clock there, fires what is due (faults, payments, head-end
commands), lets each bus poll what is due (``SimBus.service``, which moves the
clock by line time), and, when the agent has something to do or a poll interval
has passed, calls ``runtime.step()``. Afterwards it reads what the agent committed
(``observe``) and judges every relay it asked to open (``judge``).

The runtime ticks once a second; here it ticks about once a poll cycle, which is
what costs: readings are handled a few seconds after the cycle's polls, in a step
whose tick forms all their messages; a step 0.1 s after the last one (PUBACKs,
relay results) does not tick; readings of a meter off the poll grid are handled
at once through the runtime's ``_handle`` and sent with the next cycle.
"""

from __future__ import annotations

import heapq
import itertools
import json
import queue
import random
import sqlite3
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from agent.buffer.store import LANE_READINGS
from agent.clock import SimClock
from agent.config import BusConfig, Config, MeterConfig
from agent.control import ControlRequest
from agent.drivers.events import BusEvent, ReadingTaken
from agent.drivers.reading import Reading
from agent.runtime import Runtime
from sim.neighbourhood.agentcfg import ALERT_LEVELS, MIN_NOTICE_H, PAYMENT_OUTAGE_H, write_config
from sim.neighbourhood.consumers import Consumers
from sim.neighbourhood.faults import FaultDriver
from sim.neighbourhood.headend import HeadEnd, Pending
from sim.neighbourhood.judge import BootTruth, Judge, PolicyTruth
from sim.neighbourhood.lifecycle import Lifecycle
from sim.neighbourhood.observe import Observer
from sim.neighbourhood.plan import (
    SETTLE_S,
    GatewaySpec,
    WorldPlan,
    make_faults,
    make_households,
)
from sim.neighbourhood.simbus import SimBus
from sim.neighbourhood.simlink import Broker, SimLink
from sim.neighbourhood.world import HOLIDAYS, HOUR_S, Calendar, Household, season_pct

QUICK_S = 0.1  # the next step when work is queued: under the runtime's 1 s tick
LIVE_FLUSH_S = 6.0  # readings are handled this long after the last of a cycle: the
# outbox's 5 s live flush then forms them all in that step's tick
EPSILON_S = 1e-6  # past a due time by this much, whatever the float rounding
FLUSH_STEPS = 200  # at the end: steps to empty the outbox (a backlog drains in a few)
DISK_SLACK_BYTES = 4096  # over [store] max_bytes by less than this is not judged
FLUSH_EVERY_S = 6.0  # past LIVE_FLUSH_S, so live readings are formed at once
MAX_UNEXPECTED = 20  # more agent exceptions than this and the run stops
CLOCK_WINDOW_S = 300


class GatewaySim:
    def __init__(self, plan: WorldPlan, spec: GatewaySpec, workdir: Path) -> None:
        self.plan, self.spec = plan, spec
        self.rng = random.Random(spec.seed)
        self.cal = Calendar(HOLIDAYS)
        self.season = season_pct(plan.start_s, self.cal)
        self.households = make_households(spec, self.rng, plan.start_s, plan.protocols)
        self.by_meter = {hh.meter: hh for hh in self.households}
        self.account_of = {hh.meter: hh.account for hh in self.households}
        self.faults = make_faults(plan, spec, self.rng, self.households)
        self.cfg, cmd_key, token_key = write_config(plan, spec, self.households, workdir)
        self.db_path = Path(self.cfg.gateway.data_dir) / "agent.sqlite3"
        self._now = float(plan.start_s)
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self.headend = HeadEnd(self, spec.id, cmd_key)
        self.broker = Broker(self, self.headend, "gw", spec.id)
        self.consumers = Consumers(self, self.households, token_key,
                                   random.Random(self.rng.getrandbits(63)), self.cal)
        self.obs = Observer()
        self.judge = Judge(self.cal, PolicyTruth(plan.emergency_credit, ALERT_LEVELS,
                                                 MIN_NOTICE_H, PAYMENT_OUTAGE_H,
                                                 plan.max_disconnects_per_hour),
                           plan.poll_s, self.obs)
        self.life = Lifecycle(self)
        self.drive = FaultDriver(self)
        self.rt: Runtime | None = None
        self.clock: SimClock | None = None
        self.buses: dict[str, SimBus] = {}
        self.boot = BootTruth(0, plan.start_s, 0)
        self.controls: list[tuple[ControlRequest, str, str, str, int]] = []
        self._replies_done = 0
        self._last_full = -1e18
        self._quick = False
        self._flush_at: float | None = None
        self._readings_at: float | None = None  # the last reading queued since a step
        self._batch = 0  # readings queued since a step
        # what happened, for the checks and the report
        self.served: list[tuple[int, int, int, str, int, int, int, str | None]] = []
        self.coil_log: list[tuple[int, str, bool]] = []
        self.link_log: list[tuple[int, str]] = []
        self.tampers: list[tuple[int, str, str, int]] = []  # t, meter, kind, code (world)
        self.posted_tampers: list[tuple[int, str, int]] = []  # t, meter, code (bus -> agent)
        self.token_results: list[tuple[int, str, str, str, dict[str, Any]]] = []
        self.steps = 0
        self.disk_peak = 0
        self.disk_over: list[tuple[int, int, int]] = []  # t, bytes held, of which readings

    # -- scheduling -------------------------------------------------------------------------
    @property
    def now(self) -> int:
        return int(self._now)

    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (t, next(self._order), fn))

    def randint(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def advance_us(self, micros: int) -> None:
        seconds = micros / 1_000_000  # advance_s, inline: the buses call it per frame
        self._now += seconds
        if self.clock is not None:
            self.clock.advance(seconds)

    def advance_s(self, seconds: float) -> None:
        self._now += seconds
        if self.clock is not None:
            self.clock.advance(seconds)

    # -- the world, for the buses (simbus.Field) -------------------------------------------
    def household(self, meter_id: str) -> Household | None:
        hh = self.by_meter.get(meter_id)
        if hh is not None and int(self._now) > hh.last_t:  # else advance has nothing to do
            hh.advance(int(self._now), self.cal, self.season)
        return hh

    def fault(self, meter_id: str) -> tuple[bool, int]:
        return self.drive.meter_state(meter_id, self.now)

    def coil_set(self, meter_id: str, connected: bool) -> None:
        hh = self.household(meter_id)
        if hh is None or hh.connected == connected:
            return
        hh.connected = connected
        self.coil_log.append((self.now, meter_id, connected))
        self.judge.coil(meter_id, connected, self.now)
        if not connected:
            self.consumers.on_cut(hh.account, self.now)

    def served_reading(self, reading: Reading, serial: int) -> None:
        hh = self.by_meter[reading.meter]
        self.served.append((self.now, self.boot.index, self.steps, reading.meter, reading.t,
                            reading.values.get("import_wh", -1), hh.registered_ws,
                            reading.serial))

    def tamper_due(self, meter_id: str) -> list[dict[str, Any]]:
        due = self.drive.tamper.pop(meter_id, [])
        self.posted_tampers += [(self.now, meter_id, int(d["code"])) for d in due]
        return due

    # -- the broker and the head-end (simlink.Host, headend.Host) -----------------------------
    def on_link(self, kind: str, t: int) -> None:
        self.link_log.append((t, kind))
        b = self.boot
        if kind == "connected":
            b.connected, b.conn_heard = True, False
            self.life.network_up(t)
        else:
            if b.connected and b.conn_heard:
                b.he_heard_t = t
            b.connected = b.conn_heard = False

    def on_delivered(self, topic: str, payload: bytes, t: int) -> None:
        b = self.boot
        if topic.endswith("/headend/state"):
            state = json.loads(payload)
            b.he_online, b.he_payments = state.get("online"), state.get("payments")
            b.conn_heard, b.he_heard_t = True, t
        elif payload in self.headend.iat_of:
            if abs(self.headend.iat_of[payload] - (t + self.life.offset_s)) <= CLOCK_WINDOW_S:
                b.confirmed = True

    def send_command(self, payload: bytes) -> None:
        self.broker.command(payload)

    def on_reply(self, cmd: Pending, reply: dict[str, Any], t: int) -> None:
        pass  # the judge goes by what the agent committed (observe), not by arrivals

    def on_event(self, event: dict[str, Any], t: int) -> None:
        if event.get("type") == "low_balance" and isinstance(event.get("acct"), str):
            level = event.get("detail", {}).get("level_pct")
            if isinstance(level, int):
                self.consumers.on_alert(event["acct"], level, t)

    def on_birth(self, state: dict[str, Any], t: int) -> None:
        self.command("ping", {}, "ping")

    def command(self, op: str, args: dict[str, Any], purpose: str) -> bool:
        return self.headend.command(op, args, purpose) is not None

    # -- the households (consumers.Host) ----------------------------------------------------
    def app_payments(self) -> bool:
        return self.headend.online and self.headend.payments

    def cloud_topup(self, acct: str, amount: int, txn: str) -> bool:
        return self.command("topup", {"account": acct, "amount": amount, "txn": txn},
                            f"topup:{txn}")

    def enter_token(self, acct: str, digits: str, note: str) -> None:
        if self.rt is None:  # the concentrator is down: come back in an hour
            self.at(self.now + HOUR_S, lambda: self.enter_token(acct, digits, note))
            return
        req = ControlRequest("token_enter", {"account": acct, "digits": digits})
        self.rt.inbox.put_nowait(req)
        self.controls.append((req, acct, digits, note, self.now))
        self.consumers.entered(acct, digits, note, self.now)

    def lost_controls(self, downtime: int) -> None:
        """The agent died with entries unanswered: the household types it again later."""
        for _req, acct, digits, note, _t in self.controls:
            self.at(self.now + downtime + 600,
                    partial(self.enter_token, acct, digits, note + "+again"))
        self.controls = []

    # -- factories handed to the Runtime ----------------------------------------------------
    def make_link(self, cfg: Config, boot: int, inbox: queue.Queue[Any],
                  **options: Any) -> SimLink:
        link = SimLink(self.broker, cfg, boot, inbox, **options)
        link.before_publish = lambda: self.life.trip("publish")
        return link

    def make_bus(self, bus: BusConfig, meters: list[MeterConfig],
                 post: Callable[[BusEvent], None], *, clock: Any = None,
                 relayed: Any = (), **_dlms: Any) -> SimBus:
        assert self.clock is not None
        def posted(event: BusEvent) -> None:
            post(event)
            if isinstance(event, ReadingTaken):
                self._readings_at = self._now  # the last one: the step waits for it
                self._batch += 1

        sim_bus = SimBus(bus, meters, posted, clock=self.clock, field=self,
                         mode=self.plan.mode, on_switch=self._on_switch, relayed=relayed)
        self.buses[bus.name] = sim_bus
        return sim_bus

    def _on_switch(self, meter: str, connected: bool) -> None:
        if not connected:  # the crash point "switch": as the agent is about to cut supply
            self.life.trip("switch")
        self.judge.ask(meter, connected)

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> None:
        self.drive.schedule()
        self.consumers.open_accounts(self.plan.start_s + 60)
        self.life.boot()
        end = self.plan.end_s + SETTLE_S
        while self.life.unexpected_count() <= MAX_UNEXPECTED:
            dt = self._next_dt()
            if self._now + dt >= end:
                break
            if dt > 0:
                self.advance_s(dt)
            self._fire_due()
            if self.rt is None:
                continue
            for bus in list(self.buses.values()):
                bus.service()
            want = self._want() if self.rt is not None else ""
            if want == "step":
                self._step()
            elif want == "absorb":
                self._absorb()
        self.advance_s(max(0.0, end - self._now))
        while self.rt is None and self._heap and self._heap[0][0] < end + SETTLE_S:
            self.advance_s(max(0.0, self._heap[0][0] - self._now))  # down: wait for the boot
            self._fire_due()
        self._flush()

    def _flush(self) -> None:
        """The end: no more polls; let the agent send what it holds (bounded)."""
        for _ in range(FLUSH_STEPS):
            rt = self.rt
            if rt is None or not self.boot.connected:
                return
            self._fire_due()
            self.advance_s(FLUSH_EVERY_S)
            self._step()
            if self.rt is not None and self.rt.store.backlog()[0] == 0 \
                    and self.rt.inbox.empty():
                return

    def _next_dt(self) -> float:
        """Seconds to the next thing to do (0: now). Computed as differences, in the
        clock's own terms for the buses, so float rounding never stalls the loop."""
        candidates = [self._heap[0][0] - self._now] if self._heap else []
        rt, clock = self.rt, self.clock
        if rt is not None and clock is not None:
            mono = clock.monotonic_s()
            for bus in self.buses.values():
                due = bus.next_due_mono()
                if due is not None:
                    candidates.append(due - mono)
            if self._quick or self._urgent(rt):
                candidates.append(QUICK_S)
            if self._readings_at is not None:
                candidates.append(self._readings_at + LIVE_FLUSH_S - self._now)
            else:
                candidates.append(self._last_full + self.plan.poll_s - self._now)
            if self._flush_at is not None:
                candidates.append(self._flush_at - self._now)
        if not candidates:
            return float("inf")
        dt = min(candidates)
        return 0.0 if dt <= 0 else dt + EPSILON_S

    def _fire_due(self) -> None:
        while self._heap and self._heap[0][0] <= self._now:
            _t, _n, fn = heapq.heappop(self._heap)
            fn()

    def _want(self) -> str:
        """"step" (``runtime.step()``), "absorb" (readings only, no tick) or ""."""
        rt = self.rt
        assert rt is not None
        if self._quick or self._urgent(rt) or (self._flush_at is not None
                                               and self._now >= self._flush_at):
            return "step"
        if self._readings_at is not None:
            if self._now < self._readings_at + LIVE_FLUSH_S:
                return ""
            # A few meters off the poll grid (back from quarantine, say) get no tick of
            # their own: their readings are handled now and sent with the next cycle's.
            grid = self._batch >= max(1, len(self.households) // 4)
            return "step" if grid or self._now >= self._last_full + self.plan.poll_s \
                else "absorb"
        return "step" if self._now >= self._last_full + self.plan.poll_s else ""

    @staticmethod
    def _urgent(rt: Runtime) -> bool:
        """Anything queued but readings (those wait for the rest of the poll cycle and
        for the outbox's live flush, so one tick forms the whole cycle's messages)."""
        return any(not isinstance(e, ReadingTaken) for e in rt.inbox.queue)

    def _step(self) -> None:
        rt = self.rt
        assert rt is not None
        full = self._now - self._last_full >= 1.0
        if full:
            self._last_full = self._now  # this step runs the runtime's tick
            self._flush_at = None
        self.obs.begin_step()
        self.steps += 1
        self._readings_at, self._batch = None, 0
        try:
            rt.step(status_file=False)
        except Exception as exc:  # noqa: BLE001 - the supervisor: a crash, or an agent bug
            self.life.died(exc)
            return
        self._observe(rt)
        with self.life.sim_reads():
            if full and self.plan.store_max_bytes:
                self._disk(rt)
            if full and self._flush_at is None and self.boot.connected and \
                    rt.store.conn.execute("SELECT 1 FROM pending WHERE lane = ? LIMIT 1",
                                          (LANE_READINGS,)).fetchone():
                self._flush_at = self._now + LIVE_FLUSH_S  # the outbox forms them in a few s
        self._quick = self._urgent(rt) or any(b.has_jobs for b in self.buses.values())

    def _disk(self, rt: Runtime) -> None:
        """[store] max_bytes: the bytes held for the uplink may pass the cap only with
        what is never dropped (ledger, events, replies): readings must go first."""
        held = rt.store.size_bytes()
        self.disk_peak = max(self.disk_peak, held)
        # The bound is kept at each tick; what is added after it in the same step (the
        # data_dropped event itself, a ledger entry) may pass it by a little.
        if held <= self.plan.store_max_bytes + DISK_SLACK_BYTES:
            return
        try:
            (readings,) = rt.store.conn.execute(
                "SELECT COALESCE(SUM(bytes), 0) FROM tally WHERE lane IN (?, ?)",
                (LANE_READINGS, LANE_READINGS + 1)).fetchone()
        except sqlite3.Error:  # another store layout: count it all as readings
            readings = held
        if readings and held - readings < self.plan.store_max_bytes:
            self.disk_over.append((self.now, held, int(readings)))

    def _absorb(self) -> None:
        """Handle queued readings as the runtime's own drain does (``_handle``) and make
        the relays follow (``_sync_relays``), without the tick and the publishing of a
        step: the runtime ticks once a second, the simulation once a poll cycle."""
        rt = self.rt
        assert rt is not None
        self.obs.begin_step()
        self.steps += 1
        self._readings_at, self._batch = None, 0
        try:
            while True:
                try:
                    event = rt.inbox.get_nowait()
                except queue.Empty:
                    break
                rt._handle(event)
            rt._sync_relays()  # as the step would: a decision is acted on at once
        except Exception as exc:  # noqa: BLE001 - the supervisor: a crash, or an agent bug
            self.life.died(exc)
            return
        self._observe(rt)

    def _observe(self, rt: Runtime) -> None:
        """After the agent's turn: what it committed (the observer), then the judge;
        the simulation's own reads, never a crash point."""
        with self.life.sim_reads():
            self.obs.scan(rt.store.conn, self.now, self.boot.index, self.life.offset_s)
            self._after_step(rt)

    def _after_step(self, rt: Runtime) -> None:
        still: list[tuple[ControlRequest, str, str, str, int]] = []
        for item in self.controls:
            try:
                answer = item[0].answer.get_nowait()
            except queue.Empty:
                still.append(item)
                continue
            self.token_results.append((self.now, item[1], item[2], item[3], answer))
        self.controls = still
        for _t, reply in self.obs.replies[self._replies_done:]:
            cmd = self.headend.issued.get(str(reply.get("id")))
            if cmd is not None:
                self.judge.accepted(cmd.op, cmd.args, reply)
        self._replies_done = len(self.obs.replies)
        reasons: dict[str, str] = {}
        if self.judge.asked:
            reasons = dict(rt.store.conn.execute("SELECT id, relay_reason FROM meters"))
        closed = {m: hh.connected for m, hh in self.by_meter.items()}
        self.judge.judge_step(self.now, self.boot, reasons, closed, self.account_of)

    def final_conn(self) -> sqlite3.Connection:
        """The agent's store, read after the run (its own connection if it is up)."""
        if self.rt is not None:
            return self.rt.store.conn
        return sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)
