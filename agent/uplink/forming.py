"""Forming uplink messages from pending items (CONTRACT 4-7): the one place that turns
the store's rows into message bytes, and that gives the items it stores their bytes
(a reading, an event, a ledger entry).

A message is formed once: its ``seq`` is taken and its exact bytes stored in the
same transaction that removes the items it carries, so a seq always names the
same bytes across reconnects, restarts and power loss.

When (nothing is formed while the link is down: a seq is taken only for what can
be sent now, and until then items can still be thinned at the storage bound):
- events and ledger entries: at every call, all of them;
- live readings (``t >= now - LIVE_AGE_S``) into lane ``LANE_READINGS``: once a
  full batch has gathered or the oldest of them is ``LIVE_FLUSH_S`` old; in the table
  form (``[mqtt] live_readings = "table"``: the caller passes a ``PollCycle``), one
  message of every meter's readings (agent/uplink/table.py), once the poll cycle is
  complete (cycle.py), the oldest of them is ``linger_s`` old (``TABLE_LINGER_S`` or
  the shortest poll interval, whichever is less) or a batch is full
  (``TABLE_MAX_READINGS`` readings or ``TABLE_MAX_ITEM_BYTES`` of stored items),
  whichever comes first;
- backlog readings (older: they piled up while the link was down) into lane
  ``LANE_BACKLOG``: on demand, ``BACKLOG_AHEAD`` messages ahead of the in-flight
  window (``form_backlog``, called by Delivery). The store keeps readings as runs
  (up to ``RUN_MAX`` consecutive readings of one meter in one row, store.py); a
  backlog message holds whole runs, oldest first, so delta encoding packs a
  72-hour backlog at about 15 bytes per reading and each meter's backlog goes out
  in time order. The first tick with the link up seals the runs that began before
  ``LIVE_AGE_S``: what comes after starts new runs, which go out live.
Delivery sends lane by lane (replies, events, ledger, live, backlog): a live
reading waits at most for one PUBACK of the drain, never for the drain. Each of
the two reading streams is in time order per meter; a live message formed during
a drain has a lower seq than older readings still to come from the backlog, so a
head-end orders a meter's readings by ``t``, not by seq (docs/mqtt-api.md).

Bounds: a message carries at most ``MAX_ITEMS`` events or entries and
``MAX_ITEM_BYTES`` of them (readings: ``MAX_RUNS`` runs, ``MAX_READING_ITEM_BYTES``;
the table form: ``TABLE_MAX_READINGS`` readings, ``TABLE_MAX_ITEM_BYTES``);
an encoded message over ``MAX_MESSAGE_BYTES`` is formed again from half of them.
One call forms at most ``MAX_MESSAGES_PER_CALL`` messages, so it never holds the
writer for long.

The storage bound (what may be held, and what goes first) is buffer/bounds.py's;
``form_messages`` enforces it before it forms.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from agent.buffer import bounds
from agent.buffer.cycle import PollCycle
from agent.buffer.journal import Entry
from agent.buffer.store import (
    BATCH_MAX_BYTES,
    BATCH_MAX_ITEMS,
    LANE_BACKLOG,
    LANE_EVENTS,
    LANE_LEDGER,
    LANE_READINGS,
    LANE_REPLY,
    PendingRow,
    Store,
)
from agent.config import StoreConfig
from agent.drivers.reading import Reading
from agent.events import Event
from agent.uplink import cbor, table, wire
from agent.vocab import INSTANTANEOUS

log = logging.getLogger("agent.outbox")

MAX_ITEMS = 4096  # events or entries per message
MAX_ITEM_BYTES = 32 * 1024  # events and entries: about the size of the message
MAX_READING_ITEM_BYTES = 96 * 1024  # readings shrink ~2x into delta-encoded series
MAX_MESSAGE_BYTES = 64 * 1024  # the hard bound on one up/* message
MAX_MESSAGES_PER_CALL = 64
LIVE_AGE_S = 60  # a pending reading older than this when the link is up is backlog
LIVE_FLUSH_S = 5  # live readings wait at most this long to share a message
TABLE_LINGER_S = 30  # the table form: at most this long for a poll cycle to complete
TABLE_MAX_READINGS = 2048  # the table form: readings a message; a full batch goes at once
TABLE_MAX_ITEM_BYTES = 64 * 1024  # and their stored items' bytes (~21 B each on the wire)
BACKLOG_AHEAD = 32  # backlog messages formed ahead of the in-flight window
MAX_RUNS = 1024  # reading runs looked at per message (with the bytes: a memory bound)
MAX_VALUE = 2**62  # |value| below this: every delta fits int64 (CONTRACT 1: signed 64-bit)
_KEEP = tuple(q not in INSTANTANEOUS for q in wire.QUANTITIES)
assert BATCH_MAX_BYTES <= MAX_ITEM_BYTES and BATCH_MAX_ITEMS <= MAX_ITEMS  # a row fits
assert TABLE_MAX_READINGS <= table.MAX_ROWS and TABLE_LINGER_S < LIVE_AGE_S


class _R:
    """A reading as wire.readings_body wants it, without Reading's per-value asserts."""

    __slots__ = ("meter", "t", "values")

    def __init__(self, meter: str, t: int, values: dict[str, int]) -> None:
        self.meter, self.t, self.values = meter, t, values


