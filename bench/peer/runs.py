"""One measured run of one side (the agent or the peer) on the shared broker.

Both kinds of run start ``sim.meters`` on the run's board config (its own ptys: one
master per pty, so the sides run one after the other), then the side, and read what it
publishes off the ``BrokerCounter``. Everything a run starts is stopped by pid in a
``finally``, and its directory removed.

``live_run`` (bytes per reading, start-up): polls every ``poll_s`` (30 s by default).
The sides poll every meter back to back at the start of each cycle (the agent's bus
scheduler keeps every meter on one grid from its first poll; the peer's per-device
timers all start together), so a cycle's messages arrive within a few seconds of its
start and nothing is sent in between. The window is ``cycles`` whole cycles, from half
a cycle after the first reading message: it cuts between cycles, never inside one.
Why that is the 15-minute figure: each message holds what the bus read before it was
sent (the agent: a LIVE_FLUSH_S window; the peer: one device's poll), so its framing
depends on how long a cycle takes, not on the interval, as long as the interval is
longer than a cycle plus that window. ``framing_ok`` checks it on every message: no
meter appears twice in one message, and every meter once per cycle in the window.

``load_run`` (CPU, reconnect): polls every ``poll_s`` (5 s). After ``warmup_s``: CPU of
the side's process tree over ``window_s``, against the readings that arrived in that
window. Then the broker is stopped for ``outage_s`` and started again on the same port:
the time from its accepting connections to the side's first uplink message, and after
``settle_s`` what was lost or duplicated (``losses``).
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.peer import agent_side, tbgw
from bench.peer.agent_side import Board
from bench.peer.measure import BrokerCounter, Proc, Publish, publish_overhead, rss_kb, tree_cpu_s
from sim.broker import Mosquitto

ROOT = Path(__file__).resolve().parents[2]
FIRST_READING_TIMEOUT_S = 90.0
SIM_READY_TIMEOUT_S = 20.0

Readings = list[tuple[str, int, int]]  # (meter, ts in ms, quantities)


@dataclass(frozen=True)
class Side:
    name: str
    start: Callable[[Path, Path, int], Proc]  # (work dir, board config, broker port)
    readings: Callable[[Publish], Readings | None]
    is_uplink: Callable[[Publish], bool]
    message_key: Callable[[Publish], tuple[str, int] | None]  # a message's id, if it has one
    is_will: Callable[[Publish], bool]  # its Last Will: published by the broker, not by it
    after_first: Callable[[Path, Path, int], int]  # run once its first reading is seen
    is_periodic: Callable[[Publish], bool]  # sent by the clock, every period_s
    period_s: float
    mqtt5: bool  # framing estimate: MQTT 5 adds a property-length byte to a PUBLISH
    quantities: int


AGENT = Side("agent", lambda work, board, port: agent_side.start(work, board),
             agent_side.readings, agent_side.is_uplink, agent_side.message_key,
             agent_side.is_will, agent_side.fund, agent_side.is_periodic, agent_side.PERIOD_S,
             False, agent_side.QUANTITIES)
# The peer sets no Last Will (tb_device_mqtt.py), its messages carry no id, and it keeps
# no accounts.
PEER = Side("peer", tbgw.start, tbgw.readings, tbgw.is_uplink, lambda pub: None,
            lambda pub: False, lambda work, board, port: 0, tbgw.is_periodic,
            tbgw.STATS_PERIOD_S, True, tbgw.QUANTITIES)


@dataclass
class Env:
    """What every run shares: the broker, the counter, a scratch directory."""

    broker: Mosquitto
    counter: BrokerCounter
    scratch: Path


@dataclass
class LiveResult:
    startup_s: float
    messages: int
    readings: int
    complete: int  # readings with every quantity
    payload_topic_bytes: int
    framing_bytes: int
    all_uplink_bytes: int  # every uplink publication of the side in the window
    all_uplink_messages: int
    max_per_meter_in_message: int
    cycles_seen: dict[str, int]  # meter -> readings in the window
    by_topic: dict[str, int]  # topic (the gateway's id left out) -> topic + payload bytes
    funded: int  # accounts topped up after the first reading (agent)
    periodic_sizes: list[int]  # topic + payload of each clock-driven report of the run
    periodic_in_window: int  # bytes of those in the window
    period_s: float  # how often the side sends one (its configured period)
    window_s: float

    @property
    def per_reading_driven(self) -> float:
        """Every uplink byte in the window but the clock-driven ones, per reading."""
        return (self.all_uplink_bytes - self.periodic_in_window) / max(1, self.readings)

    def at_interval(self, meters: int, interval_s: float) -> float:
        """All uplink bytes per reading at ``interval_s`` polls: the reading-driven bytes
        per reading, and the clock-driven reports (their mean measured size, one a
        period) shared by the readings of one period."""
        steady = self.steady_report()
        return self.per_reading_driven + steady * interval_s / self.period_s / meters

    def steady_report(self) -> float:
        """The mean size of the clock-driven reports after the first (the peer's first,
        at start, is smaller: it has no connector statistics yet)."""
        sizes = self.periodic_sizes[1:] or self.periodic_sizes
        return sum(sizes) / len(sizes) if sizes else 0.0

    @property
    def per_reading(self) -> float:
        return self.payload_topic_bytes / max(1, self.readings)


@dataclass
class LoadResult:
    startup_s: float
    window_s: float
    cpu_s: float
    readings: int
    rss_kb: int
    down_s: float
    first_up_s: float | None  # broker up -> first uplink message of the side
    first_reading_s: float | None  # broker up -> first reading message
    first_up_topic: str  # what that first uplink message was
    counter_back_s: float  # broker up -> the counter's own CONNACK (0: it was first)
    funded: int = 0
    loss: dict[str, int] = field(default_factory=dict)

    @property
    def cpu_ms_per_reading(self) -> float:
        return self.cpu_s / max(1, self.readings) * 1000


def _start_sim(work: Path, board_toml: Path, buses: int) -> Proc:
    sim = Proc([sys.executable, "-m", "sim.meters", "-c", str(board_toml)], work / "meters.log",
               cwd=ROOT)
    deadline = time.monotonic() + SIM_READY_TIMEOUT_S
    while not all((work / "tty" / f"rs485-{b}").is_symlink() for b in range(buses)):
        if time.monotonic() > deadline or not sim.alive():
            sim.stop()
            raise RuntimeError(f"sim.meters did not come up:\n{sim.tail()}")
        time.sleep(0.05)
    return sim


def _first(env: Env, side: Side, since_s: float, timeout_s: float,
           want: Callable[[Publish], bool], proc: Proc | None = None) -> Publish | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for pub in env.counter.messages(since_s):
            if side.is_uplink(pub) and want(pub):
                return pub
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{side.name} exited:\n{proc.tail()}")
        time.sleep(0.02)
    return None


def _is_reading(side: Side) -> Callable[[Publish], bool]:
    return lambda pub: bool(side.readings(pub))


def _sleep_until(t_s: float, proc: Proc, side: Side) -> None:
    while (left := t_s - time.monotonic()) > 0:
        if not proc.alive():
            raise RuntimeError(f"{side.name} exited:\n{proc.tail()}")
        time.sleep(min(left, 0.5))


class _Run:
    """The run's directory, simulated meters and side process, all undone by close()."""

    def __init__(self, env: Env, side: Side, board: Board) -> None:
        self.work = Path(tempfile.mkdtemp(prefix=f"{side.name}-", dir=env.scratch))
        self.procs: list[Proc] = []
        self.port = env.broker.port
        self.prepared = 0
        self.board_toml = agent_side.write_board(self.work, env.broker.port, board)
        self.procs.append(_start_sim(self.work, self.board_toml, board.buses))
        self.proc = side.start(self.work, self.board_toml, env.broker.port)
        self.procs.append(self.proc)

    def prepare(self, side: Side) -> None:
        self.prepared = side.after_first(self.work, self.board_toml, self.port)

    def close(self, keep: bool) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        if not keep:
            shutil.rmtree(self.work, ignore_errors=True)


