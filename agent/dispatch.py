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

from agent import __version__
from agent.accounting import Accounting
from agent.buffer import outbox
from agent.buffer.journal import Journal
from agent.buffer.store import LANE_LEDGER, Store
from agent.errors import CommandError, LedgerError, StoreError
from agent.supervisor import contain
from agent.uplink import cbor
from agent.uplink.commands import Command, parse_command

log = logging.getLogger("agent.commands")

SEEN_MIN_KEEP_S = 24 * 3600  # a command's reply is kept at least this long, even if exp is sooner
RESYNC_MAX_ENTRIES = 10_000  # per resync command; result.more tells the head-end to ask again
MAX_MSG_CHARS = 512  # a reply's msg is for people; longer texts are cut

# (op, args, now_s) -> result map; raises CommandError (unknown_meter, invalid_args, ...)
MeterChange = Callable[[str, dict[str, Any], int], dict[str, Any]]


def refuse_meter_change(op: str, args: dict[str, Any], now_s: int) -> dict[str, Any]:
    """The default until the runtime passes ``on_meter_change``."""
    raise CommandError("failed", f"{op} is not available in this agent build yet "
                                 "(no meter change handler is wired)")


class Dispatcher:
    def __init__(self, *, gw: str, boot: int, key: bytes, store: Store, journal: Journal,
                 accounting: Accounting, read_meter: Callable[[str, str], bool],
                 on_meter_change: MeterChange = refuse_meter_change) -> None:
        self.gw = gw
        self.boot = boot
        self.key = key
        self.store = store
        self.journal = journal
        self.accounting = accounting
        self.read_meter = read_meter  # (meter_id, command_id) -> queued?
        self.on_meter_change = on_meter_change
        self.pending_reads: dict[str, tuple[Command, int]] = {}  # id -> (command, repeats)
        self.refused = 0

    def _reply(self, now_s: int, command_id: str | None, code: str, msg: str = "",
               result: dict[str, Any] | None = None, *, dup: bool = False) -> int:
        return outbox.add_reply(self.store, self.gw, self.boot, now_s, command_id, code,
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
        self.accounting.confirm_clock(cmd.iat, now_s)
        with self.store.tx():
            stored = self.store.seen_reply(cmd.id)
            if stored is not None:
                body = cbor.loads(stored)
                assert isinstance(body, dict)
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
        self.store.remember(cmd.id, cbor.dumps(body), max(cmd.exp, now_s + SEEN_MIN_KEEP_S))
        return self._reply(now_s, cmd.id, code, msg, result)

    def _account(self, acct: Any) -> str:
        if acct not in self.accounting.accounts():
            raise CommandError("unknown_account", f"no account {acct!r}")
        return str(acct)

    def _meter(self, meter_id: Any) -> str:
        if meter_id not in self.accounting.meters:
            raise CommandError("unknown_meter", f"no meter {meter_id!r}")
        return str(meter_id)

    def _apply_contained(self, cmd: Command, now_s: int) -> dict[str, Any]:
        """``_apply``; a bug in an op's effects is the reply ``failed`` (and rolled back
        with the savepoint), never an agent that crashes on each redelivery."""
        result, failed = contain(lambda: self._apply(cmd, now_s), f"command {cmd.op}",
                                 passthrough=(CommandError, StoreError))
        if failed is not None:
            raise CommandError("failed", f"internal error: {type(failed).__name__}: "
                                         f"{failed}") from failed
        assert result is not None
        return result

    def _apply(self, cmd: Command, now_s: int) -> dict[str, Any]:
        """The op's effects, inside the caller's savepoint; raises CommandError to refuse."""
        args = cmd.args
        op = cmd.op
        try:
            if op == "ping":
                return {"time": now_s, "version": __version__, "boot": self.boot}
            if op == "topup":
                acct = self._account(args["account"])
                applied, balance = self.accounting.topup(acct, args["amount"], args["txn"],
                                                         now_s)
                return {"balance": balance, "applied": applied}
            if op == "relay":
                meter_id = self._meter(args["meter"])
                state = self.accounting.set_override(meter_id, args["action"],
                                                     args.get("until"), now_s)
                return {"state": state}
            if op == "moratorium":
                return self._moratorium(args, now_s)
            if op == "resync":
                return self._resync(args, now_s)
            if op == "tariff":
                return self._tariff(args, now_s)
            if op == "policy":
                apply_policy = getattr(self.accounting, "apply_policy", None)
                if apply_policy is None:
                    raise CommandError("failed", "policy changes need Accounting.apply_policy, "
                                                 "which this agent build does not have yet")
                apply_policy(dict(args), now_s)
                return {}
            if op == "meter_add":
                self._account(args["account"])
                return dict(self.on_meter_change(op, dict(args), now_s) or {})
            if op == "meter_remove":
                self._meter(args["meter"])
                return dict(self.on_meter_change(op, dict(args), now_s) or {})
        except LedgerError as exc:
            raise CommandError("failed", str(exc)) from exc
        raise CommandError("failed", f"op {op!r} is not supported by this agent version")

    def _moratorium(self, args: dict[str, Any], now_s: int) -> dict[str, Any]:
        accounts = args.get("accounts") or ["*"]  # "*": every account
        for acct in accounts:
            if acct != "*":
                self._account(acct)
        for acct in accounts:
            self.accounting.set_moratorium(acct, int(args["until"]), str(args["reason"]),
                                           now_s)
        return {}

    def _resync(self, args: dict[str, Any], now_s: int) -> dict[str, Any]:
        acct = self._account(args["account"])
        entries = self.journal.entries(acct, int(args["from_n"]), limit=RESYNC_MAX_ENTRIES + 1)
        more = len(entries) > RESYNC_MAX_ENTRIES
        entries = entries[:RESYNC_MAX_ENTRIES]
        for entry in entries:
            self.store.add_pending(LANE_LEDGER, cbor.dumps(entry.wire()), now_s)
        result: dict[str, Any] = {"entries": len(entries), "more": more}
        if more:
            result["next_n"] = entries[-1].n + 1
        return result

    def _tariff(self, args: dict[str, Any], now_s: int) -> dict[str, Any]:
        apply_tariff = getattr(self.accounting, "apply_tariff", None)
        if apply_tariff is None:
            raise CommandError("failed", "tariff changes need Accounting.apply_tariff, "
                                         "which this agent build does not have yet")
        table = {k: v for k, v in args.items() if k != "name"}
        version = apply_tariff(str(args["name"]), table, now_s)
        return {"version": int(version)}

    def _start_read(self, cmd: Command, now_s: int) -> int | None:
        try:
            meter_id = self._meter(cmd.args["meter"])
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
