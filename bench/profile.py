"""Where the agent's CPU goes (issue 14): py-spy's samples of a running agent, folded
into the functions that hold the time, for bench/results/*.md.

    collapse(path) -> Counter of stacks        py-spy's ``--format raw`` (collapsed) file
    summary(stacks, top) -> markdown            the functions by total share (a
                                                function's samples anywhere on a stack),
                                                then by self share (at the top of a stack)

``record(pid, seconds, out)`` runs ``py-spy record --gil`` on the process: only the
thread holding the GIL is sampled, so a thread blocked in a system call (fsync at a
COMMIT, a serial read, select) is not counted, and the shares are of the interpreter's
CPU work (the C work it calls with the GIL held, sqlite3 and cbor2 among it, counts
to the Python function calling it).
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

IDLE = ("select", "poll", "wait", "sleep", "_wait_for_tstate_lock", "acquire", "read")


def record(pid: int, seconds: float, out: Path, rate: int = 200) -> subprocess.Popen[bytes]:
    """Start py-spy on ``pid`` for ``seconds``; the caller waits for the process."""
    py_spy = Path(sys.executable).parent / "py-spy"
    return subprocess.Popen([str(py_spy), "record", "--pid", str(pid), "--duration",
                             str(int(seconds)), "--rate", str(rate), "--format", "raw",
                             "--gil", "--nonblocking", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def collapse(path: Path) -> Counter[tuple[str, ...]]:
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[tuple(stack.split(";"))] += int(count)
    return stacks


def _name(frame: str) -> str:
    """'func (agent/x.py:12)' -> 'agent/x.py:func' (py-spy's frame label)."""
    func, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rstrip(")")
    for root in ("/agent/", "/sim/", "/site-packages/", "/lib/python3"):
        if root in file:
            file = root.strip("/") + "/" + file.split(root, 1)[1]
            break
    return f"{file}:{func}"


def _idle(stack: tuple[str, ...]) -> bool:
    top = stack[-1].split(" (")[0]
    return top in IDLE or top.startswith(("select", "epoll", "_recv", "recv"))


def summary(stacks: Counter[tuple[str, ...]], top: int = 25) -> str:
    busy = {s: n for s, n in stacks.items() if not _idle(s)}
    total = sum(busy.values()) or 1
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for stack, n in busy.items():
        names = [_name(f) for f in stack]
        for name in set(names):
            inclusive[name] += n
        own[names[-1]] += n
    rows = ["| share of CPU work (total) | self | function |", "|---:|---:|---|"]
    for name, n in inclusive.most_common(top):
        rows.append(f"| {100 * n / total:.1f} % | {100 * own[name] / total:.1f} % | `{name}` |")
    rows += ["", "| share of CPU work (self) | function |", "|---:|---|"]
    for name, n in own.most_common(top):
        rows.append(f"| {100 * n / total:.1f} % | `{name}` |")
    idle = sum(stacks.values()) - sum(busy.values())
    rows.append(f"\n{sum(busy.values()):,} busy samples (and {idle:,} of threads waiting, "
                "left out).")
    return "\n".join(rows)