def live_run(env: Env, side: Side, board: Board, cycles: int, keep: bool = False) -> LiveResult:
    run = _Run(env, side, board)
    try:
        first = _first(env, side, run.proc.started_s, FIRST_READING_TIMEOUT_S, _is_reading(side),
                       run.proc)
        if first is None:
            raise RuntimeError(f"{side.name}: no reading within {FIRST_READING_TIMEOUT_S} s:\n"
                               f"{run.proc.tail()}")
        run.prepare(side)
        start = first.at_s + board.poll_s / 2
        end = start + cycles * board.poll_s
        if time.monotonic() > start:
            raise RuntimeError(f"{side.name}: set-up after the first reading ran into the "
                               "window; use a longer --live-poll")
        _sleep_until(end, run.proc, side)
    finally:
        run.close(keep)
    mine = [p for p in env.counter.messages(start, end) if side.is_uplink(p)]
    per_meter: Counter[str] = Counter()
    by_topic: Counter[str] = Counter()
    in_window = 0
    for pub in mine:
        size = len(pub.topic.encode()) + len(pub.payload)
        by_topic[pub.topic.replace(agent_side.GW, "{gw}")] += size
        if side.is_periodic(pub):
            in_window += size
    periodic = reports([p for p in env.counter.messages(run.proc.started_s)
                        if side.is_periodic(p)])
    payload = framing = messages = readings = complete = worst = 0
    for pub in mine:
        got = side.readings(pub)
        if not got:
            continue
        messages += 1
        readings += len(got)
        complete += sum(1 for _, _, q in got if q == side.quantities)
        payload += len(pub.topic.encode()) + len(pub.payload)
        framing += publish_overhead(pub.topic, len(pub.payload)) + side.mqtt5
        in_message = Counter(m for m, _, _ in got)
        worst = max(worst, max(in_message.values()))
        per_meter.update(in_message)
    return LiveResult(
        startup_s=first.at_s - run.proc.started_s, messages=messages, readings=readings,
        complete=complete, payload_topic_bytes=payload, framing_bytes=framing,
        all_uplink_bytes=sum(len(p.topic.encode()) + len(p.payload) for p in mine),
        all_uplink_messages=len(mine), max_per_meter_in_message=worst,
        cycles_seen=dict(per_meter), by_topic=dict(by_topic), funded=run.prepared,
        periodic_sizes=periodic, periodic_in_window=in_window, period_s=side.period_s,
        window_s=end - start)