# -- items: our own bytes in the store ------------------------------------------------
def reading_item(reading: Reading) -> bytes:
    """[m, t, import_wh, export_wh, p_w, v_dv, i_ma, f_chz, pf_milli], null where the
    meter does not measure: a third of a map's bytes, and twice as fast to decode.

    A value of 2**62 or more (no meter shows one; a driver bug could) is left out and
    logged: its delta might not fit int64, and one such value must not stop a drain."""
    values = {}
    for q, v in reading.values.items():
        if -MAX_VALUE < v < MAX_VALUE:
            values[q] = v
        else:
            log.warning("event=value_out_of_range meter=%s t=%d %s=%d", reading.meter,
                        reading.t, q, v)
    return cbor.dumps_reading_row([reading.meter, reading.t,
                                   *[values.get(q) for q in wire.QUANTITIES]])


def _readings(item: bytes) -> list[_R]:
    """The readings of a run (a CBOR sequence of reading items). Our own bytes: cbor2's
    C decoder directly, the whole run at once as an indefinite-length array (the
    hardened cbor.loads is for bytes from outside). A schema-1 store holds
    {"m", "t", "v"} maps: read those too."""
    out = []
    for d in cbor.loads_trusted_sequence(item):
        if isinstance(d, dict):
            out.append(_R(d["m"], d["t"], dict(d["v"])))
        else:
            out.append(_R(d[0], d[1], {q: v for q, v in zip(wire.QUANTITIES, d[2:],
                                                             strict=True) if v is not None}))
    return out


def strip_run(run: bytes) -> bytes:
    """The run without its instantaneous values (the storage bound, step 1)."""
    return b"".join(cbor.dumps([r.meter, r.t, *(r.values.get(q) if keep else None for q, keep
                                                in zip(wire.QUANTITIES, _KEEP, strict=True))])
                    for r in _readings(run))


def event_item(t: int, event: Event) -> bytes:
    """An event's item (CONTRACT 5): ``{t, type, m?, acct?, detail}``, ``m`` and ``acct``
    left out when the record has none (absent, not null)."""
    item: dict[str, Any] = {"t": t, "type": event.TYPE, "detail": event.detail()}
    if event.meter is not None:
        item["m"] = event.meter
    if event.acct is not None:
        item["acct"] = event.acct
    return cbor.dumps(item)


def entry_item(entry: Entry) -> bytes:
    """``cbor.dumps(entry.wire())``: the keys written in their RFC 8949 4.2.1 order
    (shortest first, then bytewise), two a reading, so without the generic walk."""
    return cbor.dumps_record({"n": entry.n, "t": entry.t, "amt": entry.amt, "bal": entry.bal,
                              "ref": entry.ref, "acct": entry.acct, "kind": entry.kind})


_S = TypeVar("_S")
_E = TypeVar("_E")


@dataclass(frozen=True, slots=True)
class ItemForms(Generic[_S, _E]):
    """The item forms the storage bound needs (buffer/bounds.py's ``Items``): this
    module's own functions, held as they are. Generic so that mypy checks each one's
    own signature against ``Items``."""

    strip_run: _S
    event_item: _E


ITEMS: bounds.Items = ItemForms(strip_run, event_item)


# -- messages -------------------------------------------------------------------------
def _deterministic(m: dict[str, Any]) -> dict[str, Any]:
    """``m`` with its keys in RFC 8949 4.2.1 order (bytewise by their encoding)."""
    return {k: m[k] for k in cbor.key_order(m)}


def encode_readings(gw: str, boot: int, seq: int, body: list[dict[str, Any]]) -> bytes:
    """An up/readings message, byte for byte what ``cbor.dumps`` writes for it (a test
    checks): cbor.dumps walks every integer of every array to order map keys, which is
    most of the cost of a backlog drain; here only the maps are ordered, and the arrays
    hold ints that wire.series has checked to be int64."""
    message = wire.envelope(gw, boot, seq)
    message["readings"] = [_deterministic(s) for s in body]
    return cbor.dumps_ordered(_deterministic(message))


