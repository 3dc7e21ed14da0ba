"""The Python CPU of one Modbus reading, piece by piece (issue 14 item 3), with timeit.

  python -m bench.modbus_read [--seconds S]

Prints µs per call (the best of 15 runs, in CPU time) for: building a Request, with
its to_bytes, to_bytes again (as a meter sends its requests every reading), a
ResponseReader fed one whole answer to a 32-register read, the SDM120 map's decode
(from an address -> word dict, and by its ReadPlan), and one whole
``ModbusMeter.read`` of an SDM120: over ``SimBusTransport`` (the simulated meter's own
work included) and over a transport that replays the answers the simulator gave (the
agent's side alone); the last, once more, each call right after a sleep of 2 and of
20 ms (as a bus thread runs it, after the line's silence and the meter's answer: the
same code with the caches the sleep left).
"""

from __future__ import annotations

import argparse
import statistics
import time
import timeit
from collections.abc import Callable

from agent.clock import SimClock
from agent.drivers.modbus.client import ModbusClient
from agent.drivers.modbus.codec import Request, Response, ResponseReader
from agent.drivers.modbus.device import ModbusMeter
from agent.drivers.modbus.maps import decode, load_map, plan_reads, read_plan
from sim.modbus_device import SimSDM120
from tests.drivers.simbus import SimBusTransport

# The best of many short runs, in process CPU time: the machine is shared, and a run
# that was preempted or shared its core only ever reads slower.
RUNS = 15


class ReplayTransport(SimBusTransport):
    """Answers each request with the bytes the simulator answered it with once (the
    in-memory bus's reads, without its simulated meter's work)."""

    def __init__(self, clock: SimClock, answers: dict[bytes, bytes]) -> None:
        super().__init__(clock, {})
        self.answers = answers

    def write(self, data: bytes) -> None:
        self.out = self.answers[data]


def per_call_us(fn: Callable[[], object], seconds: float) -> float:
    timer = timeit.Timer(fn, timer=time.process_time)
    n, elapsed = timer.autorange()
    number = max(1, int(n * seconds / RUNS / max(elapsed, 1e-9)))
    return min(timer.repeat(RUNS, number)) / number * 1e6


def sim_meter() -> tuple[SimClock, SimBusTransport]:
    clock = SimClock()
    device = SimSDM120(1, clock=clock, serial=20_250_001, seed=7, speed=0.0, import_wh=1_234_567)
    return clock, SimBusTransport(clock, {1: device})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per figure")
    seconds = parser.parse_args().seconds

    rmap = load_map("eastron-sdm120")
    clock, sim = sim_meter()
    meter = ModbusMeter(ModbusClient(sim, clock), 1, "eastron-sdm120")
    meter.read("M1", 0)  # the serial, then the plan: every answer the replay needs
    answers = {r.to_bytes(): sim.devices[1].handle(r).to_bytes()  # type: ignore[union-attr]
               for r in sim.requests}
    block = plan_reads(rmap)[0]
    request = Request(1, block.function, block.address, block.count)
    answer = answers[request.to_bytes()]
    assert len(answer) == 69
    words: dict[int, int] = {}
    block_words = []
    for b in plan_reads(rmap):
        r = Request(1, b.function, b.address, b.count)
        block_words.append(read_whole(r, answers[r.to_bytes()]).values)
        words.update(zip(range(b.address, b.address + b.count), block_words[-1], strict=True))
    plan = read_plan(rmap.model)
    assert plan.decode(block_words) == decode(rmap, words)

    replay_clock = SimClock()
    replayed = ModbusMeter(ModbusClient(ReplayTransport(replay_clock, answers), replay_clock),
                           1, "eastron-sdm120")
    figures = {
        "Request(...)": lambda: Request(1, 4, 0, 32),
        "Request(...).to_bytes()": lambda: Request(1, 4, 0, 32).to_bytes(),
        "to_bytes() of a request already sent": request.to_bytes,
        "ResponseReader, one whole 69-byte answer": lambda: read_whole(request, answer),
        "maps.decode, SDM120 (7 quantities)": lambda: decode(rmap, words),
        "ReadPlan.decode, SDM120 (its 2 answers)": lambda: plan.decode(block_words),
        "ModbusMeter.read over SimBusTransport": lambda: meter.read("M1", 0),
        "ModbusMeter.read over replayed answers": lambda: replayed.read("M1", 0),
    }
    for name, fn in figures.items():
        print(f"{name:44} {per_call_us(fn, seconds):8.1f} µs")
    for sleep_s in AFTER_SLEEP_S:
        name = f"the same, each after a {sleep_s * 1e3:g} ms sleep"
        print(f"{name:44} {after_sleep_us(lambda: replayed.read('M1', 0), sleep_s):8.1f} µs")


# A bus thread runs a reading's Python in pieces, each after a sleep (the line's
# silence, the meter's answer): the same code, timed the same way after sleeping.
AFTER_SLEEP_S = (0.002, 0.02)
AFTER_SLEEP_CALLS = 200


def after_sleep_us(fn: Callable[[], object], sleep_s: float) -> float:
    """The median thread CPU of ``fn`` called right after a sleep of ``sleep_s``."""
    spent = []
    for _ in range(AFTER_SLEEP_CALLS):
        time.sleep(sleep_s)
        started = time.thread_time()
        fn()
        spent.append(time.thread_time() - started)
    return statistics.median(spent) * 1e6


def read_whole(request: Request, answer: bytes) -> Response:
    reader = ResponseReader(request)
    reader.receive_data(answer)
    event = reader.next_event()
    assert isinstance(event, Response)
    return event


if __name__ == "__main__":
    main()
