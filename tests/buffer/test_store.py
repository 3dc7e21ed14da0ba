"""The store: WAL + FULL, boot and seq durable, reading runs, the tally, outbox rows that
leave only on ack, lanes, forming (live, backlog), the schema-1 migration, seen commands."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.buffer import schema
from agent.buffer.journal import Entry, Journal
from agent.buffer.sequence import split_sequence
from agent.buffer.store import (
    BATCH_MAX_BYTES,
    BATCH_MAX_ITEMS,
    LANE_BACKLOG,
    LANE_EVENTS,
    LANE_LEDGER,
    LANE_READINGS,
    RUN_MAX,
    Store,
)
from agent.drivers.reading import Reading
from agent.errors import StoreError
from agent.events import BadReading, MeterOnline
from agent.uplink import cbor, forming, wire

T0 = 1_767_225_600
GW = "gw1"


def reading(meter: str, t: int, wh: int, **extra: int) -> Reading:
    return Reading(meter, t, {"import_wh": wh, **extra})


def add(store: Store, readings: list[Reading]) -> None:
    with store.tx():
        for r in readings:
            store.add_pending(LANE_READINGS, forming.reading_item(r), r.t, r.meter)


def delivered(store: Store) -> list[tuple[int, str, dict[str, Any]]]:
    """Every outbox row in delivery order, decoded, acknowledged on the way."""
    out = []
    for row in store.outbox_next(set(), 100_000):
        message = cbor.loads(row.payload, max_bytes=1 << 20)
        assert isinstance(message, dict)
        out.append((row.seq, row.topic, message))
        store.ack(row.seq)
    return out


def recount(store: Store) -> dict[tuple[str, int], tuple[int, int, int]]:
    got = {(r[0], r[1]): (r[2], r[3], r[4]) for r in store.conn.execute(
        "SELECT tbl, lane, rows, bytes, items FROM tally")}
    store._recount()
    want = {(r[0], r[1]): (r[2], r[3], r[4]) for r in store.conn.execute(
        "SELECT tbl, lane, rows, bytes, items FROM tally")}
    assert got == want
    return want


def test_pragmas(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_boot_counts_and_survives_reopen(tmp_path: Path) -> None:
    assert Store(tmp_path).next_boot() == 1
    assert Store(tmp_path).next_boot() == 2


def test_seq_gapless_and_rolled_back_with_its_transaction(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with store.tx():
        assert store.take_seq() == 1
    try:
        with store.tx():
            assert store.take_seq() == 2
            raise RuntimeError("crash before commit")
    except RuntimeError:
        pass
    with store.tx():
        assert store.take_seq() == 2


def test_a_reading_is_opaque_bytes_queued_with_its_meter(tmp_path: Path) -> None:
    """Writing never reads an item: the caller names the reading's meter (its run key)."""
    store = Store(tmp_path)
    with store.tx():
        store.add_pending(LANE_READINGS, b"not cbor", T0, "A")
        store.add_pending(LANE_READINGS, b"!", T0 + 1, "A")
    [run] = store.oldest_readings(10)
    assert (run.item, run.n, run.t) == (b"not cbor!", 2, T0)
    with pytest.raises(AssertionError, match="with its meter"), store.tx():
        store.add_pending(LANE_READINGS, b"x", T0 + 2)
    assert store.oldest_readings(10) == [run]  # undone with its transaction


def test_readings_of_a_meter_share_a_run_until_it_is_full(tmp_path: Path) -> None:
    store = Store(tmp_path)
    add(store, [reading("A", T0 + i, i) for i in range(RUN_MAX + 3)]
        + [reading("B", T0, 7, p_w=5)])
    rows = store.conn.execute("SELECT m, n, sealed FROM pending ORDER BY id").fetchall()
    assert rows == [("A", RUN_MAX, 1), ("A", 3, 0), ("B", 1, 0)]
    run = store.oldest_readings(10)[0]
    items = cbor2.loads(b"\x9f" + run.item + b"\xff")
    assert items[:2] == [["A", T0, 0] + [None] * 6, ["A", T0 + 1, 1] + [None] * 6]
    assert store.pending_stats(LANE_READINGS) == (RUN_MAX + 4, T0)
    recount(store)


