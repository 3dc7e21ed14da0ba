"""The runtime's wiring of the ledger and the command side: the only place their parts
are made (a test checks). ``Runtime`` calls it at start; a test or a tool that wants
the ledger without the rest of the agent calls it over its own store.

Each part has one job and is handed the parts it needs; none forwards to another, so a
caller calls the part that owns the job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from agent.alerting import BalanceAlerts
from agent.buffer.journal import Journal
from agent.buffer.store import Store
from agent.charging import Charging
from agent.config import Config
from agent.credit import Credit
from agent.dispatch import Dispatcher
from agent.eventlog import EventLog
from agent.localtime import LocalTime
from agent.meters import MeterRegistry
from agent.ops import MeterChange, Ops
from agent.policy_overlay import PolicyOverlay
from agent.relay.actuation import Actuation
from agent.relay.disconnect import Disconnection, kernel_clock_synchronised
from agent.tariffs import Tariffs


@dataclass(frozen=True, slots=True)
class Ledger:
    """The prepaid ledger's parts, one job each, wired by ``wire_ledger`` alone. A caller
    calls the part that owns the job; no part forwards to another."""

    events: EventLog  # CONTRACT 5 events into the store
    tariffs: Tariffs  # tariff versions, the `tariff` command
    policies: PolicyOverlay  # the policy in force, the `policy` command
    actuation: Actuation  # durable relay intent against what the relays report
    relays: Disconnection  # relay decisions: overrides, tamper, credit, the policy
    alerts: BalanceAlerts  # low_balance, credit_exhausted
    charging: Charging  # readings and fixed charges -> ledger entries
    credit: Credit  # top-ups and tokens


def wire_ledger(cfg: Config, store: Store, journal: Journal, meters: MeterRegistry, *,
                token_key: bytes | None = None,
                clock_synchronised: Callable[[], bool] | None = kernel_clock_synchronised,
                ) -> Ledger:
    """The ledger's parts over one store, journal and meter registry (the runtime's,
    or a test's). ``token_key`` None: read from the config's file at the first token."""
    events = EventLog(store)
    local = LocalTime(ZoneInfo(cfg.gateway.timezone))
    tariffs = Tariffs(cfg, store, journal)
    policies = PolicyOverlay(cfg, store, journal)
    actuation = Actuation(store, journal, meters, events)
    relays = Disconnection(store, journal, meters, events, local, policies, actuation,
                           clock_synchronised)
    alerts = BalanceAlerts(journal, events, policies)
    charging = Charging(store, journal, meters, tariffs, local, events, alerts, relays)
    credit = Credit((a.id for a in cfg.accounts), store, journal, events, alerts, relays,
                    token_key_file=cfg.security.token_key_file, token_key=token_key)
    return Ledger(events, tariffs, policies, actuation, relays, alerts, charging, credit)


def start_ledger(ledger: Ledger, cfg: Config, store: Store, journal: Journal,
                 now_s: int) -> None:
    """At start: the config's accounts exist, a credit disconnection not yet carried out
    is decided again, the config's tariffs are stored as versions; then the first tick."""
    with store.tx():
        for acct in cfg.accounts:
            journal.ensure_account(acct.id, acct.tariff)
        ledger.relays.redecide_after_restart(cfg.meters)
        ledger.tariffs.sync_config(now_s)
    ledger.tariffs.reload()
    ledger.charging.tick(now_s)


def wire_dispatcher(*, gw: str, boot: int, key: bytes, store: Store, journal: Journal,
                    ledger: Ledger, meters: MeterRegistry,
                    read_meter: Callable[[str, str], bool],
                    on_meter_change: MeterChange | None = None) -> Dispatcher:
    """The head-end's commands: the ops over the ledger's parts, and their dispatcher."""
    ops = Ops(boot=boot, store=store, journal=journal, meters=meters, events=ledger.events,
              credit=ledger.credit, relays=ledger.relays, tariffs=ledger.tariffs,
              policies=ledger.policies, on_meter_change=on_meter_change)
    return Dispatcher(gw=gw, boot=boot, key=key, store=store, ops=ops, relays=ledger.relays,
                      read_meter=read_meter)
