"""Fuzzing the command channel (CONTRACT 7) through the dispatcher with a real store:
random bytes, valid COSE_Mac0 around random maps, commands with random args for every
op, and tampered or foreign-keyed ones. For every input: exactly one reply (a read's
comes when the bus answers), built to wire.check_reply; never an exception; and never a
change of the journal, balances, top-ups, moratoria, meters or seen commands unless the
MAC verified (and, for a refused command, nothing but its seen record)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.buffer.journal import Journal
from agent.buffer.store import LANE_REPLY, Store
from agent.meters import MeterRegistry
from agent.uplink import cbor, cose, forming, wire
from agent.uplink.commands import OPS, make_command
from agent.wiring import start_ledger, wire_dispatcher, wire_ledger
from tests.e2e.uplink_helpers import GW, config_for

KEY = bytes(range(32))
NOW = 1_767_225_600
STATE_TABLES = ("journal", "accounts", "topups", "moratoria", "meters", "seen", "disconnects")


class Box:
    """One gateway's command side in this process, and what it looks like."""

    def __init__(self, data_dir: Path) -> None:
        cfg = config_for(1883, data_dir)
        self.store = Store(data_dir)
        self.journal = Journal(self.store, forming.entry_item)
        meters = MeterRegistry(cfg.meters)
        ledger = wire_ledger(cfg, self.store, self.journal, meters)
        start_ledger(ledger, cfg, self.store, self.journal, NOW)
        self.dispatcher = wire_dispatcher(gw=GW, boot=self.store.next_boot(), key=KEY,
                                          store=self.store, journal=self.journal, ledger=ledger,
                                          meters=meters, read_meter=lambda m, r: True)

    def state(self) -> dict[str, list[tuple[Any, ...]]]:
        return {t: sorted(self.store.conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
                for t in STATE_TABLES}

    def replies_after(self, seq: int) -> list[dict[str, Any]]:
        rows = self.store.conn.execute("SELECT payload FROM outbox WHERE lane = ? AND seq > ? "
                                       "ORDER BY seq", (LANE_REPLY, seq)).fetchall()
        return [wire.check_reply(cbor.loads(r[0])) for r in rows]

    def feed(self, data: bytes) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
        """Handle ``data``; (new replies, state before, state after)."""
        before, last = self.state(), self.store.meta("next_seq") - 1
        seq = self.dispatcher.handle(data, NOW)
        if seq is None:  # a read: the bus answers (here: it could not read the meter)
            for ref in list(self.dispatcher.pending_reads):
                self.dispatcher.read_done(ref, None, "no answer", NOW)
        return self.replies_after(last), before, self.state()


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Box:
    return Box(tmp_path_factory.mktemp("fuzz"))


scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64 - 1),
                    st.text(max_size=40), st.binary(max_size=40))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.text(max_size=12), st.integers(-5, 5)), inner, max_size=4)),
    max_leaves=12)
idents = st.one_of(st.sampled_from(["ACC-0001", "ACC-0002", "SDM-0001", "SDM-0002", "NOPE",
                                    "rs485-0", "domestic"]), st.text(max_size=70))
ARG_KEYS = ("account", "amount", "txn", "meter", "action", "until", "name", "slabs",
            "fixed_per_day", "duty_bp", "billing_day", "tod", "protected_hours",
            "emergency_credit", "alert_levels_pct", "reason", "accounts", "from_n", "id",
            "bus", "address", "model", "relay", "holidays", "protected_weekdays")
arg_values = st.one_of(idents, st.integers(-10, 10**8), values,
                       st.sampled_from(["connect", "disconnect", "auto", "18:00-08:00", ""]),
                       st.lists(st.fixed_dictionaries({"rate": st.integers(-1, 900)}),
                                max_size=2))
args = st.dictionaries(st.sampled_from(ARG_KEYS), arg_values, max_size=5)
command_ids = st.one_of(st.text(min_size=1, max_size=8), st.sampled_from(["dup-1", "dup-2"]))


@st.composite
def payloads(draw: st.DrawFn) -> dict[Any, Any]:
    """Maps near a command: the right keys with random or right-typed values, or junk."""
    p: dict[Any, Any] = {}
    if draw(st.booleans()):
        p["id"] = draw(st.one_of(command_ids, values))
    if draw(st.integers(0, 9)):
        p["op"] = draw(st.one_of(st.sampled_from(OPS), values))
    p["iat"] = draw(st.one_of(st.just(NOW), values))
    p["exp"] = draw(st.one_of(st.just(NOW + 600), st.just(NOW - 1), values))
    p["args"] = draw(st.one_of(args, values))
    # keys CBOR can carry (major types 0/1): a sender's encoder refuses any other
    extra = draw(st.dictionaries(st.one_of(st.text(max_size=5),
                                           st.integers(-(2**64), 2**64 - 1)), values,
                                 max_size=2))
    return {**p, **extra} if draw(st.integers(0, 9)) == 0 else p


FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def check_one(box: Box, data: bytes, *, verified: bool) -> dict[str, Any]:
    replies, before, after = box.feed(data)
    assert len(replies) == 1, replies
    reply = replies[0]
    if not verified:
        assert after == before, "a state change without a valid MAC"
        assert reply["code"] in ("malformed", "bad_mac")
    elif reply.get("dup"):
        assert after == before, "a repeated id changed something"
    elif reply["code"] != "ok":
        # refused after the MAC verified: at most its seen record was added
        changed = {t for t in STATE_TABLES if before[t] != after[t]}
        assert changed <= {"seen"}, changed
    return reply


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(box: Box, data: bytes) -> None:
    reply = check_one(box, data, verified=False)
    assert reply["code"] in ("malformed", "bad_mac")


@FUZZ
@given(payloads())
def test_valid_mac_around_random_maps(box: Box, payload: dict[Any, Any]) -> None:
    data = cose.sign_mac0(KEY, cbor.dumps(payload))
    reply = check_one(box, data, verified=True)
    cid = payload.get("id")
    if isinstance(cid, str) and 0 < len(cid) <= 128:
        assert reply["id"] == cid


@FUZZ
@given(st.sampled_from(OPS), args, command_ids)
def test_every_op_with_random_args(box: Box, op: str, a: dict[str, Any], cid: str) -> None:
    reply = check_one(box, make_command(KEY, op, a, id=cid, now_s=NOW), verified=True)
    assert reply["id"] == cid


@FUZZ
@given(st.sampled_from(OPS), args, st.integers(0, 200), st.integers(0, 7))
def test_tampered_and_foreign_commands_change_nothing(box: Box, op: str, a: dict[str, Any],
                                                      where: int, bit: int) -> None:
    good = make_command(KEY, op, a, id="t-1", now_s=NOW)
    flipped = bytearray(good)
    flipped[where % len(good)] ^= 1 << bit
    for data in (bytes(flipped), make_command(bytes(32), op, a, id="t-2", now_s=NOW)):
        check_one(box, data, verified=False)


def test_a_topup_with_a_valid_mac_is_applied_once(box: Box) -> None:
    """The fuzzers above must be able to tell: a valid command does change the ledger."""
    data = make_command(KEY, "topup", {"account": "ACC-0002", "amount": 123, "txn": "F-1"},
                        id="fz-topup", now_s=NOW)
    _, before, after = box.feed(data)
    assert before["journal"] != after["journal"]
    replies, before, after = box.feed(data)
    assert replies[0]["dup"] is True and before == after