def test_nothing_is_formed_while_the_link_is_down(tmp_path: Path) -> None:
    store = Store(tmp_path)
    add(store, [reading("A", T0, 1)])
    with store.tx():
        store.add_pending(LANE_EVENTS, forming.event_item(T0, MeterOnline("A", None)), T0)
    assert forming.form_messages(store, GW, 1, T0 + 3600, link_up=False) == 0
    assert store.backlog()[0] == 0 and store.meta("next_seq") == 1


def test_live_readings_wait_up_to_the_flush_time_events_do_not(tmp_path: Path) -> None:
    store = Store(tmp_path)
    add(store, [reading("A", T0, 1)])
    with store.tx():
        store.add_pending(LANE_EVENTS, forming.event_item(T0, MeterOnline("A", None)), T0)
    assert forming.form_messages(store, GW, 1, T0 + 1, link_up=True) == 1  # the event
    assert forming.form_messages(store, GW, 1, T0 + forming.LIVE_FLUSH_S, link_up=True) == 1
    assert [(topic, m.get("readings")) for _, topic, m in delivered(store)] == [
        ("up/events", None), ("up/readings", [{"m": "A", "t": [T0], "import_wh": [1]}])]


def test_rows_leave_only_on_ack_and_keep_their_bytes(tmp_path: Path) -> None:
    store = Store(tmp_path)
    add(store, [reading("M1", T0 + i, 1000 + i) for i in range(3)])
    with store.tx():
        store.add_pending(LANE_EVENTS, forming.event_item(T0, MeterOnline("M1", None)), T0)
    assert forming.form_messages(store, GW, 1, T0 + 10, link_up=True) == 2
    rows = store.outbox_next(set(), 10)
    assert [r.topic for r in rows] == ["up/events", "up/readings"]  # events first
    assert [r.seq for r in rows] == [1, 2]
    readings = wire.check_readings(cbor.loads(rows[1].payload))
    assert readings["v"] == 1 and readings["gw"] == GW and readings["seq"] == 2
    assert readings["readings"][0]["import_wh"] == [1000, 1, 1]
    assert store.outbox_next({1}, 10)[0].seq == 2  # in flight rows are skipped
    store.ack_many([1])
    assert store.backlog()[0] == 1
    reopened = Store(tmp_path)
    assert reopened.outbox_next(set(), 10)[0].payload == rows[1].payload  # same bytes
    assert reopened.backlog_summary().items == 3


def test_a_backlog_goes_out_after_live_data_each_meter_in_time_order(tmp_path: Path) -> None:
    """Three hours of two meters piled up while the link was down; the link is up (the
    first tick seals that as backlog) and a new reading comes: it is formed as live data
    and delivered before the backlog."""
    store = Store(tmp_path)
    old = [reading(m, T0 + 60 * i, 10 * i, p_w=i) for i in range(180) for m in ("A", "B")]
    add(store, old)
    now = T0 + 3 * 3600 + 600
    formed = forming.form_messages(store, GW, 1, now, link_up=True)
    assert formed == store.outbox_rows(LANE_BACKLOG) >= 1
    add(store, [reading("A", now + 1, 99_999)])
    assert forming.form_messages(store, GW, 1, now + 1 + forming.LIVE_FLUSH_S, True) == 1
    out = delivered(store)
    assert out[0][2]["readings"] == [{"m": "A", "t": [now + 1], "import_wh": [99_999]}]
    assert out[0][0] > out[1][0]  # a higher seq, yet first: a head-end orders by t
    backlog = [r for _, _, m in out[1:] for r in wire.decode_readings(m)]
    for meter in ("A", "B"):
        mine = [r for r in backlog if r.meter == meter]
        assert mine == sorted(mine, key=lambda r: r.t)
        assert [r.t for r in mine] == [T0 + 60 * i for i in range(180)]
        assert all(r.values == {"import_wh": 10 * i, "p_w": i} for i, r in enumerate(mine))
    assert store.size_bytes() == 0
    recount(store)


