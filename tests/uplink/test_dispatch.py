"""Every op of CONTRACT 7 through the dispatcher with a real store: one reply each (built
and checked by wire), the stored reply for a repeated id (also after a restart), and
refusals that change nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.buffer.journal import Journal
from agent.buffer.store import LANE_EVENTS, LANE_LEDGER, Store
from agent.errors import CommandError
from agent.meters import MeterRegistry
from agent.ops import RESYNC_MAX_ENTRIES
from agent.policy_overlay import PolicyOverlay
from agent.tariffs import Tariffs
from agent.uplink import cbor, forming, wire
from agent.uplink.commands import make_command
from agent.wiring import start_ledger, wire_dispatcher, wire_ledger
from tests.e2e.uplink_helpers import GW, config_for
from tests.ledger.rig import decode

KEY = bytes(range(32))
NOW = 1_767_225_600


class Gateway:
    """The store, journal, ledger and dispatcher of the sim board, in this process."""

    def __init__(self, data_dir: Path, **dispatcher_kw: Any) -> None:
        self.cfg = config_for(1883, data_dir)
        self.store = Store(data_dir)
        self.boot = self.store.next_boot()
        self.journal = Journal(self.store, forming.entry_item)
        self.meters = MeterRegistry(self.cfg.meters)
        self.ledger = wire_ledger(self.cfg, self.store, self.journal, self.meters)
        start_ledger(self.ledger, self.cfg, self.store, self.journal, NOW)
        self.reads: list[tuple[str, str]] = []
        self.dispatcher = wire_dispatcher(gw=GW, boot=self.boot, key=KEY, store=self.store,
                                          journal=self.journal, ledger=self.ledger,
                                          meters=self.meters, read_meter=self.read_meter,
                                          **dispatcher_kw)

    def read_meter(self, meter: str, ref: str) -> bool:
        self.reads.append((meter, ref))
        return True

    def send(self, op: str, args: dict[str, Any], **kw: Any) -> dict[str, Any]:
        kw.setdefault("now_s", NOW)
        seq = self.dispatcher.handle(make_command(KEY, op, args, **kw), NOW)
        assert seq is not None
        return self.reply(seq)

    def reply(self, seq: int) -> dict[str, Any]:
        [row] = [r for r in self.store.outbox_next(set(), 10_000) if r.seq == seq]
        return wire.check_reply(cbor.loads(row.payload))


@pytest.fixture
def gw(tmp_path: Path) -> Gateway:
    return Gateway(tmp_path)


def test_ping(gw: Gateway) -> None:
    reply = gw.send("ping", {}, id="p1")
    assert reply["ok"] and reply["result"] == {"time": NOW, "version": reply["result"]
                                               ["version"], "boot": gw.boot}
    assert reply["id"] == "p1" and reply["seq"] >= 1 and "dup" not in reply


def test_topup_once_per_txn_and_a_repeated_id_gets_the_stored_reply(gw: Gateway) -> None:
    first = gw.send("topup", {"account": "ACC-0001", "amount": 5000, "txn": "T1"}, id="c1")
    assert first["result"] == {"balance": first["result"]["balance"], "applied": True}
    other = gw.send("topup", {"account": "ACC-0001", "amount": 5000, "txn": "T1"}, id="c2")
    assert other["ok"] and other["result"]["applied"] is False
    dup = gw.send("topup", {"account": "ACC-0001", "amount": 5000, "txn": "T1"}, id="c1")
    assert dup["dup"] is True and dup["result"] == first["result"] and dup["seq"] > other["seq"]
    assert [e.ref for e in gw.journal.entries("ACC-0001") if e.kind == "topup"] == ["T1"]


def test_the_stored_reply_survives_a_restart(tmp_path: Path) -> None:
    gw = Gateway(tmp_path)
    cmd = make_command(KEY, "topup", {"account": "ACC-0002", "amount": 700, "txn": "X"},
                       id="r1", now_s=NOW)
    first = gw.reply(gw.dispatcher.handle(cmd, NOW) or 0)
    gw.store.close()
    again = Gateway(tmp_path)  # a new boot, a new dispatcher, the same store
    dup = again.reply(again.dispatcher.handle(cmd, NOW + 60) or 0)
    assert dup["dup"] is True and dup["boot"] == 2 and dup["result"] == first["result"]
    assert len([e for e in again.journal.entries("ACC-0002") if e.kind == "topup"]) == 1


def test_refusals_name_their_code_and_change_nothing(gw: Gateway) -> None:
    before = gw.journal.entries("ACC-0001")
    assert gw.send("topup", {"account": "NOPE", "amount": 1, "txn": "a"})["code"] == \
        "unknown_account"
    assert gw.send("relay", {"meter": "NOPE", "action": "auto"})["code"] == "unknown_meter"
    assert gw.send("read", {"meter": "NOPE"})["code"] == "unknown_meter"
    assert gw.send("topup", {"account": "ACC-0001"})["code"] == "invalid_args"
    assert gw.send("zap", {})["code"] == "unknown_op"
    assert gw.send("ping", {}, iat=NOW - 900, exp=NOW - 1)["code"] == "expired"
    forged = gw.dispatcher.handle(make_command(bytes(32), "topup", {
        "account": "ACC-0001", "amount": 9, "txn": "f"}, id="f1", now_s=NOW), NOW)
    assert gw.reply(forged or 0)["code"] == "bad_mac"
    garbage = gw.reply(gw.dispatcher.handle(b"\xff\x00", NOW) or 0)
    assert garbage["id"] is None and garbage["code"] == "malformed"
    assert gw.journal.entries("ACC-0001") == before
    assert gw.store.seen_reply("f1") is None


def test_relay_moratorium_and_resync(gw: Gateway) -> None:
    assert gw.send("relay", {"meter": "SDM-0001", "action": "disconnect", "until": NOW + 60}
                   )["result"] == {"state": "open"}
    assert gw.journal.meter("SDM-0001").override == "disconnect"
    assert gw.send("relay", {"meter": "SDM-0001", "action": "auto"})["result"] == \
        {"state": "closed"}
    # reported as the same op from the local socket is (agent.ops), with its source
    overrides = [e for e in map(decode, gw.store.pending_items(LANE_EVENTS))
                 if e["type"] == "relay_override"]
    assert [(e["m"], e["detail"]) for e in overrides] == [
        ("SDM-0001", {"action": "disconnect", "until": NOW + 60, "source": "cloud"}),
        ("SDM-0001", {"action": "auto", "until": None, "source": "cloud"})]
    assert gw.send("moratorium", {"until": NOW + 3600, "reason": "billing down"})["ok"]
    assert gw.journal.moratorium_until("ACC-0003") == NOW + 3600
    assert gw.send("moratorium", {"until": NOW + 7200, "accounts": ["ACC-0001", "NOPE"],
                                  "reason": "x"})["code"] == "unknown_account"
    assert gw.journal.moratorium_until("ACC-0001") == NOW + 3600  # nothing of it applied
    for i in range(3):
        gw.send("topup", {"account": "ACC-0002", "amount": 100 + i, "txn": f"R{i}"})
    pending = gw.store.pending_stats(LANE_LEDGER)[0]
    reply = gw.send("resync", {"account": "ACC-0002", "from_n": 2})
    n = len(gw.journal.entries("ACC-0002", 2))
    assert reply["result"] == {"entries": n, "more": False}
    assert gw.store.pending_stats(LANE_LEDGER)[0] == pending + n


def test_resync_is_bounded(gw: Gateway) -> None:
    with gw.store.tx():
        for i in range(RESYNC_MAX_ENTRIES + 5):
            gw.journal.post("ACC-0003", NOW, "adjust", 1, f"a{i}")
    reply = gw.send("resync", {"account": "ACC-0003", "from_n": 1})
    assert reply["result"]["entries"] == RESYNC_MAX_ENTRIES and reply["result"]["more"]
    assert reply["result"]["next_n"] == RESYNC_MAX_ENTRIES + 1


def test_read_is_answered_when_the_bus_has_read(gw: Gateway) -> None:
    cmd = make_command(KEY, "read", {"meter": "SDM-0002"}, id="rd", now_s=NOW)
    assert gw.dispatcher.handle(cmd, NOW) is None
    assert gw.dispatcher.handle(cmd, NOW) is None  # a repeat while the bus is busy
    assert gw.reads == [("SDM-0002", "rd")]
    gw.dispatcher.read_done("rd", {"m": "SDM-0002", "t": NOW, "import_wh": 5}, "", NOW)
    replies = [wire.check_reply(cbor.loads(r.payload))
               for r in gw.store.outbox_next(set(), 100)]
    assert [(r["id"], r.get("dup", False), r["result"]) for r in replies] == [
        ("rd", False, {"m": "SDM-0002", "t": NOW, "import_wh": 5}),
        ("rd", True, {"m": "SDM-0002", "t": NOW, "import_wh": 5})]
    later = gw.reply(gw.dispatcher.handle(cmd, NOW + 5) or 0)
    assert later["dup"] is True


def test_a_read_the_bus_cannot_take_fails_at_once(tmp_path: Path) -> None:
    gw = Gateway(tmp_path)
    gw.dispatcher.read_meter = lambda meter, ref: False
    assert gw.send("read", {"meter": "SDM-0001"})["code"] == "failed"


def test_tariff_and_policy_commands_are_applied(gw: Gateway) -> None:
    table = {"name": "domestic", "slabs": [{"rate": 600}]}
    assert gw.send("tariff", table)["ok"]
    assert gw.send("policy", {"emergency_credit": 100})["ok"]


class FakeTariffs(Tariffs):
    """A tariff command that writes, then refuses a duty of 9999."""

    calls: list[tuple[str, Any]]

    def apply(self, name: str, table: dict[str, Any], now_s: int) -> int:
        self.calls.append(("tariff", (name, table)))
        with self.store.tx():
            self.journal.post("ACC-0001", now_s, "adjust", 1, "written, then refused")
        if table.get("duty_bp") == 9999:
            raise CommandError("invalid_args", "no such duty")
        return 7


class FakePolicies(PolicyOverlay):
    calls: list[tuple[str, Any]]

    def apply(self, changes: dict[str, Any], now_s: int) -> None:
        self.calls.append(("policy", changes))


def test_tariff_and_policy_are_wired_and_a_refusal_rolls_back(gw: Gateway) -> None:
    calls: list[tuple[str, Any]] = []
    tariffs = FakeTariffs(gw.cfg, gw.store, gw.journal)
    policies = FakePolicies(gw.cfg, gw.store, gw.journal)
    tariffs.calls = policies.calls = calls
    gw.dispatcher.ops.tariffs, gw.dispatcher.ops.policies = tariffs, policies
    table = {"name": "flat", "slabs": [{"rate": 600}], "duty_bp": 500}
    assert gw.send("tariff", table)["result"] == {"version": 7}
    assert calls[0] == ("tariff", ("flat", {"slabs": [{"rate": 600}], "duty_bp": 500}))
    n = len(gw.journal.entries("ACC-0001"))
    refused = gw.send("tariff", {**table, "duty_bp": 9999})
    assert refused["code"] == "invalid_args" and refused["msg"] == "no such duty"
    assert len(gw.journal.entries("ACC-0001")) == n  # its write was rolled back
    assert gw.send("policy", {"min_notice_h": 12})["ok"]
    assert calls[-1] == ("policy", {"min_notice_h": 12})


def test_meter_add_and_remove_go_to_the_runtime(tmp_path: Path) -> None:
    gw = Gateway(tmp_path)
    meter = {"id": "SDM-0009", "bus": "rs485-0", "address": 9, "model": "eastron-sdm120",
             "account": "ACC-0001"}
    refused = gw.send("meter_add", meter)
    assert refused["code"] == "failed" and "meter" in refused["msg"]
    calls: list[tuple[str, dict[str, Any], int]] = []

    def change(op: str, args: dict[str, Any], now_s: int) -> dict[str, Any]:
        calls.append((op, args, now_s))
        if op == "meter_remove" and args["meter"] == "SDM-0003":
            raise CommandError("invalid_args", "it has a relay override")
        return {"meters": 4}

    gw.dispatcher.ops.on_meter_change = change
    assert gw.send("meter_add", meter)["result"] == {"meters": 4}
    assert gw.send("meter_add", {**meter, "account": "NOPE"})["code"] == "unknown_account"
    assert gw.send("meter_remove", {"meter": "NOPE"})["code"] == "unknown_meter"
    assert gw.send("meter_remove", {"meter": "SDM-0003"})["code"] == "invalid_args"
    assert [c[0] for c in calls] == ["meter_add", "meter_remove"]
