"""Commands from the head-end (CONTRACT 7): verify, dedupe, apply, reply.

Exactly one reply per command, built by ``wire.reply_message`` (which checks it
with ``wire.check_reply``, the head-end's own check). A refused command (bad
MAC, expired, malformed, unknown op, bad args, unknown account/meter) gets its
code and changes nothing: its effects run in a savepoint that is rolled back
when it raises. An accepted command's effects, its ``seen`` record and its
reply message commit in ONE transaction, so a crash either loses the command
(with ``MqttLink(manual_ack=True)`` the broker delivers it again, since it is
acknowledged only after that commit; otherwise the head-end retries the same
id) or keeps all three; a redelivery after that finds the ``seen`` record and
gets the stored reply with ``"dup": true``. ``seen`` outlives a restart and is
kept until the command's ``exp`` (at least ``SEEN_MIN_KEEP_S``); after that the
command is refused as expired anyway.

``read`` is the one op answered later: the bus reads the meter, then
``read_done`` replies (a repeat of its id meanwhile gets the same reply with
``"dup": true`` at that moment). A read in progress is not durable: after a
crash the head-end's retry of the same id starts it again (a read changes
nothing).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from agent.buffer.store import Store
from agent.errors import CommandError, StoreError
from agent.ops import Ops
from agent.relay.disconnect import Disconnection
from agent.supervisor import contain
from agent.uplink import forming
from agent.uplink.commands import Command, parse_command

log = logging.getLogger("agent.commands")

SEEN_MIN_KEEP_S = 24 * 3600  # a command's reply is kept at least this long, even if exp is sooner
MAX_MSG_CHARS = 512  # a reply's msg is for people; longer texts are cut

class Dispatcher:
    def __init__(self, *, gw: str, boot: int, key: bytes, store: Store, ops: Ops,
                 relays: Disconnection, read_meter: Callable[[str, str], bool]) -> None:
        """``ops``: every op but read (answered by the bus, below), the local socket's
        too; ``relays``: a verified command's ``iat`` confirms the clock there."""
        self.gw = gw
        self.boot = boot
        self.key = key
        self.store = store
        self.relays = relays
        self.read_meter = read_meter  # (meter_id, command_id) -> queued?
        self.ops = ops
        self.pending_reads: dict[str, tuple[Command, int]] = {}  # id -> (command, repeats)
        self.refused = 0

    def _reply(self, now_s: int, command_id: str | None, code: str, msg: str = "",
               result: dict[str, Any] | None = None, *, dup: bool = False) -> int:
        return forming.add_reply(self.store, self.gw, self.boot, now_s, command_id, code,
                                msg[:MAX_MSG_CHARS], result, dup=dup)

    def handle(self, payload: bytes, now_s: int) -> int | None:
        """One command; the seq of its reply, or None for a read whose reply comes later."""
        try:
            cmd = parse_command(payload, self.key, now_s)
        except CommandError as exc:
            self.refused += 1
            log.info("event=command_refused id=%s code=%s msg=%s", exc.command_id, exc.code, exc)
            with self.store.tx():
                return self._reply(now_s, exc.command_id, exc.code, str(exc))
        self.relays.confirm_clock(cmd.iat, now_s)
        with self.store.tx():
            stored = self.store.seen_reply(cmd.id)
            if stored is not None:
                body = forming.seen_reply_body(stored)
                log.info("event=command_dup id=%s op=%s", cmd.id, cmd.op)
                return self._reply(now_s, body["id"], body["code"], body["msg"],
                                   body["result"], dup=True)
            if cmd.op == "read":
                return self._start_read(cmd, now_s)
            try:
                with self.store.savepoint("command"):
                    result = self._apply_contained(cmd, now_s)
            except CommandError as exc:
                code, msg, result = exc.code, str(exc), {}
            else:
                code, msg = "ok", ""
            seq = self._finish(cmd, code, msg, result, now_s)
        log.info("event=command id=%s op=%s code=%s", cmd.id, cmd.op, code)
        return seq

    def _finish(self, cmd: Command, code: str, msg: str, result: dict[str, Any],
                now_s: int) -> int:
        body = {"id": cmd.id, "code": code, "msg": msg[:MAX_MSG_CHARS], "result": result}
        self.store.remember(cmd.id, forming.seen_reply_item(body),
                            max(cmd.exp, now_s + SEEN_MIN_KEEP_S))
        return self._reply(now_s, cmd.id, code, msg, result)

    def _apply_contained(self, cmd: Command, now_s: int) -> dict[str, Any]:
        """The op's effects (``agent.ops``), inside the caller's savepoint; CommandError to
        refuse. A bug in an op's effects is the reply ``failed`` (and rolled back with the
        savepoint), never an agent that crashes on each redelivery."""
        result, failed = contain(lambda: self.ops.run(cmd.op, cmd.args, now_s, "cloud",
                                                      checked=True),
                                 f"command {cmd.op}", passthrough=(CommandError, StoreError))
        if failed is not None:
            raise CommandError("failed", f"internal error: {type(failed).__name__}: "
                                         f"{failed}") from failed
        assert result is not None
        return result

    def _start_read(self, cmd: Command, now_s: int) -> int | None:
        try:
            meter_id = self.ops.meter(cmd.args["meter"])
        except CommandError as exc:
            return self._finish(cmd, exc.code, str(exc), {}, now_s)
        if cmd.id in self.pending_reads:
            first, repeats = self.pending_reads[cmd.id]
            self.pending_reads[cmd.id] = (first, repeats + 1)  # answered with the read
            return None
        if not self.read_meter(meter_id, cmd.id):
            return self._finish(cmd, "failed", "bus queue full; retry", {}, now_s)
        self.pending_reads[cmd.id] = (cmd, 0)
        return None

    def read_done(self, ref: str, result: dict[str, Any] | None, error: str,
                  now_s: int) -> None:
        pending = self.pending_reads.pop(ref, None)
        if pending is None:
            return
        cmd, repeats = pending
        with self.store.tx():
            if result is None:
                code, msg, result = "failed", error or "the meter did not answer", {}
            else:
                code, msg = "ok", ""
            self._finish(cmd, code, msg, result, now_s)
            for _ in range(repeats):
                self._reply(now_s, cmd.id, code, msg, result, dup=True)
