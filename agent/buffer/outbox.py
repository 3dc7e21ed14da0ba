"""Forming uplink messages from pending items (CONTRACT 4–7).

A message is formed once: its ``seq`` is taken and its exact bytes stored in
the same transaction that removes the items it carries, so a seq always names
the same bytes across reconnects, restarts and power loss.

Bounds: a message carries at most ``MAX_ITEMS`` items and about
``MAX_BATCH_BYTES`` of them. While the link is down, readings stay pending
until a full batch has gathered, so a long outage drains in few, large
messages; events and ledger entries are formed at once (they are few and the
head-end wants them first).
"""

from __future__ import annotations

from typing import Any

from agent.buffer.store import LANE_EVENTS, LANE_LEDGER, LANE_READINGS, LANE_REPLY, Store
from agent.drivers.reading import Reading
from agent.uplink import cbor, wire

MAX_ITEMS = 500
MAX_BATCH_BYTES = 32 * 1024
MAX_MESSAGES_PER_CALL = 64  # one call never holds the writer for long


def reading_item(reading: Reading) -> bytes:
    return cbor.dumps({"m": reading.meter, "t": reading.t, "v": dict(reading.values)})


def _reading_from_item(item: Any) -> Reading:
    return Reading(meter=item["m"], t=item["t"], values=dict(item["v"]))


def event_item(t: int, type_: str, *, m: str | None = None, acct: str | None = None,
               detail: dict[str, Any] | None = None) -> bytes:
    event: dict[str, Any] = {"t": t, "type": type_, "detail": detail or {}}
    if m is not None:
        event["m"] = m
    if acct is not None:
        event["acct"] = acct
    return cbor.dumps(event)


def _body(lane: int, items: list[bytes]) -> dict[str, Any]:
    decoded = [cbor.loads(i) for i in items]
    if lane == LANE_READINGS:
        return {"readings": wire.readings_body([_reading_from_item(d) for d in decoded])}
    if lane == LANE_EVENTS:
        return {"events": decoded}
    if lane == LANE_LEDGER:
        return {"entries": decoded}
    raise AssertionError(f"lane {lane} is not batched")


def form_messages(store: Store, gw: str, boot: int, now_s: int, link_up: bool) -> int:
    """Turn pending items into outbox messages; returns how many were formed."""
    formed = 0
    for lane in (LANE_EVENTS, LANE_LEDGER, LANE_READINGS):
        while formed < MAX_MESSAGES_PER_CALL:
            count, _oldest = store.pending_stats(lane)
            if count == 0:
                break
            if lane == LANE_READINGS and not link_up and count < MAX_ITEMS:
                break
            with store.tx():
                rows = store.pending(lane, MAX_BATCH_BYTES, MAX_ITEMS)
                seq = store.take_seq()
                message = wire.envelope(gw, boot, seq)
                message.update(_body(lane, [item for _, item in rows]))
                store.add_outbox(seq, lane, cbor.dumps(message), now_s)
                store.delete_pending([row_id for row_id, _ in rows])
            formed += 1
    return formed


def add_reply(store: Store, gw: str, boot: int, now_s: int, body: dict[str, Any]) -> int:
    """One reply is one message; call inside the transaction of the command's effects."""
    seq = store.take_seq()
    message = wire.envelope(gw, boot, seq)
    message.update(body)
    store.add_outbox(seq, LANE_REPLY, cbor.dumps(message), now_s)
    return seq
