"""Ledger invariant 7 with a real kill -9: a child process drives the agent's ledger
(readings, top-ups, tokens) as fast as it can and prints "ACK ..." only after each
call returned; it is killed at a random instant. The store it leaves behind must be
consistent (entries chain and sum to the balance, n gapless, each entry queued for the
uplink exactly once, relay intent agreeing with the balance) and hold every ACKed
top-up and token. Three rounds on the same store, so each restart resumes a crash."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.buffer.store import LANE_LEDGER
from tests.ledger.rig import UP_TABLE, Rig, decode

ROOT = Path(__file__).resolve().parents[1]
CHILD = r"""
import sys
from pathlib import Path
from tests.ledger.rig import Rig, TOKEN_KEY, UP_TABLE
from agent.ledger.tokens import issue_token
tmp, round_, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rig = Rig(tmp, now_s=1772425800 + round_ * 86400, tariff={**UP_TABLE, "fixed_per_day": 0},
          policy={"emergency_credit": 2000})
reg = rig.meter().base_wh or 1_000_000
i = 0
print("READY", flush=True)
while True:
    i += 1
    rig.advance(60)
    reg += (i * 7919 + seed) % 200
    rig.read("M1", reg)
    if i % 3 == 0:
        txn = f"R{round_}-{i}"
        rig.topup("A1", 300, txn)
        print("ACK topup", txn, flush=True)
    if i % 5 == 0:
        counter = round_ * 400 + i // 5  # rounds apart, but within the 1000 window
        out = rig.ledger.credit.enter_token("A1", issue_token(TOKEN_KEY, "A1", 100, counter),
                                            rig.now)
        if out["ok"]:
            print("ACK token", counter, flush=True)
"""


def run_and_kill(tmp: Path, round_: int, rng: random.Random) -> list[str]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp), str(round_),
                             str(rng.randrange(1000))], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "READY"
        time.sleep(rng.uniform(0.3, 0.9))
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    # A line cut in half by the kill was never fully acknowledged.
    return [line for line in out.splitlines() if line.startswith("ACK ") and
            len(line.split()) == 3]


def check_store(tmp: Path, acked: list[str]) -> int:
    rig = Rig(tmp, tariff={**UP_TABLE, "fixed_per_day": 0}, policy={"emergency_credit": 2000})
    try:
        entries = rig.entries()
        assert [e.n for e in entries] == list(range(1, len(entries) + 1))
        bal = 0
        for e in entries:
            bal += e.amt
            assert e.bal == bal
        assert rig.account().balance == bal and rig.account().n == len(entries)
        queued = [decode(i) for i in rig.store.pending_items(LANE_LEDGER)]
        assert sorted(q["n"] for q in queued) == [e.n for e in entries]
        refs = [e.ref for e in entries if e.kind in ("topup", "token")]
        assert len(refs) == len(set(refs)), "credited twice"
        for line in acked:
            _, kind, ref = line.split()
            want = ref if kind == "topup" else f"token:A1:{ref}"
            assert want in refs, f"acknowledged {kind} {ref} lost"
        intent = rig.meter().relay_intent
        assert intent == ("closed" if bal > 0 else intent)
        assert intent == "closed" or bal < -2000
        return len(entries)
    finally:
        rig.close()


def test_kill_9_at_random_instants_loses_nothing_acknowledged(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("SEED", "4")))
    acked: list[str] = []
    for round_ in range(3):
        acked += run_and_kill(tmp_path, round_, rng)
        assert check_store(tmp_path, acked) > 0  # every round's ACKs, not just the last
    assert len(acked) > 10, "the child did too little to prove anything"