def test_backlog_messages_stay_under_the_byte_bound(tmp_path: Path) -> None:
    store = Store(tmp_path)
    big = 2**62 - 1  # deltas of these need the longest integer heads
    add(store, [Reading(f"M{m:03d}", T0 + i, {q: big if i % 2 else -big
                                              for q in wire.QUANTITIES})
                for i in range(40) for m in range(200)])
    formed = forming.form_backlog(store, GW, 1, T0 + 7200, 1000)
    rows = store.outbox_next(set(), 10_000)
    assert formed == len(rows) > 1
    assert max(len(r.payload) for r in rows) <= forming.MAX_MESSAGE_BYTES
    assert sum(len(wire.decode_readings(cbor.loads(r.payload, max_bytes=1 << 20)))
               for r in rows) == 8000


series = st.lists(st.integers(-(2**62) + 1, 2**62 - 1), min_size=1, max_size=5)


@given(st.lists(st.tuples(st.text(min_size=1, max_size=30), st.dictionaries(
    st.sampled_from(wire.QUANTITIES), series)), min_size=0, max_size=4),
    st.integers(0, 2**32), st.integers(1, 2**40))
def test_encode_readings_is_cbor_dumps_byte_for_byte(body: list[Any], boot: int,
                                                      seq: int) -> None:
    built = []
    for meter, columns in body:
        n = min((len(c) for c in columns.values()), default=1)
        built.append(wire.series(meter, list(range(T0, T0 + n)),
                                 {q: c[:n] for q, c in columns.items()}))
    message = wire.envelope(GW, boot, seq)
    message["readings"] = built
    assert forming.encode_readings(GW, boot, seq, built) == cbor.dumps(message)


@given(st.lists(st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1) |
                                st.text(max_size=30), max_size=5), max_size=40),
       st.integers(0, 2**32), st.integers(1, 2**40), st.sampled_from(["events", "entries"]))
def test_spliced_items_are_cbor_dumps_byte_for_byte(items: list[dict[str, Any]], boot: int,
                                                    seq: int, key: str) -> None:
    """Events and entries are spliced into their message as stored (cbor.dumps_with_items),
    never decoded and encoded again: the bytes must be what encoding the message gives."""
    message = wire.envelope(GW, boot, seq)
    spliced = cbor.dumps_with_items(message, key, [cbor.dumps(i) for i in items])
    message[key] = items
    assert spliced == cbor.dumps(message)


@pytest.mark.parametrize("n", [0, 23, 24, 255, 256, 65_535, 65_536])
def test_splice_heads_at_every_length_boundary(n: int) -> None:
    items = [cbor.dumps(0)] * n
    assert cbor.dumps_with_items({"a": 1}, "b", items) == cbor.dumps({"a": 1, "b": [0] * n})


ops = st.lists(st.one_of(
    st.tuples(st.just("reading"), st.sampled_from("ABC"), st.integers(0, 10_000)),
    st.tuples(st.just("event"), st.just(""), st.integers(0, 10_000)),
    st.tuples(st.just("form"), st.just(""), st.integers(0, 10_000)),
    st.tuples(st.just("ack"), st.just(""), st.integers(0, 5)),
    st.tuples(st.just("seal"), st.just(""), st.integers(0, 10_000)),
    st.tuples(st.just("rollback"), st.sampled_from("ABC"), st.integers(0, 10_000)),
), max_size=60)


class _Undo(Exception):
    pass


@settings(max_examples=40, deadline=None)
@given(ops)
def test_the_tally_and_open_runs_always_match_the_table(tmp_path_factory: Any,
                                           steps: list[tuple[str, str, int]]) -> None:
    store = Store(tmp_path_factory.mktemp("tally"))
    store.conn.execute("PRAGMA synchronous = OFF")  # the counts, not the fsyncs, are tested
    t = T0
    for op, meter, n in steps:
        t += n
        if op == "reading":
            add(store, [reading(meter, t, n)])
        elif op == "event":
            with store.tx():
                store.add_pending(LANE_EVENTS, forming.event_item(t, MeterOnline("M1", None)), t)
        elif op == "form":
            forming.form_messages(store, GW, 1, t, link_up=True)
        elif op == "seal":
            with store.tx():
                store.seal_runs(t - n)
        elif op == "rollback":  # a reading and an event undone with their transaction
            try:
                with store.tx():
                    store.add_pending(LANE_READINGS, forming.reading_item(reading(meter, t, n)),
                                      t, meter)
                    store.add_pending(LANE_EVENTS, forming.event_item(t, MeterOnline("M1", None)),
                                      t)
                    raise _Undo
            except _Undo:
                pass
        else:
            store.ack_many([r.seq for r in store.outbox_next(set(), n)])
        recount(store)
        # the open runs kept in memory are the ones in the table
        kept = store._runs()
        store._open_runs = None  # read again from the table
        assert kept == store._runs()
    summary = store.backlog_summary()
    assert summary.bytes == store.size_bytes()
    assert summary.messages == store.backlog()[0]


