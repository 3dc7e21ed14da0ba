"""What the store holds for the uplink, read: a lane's pending rows in order and within
bounds, the formed messages by priority, and the backlog's summaries from the tally
(no table scan: the tally is kept in the transaction of each change, store.py).

``Reads`` is the read side of ``Store`` (store.py, which writes): every method here
only reads, after writing what the transaction's unit of work holds that the read
needs (its pending items, its tally changes: transaction.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from agent.buffer.schema import LANE_EVENTS, LANE_LEDGER, LANE_READINGS, READING_LANES
from agent.buffer.sequence import split_sequence
from agent.buffer.transaction import Transactions


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    lane: int
    topic: str
    payload: bytes
    created: int


class PendingRow(NamedTuple):
    id: int
    item: bytes  # a CBOR sequence of ``n`` items (readings: a run)
    size: int
    t: int  # the row's oldest item (readings: the run's first reading)
    n: int = 1  # items in the row


@dataclass(frozen=True, slots=True)
class Backlog:
    """What has not reached the broker yet (from the tally: no table scan)."""

    messages: int  # formed, not acknowledged
    items: int  # readings, events and entries not acknowledged, formed or not
    bytes: int  # payload bytes of both
    oldest_t: int | None  # the oldest item's time (Unix s), formed or not
    pending: int = 0  # items not yet formed into a message (piles up while the link is down)

    @property
    def total(self) -> int:
        """CONTRACT 3's birth ``backlog``: formed messages plus items not yet formed, so
        an outage shows as a backlog before any message is formed."""
        return self.messages + self.pending


class Reads(Transactions):
    """The store's reads (see the module docstring)."""

    # -- pending items ----------------------------------------------------
    def pending(self, lane: int, max_bytes: int, max_items: int) -> list[PendingRow]:
        """Oldest pending rows of a lane, within the byte and item bounds (at least one
        row): each a CBOR sequence of ``n`` events or entries."""
        self._flush_batch()
        out: list[PendingRow] = []
        total = items = 0
        for r in self.conn.execute("SELECT id, item, size, t, n FROM pending WHERE lane = ? "
                                   "ORDER BY id LIMIT ?", (lane, max_items)):
            if out and (total + r[2] > max_bytes or items + r[4] > max_items):
                break
            out.append(PendingRow(r[0], bytes(r[1]), r[2], r[3], r[4]))
            total += r[2]
            items += r[4]
        return out

    def pending_items(self, lane: int) -> list[bytes]:
        """Every pending event or entry of a lane, oldest first, one CBOR item each (for
        tools and tests: forming reads whole rows)."""
        return [item for row in self.pending(lane, 1 << 62, 1 << 62)
                for item in split_sequence(row.item)]

    def _rows(self, where: str, args: tuple[object, ...],
              max_bytes: int | None = None) -> list[PendingRow]:
        """Rows in order; with ``max_bytes``, only as many as fit (at least one), read
        lazily so a long backlog is not loaded to find the first few runs."""
        out: list[PendingRow] = []
        total = 0
        for r in self.conn.execute(f"SELECT id, item, size, t, n FROM pending WHERE {where}",
                                   args):
            if max_bytes is not None and out and total + r[2] > max_bytes:
                break
            out.append(PendingRow(r[0], bytes(r[1]), r[2], r[3], r[4]))
            total += r[2]
        return out

    def pending_since(self, lane: int, since_t: int, max_rows: int,
                      max_bytes: int | None = None) -> list[PendingRow]:
        """A lane's rows with ``t >= since_t`` (the live ones), oldest first."""
        return self._rows("lane = ? AND t >= ? ORDER BY id LIMIT ?", (lane, since_t, max_rows),
                          max_bytes)

    def oldest_readings(self, limit: int, *, unstripped: bool = False,
                        max_bytes: int | None = None) -> list[PendingRow]:
        """The oldest pending reading runs, by arrival."""
        where = " AND stripped = 0" if unstripped else ""
        return self._rows(f"lane = ?{where} ORDER BY id LIMIT ?", (LANE_READINGS, limit),
                          max_bytes)

    def pending_stats(self, lane: int) -> tuple[int, int | None]:
        """(items, oldest t) of a lane's pending items."""
        self._flush_batch()
        self._flush_tally()
        count = self.conn.execute("SELECT items FROM tally WHERE tbl = 'pending' AND lane = ?",
                                  (lane,)).fetchone()[0]
        row = self.conn.execute("SELECT MIN(t) FROM pending WHERE lane = ?", (lane,)).fetchone()
        return int(count), (None if row[0] is None else int(row[0]))

    # -- outbox -----------------------------------------------------------
    def outbox_next(self, exclude: set[int], limit: int) -> list[OutboxRow]:
        """Unsent rows by lane priority then seq, skipping those in flight (whose
        payloads are not read again: the (lane, seq) index answers first)."""
        if limit <= 0:
            return []
        keys = [r[0] for r in self.conn.execute(
            "SELECT seq FROM outbox ORDER BY lane, seq LIMIT ?", (limit + len(exclude),))
            if r[0] not in exclude][:limit]
        if not keys:
            return []
        marks = ",".join("?" * len(keys))
        rows = self.conn.execute(
            f"SELECT seq, lane, topic, payload, created FROM outbox WHERE seq IN ({marks}) "
            "ORDER BY lane, seq", keys).fetchall()
        return [OutboxRow(int(r[0]), int(r[1]), r[2], bytes(r[3]), int(r[4])) for r in rows]

    def outbox_rows(self, lane: int) -> int:
        self._flush_tally()
        return int(self.conn.execute("SELECT rows FROM tally WHERE tbl = 'outbox' AND lane = ?",
                                     (lane,)).fetchone()[0])

    def oldest_reading_message(self) -> tuple[int, int, int] | None:
        """(seq, items, t0) of the formed readings message with the oldest data."""
        row = self.conn.execute(
            "SELECT seq, items, t0 FROM outbox WHERE lane IN (?, ?) ORDER BY t0, seq LIMIT 1",
            READING_LANES).fetchone()
        return None if row is None else (int(row[0]), int(row[1]), int(row[2]))

    # -- the backlog, from the tally ----------------------------------------
    def backlog(self) -> tuple[int, int | None]:
        """(messages not yet acknowledged, creation time of the oldest)."""
        row = self.conn.execute("SELECT COUNT(*), MIN(created) FROM outbox").fetchone()
        return int(row[0]), (None if row[1] is None else int(row[1]))

    def backlog_summary(self) -> Backlog:
        self._flush_batch()
        self._flush_tally()
        tally = self.conn.execute(
            "SELECT tbl, SUM(rows), SUM(bytes), SUM(items) FROM tally GROUP BY tbl").fetchall()
        by = {r[0]: (int(r[1] or 0), int(r[2] or 0), int(r[3] or 0)) for r in tally}
        pend = by.get("pending", (0, 0, 0))
        out = by.get("outbox", (0, 0, 0))
        firsts = [self.conn.execute("SELECT MIN(t) FROM pending WHERE lane = ?",  # (lane, t)
                                    (lane,)).fetchone()[0]
                  for lane in (LANE_EVENTS, LANE_LEDGER, LANE_READINGS)]
        firsts.append(self.conn.execute("SELECT MIN(t0) FROM outbox").fetchone()[0])
        oldest = [int(v) for v in firsts if v is not None]
        return Backlog(messages=out[0], items=pend[2] + out[2], bytes=pend[1] + out[1],
                       oldest_t=min(oldest) if oldest else None, pending=pend[2])

    def reading_bytes(self) -> int:
        """Payload bytes of the readings held (pending runs and formed messages)."""
        self._flush_tally()
        row = self.conn.execute("SELECT COALESCE(SUM(bytes), 0) FROM tally WHERE lane IN "
                                "(?, ?)", READING_LANES).fetchone()
        return int(row[0])

    def size_bytes(self) -> int:
        """Payload bytes held for the uplink (pending items + formed messages)."""
        self._flush_batch()
        self._flush_tally()
        row = self.conn.execute("SELECT COALESCE(SUM(bytes), 0) FROM tally").fetchone()
        return int(row[0])

