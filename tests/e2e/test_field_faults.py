"""Faults a board meets in the field, injected into the agent as a process (real
mosquitto, the simulator on ptys): nothing is lost and the ledger stays consistent."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sim.broker import find_mosquitto
from tests.e2e.harness import Gateway, Proc, wait_until

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed")


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    g = Gateway(tmp_path / "gw", meters=2)
    try:
        yield g
    finally:
        if g.agent is not None and not g.agent.alive():
            print(g.agent.tail())
        g.close()


def _events(g: Gateway, type_: str, meter: str) -> list[dict[str, Any]]:
    return [e for e in g.headend.events(g.gw, type_) if e.get("m") == meter]


def test_a_serial_port_that_disappears_and_returns(gateway: Gateway) -> None:
    """A USB adapter replugged (here: the simulator restarted, so the pty goes away and a
    new one comes): the agent closes the port, reports its meters offline, opens the new
    one with back-off, reports them online and reads on; status says what happened."""
    g = gateway
    meters = ("SDM-0001", "SDM-0002")
    g.start_agent()
    wait_until(lambda: all(any(r.meter == m for r in g.headend.readings(g.gw)) for m in meters),
               30, "first readings")
    g.meters.stop()  # the port is gone: reads fail with EIO, the symlink disappears
    wait_until(lambda: all(_events(g, "meter_offline", m) for m in meters), 20,
               "meter_offline for every meter of the bus")
    wait_until(lambda: g.status()["buses"][0]["error"], 10, "the port's error in status")
    time.sleep(3)  # a few reopen attempts fail (no such file), backing off
    assert g.agent is not None and g.agent.alive()
    back = int(time.time())
    g.meters = Proc([sys.executable, "-m", "sim.meters", "-c", str(g.config), "--speed", "10",
                     "--state-file", str(g.state_file)], g.workdir / "meters-2.log")
    wait_until(lambda: all(_events(g, "meter_online", m) for m in meters), 40,
               "meter_online for every meter once the port is back")
    wait_until(lambda: all(any(r.meter == m and r.t >= back for r in g.headend.readings(g.gw))
                           for m in meters), 30, "readings from the new port")
    assert not g.status()["buses"][0]["error"]
    for m in meters:
        offline, online = _events(g, "meter_offline", m), _events(g, "meter_online", m)
        assert offline[0]["t"] <= online[-1]["t"]
    g.quiesce()
    seqs = sorted(set(g.headend.raw_seqs(g.gw)))
    assert seqs == list(range(1, len(seqs) + 1))