def _encode(lane: int, gw: str, boot: int, seq: int, rows: list[PendingRow],
            as_table: bool = False) -> bytes:
    if as_table:  # live readings, one table (checked by table_message)
        readings = [r for row in rows for r in _readings(row.item)]
        return cbor.dumps(table.table_message(gw, boot, seq, readings))
    if lane in (LANE_READINGS, LANE_BACKLOG):
        body = [s for row in rows for s in _run_series(row.item)]
        body.sort(key=lambda s: (s["m"], s["t"][0]))  # by meter, then time (docs)
        return encode_readings(gw, boot, seq, body)
    # A row of events or entries is a sequence of our own cbor.dumps output: spliced in.
    key = {LANE_EVENTS: "events", LANE_LEDGER: "entries"}[lane]
    return cbor.dumps_with_items(wire.envelope(gw, boot, seq), key, [r.item for r in rows],
                                 sum(r.n for r in rows))


def _one_series(row: object) -> dict[str, Any] | None:
    """The series of a single reading item, or None to take the general path (which
    says what is wrong with it). The checks of wire.series, for one value each."""
    if type(row) is not list or len(row) != 2 + len(wire.QUANTITIES):
        return None
    meter, t = row[0], row[1]
    if type(meter) is not str or not meter or type(t) is not int or not 0 <= t < 2**63:
        return None
    series: dict[str, Any] = {"m": meter, "t": [t]}
    for q, value in zip(wire.QUANTITIES, row[2:], strict=True):
        if value is None:
            continue
        if type(value) is not int or not -MAX_VALUE < value < MAX_VALUE:
            return None
        series[q] = [value]
    return series


def _run_series(item: bytes) -> list[dict[str, Any]]:
    """The series of one run. The common case (one meter, in time order, the same
    quantities throughout) is built from columns (C-level transposition); anything
    else goes through wire.readings_body one reading at a time."""
    rows = cbor.loads_trusted_sequence(item)
    if len(rows) == 1:  # live data: a run of one reading, checked here without columns
        one = _one_series(rows[0])
        if one is not None:
            return [one]
    if all(type(r) is list for r in rows):  # schema-1 items are maps
        cols = list(zip(*rows, strict=True))
        meter, times = rows[0][0], list(cols[1])
        present = {}
        uniform = cols[0].count(meter) == len(rows) and times == sorted(times)
        for q, col in zip(wire.QUANTITIES, cols[2:], strict=True):
            nones = col.count(None)
            if nones == 0:
                present[q] = list(col)
            elif nones != len(col):
                uniform = False
        if uniform:
            return [wire.series(meter, times, present)]
    return wire.readings_body(_readings(item))


