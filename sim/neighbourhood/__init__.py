"""A neighbourhood in a bottle: deterministic simulation of the agent over months.

    python -m sim.neighbourhood --meters 200 --days 30 --seed N [--report DIR]
                                [--plant-bug NAME] [--mode direct|codec] [--poll-min M]
                                [--gateways G] [--jobs J] [--protocols modbus|mixed]

The REAL ``agent.runtime.Runtime`` (real store, ledger, policy, outbox, delivery,
dispatcher) runs on a ``SimClock`` with a simulated bus (``simbus``) and broker
(``simlink``) injected, single-threaded, driven by ``runner.GatewaySim`` through a
seeded plan of faults (``plan``). ``checks`` verifies every invariant of
DOMAIN.md at the end and ``judge`` every disconnection as it happens;
``report`` writes text, JSON and a PNG (``plot``). docs/simulation.md explains it
all; the same seed gives the same bytes.

Modules: world (truth: calendar, tariff, households), plan (the seeded schedule),
agentcfg (board config and keys), simbus (the bus scheduler stand-in), simline (the
RS-485 line and its devices), simlink (broker and link), headend, consumers, faults,
lifecycle (boots and crashes), observe, judge, runner, checks, report, png, plot,
plant (bugs planted on purpose).
"""

from __future__ import annotations

import gc
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.neighbourhood.plan import GatewaySpec, WorldPlan, make_world


@dataclass(frozen=True, slots=True)
class Options:
    seed: int
    meters: int = 200
    days: int = 30
    poll_min: int = 30
    mode: str = "direct"
    plant: str = ""
    gateways: int = 0  # 0: one per METERS_PER_GATEWAY
    jobs: int = 0  # 0: min(gateways, CPUs, 2)
    protocols: str = "modbus"  # mixed: Modbus, IEC 62056-21 and DLMS buses (plan.PROTOCOLS)

    def replay_command(self) -> str:
        cmd = (f"python -m sim.neighbourhood --meters {self.meters} --days {self.days} "
               f"--seed {self.seed}")
        if self.poll_min != 30:
            cmd += f" --poll-min {self.poll_min}"
        if self.mode != "direct":
            cmd += f" --mode {self.mode}"
        if self.gateways:
            cmd += f" --gateways {self.gateways}"
        if self.plant:
            cmd += f" --plant-bug {self.plant}"
        if self.protocols != "modbus":
            cmd += f" --protocols {self.protocols}"
        return cmd


METERS_PER_GATEWAY = 50  # one concentrator per building's meter room or per lane


@dataclass(frozen=True, slots=True)
class GatewayOutcome:
    id: str
    violations: tuple[str, ...]
    facts: dict[str, Any]  # JSON-ready, deterministic
    message_sha256: str
    plot: dict[str, Any]  # the most eventful household's series
    samples: dict[str, list[int]]  # raw latencies, for the totals' percentiles
    wall_s: float  # not in the JSON: it is not deterministic
    readings: int


@dataclass(frozen=True, slots=True)
class RunResult:
    options: Options
    plan: WorldPlan
    gateways: tuple[GatewayOutcome, ...]
    wall_s: float

    @property
    def violations(self) -> list[str]:
        return [f"{g.id}: {v}" for g in self.gateways for v in g.violations]


class _Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        key = str(record.msg).split(" ", 1)[0]  # "event=mqtt_disconnected"
        self.counts[key] = self.counts.get(key, 0) + 1


@contextmanager
def agent_warnings() -> Iterator[dict[str, int]]:
    """The agent's warnings, counted by event instead of printed (and its info logs off:
    they cost time and say nothing the report does not)."""
    logger = logging.getLogger("agent")
    handler = _Counter()
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    try:
        yield handler.counts
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def run_gateway(plan: WorldPlan, index: int, workdir: str) -> GatewayOutcome:
    """One gateway's run, in this process (a pool worker, or the caller)."""
    started = time.perf_counter()
    spec = plan.gateways[index]
    # The run keeps every observation of the month (hundreds of thousands of small
    # records) for the end checks, and the cyclic collector would scan them again and
    # again. A gateway's run makes almost no cyclic garbage (a few hundred objects a
    # month, measured), so the collector is off while it runs and collects once after;
    # nothing the run computes depends on when collection happens.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _run_gateway(plan, spec, workdir, started)
    finally:
        if was_enabled:
            gc.enable()
        gc.collect()


def _run_gateway(plan: WorldPlan, spec: GatewaySpec, workdir: str,
                 started: float) -> GatewayOutcome:
    from sim.neighbourhood.checks import check
    from sim.neighbourhood.plant import planted
    from sim.neighbourhood.report import gateway_facts
    from sim.neighbourhood.runner import GatewaySim

    with planted(plan.plant), agent_warnings() as warnings:
        sim = GatewaySim(plan, spec, Path(workdir) / spec.id)
        sim.run()
        violations, found = check(sim)
        facts, plot, samples = gateway_facts(sim, found)
        facts["agent_warnings"] = dict(sorted(warnings.items()))
        conn = sim.final_conn()
        conn.close()
    return GatewayOutcome(spec.id, tuple(violations), facts, sim.headend.hash.hexdigest(),
                          plot, samples, time.perf_counter() - started, len(sim.served))


def run(options: Options) -> RunResult:
    gateways = options.gateways or max(1, -(-options.meters // METERS_PER_GATEWAY))
    plan = make_world(options.seed, options.meters, options.days, gateways=gateways,
                      poll_s=options.poll_min * 60, mode=options.mode, plant=options.plant,
                      protocols=options.protocols)
    jobs = options.jobs or min(len(plan.gateways), os.cpu_count() or 1, 2)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="neighbourhood-") as workdir:
        if jobs <= 1:
            outcomes = [run_gateway(plan, i, workdir) for i in range(len(plan.gateways))]
        else:
            # imported here, before the workers fork: each would import them again
            from sim.neighbourhood import checks, plant, report, runner  # noqa: F401
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                futures = [pool.submit(run_gateway, plan, i, workdir)
                           for i in range(len(plan.gateways))]
                outcomes = [f.result() for f in futures]
    return RunResult(options, plan, tuple(outcomes), time.perf_counter() - started)