def test_a_schema_1_store_is_migrated(tmp_path: Path) -> None:
    """A store written by the walking skeleton (schema 1, readings as maps)."""
    conn = sqlite3.connect(tmp_path / "agent.sqlite3")
    conn.executescript(SCHEMA_1)
    conn.executemany("INSERT INTO meta VALUES (?, ?)",
                     [("schema", 1), ("boot", 4), ("next_seq", 8)])
    old = cbor.dumps({"m": "A", "t": T0, "v": {"import_wh": 5, "p_w": 7}})
    conn.execute("INSERT INTO pending (lane, item, size, t) VALUES (3, ?, ?, ?)",
                 (old, len(old), T0))
    conn.execute("INSERT INTO outbox VALUES (7, 1, 'up/events', x'a0', ?)", (T0,))
    conn.commit()
    conn.close()
    store = Store(tmp_path)
    assert store.meta("schema") == schema.VERSION and store.next_boot() == 5
    add(store, [reading("A", T0 + 1, 6)])  # a new run: the old row is sealed
    assert store.backlog_summary().items == 3
    assert forming.form_messages(store, GW, 5, T0 + 3600, link_up=True) == 1
    out = delivered(store)
    assert out[0][0] == 7 and out[1][0] == 8
    assert wire.decode_readings(out[1][2]) == [Reading("A", T0, {"import_wh": 5, "p_w": 7}),
                                               reading("A", T0 + 1, 6)]