def _store_message(store: Store, lane: int, gw: str, boot: int, now_s: int,
                   rows: list[PendingRow], as_table: bool = False) -> int:
    """Form one message from ``rows`` (or from its first half, again, while it is over
    MAX_MESSAGE_BYTES), inside the caller's transaction; the caller deletes the rows
    used. Returns how many rows that is."""
    seq = store.meta("next_seq")  # taken below, once the bytes fit
    while True:
        payload = _encode(lane, gw, boot, seq, rows, as_table)
        if len(payload) <= MAX_MESSAGE_BYTES or len(rows) == 1:
            break
        rows = rows[: len(rows) // 2]
    assert store.take_seq() == seq
    store.add_outbox(seq, lane, payload, now_s, items=sum(r.n for r in rows),
                     t0=min(r.t for r in rows))
    return len(rows)


def form_messages(store: Store, gw: str, boot: int, now_s: int, link_up: bool, *,
                  limits: StoreConfig | None = None, free_bytes: int | None = None,
                  cycle: PollCycle | None = None) -> int:
    """Enforce the storage bound (when ``limits`` are given), then turn pending items
    into messages while the link is up; returns how many messages were formed.
    ``cycle``: live readings go in the table form, sent as the cycle says (or bounds)."""
    if limits is not None:
        bounds.enforce_bounds(store, limits, now_s, ITEMS, free_bytes=free_bytes)
    if not link_up:
        return 0
    # One transaction for the call (those of _form_live and form_backlog join it): one
    # commit instead of one a message and one a lane found empty; at most
    # MAX_MESSAGES_PER_CALL messages of at most MAX_MESSAGE_BYTES (4 MiB) in it.
    with store.tx():
        formed = 0
        for lane in (LANE_EVENTS, LANE_LEDGER):
            while formed < MAX_MESSAGES_PER_CALL:
                rows = store.pending(lane, MAX_ITEM_BYTES, MAX_ITEMS)
                if not rows:
                    break
                used = _store_message(store, lane, gw, boot, now_s, rows)
                store.delete_pending([r.id for r in rows[:used]])
                formed += 1
        room = MAX_MESSAGES_PER_CALL - formed
        formed += (_form_live(store, gw, boot, now_s, room) if cycle is None
                   else _form_live_table(store, gw, boot, now_s, room, cycle))
        ahead = BACKLOG_AHEAD - store.outbox_rows(LANE_BACKLOG)
        return formed + form_backlog(store, gw, boot, now_s,
                                     min(ahead, MAX_MESSAGES_PER_CALL - formed))


def _form_live(store: Store, gw: str, boot: int, now_s: int, room: int) -> int:
    formed = 0
    while formed < room:
        with store.tx():
            store.seal_runs(now_s - LIVE_AGE_S)  # what piled up while down is backlog
            rows = store.pending_since(LANE_READINGS, now_s - LIVE_AGE_S, MAX_RUNS,
                                       MAX_READING_ITEM_BYTES)
            full = len(rows) == MAX_RUNS or 2 * sum(r.size for r in rows) > \
                MAX_READING_ITEM_BYTES
            if not rows or (not full and min(r.t for r in rows) > now_s - LIVE_FLUSH_S):
                break
            used = _store_message(store, LANE_READINGS, gw, boot, now_s, rows)
            store.delete_pending([r.id for r in rows[:used]])
        formed += 1
    return formed


def _form_live_table(store: Store, gw: str, boot: int, now_s: int, room: int,
                     cycle: PollCycle) -> int:
    """Live readings in the table form: one message once the poll cycle is complete, the
    oldest reading is ``cycle.linger_s`` old, or a batch is full, whichever is first."""
    formed = 0
    while formed < room:
        with store.tx():
            store.seal_runs(now_s - LIVE_AGE_S)  # what piled up while down is backlog
            # one row more than a batch can take: to know whether the batch is full
            rows = store.pending_since(LANE_READINGS, now_s - LIVE_AGE_S,
                                       TABLE_MAX_READINGS + 1)
            batch: list[PendingRow] = []
            readings = nbytes = 0
            for row in rows:
                if batch and (readings + row.n > TABLE_MAX_READINGS
                              or nbytes + row.size > TABLE_MAX_ITEM_BYTES):
                    break
                batch.append(row)
                readings += row.n
                nbytes += row.size
            if not batch:
                break
            full = len(batch) < len(rows)
            lingered = min(r.t for r in batch) <= now_s - cycle.linger_s
            if not (full or lingered or cycle.complete()):
                break
            used = _store_message(store, LANE_READINGS, gw, boot, now_s, batch, as_table=True)
            store.delete_pending([r.id for r in batch[:used]])
        formed += 1
        if used == len(batch):  # else the rest (over MAX_MESSAGE_BYTES) follows at once
            cycle.sent()
    return formed


def form_backlog(store: Store, gw: str, boot: int, now_s: int, want: int) -> int:
    """Form up to ``want`` backlog messages from the oldest runs; returns how many.

    A run is one meter's consecutive readings, so a message of whole runs holds long
    series (delta encoding pays), and taking runs strictly oldest first keeps each
    meter's readings in time order from message to message."""
    cutoff = now_s - LIVE_AGE_S
    _count, oldest = store.pending_stats(LANE_READINGS)  # (lane, t) index: cheap
    if want <= 0 or oldest is None or oldest >= cutoff:
        return 0
    formed = 0
    while formed < want:
        with store.tx():
            store.seal_runs(cutoff)
            rows = []
            for row in store.oldest_readings(MAX_RUNS, max_bytes=MAX_READING_ITEM_BYTES):
                if row.t >= cutoff:
                    break  # live from here on
                rows.append(row)
            if not rows:
                break
            used = _store_message(store, LANE_BACKLOG, gw, boot, now_s, rows)
            store.delete_pending([r.id for r in rows[:used]])
        formed += 1
    return formed


def add_reply(store: Store, gw: str, boot: int, now_s: int, command_id: str | None,
              code: str, msg: str = "", result: dict[str, Any] | None = None, *,
              dup: bool = False) -> int:
    """One reply is one message, built by wire.reply_message (which checks it); call
    inside the transaction of the command's effects."""
    seq = store.take_seq()
    message = wire.reply_message(gw, boot, seq, command_id, code, msg, result, dup=dup)
    store.add_outbox(seq, LANE_REPLY, cbor.dumps(message), now_s)
    return seq


def seen_reply_item(body: dict[str, Any]) -> bytes:
    """A command's reply ``{id, code, msg, result}`` as the store keeps it (``seen``), to be
    sent again as a ``dup`` when the command is replayed."""
    return cbor.dumps(body)


def seen_reply_body(item: bytes) -> dict[str, Any]:
    """The reply ``seen_reply_item`` stored (read back with the hardened reader)."""
    body = cbor.loads(item)
    assert isinstance(body, dict)
    return body