def reports(pubs: list[Publish], gap_s: float = 5.0) -> list[int]:
    """Bytes (topic + payload) of each clock-driven report: the messages sent together
    (less than ``gap_s`` apart: the peer sends its statistics as two messages)."""
    out: list[int] = []
    last = float("-inf")
    for pub in sorted(pubs, key=lambda p: p.at_s):
        size = len(pub.topic.encode()) + len(pub.payload)
        if pub.at_s - last < gap_s and out:
            out[-1] += size
        else:
            out.append(size)
        last = pub.at_s
    return out


def framing_ok(result: LiveResult, meters: int, cycles: int) -> bool:
    return (result.max_per_meter_in_message == 1 and len(result.cycles_seen) == meters
            and set(result.cycles_seen.values()) == {cycles})


def load_run(env: Env, side: Side, board: Board, warmup_s: float, window_s: float,
             outage_s: float, settle_s: float, keep: bool = False) -> LoadResult:
    run = _Run(env, side, board)
    try:
        first = _first(env, side, run.proc.started_s, FIRST_READING_TIMEOUT_S, _is_reading(side),
                       run.proc)
        if first is None:
            raise RuntimeError(f"{side.name}: no reading within {FIRST_READING_TIMEOUT_S} s:\n"
                               f"{run.proc.tail()}")
        run.prepare(side)
        _sleep_until(first.at_s + warmup_s, run.proc, side)
        t0, c0 = time.monotonic(), tree_cpu_s(run.proc.pid)
        _sleep_until(t0 + window_s, run.proc, side)
        t1, c1 = time.monotonic(), tree_cpu_s(run.proc.pid)
        rss = rss_kb(run.proc.pid)
        wall_down = time.time()
        down = time.monotonic()
        env.broker.stop()
        time.sleep(outage_s)
        env.broker.start()  # returns once a connect succeeds (it tries every 50 ms)
        # Accepting since: that return, or the counter's CONNACK (it retries every 20 ms)
        # if that came first.
        up = min([time.monotonic()] + [c for c in env.counter.connects if c >= down])
        wall_up = time.time() - (time.monotonic() - up)
        # The broker publishes a side's Last Will when it goes down and hands it to the
        # counter's session when that is back: not something the side sent.
        back = _first(env, side, up, settle_s, lambda p: not side.is_will(p))
        back_reading = _first(env, side, up, settle_s, _is_reading(side))
        _sleep_until(up + settle_s, run.proc, side)
        wall_end = time.time()
    finally:
        run.close(keep)
    in_window = sum(len(side.readings(p) or []) for p in env.counter.messages(t0, t1)
                    if side.is_uplink(p))
    counter_back = min((c for c in env.counter.connects if c >= down), default=float("nan"))
    everything = [p for p in env.counter.messages(run.proc.started_s) if side.is_uplink(p)]
    return LoadResult(
        startup_s=first.at_s - run.proc.started_s, window_s=t1 - t0, cpu_s=c1 - c0,
        readings=in_window, rss_kb=rss, down_s=up - down,
        first_up_s=None if back is None else back.at_s - up,
        first_up_topic="" if back is None else back.topic.replace(agent_side.GW, "{gw}"),
        first_reading_s=None if back_reading is None else back_reading.at_s - up,
        counter_back_s=counter_back - up, funded=run.prepared,
        loss=losses(side, everything, board.poll_s, wall_down, wall_up, wall_end))


