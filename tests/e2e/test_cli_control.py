"""The CLI changes state only through the running agent's control socket."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sim.broker import find_mosquitto
from tests.e2e.harness import ROOT, Gateway, make_config, wait_until

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    g = Gateway(tmp_path / "gw", meters=1)
    try:
        yield g
    finally:
        g.close()


def test_local_relay_override_through_the_agent(gateway: Gateway) -> None:
    g = gateway
    g.start_agent()
    sock = Path(g.raw["gateway"]["data_dir"]) / "control.sock"
    wait_until(sock.exists, 20, "the control socket")
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    out = cli("relay", "SDM-0001", "disconnect", "-c", str(g.config))
    assert out.returncode == 0, out.stderr
    wait_until(lambda: g.sim_state()["meters"]["SDM-0001"]["connected"] is False, 10,
               "the override to open the relay")
    wait_until(lambda: any(e["detail"].get("source") == "local"
                           for e in g.headend.events(g.gw, "relay_override")), 10,
               "the override to be reported")
    out = cli("relay", "SDM-0001", "auto", "-c", str(g.config))
    assert out.returncode == 0, out.stderr
    # auto: the ledger decides again; a fresh account has no debt beyond emergency credit
    wait_until(lambda: g.sim_state()["meters"]["SDM-0001"]["connected"] is True, 10,
               "auto to restore supply")
    bad = cli("relay", "NOPE", "connect", "-c", str(g.config))
    assert bad.returncode == 2 and "no meter" in bad.stderr
    # the head-end's validator: an until with auto is refused here as it is there
    odd = cli("relay", "SDM-0001", "auto", "--until", "1900000000", "-c", str(g.config))
    assert odd.returncode == 2 and "until goes with connect or disconnect" in odd.stderr


def test_state_changing_commands_need_a_running_agent(tmp_path: Path) -> None:
    config = make_config(tmp_path, 1883)
    out = cli("relay", "SDM-0001", "disconnect", "-c", str(config))
    assert out.returncode == 2 and "no agent is running" in out.stderr
    out = cli("token", "enter", "ACC-0001", "1234", "5678", "9012", "3456", "7890", "-c",
              str(config))
    assert out.returncode == 2 and "no agent is running" in out.stderr


def test_token_issue_reference_issuer(tmp_path: Path) -> None:
    config = make_config(tmp_path, 1883)
    first = cli("token", "issue", "ACC-0001", "50000", "-c", str(config), "--json")
    second = cli("token", "issue", "ACC-0001", "50000", "-c", str(config), "--json")
    assert first.returncode == 0 and second.returncode == 0, first.stderr
    import json

    a: dict[str, Any] = json.loads(first.stdout)
    b: dict[str, Any] = json.loads(second.stdout)
    assert (a["counter"], b["counter"]) == (1, 2)  # the issuer's counter advances
    groups = a["token"].split()
    assert len(groups) == 5 and all(len(x) == 4 and x.isdigit() for x in groups)
    bad = cli("token", "issue", "ACC-0001", "150", "-c", str(config))
    assert bad.returncode == 2 and "whole rupees" in bad.stderr
    nobody = cli("token", "issue", "ACC-9999", "50000", "-c", str(config))
    assert nobody.returncode == 2 and "no account 'ACC-9999'" in nobody.stderr
    assert nobody.stdout == "", "no token is printed for an account the gateway does not have"


def test_ledger_shows_local_times_and_json_keeps_unix_seconds(tmp_path: Path) -> None:
    from agent.buffer.journal import Journal
    from agent.buffer.store import Store
    from agent.config import load_config
    from agent.meters import MeterRegistry
    from agent.uplink import forming
    from agent.wiring import start_ledger, wire_ledger

    config = make_config(tmp_path, 1883)
    cfg = load_config(config)
    store = Store(cfg.gateway.data_dir)
    journal = Journal(store, forming.entry_item)
    ledger = wire_ledger(cfg, store, journal, MeterRegistry(cfg.meters), token_key=bytes(32))
    start_ledger(ledger, cfg, store, journal, 1_767_225_600)
    t = 1_767_268_800  # 2026-01-01 12:00 UTC = 17:30 in Asia/Kolkata
    ledger.credit.topup("ACC-0001", 12_345, "T-local", t)
    store.close()
    text = cli("ledger", "ACC-0001", "-c", str(config))
    assert text.returncode == 0, text.stderr
    assert "2026-01-01 17:30:00 topup" in text.stdout and "Asia/Kolkata" in text.stdout
    import json

    data = json.loads(cli("ledger", "ACC-0001", "-c", str(config), "--json").stdout)
    assert [e["t"] for e in data["entries"] if e["kind"] == "topup"] == [t]
