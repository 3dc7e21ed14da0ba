"""What the head-end (``cmd``, CONTRACT 7) and a technician (the local socket, CONTRACT 9)
may ask the agent to do: one registry, one validator, one implementation of each op.

    Ops.run(op, args, now_s, source)    validates ``args`` (uplink.commands.check_args,
                                        the CONTRACT 7 table), then runs the op's handler
                                        inside the caller's transaction; ``source`` is
                                        "cloud" or "local" and is reported, never a
                                        second implementation

``HANDLERS`` maps every op but ``read`` (answered later, by the bus: the dispatcher
keeps it) to its handler. ``LOCAL_OPS`` are those the local socket may run through
here (the socket's own ``status``, ``scan`` and ``token_enter`` are the runtime's).
A handler raises ``CommandError`` (its code is the reply's) to refuse; a
``LedgerError`` becomes ``failed``. Either way the caller's savepoint undoes its
effects.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

from agent import __version__
from agent.buffer.journal import Journal
from agent.buffer.store import LANE_LEDGER, Store
from agent.credit import Credit
from agent.errors import CommandError, LedgerError
from agent.eventlog import EventLog
from agent.events import RelayOverride
from agent.meters import MeterRegistry
from agent.policy_overlay import PolicyOverlay
from agent.relay.disconnect import Disconnection
from agent.tariffs import Tariffs
from agent.uplink import forming
from agent.uplink.commands import check_args

log = logging.getLogger("agent.ops")

SOURCES: Final = ("cloud", "local")
RESYNC_MAX_ENTRIES: Final = 10_000  # per resync; result.more tells the head-end to ask again

# (op, args, now_s) -> result map; raises CommandError (unknown_meter, invalid_args, ...)
MeterChange = Callable[[str, dict[str, Any], int], dict[str, Any]]
Handler = Callable[["Ops", dict[str, Any], int, str], dict[str, Any]]


class Ops:
    def __init__(self, *, boot: int, store: Store, journal: Journal, meters: MeterRegistry,
                 events: EventLog, credit: Credit, relays: Disconnection, tariffs: Tariffs,
                 policies: PolicyOverlay, on_meter_change: MeterChange | None = None) -> None:
        """Each op calls the part that owns its job: money in (``credit``), relay
        overrides and moratoria (``relays``), tariff versions, the policy overlay.
        ``on_meter_change``: the runtime's provisioning (meter_add, meter_remove);
        without one (a dispatcher tested on its own) those ops are refused."""
        self.boot = boot
        self.store = store
        self.journal = journal
        self.meters = meters
        self.events = events
        self.credit = credit
        self.relays = relays
        self.tariffs = tariffs
        self.policies = policies
        self.on_meter_change = on_meter_change or _no_provisioning

    def run(self, op: str, args: Mapping[str, Any], now_s: int, source: str, *,
            checked: bool = False) -> dict[str, Any]:
        """Validate and apply ``op``; its result map. CommandError to refuse.
        ``checked``: ``args`` passed ``check_args`` already (a parsed command's have)."""
        assert source in SOURCES, source
        handler = HANDLERS.get(op)
        if handler is None:
            raise CommandError("unknown_op", f"op {op!r} is not one of {', '.join(HANDLERS)}")
        problems = [] if checked else check_args(op, args)
        if problems:
            raise CommandError("invalid_args", "; ".join(problems))
        try:
            return handler(self, dict(args), now_s, source)
        except LedgerError as exc:
            raise CommandError("failed", str(exc)) from exc

    # -- what several ops check ------------------------------------------------------
    def account(self, acct: Any) -> str:
        if acct not in self.credit.accounts:
            raise CommandError("unknown_account", f"no account {acct!r}")
        return str(acct)

    def meter(self, meter_id: Any) -> str:
        if meter_id not in self.meters:
            raise CommandError("unknown_meter", f"no meter {meter_id!r}")
        return str(meter_id)


def _no_provisioning(op: str, args: dict[str, Any], now_s: int) -> dict[str, Any]:
    raise CommandError("failed", f"{op}: no meter provisioning in this process")


# -- the handlers: (ops, args (valid), now_s, source) -> result ---------------------------
def _ping(ops: Ops, args: dict[str, Any], now_s: int, source: str) -> dict[str, Any]:
    return {"time": now_s, "version": __version__, "boot": ops.boot}


def _topup(ops: Ops, args: dict[str, Any], now_s: int, source: str) -> dict[str, Any]:
    applied, balance = ops.credit.topup(ops.account(args["account"]), args["amount"],
                                        args["txn"], now_s)
    return {"balance": balance, "applied": applied}


def _relay(ops: Ops, args: dict[str, Any], now_s: int, source: str) -> dict[str, Any]:
    """A manual override, from the head-end or a technician alike: the intent, and a
    ``relay_override`` event saying who asked (the decision itself is logged by the
    disconnection engine)."""
    meter_id = ops.meter(args["meter"])
    action, until = args["action"], args.get("until")
    state = ops.relays.set_override(meter_id, action, until, now_s)
    ops.events.emit(now_s, RelayOverride(meter_id, ops.meters[meter_id].account, action, until,
                                         source))
    return {"state": state}


def _moratorium(ops: Ops, args: dict[str, Any], now_s: int, source: str) -> dict[str, Any]:
    accounts = args.get("accounts") or ["*"]  # "*": every account
    for acct in accounts:
        if acct != "*":
            ops.account(acct)
    for acct in accounts:
        ops.relays.set_moratorium(acct, int(args["until"]), str(args["reason"]), now_s)
    return {}


def _resync(ops: Ops, args: dict[str, Any], now_s: int, source: str) -> dict[str, Any]:
    acct = ops.account(args["account"])
    entries = ops.journal.entries(acct, int(args["from_n"]), limit=RESYNC_MAX_ENTRIES + 1)
    more = len(entries) > RESYNC_MAX_ENTRIES
    entries = entries[:RESYNC_MAX_ENTRIES]
    for entry in entries:
        ops.store.add_pending(LANE_LEDGER, forming.entry_item(entry), now_s)
    result: dict[str, Any] = {"entries": len(entries), "more": more}
    if more:
        result["next_n"] = entries[-1].n + 1
    return result


def _tariff(ops: Ops, args: dict[str, Any], now_s: int, source: str) -> dict[str, Any]:
    table = {k: v for k, v in args.items() if k != "name"}
    return {"version": ops.tariffs.apply(str(args["name"]), table, now_s)}


def _policy(ops: Ops, args: dict[str, Any], now_s: int, source: str) -> dict[str, Any]:
    ops.policies.apply(args, now_s)
    return {}


def _meter_add(ops: Ops, args: dict[str, Any], now_s: int, source: str) -> dict[str, Any]:
    ops.account(args["account"])
    return dict(ops.on_meter_change("meter_add", args, now_s))


def _meter_remove(ops: Ops, args: dict[str, Any], now_s: int, source: str) -> dict[str, Any]:
    ops.meter(args["meter"])
    return dict(ops.on_meter_change("meter_remove", args, now_s))


HANDLERS: Final[dict[str, Handler]] = {
    "ping": _ping, "topup": _topup, "relay": _relay, "moratorium": _moratorium,
    "resync": _resync, "tariff": _tariff, "policy": _policy, "meter_add": _meter_add,
    "meter_remove": _meter_remove,
}
LOCAL_OPS: Final = ("relay",)