def losses(side: Side, pubs: list[Publish], poll_s: float, wall_down: float, wall_up: float,
           wall_end: float) -> dict[str, int]:
    """What the outage cost, read off every uplink message of the run.

    - ``redelivered``: messages that arrived again with the same (gw, seq) (agent only:
      the peer's messages carry no id), dropped before counting readings;
    - ``seq_gaps``: (agent) seqs missing between the first and the last one seen;
    - ``duplicates``: readings, by (meter, ts), that arrived more than once after that;
    - ``lost``: readings missing from a meter's series between the first poll after the
      broker went down and the last poll that can have arrived (a cycle before the
      end): a step of k times the meter's usual step (its median) is k - 1 lost;
    - ``during_outage``: distinct readings taken while the broker was down that arrived.
    """
    seen_keys: set[tuple[str, int]] = set()
    redelivered = 0
    series: dict[str, list[int]] = {}
    for pub in pubs:
        key = side.message_key(pub)
        if key is not None:
            if key in seen_keys:
                redelivered += 1
                continue
            seen_keys.add(key)
        for meter, ts_ms, _ in side.readings(pub) or []:
            series.setdefault(meter, []).append(ts_ms)
    seqs = sorted(s for _, s in seen_keys)
    seq_gaps = (seqs[-1] - seqs[0] + 1 - len(seqs)) if seqs else 0
    duplicates = lost = during = 0
    lo_ms, hi_ms = (wall_down - poll_s) * 1000, (wall_end - 2 * poll_s) * 1000
    for times in series.values():
        counts = Counter(times)
        duplicates += sum(n - 1 for n in counts.values())
        uniq = sorted(counts)
        during += sum(1 for t in uniq if wall_down * 1000 <= t <= wall_up * 1000)
        steps = [b - a for a, b in zip(uniq, uniq[1:], strict=False)]
        if not steps:
            continue
        usual = statistics.median(steps)
        for a, b in zip(uniq, uniq[1:], strict=False):
            if a >= lo_ms and b <= hi_ms and usual > 0:
                lost += max(0, round((b - a) / usual) - 1)
    return {"redelivered": redelivered, "seq_gaps": seq_gaps, "duplicates": duplicates,
            "lost": lost, "during_outage": during, "meters": len(series)}
