"""The head-end, as the simulation needs it: dedupe, decode, command, retry.

It receives every ``up/*`` message the broker passes on, drops duplicates by
``(gw, seq)`` (CONTRACT 4) and checks that a ``seq`` seen again carries the same
bytes; every message is checked with ``wire.check_message`` except, for speed, 7 in
8 readings messages (those are decoded only); it keeps every reading, event,
journal entry and reply with the true time it first arrived. While the head-end is
offline its persistent (shared) subscription queues messages at the broker; they
arrive when it is back.

It signs commands with the gateway's key (``make_command``) with explicit ids,
so a run is reproducible, and keeps each until its reply arrives: a command with
no reply after ``RETRY_S`` while the agent is online is published again (same id,
same bytes: the agent answers a repeat with its stored reply), one that expired
unanswered is issued again under a new id (a top-up keeps its ``txn``, so it can
never credit twice). It greets every new agent boot (and then every few hours,
on the agent's periodic state) with a ``ping``: a verified command whose ``iat``
lets the agent trust its clock.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Final, Protocol

import cbor2

from agent.uplink import cbor, wire
from agent.uplink.commands import make_command

RETRY_S: Final = 600
TTL_S: Final = 3600  # commands carry exp = iat + TTL_S
PING_EVERY_S: Final = 6 * 3600  # a ping at each agent boot, and then at most this often
CHECK_EVERY: Final = 8  # readings messages checked in full (wire.check_message): seq % 8 == 0




def strict_loads(payload: bytes) -> Any:
    """``cbor.loads(payload, max_bytes=cbor.MAX_UPLINK_BYTES)``, or None where it would
    raise (the caller then takes the general path, which reports why)."""
    try:
        return cbor.loads(payload, max_bytes=cbor.MAX_UPLINK_BYTES)
    except cbor.CborError:
        return None


class Host(Protocol):
    @property
    def now(self) -> int: ...
    def at(self, t: int, fn: Callable[[], None]) -> None: ...
    def send_command(self, payload: bytes) -> None: ...
    def on_reply(self, cmd: Pending, reply: dict[str, Any], t: int) -> None: ...
    def on_event(self, event: dict[str, Any], t: int) -> None: ...
    def on_birth(self, state: dict[str, Any], t: int) -> None: ...


@dataclass
class Pending:
    op: str
    args: dict[str, Any]
    purpose: str  # topup:<txn> | moratorium:<why> | ping | override
    id: str
    payload: bytes
    sent_t: int
    exp: int
    sends: int = 1
    reissues: int = 0


@dataclass
class Received:
    """Everything that reached the head-end from one gateway (first arrivals only)."""

    readings: list[tuple[int, str, int, int]] = field(default_factory=list)  # at, m, t, wh
    events: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    entries: list[tuple[int, str, int]] = field(default_factory=list)  # at, acct, n
    replies: dict[str, list[tuple[int, dict[str, Any]]]] = field(default_factory=dict)
    seqs: dict[int, bytes] = field(default_factory=dict)
    messages: int = 0  # arrivals, duplicates included
    duplicates: int = 0
    bytes: int = 0
    violations: list[str] = field(default_factory=list)
    births: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    wills: int = 0


class HeadEnd:
    def __init__(self, host: Host, gw: str, key: bytes) -> None:
        self.host = host
        self.gw = gw
        self.key = key
        self.online = True
        self.payments = True
        self.got = Received()
        self.hash = hashlib.sha256()
        self.pending: dict[str, Pending] = {}
        self.issued: dict[str, Pending] = {}  # every command ever signed, by id
        self.iat_of: dict[bytes, int] = {}  # its bytes -> its iat (the clock check)
        self.agent_online = False
        self._ids = 0
        self._backlog: list[tuple[str, bytes]] = []  # queued for it while it is offline
        self._boot_seen: object = None
        self._pinged = -PING_EVERY_S

    # -- receiving ------------------------------------------------------------------------
    def on_up(self, topic: str, payload: bytes, t: int) -> None:
        if not self.online:
            self._backlog.append((topic, payload))
            return
        got = self.got
        got.messages += 1
        got.bytes += len(payload)
        self.hash.update(topic.encode() + b"\0" + payload)
        kind = topic.rsplit("/", 1)[-1]
        try:
            msg, seq = self._decode(kind, payload)
        except (wire.WireError, cbor2.CBORError, TypeError, KeyError, ValueError) as exc:
            got.violations.append(f"t={t} {topic}: not a valid message: {exc}")
            return
        assert isinstance(msg, dict)
        if msg.get("gw") != self.gw:
            got.violations.append(f"seq {seq}: gw field is {msg.get('gw')!r}")
        if seq in got.seqs:
            got.duplicates += 1
            if got.seqs[seq] != payload:
                got.violations.append(f"seq {seq} sent again with other bytes")
            return
        got.seqs[seq] = payload
        if kind == "readings":
            for series in msg["readings"]:
                times = list(accumulate(series["t"]))
                wh = list(accumulate(series["import_wh"])) if "import_wh" in series \
                    else [-1] * len(times)
                got.readings += [(t, series["m"], ts, w) for ts, w in zip(times, wh,
                                                                        strict=True)]
        elif kind == "events":
            for event in msg["events"]:
                got.events.append((t, event))
                self.host.on_event(event, t)
        elif kind == "ledger":
            got.entries += [(t, e["acct"], e["n"]) for e in msg["entries"]]
        elif kind == "reply":
            self._reply(msg, t)

    @staticmethod
    def _decode(kind: str, payload: bytes) -> tuple[Any, int]:
        """(message, seq), every message checked with ``wire.check_message`` but 7 in 8
        readings messages (those are decoded only, by cbor2's C decoder); raises what
        ``on_up`` reports as a violation."""
        if kind != "readings":  # decoded once, by the hardened decoder (if it is sure)
            msg = strict_loads(payload)
            if type(msg) is dict and type(msg.get("seq")) is int:
                wire.check_message(kind, msg)
                return msg, msg["seq"]
        # the general case (and any doubt): the same steps, so the same errors
        msg = cbor2.loads(payload)
        seq = int(msg["seq"])
        if kind != "readings" or seq % CHECK_EVERY == 0:  # every message but 7 in 8
            msg = strict_loads(payload)
            if msg is None:
                msg = cbor.loads(payload, max_bytes=cbor.MAX_UPLINK_BYTES)
            wire.check_message(kind, msg)
        return msg, seq

    def on_agent_state(self, payload: bytes, t: int) -> None:
        state = json.loads(payload)
        self.agent_online = bool(state.get("online"))
        if not self.agent_online:
            self.got.wills += 1
            return
        self.got.births.append((t, state))
        boot = state.get("boot")
        if self.online and (boot != self._boot_seen or t - self._pinged >= PING_EVERY_S):
            # a new boot, or a while since: a ping lets the agent confirm its clock
            self._boot_seen, self._pinged = boot, t
            self.host.on_birth(state, t)

    def set_online(self, online: bool) -> None:
        self.online = online
        if online:
            backlog, self._backlog = self._backlog, []
            for topic, payload in backlog:
                self.on_up(topic, payload, self.host.now)

    # -- commands ---------------------------------------------------------------------------
    def command(self, op: str, args: dict[str, Any], purpose: str) -> Pending | None:
        """Sign and publish; None when the head-end is offline (the caller tries later)."""
        if not self.online:
            return None
        self._ids += 1
        cmd_id = f"he-{self.gw}-{self._ids}"
        now = self.host.now
        payload = make_command(self.key, op, args, id=cmd_id, iat=now, exp=now + TTL_S,
                               now_s=now)
        cmd = Pending(op, dict(args), purpose, cmd_id, payload, now, now + TTL_S)
        self.pending[cmd_id] = cmd
        self.issued[cmd_id] = cmd
        self.iat_of[payload] = now
        self.host.send_command(payload)
        self.host.at(now + RETRY_S, lambda: self._retry(cmd_id))
        return cmd

    def _retry(self, cmd_id: str) -> None:
        cmd = self.pending.get(cmd_id)
        if cmd is None:
            return
        now = self.host.now
        if not self.online:
            self.host.at(now + RETRY_S, lambda: self._retry(cmd_id))
            return
        if now >= cmd.exp:
            del self.pending[cmd_id]
            again = self.command(cmd.op, cmd.args, cmd.purpose)
            if again is not None:
                again.reissues = cmd.reissues + 1
            return
        if self.agent_online:
            cmd.sends += 1
            self.host.send_command(cmd.payload)
        self.host.at(now + RETRY_S, lambda: self._retry(cmd_id))

    def _reply(self, msg: dict[str, Any], t: int) -> None:
        cmd_id = msg.get("id")
        if not isinstance(cmd_id, str):
            self.got.violations.append(f"t={t} a reply with id {cmd_id!r}: {msg.get('msg')}")
            return
        self.got.replies.setdefault(cmd_id, []).append((t, msg))
        cmd = self.pending.pop(cmd_id, None)
        if cmd is None:
            return  # a repeat of a reply already handled
        if msg.get("code") == "expired":
            # The agent's clock is ahead of ours (or the command sat in a queue too
            # long): issue it again later, never in a tight loop.
            self.pending[cmd_id] = cmd
            cmd.exp = t
            return
        self.host.on_reply(cmd, msg, t)
