"""The walking skeleton end to end: real mosquitto, real ptys, the agent as a process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.relay.disconnect import kernel_clock_synchronised
from agent.uplink.commands import make_command
from sim.broker import find_mosquitto
from tests.e2e.harness import ROOT, Gateway, wait_until

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed")

QUANTITIES = {"import_wh", "export_wh", "p_w", "v_dv", "i_ma", "f_chz", "pf_milli"}


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[Any]:
    made: list[Gateway] = []

    def make(**kw: Any) -> Gateway:
        g = Gateway(tmp_path / f"gw{len(made)}", **kw)
        made.append(g)
        return g

    yield make
    for g in made:
        if g.agent is not None and not g.agent.alive():
            print(g.agent.tail())
        g.close()


def ledger(g: Gateway, account: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "agent.cli", "ledger", account, "-c", str(g.config), "--json",
         "--limit", "100000"], cwd=ROOT, capture_output=True, text=True, check=True)
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def link_up(g: Gateway) -> bool:
    try:
        return bool(g.status()["link"]["connected"])
    except (OSError, ValueError):
        return False


def seqs_gapless(g: Gateway) -> None:
    seqs = sorted(set(g.headend.raw_seqs(g.gw)))
    assert seqs == list(range(1, len(seqs) + 1)), f"gaps in {seqs[:5]}..{seqs[-5:]}"


def test_readings_arrive_and_decode_per_contract(gateways: Any) -> None:
    g = gateways()
    g.start_agent()
    wait_until(lambda: len({r.meter for r in g.headend.readings(g.gw)}) == 3
               and len(g.headend.readings(g.gw)) >= 12, 30, "readings of all three meters")
    for msg in g.headend.messages(g.gw, "readings"):
        assert msg["v"] == 1 and msg["gw"] == g.gw and msg["boot"] == 1
        assert isinstance(msg["seq"], int) and msg["seq"] >= 1
        for series in msg["readings"]:
            assert set(series) - {"m", "t"} <= QUANTITIES
            assert all(len(series[k]) == len(series["t"]) for k in series if k != "m")
    by_meter: dict[str, list[Any]] = {}
    for r in g.headend.readings(g.gw):
        by_meter.setdefault(r.meter, []).append(r)
    # The simulator rewrites its state file every STATE_EVERY_S: wait for one written
    # after the last reading of every meter (the register never runs back, so from then
    # on it shows at least what the agent read).
    def caught_up() -> dict[str, Any] | None:
        meters: dict[str, Any] = g.sim_state()["meters"]
        return meters if all(meters[m]["import_wh"] >= rs[-1].values["import_wh"]
                             for m, rs in by_meter.items()) else None

    sim = wait_until(caught_up, 10, "a simulator state written after the last readings")
    for meter, readings in by_meter.items():
        ts = [r.t for r in readings]
        assert ts == sorted(ts)
        imports = [r.values["import_wh"] for r in readings]
        assert imports == sorted(imports), "import register never runs backwards"
        last = readings[-1].values
        assert 2000 <= last["v_dv"] <= 2600 and 4900 <= last["f_chz"] <= 5100
        assert all(isinstance(v, int) for v in last.values())
        # the agent read what the meter shows (the simulator has moved on a little since)
        assert 0 <= sim[meter]["import_wh"] - last["import_wh"] < 5_000
    state = g.headend.state(g.gw)
    assert state is not None and state["online"] is True and state["boot"] == 1
    assert state["meters"] == 3 and "version" in state and "backlog" in state


def test_topup_twice_credits_once_and_duplicate_id_gets_stored_reply(gateways: Any) -> None:
    g = gateways()
    g.start_agent()
    wait_until(lambda: link_up(g), 20, "the agent's MQTT link")
    first = g.command("topup", {"account": "ACC-0001", "amount": 50_000, "txn": "T-1"})
    assert first["ok"] and first["code"] == "ok" and isinstance(first["result"]["balance"], int)
    again = g.command("topup", {"account": "ACC-0001", "amount": 50_000, "txn": "T-1"})
    assert again["ok"] and again["result"]["applied"] is False
    cid = g.headend.command(g.gw, "ping", {})
    reply = g.headend.wait_reply(g.gw, cid, 15)
    g.headend.command(g.gw, "ping", {}, id=cid)
    wait_until(lambda: len(g.headend.replies(g.gw, cid)) == 2, 15, "the duplicate's reply")
    dup = g.headend.replies(g.gw, cid)[1]
    assert dup["dup"] is True and dup["result"] == reply["result"]
    entries = ledger(g, "ACC-0001")["entries"]
    assert [e["ref"] for e in entries if e["kind"] == "topup"] == ["T-1"]
    unknown = g.command("topup", {"account": "ACC-404", "amount": 1, "txn": "T-2"})
    assert unknown["code"] == "unknown_account" and not unknown["ok"]


def test_forged_expired_and_garbled_commands_change_nothing(gateways: Any) -> None:
    g = gateways()
    g.start_agent()
    wait_until(lambda: link_up(g), 20, "the agent's MQTT link")
    g.command("ping", {})
    before = ledger(g, "ACC-0002")
    args = {"account": "ACC-0002", "amount": 99_999, "txn": "EVIL"}
    forged = g.command("topup", args, key=os.urandom(32))
    assert forged["code"] == "bad_mac" and not forged["ok"] and forged["id"]
    now = int(time.time())
    expired = g.command("topup", args, iat=now - 600, exp=now - 60)
    assert expired["code"] == "expired" and not expired["ok"]
    g.headend.send_raw(g.gw, b"\xff\x00 this is not CBOR")
    wait_until(lambda: any(r["id"] is None for r in g.headend.messages(g.gw, "reply")), 15,
               "the reply to a garbled command")
    garbled = [r for r in g.headend.messages(g.gw, "reply") if r["id"] is None][0]
    assert garbled["code"] == "malformed" and not garbled["ok"]
    # a valid MAC over a payload that is not a command
    g.headend.send_raw(g.gw, make_command(g.key, "topup", {"account": 5}, now_s=now))
    wait_until(lambda: any(r["code"] == "invalid_args"
                           for r in g.headend.messages(g.gw, "reply")), 15, "invalid_args")
    after = ledger(g, "ACC-0002")
    assert not [e for e in after["entries"] if e["ref"] == "EVIL"]
    assert [e for e in after["entries"] if e["kind"] == "topup"] == \
        [e for e in before["entries"] if e["kind"] == "topup"]


def test_credit_exhaustion_opens_relay_and_topup_closes_it(gateways: Any) -> None:
    g = gateways(
        speed=10.0, meters=1,  # 10x: still within what the meter's 45 A could pass
        tariff={"domestic": {"fixed_per_day": 0, "slabs": [{"rate": 1_000_000}],
                             "duty_bp": 0, "billing_day": 1}},
        policy={"emergency_credit": 0, "alert_levels_pct": [0]},
    )
    g.start_agent()
    if not kernel_clock_synchronised():
        # The clock is not yet trusted (no NTP sync, no command yet): the agent must defer.
        wait_until(lambda: g.headend.events(g.gw, "disconnect_deferred"), 30, "a deferral")
        deferred = g.headend.events(g.gw, "disconnect_deferred")[0]
        assert "untrusted_clock" in deferred["detail"]["reasons"]
        assert g.sim_state()["meters"]["SDM-0001"]["connected"] is True
    g.command("ping", {})  # a verified command with a fresh iat confirms the clock
    wait_until(lambda: g.sim_state()["meters"]["SDM-0001"]["connected"] is False, 20,
               "the relay to open")
    wait_until(lambda: any(e["detail"]["state"] == "open"
                           for e in g.headend.events(g.gw, "relay")), 10, "the relay-open event")
    assert g.headend.events(g.gw, "credit_exhausted")
    low = g.headend.events(g.gw, "low_balance")
    assert low and low[0]["detail"]["level_pct"] == 0
    reply = g.command("topup", {"account": "ACC-0001", "amount": 10_000_000, "txn": "PAY-1"})
    assert reply["result"]["balance"] > 0
    t0 = time.monotonic()
    wait_until(lambda: g.sim_state()["meters"]["SDM-0001"]["connected"] is True, 10,
               "the relay to close after the top-up")
    assert time.monotonic() - t0 < 5, "reconnection within about one poll cycle"
    wait_until(lambda: g.headend.events(g.gw, "relay")[-1]["detail"]["state"] == "closed", 10,
               "the relay-closed event")


def test_broker_outage_of_15s_loses_no_reading_and_seq_stays_gapless(gateways: Any) -> None:
    g = gateways(meters=2)
    g.start_agent()
    wait_until(lambda: len(g.headend.readings(g.gw)) >= 4, 30, "first readings")
    g.broker.stop()
    time.sleep(15)
    g.broker.start()
    stop_t = int(time.time())
    wait_until(lambda: any(r.t >= stop_t + 2 for r in g.headend.readings(g.gw)), 90,
               "readings after the outage")
    g.quiesce()
    seqs_gapless(g)
    for meter in ("SDM-0001", "SDM-0002"):
        ts = sorted({r.t for r in g.headend.readings(g.gw) if r.meter == meter})
        gaps = [b - a for a, b in zip(ts, ts[1:], strict=False)]
        assert max(gaps) <= 3, f"{meter}: a reading is missing (gaps {gaps})"


def test_kill_9_and_restart_keep_seq_gapless_and_ledger_consistent(gateways: Any) -> None:
    g = gateways()
    agent = g.start_agent()
    wait_until(lambda: link_up(g), 20, "the agent's MQTT link")
    for i in range(3):
        for n, acct in enumerate(("ACC-0001", "ACC-0002", "ACC-0003")):
            g.headend.command(g.gw, "topup", {"account": acct, "amount": 1000 + n,
                                              "txn": f"K{i}-{acct}"})
        time.sleep(0.3 + 0.4 * i)
        agent.kill9()
        agent = g.start_agent()
        boot = i + 2
        wait_until(lambda: link_up(g) and g.status()["boot"] == boot, 20,  # noqa: B023
                   "the restart")
    g.quiesce()
    assert g.headend.state(g.gw)["boot"] == 4
    seqs_gapless(g)
    for acct in ("ACC-0001", "ACC-0002", "ACC-0003"):
        book = ledger(g, acct)
        entries = book["entries"]
        assert [e["n"] for e in entries] == list(range(1, len(entries) + 1))
        assert sum(e["amt"] for e in entries) == book["balance"] == entries[-1]["bal"]
        topups = [e["ref"] for e in entries if e["kind"] == "topup"]
        assert len(topups) == len(set(topups)), "a top-up applied twice"
        wire = [e for e in g.headend.ledger_entries(g.gw, acct)]
        assert sorted(e["n"] for e in wire) == [e["n"] for e in entries], "journal on the wire"


def test_cli_status_and_ledger_read_the_running_agent(gateways: Any) -> None:
    g = gateways(meters=1)
    g.start_agent()
    wait_until(lambda: link_up(g) and g.status()["meters"][0]["reading"], 30, "a reading")
    out = subprocess.run([sys.executable, "-m", "agent.cli", "status", "-c", str(g.config)],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "SDM-0001" in out and "connected" in out
    data = json.loads(subprocess.run(
        [sys.executable, "-m", "agent.cli", "status", "-c", str(g.config), "--json"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    assert data["running"] is True and data["gateway"] == g.gw
    missing = subprocess.run([sys.executable, "-m", "agent.cli", "ledger", "NOPE", "-c",
                              str(g.config)], cwd=ROOT, capture_output=True, text=True)
    assert missing.returncode == 2 and "unknown account" in missing.stderr
