"""Commands from the head-end (CONTRACT 7): verify, dedupe, apply, reply.

Exactly one reply per command. A refused command (bad MAC, expired,
malformed, unknown op, bad args, unknown account/meter) gets its code and
changes nothing. An accepted command's effects, its ``seen`` record and its
reply message commit in ONE transaction, so a crash either loses the command
(the broker redelivers it: QoS 1, persistent session) or keeps all three; a
redelivery after that finds the ``seen`` record and gets the stored reply with
``"dup": true``.
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
from agent.errors import CommandError
from agent.uplink import cbor
from agent.uplink.commands import Command, parse_command

log = logging.getLogger("agent.commands")

SEEN_MIN_KEEP_S = 24 * 3600  # a command's reply is kept at least this long, even if exp is sooner


class Dispatcher:
    def __init__(self, *, gw: str, boot: int, key: bytes, store: Store, journal: Journal,
                 accounting: Accounting, read_meter: Callable[[str, str], bool]) -> None:
        self.gw = gw
        self.boot = boot
        self.key = key
        self.store = store
        self.journal = journal
        self.accounting = accounting
        self.read_meter = read_meter  # (meter_id, command_id) -> queued?
        self.pending_reads: dict[str, Command] = {}
        self.refused = 0

    def _reply(self, now_s: int, body: dict[str, Any]) -> None:
        outbox.add_reply(self.store, self.gw, self.boot, now_s, body)

    @staticmethod
    def body(command_id: str | None, code: str, msg: str = "",
             result: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"id": command_id, "ok": code == "ok", "code": code, "msg": msg,
                "result": result or {}}

    def handle(self, payload: bytes, now_s: int) -> None:
        try:
            cmd = parse_command(payload, self.key, now_s)
        except CommandError as exc:
            self.refused += 1
            log.info("event=command_refused id=%s code=%s msg=%s", exc.command_id, exc.code, exc)
            with self.store.tx():
                self._reply(now_s, self.body(exc.command_id, exc.code, str(exc)))
            return
        self.accounting.confirm_clock(cmd.iat, now_s)
        with self.store.tx():
            stored = self.store.seen_reply(cmd.id)
            if stored is not None:
                body = cbor.loads(stored)
                assert isinstance(body, dict)
                body["dup"] = True
                self._reply(now_s, body)
                return
            if cmd.op == "read":
                self._start_read(cmd, now_s)
                return
            try:
                result = self._apply(cmd, now_s)
            except CommandError as exc:
                # Refused after verification: nothing was applied (we raise before any
                # write), so the transaction holds only the reply and the seen record.
                body = self.body(cmd.id, exc.code, str(exc))
            else:
                body = self.body(cmd.id, "ok", "", result)
            self._finish(cmd, body, now_s)
        log.info("event=command id=%s op=%s code=%s", cmd.id, cmd.op, body["code"])

    def _finish(self, cmd: Command, body: dict[str, Any], now_s: int) -> None:
        self.store.remember(cmd.id, cbor.dumps(body), max(cmd.exp, now_s + SEEN_MIN_KEEP_S))
        self._reply(now_s, body)

    def _account(self, acct: Any) -> str:
        if acct not in self.accounting.accounts():
            raise CommandError("unknown_account", f"no account {acct!r}")
        return str(acct)

    def _meter(self, meter_id: Any) -> str:
        if meter_id not in self.accounting.meters:
            raise CommandError("unknown_meter", f"no meter {meter_id!r}")
        return str(meter_id)

    def _apply(self, cmd: Command, now_s: int) -> dict[str, Any]:
        args = cmd.args
        if cmd.op == "ping":
            return {"time": now_s, "version": __version__, "boot": self.boot}
        if cmd.op == "topup":
            acct = self._account(args["account"])
            applied, balance = self.accounting.topup(acct, args["amount"], args["txn"], now_s)
            return {"balance": balance, "applied": applied}
        if cmd.op == "relay":
            meter_id = self._meter(args["meter"])
            state = self.accounting.set_override(meter_id, args["action"], args.get("until"),
                                                 now_s)
            return {"state": state}
        if cmd.op == "moratorium":
            accounts = args.get("accounts")
            for acct in accounts if accounts else ["*"]:
                if acct != "*":
                    self._account(acct)
            for acct in accounts if accounts else ["*"]:
                self.accounting.set_moratorium(acct, int(args["until"]), str(args["reason"]),
                                               now_s)
            return {}
        if cmd.op == "resync":
            acct = self._account(args["account"])
            entries = self.journal.entries(acct, int(args["from_n"]), limit=100_000)
            for entry in entries:
                self.store.add_pending(LANE_LEDGER, cbor.dumps(entry.wire()), now_s)
            return {"entries": len(entries)}
        raise CommandError("failed", f"op {cmd.op!r} is not supported by this agent version")

    def _start_read(self, cmd: Command, now_s: int) -> None:
        try:
            meter_id = self._meter(cmd.args["meter"])
        except CommandError as exc:
            self._finish(cmd, self.body(cmd.id, exc.code, str(exc)), now_s)
            return
        if cmd.id in self.pending_reads:
            return  # already being read; its one reply comes when the bus answers
        if not self.read_meter(meter_id, cmd.id):
            self._finish(cmd, self.body(cmd.id, "failed", "bus queue full; retry"), now_s)
            return
        self.pending_reads[cmd.id] = cmd

    def read_done(self, ref: str, result: dict[str, Any] | None, error: str,
                  now_s: int) -> None:
        cmd = self.pending_reads.pop(ref, None)
        if cmd is None:
            return
        with self.store.tx():
            if result is None:
                body = self.body(cmd.id, "failed", error)
            else:
                body = self.body(cmd.id, "ok", "", result)
            self._finish(cmd, body, now_s)
