"""Every meter protocol end to end, as processes: real mosquitto, the simulator on ptys,
the agent; one gateway per protocol and one with all three buses at once
(board_configs/sim-mixed.toml).

Each run shows: readings on ``up/readings``; charges on ``up/ledger`` exact to the paisa
(the tariff applied here, again, to the register deltas the agent reported); credit
exhaustion opening the relay (a Modbus coil; a coil of the module on the Modbus bus for
the IEC meter, which has no breaker; the DLMS meter's disconnect control); a top-up
closing it within about a poll cycle; kill -9 and a restart keeping seq gapless and the
ledger whole.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.drivers.models import model
from sim.broker import find_mosquitto
from tests.e2e.harness import MIXED_CONFIG, ROOT, Gateway, wait_until

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed")

RATE = 1_000_000  # paise per kWh: the balance runs out within seconds
DUTY_BP = 500
TARIFF = {"domestic": {"fixed_per_day": 0, "slabs": [{"rate": RATE}], "duty_bp": DUTY_BP,
                       "billing_day": 1}}
MODELS = {"SDM-0001": "eastron-sdm120", "SDM-0002": "eastron-sdm120",
          "IEC-0001": "iec62056-21", "DLMS-0001": "dlms-is15959"}
ACCOUNTS = {"SDM-0001": "ACC-0001", "SDM-0002": "ACC-0002", "IEC-0001": "ACC-0003",
            "DLMS-0001": "ACC-0004"}
SLACK_WH = 10


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Any]:
    made: list[Gateway] = []

    def make(meters: list[str]) -> Gateway:
        # speed 3: the heaviest simulated household (about 3.3 kW) stays within what
        # the smallest meter (an SDM120, 45 A) can pass, so no delta is implausible
        g = Gateway(tmp_path / f"gw{len(made)}", base=MIXED_CONFIG, meters=meters, speed=3.0,
                    tariff=TARIFF, policy={"emergency_credit": 0, "alert_levels_pct": [0]})
        made.append(g)
        return g

    yield make
    for g in made:
        if g.agent is not None and not g.agent.alive():
            print(g.agent.tail())
        g.close()


def _ledger(g: Gateway, account: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "agent.cli", "ledger", account, "-c", str(g.config), "--json",
         "--limit", "100000"], cwd=ROOT, capture_output=True, text=True, check=True)
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def _link_up(g: Gateway, boot: int) -> bool:
    try:
        status = g.status()
    except (OSError, ValueError):
        return False
    return bool(status["link"]["connected"]) and status["boot"] == boot


def _connected(g: Gateway, meter: str) -> bool:
    return bool(g.sim_state()["meters"][meter]["connected"])


def _expected_charge(g: Gateway, meter: str) -> tuple[int, int]:
    """(energy paise, duty paise) the tariff gives for the register deltas of ``meter``
    on the wire, under DOMAIN's rules written out here: a delta is charged when the
    register went up by no more than the model could pass since the baseline."""
    max_w = model(MODELS[meter]).max_power_w
    readings = sorted((r.t, r.values["import_wh"]) for r in g.headend.readings(g.gw)
                      if r.meter == meter)
    base_t, base_wh = readings[0]
    consumed_wh = 0
    for t, wh in readings[1:]:
        if wh >= base_wh and (wh - base_wh) * 3600 <= max_w * (t - base_t) + SLACK_WH * 3600:
            consumed_wh += wh - base_wh
            base_t, base_wh = t, wh
    energy_mp = consumed_wh * RATE  # one slab: E(C) = C x rate, milli-paise
    return energy_mp // 1000, energy_mp * DUTY_BP // 10**7


def _check_ledger(g: Gateway, meters: list[str]) -> None:
    seqs = sorted(set(g.headend.raw_seqs(g.gw)))
    assert seqs == list(range(1, len(seqs) + 1)), f"gaps in seq {seqs[:5]}..{seqs[-5:]}"
    for meter in meters:
        acct = ACCOUNTS[meter]
        book = _ledger(g, acct)
        entries = book["entries"]
        assert [e["n"] for e in entries] == list(range(1, len(entries) + 1))
        assert sum(e["amt"] for e in entries) == book["balance"] == entries[-1]["bal"]
        wire = sorted(g.headend.ledger_entries(g.gw, acct), key=lambda e: e["n"])
        assert wire == entries, f"{acct}: the journal on the wire differs from the store's"
        energy = -sum(e["amt"] for e in entries if e["kind"] == "energy")
        duty = -sum(e["amt"] for e in entries if e["kind"] == "duty")
        months = {e["ref"].split("/")[1] for e in entries if e["kind"] == "energy"}
        want_energy, want_duty = _expected_charge(g, meter)
        # each billing month posts its own floor: a run across midnight of the 1st may
        # differ by a paisa a month, never more
        assert 0 <= want_energy - energy <= len(months) - 1 if len(months) > 1 \
            else energy == want_energy, (meter, energy, want_energy)
        assert abs(duty - want_duty) <= max(len(months) - 1, 0), (meter, duty, want_duty)
        assert energy > 0, f"{meter}: nothing was charged"


def _scenario(g: Gateway, meters: list[str]) -> None:
    agent = g.start_agent()
    wait_until(lambda: {r.meter for r in g.headend.readings(g.gw)} >= set(meters)
               and all(sum(r.meter == m for r in g.headend.readings(g.gw)) >= 3
                       for m in meters), 40, f"readings of {meters}")
    for series in (s for msg in g.headend.messages(g.gw, "readings")
                   for s in msg["readings"]):
        assert series["m"] in meters and all(len(v) == len(series["t"]) for v in
                                             series.values() if isinstance(v, list))
    g.command("ping", {})  # a verified command with a fresh iat: the clock is trusted
    wait_until(lambda: not any(_connected(g, m) for m in meters), 40,
               "every relay to open on credit exhaustion")
    opened = {e["m"] for e in g.headend.events(g.gw, "relay") if e["detail"]["state"] == "open"}
    wait_until(lambda: {e["m"] for e in g.headend.events(g.gw, "relay")
                        if e["detail"]["state"] == "open"} >= set(meters), 15,
               "the relay-open events")
    assert {e["acct"] for e in g.headend.events(g.gw, "credit_exhausted")} >= \
        {ACCOUNTS[m] for m in meters}, opened
    t0 = time.monotonic()
    for meter in meters:
        reply = g.command("topup", {"account": ACCOUNTS[meter], "amount": 10_000_000,
                                    "txn": f"PAY-{meter}"})
        assert reply["ok"] and reply["result"]["balance"] > 0
    wait_until(lambda: all(_connected(g, m) for m in meters), 15,
               "the relays to close after the top-ups")
    assert time.monotonic() - t0 < 8, "reconnection within about a poll cycle"
    agent.kill9()
    g.start_agent()
    wait_until(lambda: _link_up(g, 2), 20, "the restarted agent")
    restarted = int(time.time())
    wait_until(lambda: all(any(r.meter == m and r.t > restarted
                               for r in g.headend.readings(g.gw)) for m in meters), 40,
               "readings after the restart")
    g.quiesce(timeout_s=40)
    state = g.headend.state(g.gw)
    assert state is not None and state["boot"] == 2
    _check_ledger(g, meters)
    assert not g.headend.events(g.gw, "bad_reading"), g.headend.events(g.gw, "bad_reading")


@pytest.mark.parametrize("meters", [["SDM-0001"], ["IEC-0001"], ["DLMS-0001"]],
                         ids=["modbus", "iec62056-21", "dlms"])
def test_one_protocol_end_to_end(gateway: Any, meters: list[str]) -> None:
    _scenario(gateway(meters), meters)


def test_three_buses_of_three_protocols_at_once(gateway: Any) -> None:
    meters = ["SDM-0001", "SDM-0002", "IEC-0001", "DLMS-0001"]
    g = gateway(meters)
    assert [b["protocol"] for b in g.raw["bus"]] == ["modbus", "iec62056-21", "dlms"]
    _scenario(g, meters)


@pytest.mark.parametrize(("fault", "whys"), [
    ("wrong_key", ("auth_failed", "bad_tag")), ("replay_counter", ("replayed_counter",))])
def test_a_dlms_meter_failing_security_is_a_clear_event_and_never_a_relay_change(
        gateway: Any, fault: str, whys: tuple[str, ...]) -> None:
    """The meter answers with keys other than the board's (a swapped meter, a key centre's
    mistake, an attacker on the pair), or replays its invocation counter (a recorded
    answer played back): credit runs out, the agent tries to switch through 0x30, HLS
    fails: a ``meter_security`` event names why, the supply stays on, and once the
    meter is itself again the relay opens as the rules say."""
    from sim.faults import send

    meter = "DLMS-0001"
    g = gateway([meter])
    wait_until(lambda: g.control.exists(), 10, "the simulator's fault socket")
    assert send(g.control, [{"meter": meter, "fault": fault, "on": True}])[0]["ok"]
    g.start_agent()
    wait_until(lambda: _link_up(g, 1), 20, "the agent's MQTT link")
    g.command("ping", {})  # the clock is trusted: only the keys hold the switch back
    wait_until(lambda: g.headend.events(g.gw, "meter_security"), 40, "a meter_security event")
    event = g.headend.events(g.gw, "meter_security")[0]
    assert event["m"] == meter and event["detail"]["why"] in whys, event
    wait_until(lambda: any(e["acct"] == ACCOUNTS[meter]
                           for e in g.headend.events(g.gw, "credit_exhausted")), 20,
               "credit to run out")
    time.sleep(3)  # switch attempts, each refused by HLS
    assert _connected(g, meter), "a relay change through a failed association"
    assert len(g.headend.events(g.gw, "meter_security")) == 1, "one event, not one a poll"
    assert send(g.control, [{"meter": meter, "fault": fault, "on": False}])[0]["ok"]
    wait_until(lambda: not _connected(g, meter), 40, "the relay to open with the right keys")
