"""The ops of the local control socket (the CLI through the running agent, control.py):
what the runtime's thread does with a ``ControlRequest`` from its inbox.

The socket's own ops are a table here (``status``, ``scan``, ``token_enter``); the
head-end's ops the socket may run too (``agent.ops.LOCAL_OPS``) go through the one op
registry, so they have one validator and one implementation for both. A refusal is an
``AgentError`` whose words the CLI prints; a full disk propagates, so that room is made
and the request handled again (buffer/room.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from agent.buffer.store import Store
from agent.control import ControlRequest
from agent.credit import Credit
from agent.drivers.bus import BusScheduler
from agent.drivers.events import ScanDone
from agent.errors import AgentError, CommandError, StoreFullError
from agent.ops import LOCAL_OPS, Ops


class LocalControl:
    def __init__(self, *, store: Store, ops: Ops, credit: Credit,
                 buses: Mapping[str, BusScheduler],
                 status: Callable[[], dict[str, Any]]) -> None:
        """``buses``: the runtime's (a bus restarted replaces its entry). ``status``: the
        gateway's status report (agent/status.py)."""
        self.store = store
        self.ops = ops
        self.credit = credit
        self.buses = buses
        self.status = status
        self.scans: dict[str, ControlRequest] = {}  # scan ref -> the CLI request waiting
        self._own: dict[str, Callable[[ControlRequest, int], None]] = {
            "status": self._status, "scan": self._scan, "token_enter": self._token_enter}

    def handle(self, req: ControlRequest, now: int) -> None:
        """One request of the local socket: the socket's own ops (a table), or one of the
        head-end's ops (``agent.ops``: one validator and one implementation for both)."""
        own = self._own.get(req.op)
        try:
            if own is not None:
                own(req, now)
            elif req.op in LOCAL_OPS:
                args = {k: v for k, v in req.args.items() if v is not None}
                with self.store.tx():
                    req.reply(self.ops.run(req.op, args, now, "local"))
            else:
                req.reply(error=f"unknown control op {req.op!r}")
        except StoreFullError:
            raise  # room is made and the request handled again (buffer/room.py)
        except AgentError as exc:
            req.reply(error=str(exc))

    def scan_done(self, event: ScanDone) -> None:
        """A bus finished the scan a request asked for: its answer."""
        req = self.scans.pop(event.ref, None)
        if req is not None:
            req.reply(event.reply())

    def _status(self, req: ControlRequest, now: int) -> None:
        req.reply(self.status())

    def _scan(self, req: ControlRequest, now: int) -> None:
        bus = self.buses.get(str(req.args.get("bus")))
        if bus is None:
            raise CommandError("invalid_args", f"no bus {req.args.get('bus')!r}")
        addresses = req.args.get("addresses", list(range(1, 248)))
        if not isinstance(addresses, list) or not all(
                isinstance(a, int) and 1 <= a <= 247 for a in addresses):
            raise CommandError("invalid_args", "addresses must be integers 1..247")
        ref = f"scan-{id(req)}"
        if not bus.scan(addresses, ref):
            raise CommandError("failed", "a scan is already running on this bus")
        self.scans[ref] = req  # answered by the bus's ScanDone event

    def _token_enter(self, req: ControlRequest, now: int) -> None:
        account, digits = req.args.get("account"), req.args.get("digits")
        if account not in self.credit.accounts:
            raise CommandError("unknown_account", f"no account {account!r}")
        if not isinstance(digits, str):
            raise CommandError("invalid_args", "digits must be a string")
        req.reply(self.credit.enter_token(str(account), digits, now))