def test_seen_commands_kept_until_exp(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with store.tx():
        store.remember("c1", b"\xa0", exp=100)
        store.remember("c2", b"\xa0", exp=300)
    assert store.forget_expired(200) == 1
    assert store.seen_reply("c1") is None and store.seen_reply("c2") == b"\xa0"
    assert Store(tmp_path).seen_reply("c2") == b"\xa0"  # across a restart


def test_savepoint_undoes_only_its_block(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with store.tx():
        store.add_pending(LANE_LEDGER, b"\xa0", 1)
        try:
            with store.savepoint():
                store.add_pending(LANE_LEDGER, b"\xa1", 2)
                raise ValueError("refused half-way")
        except ValueError:
            pass
    assert [r[0] for r in store.conn.execute("SELECT item FROM pending")] == [b"\xa0"]
    recount(store)


def test_a_transactions_events_and_entries_share_bounded_rows(tmp_path: Path) -> None:
    """Written at the commit as CBOR sequences of at most BATCH_MAX_ITEMS items and
    BATCH_MAX_BYTES; seen by reads inside the transaction; formed into the same messages
    as items of a row each would be; gone with a rollback."""
    store = Store(tmp_path)
    n = 2 * BATCH_MAX_ITEMS + 10
    events = [forming.event_item(T0 + i, MeterOnline(f"M{i}", None)) for i in range(n)]
    big = [forming.event_item(T0, BadReading(meter="M1", acct=None, why="charge_error",
                                              error="x" * 5000, import_wh=None))
           for _ in range(7)]  # 3 fit under BATCH_MAX_BYTES, so 3 rows: 3 + 3 + 1
    with store.tx():
        for i, item in enumerate(events):
            store.add_pending(LANE_EVENTS, item, T0 + i)
        assert store.pending_stats(LANE_EVENTS) == (n, T0)  # read inside: flushed first
        for item in big:
            store.add_pending(LANE_LEDGER, item, T0)
    rows = store.conn.execute("SELECT lane, n, size FROM pending ORDER BY id").fetchall()
    assert [(lane, k) for lane, k, _ in rows] == [
        (LANE_EVENTS, BATCH_MAX_ITEMS), (LANE_EVENTS, BATCH_MAX_ITEMS), (LANE_EVENTS, 10),
        (LANE_LEDGER, 3), (LANE_LEDGER, 3), (LANE_LEDGER, 1)]
    assert all(size <= BATCH_MAX_BYTES for _, _, size in rows)
    assert store.pending_items(LANE_EVENTS) == events
    assert store.pending_items(LANE_LEDGER) == big
    recount(store)
    with pytest.raises(RuntimeError), store.tx():
        store.add_pending(LANE_EVENTS, events[0], T0)
        raise RuntimeError("crash before the commit")
    assert store.pending_stats(LANE_EVENTS)[0] == n  # the rolled-back one left no row
    forming.form_messages(store, GW, 1, T0, link_up=True)
    got = [e for _, topic, m in delivered(store) if topic == "up/events" for e in m["events"]]
    assert [cbor.dumps(e) for e in got] == events
    assert store.pending_stats(LANE_EVENTS) == (0, None)
    recount(store)


def test_topup_once_per_txn_and_journal_sums(tmp_path: Path) -> None:
    store = Store(tmp_path)
    journal = Journal(store, forming.entry_item)
    with store.tx():
        journal.ensure_account("A", "domestic")
        assert journal.topup("A", 500, "txn-1", 10) is not None
        assert journal.topup("A", 500, "txn-1", 11) is None
        journal.post("A", 12, "energy", -120, "M1")
    entries = journal.entries("A")
    assert [e.n for e in entries] == [1, 2]
    assert sum(e.amt for e in entries) == entries[-1].bal == journal.account("A").balance == 380


def test_committed_state_survives_kill_9(tmp_path: Path) -> None:
    """A child commits, then is SIGKILLed mid-way through an uncommitted transaction."""
    code = f"""
import os, signal
from pathlib import Path
from agent.buffer.store import Store
from agent.buffer.journal import Journal
from agent.uplink import forming
s = Store(Path({str(tmp_path)!r})); j = Journal(s, forming.entry_item)
with s.tx():
    j.ensure_account("A", "t"); j.topup("A", 700, "x1", 1)
with s.tx():
    j.topup("A", 900, "x2", 2)
    os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2])
    assert proc.returncode == -9
    store = Store(tmp_path)
    journal = Journal(store, forming.entry_item)
    assert journal.account("A").balance == 700
    assert [e.ref for e in journal.entries("A")] == ["x1"]
    recount(store)


SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE pending (id INTEGER PRIMARY KEY AUTOINCREMENT, lane INTEGER NOT NULL,
  item BLOB NOT NULL, size INTEGER NOT NULL, t INTEGER NOT NULL);
CREATE INDEX pending_lane ON pending (lane, id);
CREATE TABLE outbox (seq INTEGER PRIMARY KEY, lane INTEGER NOT NULL, topic TEXT NOT NULL,
  payload BLOB NOT NULL, created INTEGER NOT NULL);
CREATE INDEX outbox_lane ON outbox (lane, seq);
CREATE TABLE seen (id TEXT PRIMARY KEY, reply BLOB NOT NULL, exp INTEGER NOT NULL);
"""


def test_journal_memory_follows_commits_and_rollbacks(tmp_path: Path) -> None:
    """The writer's Journal keeps accounts and meters in memory (account changes reach
    SQLite only at the commit): a savepoint or a transaction rolled back must leave
    memory and the database agreeing, and a reader sees exactly what was committed."""
    store = Store(tmp_path)
    j = Journal(store, forming.entry_item)
    with store.tx():
        j.ensure_account("A", "dom")
    with store.tx():
        j.post("A", 1, "topup", 100, "t1")
        try:
            with store.savepoint():
                j.post("A", 2, "energy", -30, "e1")
                j.update_account("A", deferred="night", alerts={50})
                j.update_meter("M", base_wh=5)
                raise ValueError("refused half-way")
        except ValueError:
            pass
        kept = j.account("A")
        assert (kept.balance, kept.n, kept.deferred, kept.alerts) == (100, 1, "", frozenset())
        assert j.meter("M").base_wh is None
        j.update_account("A", alerts={25})
    try:
        with store.tx():
            j.post("A", 3, "energy", -10, "e2")
            j.update_meter("M", base_wh=7)
            raise ValueError("the process dies here")
    except ValueError:
        pass
    assert j.account("A").balance == 100 and j.meter("M").base_wh is None
    reader = Journal(Store.open_readonly(tmp_path))
    assert reader.account("A") == j.account("A") and reader.account("A").alerts == {25}
    assert reader.meters() == j.meters()
    assert [e.amt for e in reader.entries("A")] == [100]


@given(st.text(min_size=1, max_size=20), st.integers(0, 2**40),
       st.dictionaries(st.sampled_from(wire.QUANTITIES), st.integers(-(2**63), 2**63 - 1)))
def test_reading_item_is_cbor_dumps_byte_for_byte(meter: str, t: int,
                                                  values: dict[str, int]) -> None:
    kept = {q: v for q, v in values.items() if -forming.MAX_VALUE < v < forming.MAX_VALUE}
    want = cbor.dumps([meter, t, *(kept.get(q) for q in wire.QUANTITIES)])
    assert forming.reading_item(Reading(meter, t, values)) == want


@given(st.text(min_size=1, max_size=20), st.integers(1, 2**62), st.integers(0, 2**40),
       st.sampled_from(["topup", "token", "energy", "fixed", "duty", "adjust"]),
       st.integers(-(2**62), 2**62), st.integers(-(2**63), 2**63 - 1), st.text(max_size=40))
def test_entry_item_is_cbor_dumps_byte_for_byte(acct: str, n: int, t: int, kind: str,
                                                amt: int, bal: int, ref: str) -> None:
    entry = Entry(acct, n, t, kind, amt, bal, ref)
    assert forming.entry_item(entry) == cbor.dumps(entry.wire())


def test_backlog_counts_readings_not_yet_formed(tmp_path: Path) -> None:
    """With the link down readings pile up as pending items, no message formed: the
    backlog (status, CLI, the birth's ``backlog`` int) must not read 0."""
    from agent.uplink.delivery import state_payload

    store = Store(tmp_path)
    with store.tx():
        for i in range(5):
            store.add_pending(LANE_READINGS, forming.reading_item(reading("A", T0 + i, i)),
                              T0 + i, "A")
    assert store.backlog()[0] == 0  # no message formed yet
    summary = store.backlog_summary()
    assert summary.messages == 0 and summary.pending == 5 and summary.total == 5
    birth = state_payload({"boot": 1, "meters": []}, backlog={
        "total": summary.total, "items": summary.items,
        "bytes": summary.bytes, "oldest_s": 0}, drops={}, link={})
    import json

    assert json.loads(birth)["backlog"] == 5


def _broken_store(tmp_path: Path, fault: str) -> Path:
    """A data_dir holding a store spoiled by ``fault``; returns the file."""
    Store(tmp_path).close()
    path = tmp_path / "agent.sqlite3"
    data = path.read_bytes()
    if fault == "truncated":
        path.write_bytes(data[: len(data) // 3])
    elif fault == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(bytes(range(256)) * 8)
    for extra in ("-wal", "-shm"):
        Path(str(path) + extra).unlink(missing_ok=True)
    return path


@pytest.mark.parametrize("fault", ["truncated", "empty", "garbled"])
@pytest.mark.parametrize("readonly", [False, True])
def test_a_broken_store_is_refused_and_left_unchanged(tmp_path: Path, fault: str,
                                                      readonly: bool) -> None:
    path = _broken_store(tmp_path, fault)
    before = path.read_bytes()
    names = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(StoreError, match=f"store {path} .*Recovering a broken store"):
        Store(tmp_path, readonly=readonly)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == names


def test_a_read_only_data_dir_is_refused(tmp_path: Path) -> None:
    Store(tmp_path).close()
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(StoreError, match="read-only"):
            Store(tmp_path)
    finally:
        tmp_path.chmod(0o755)


@given(st.lists(st.lists(st.one_of(st.none(), st.integers(-(2**62), 2**62)),
                         min_size=7, max_size=7), min_size=1, max_size=20))
def test_a_row_reads_back_item_by_item(values: list[list[int | None]]) -> None:
    """A run row (a CBOR sequence) as forming reads it (cbor.loads_trusted_sequence) and
    as the store splits it (sequence.split_sequence), item for item."""
    rows: list[list[str | int | None]] = [["M1", T0 + i, *v] for i, v in enumerate(values)]
    items = [cbor.dumps_reading_row(r) for r in rows]
    assert items == [cbor.dumps(r) for r in rows]
    assert cbor.loads_trusted_sequence(b"".join(items)) == rows
    assert split_sequence(b"".join(items)) == items
    assert [cbor.loads_trusted(i) for i in items] == rows
