"""The disconnection policy in force: the config's ``[policy]`` overlaid by ``policy``
commands (CONTRACT 7), key by key, durably (``journal.policy_overlay``).

A stored key this version no longer accepts is logged and skipped: the base value
holds. docs/policy.md explains each key.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from agent.buffer.journal import Journal
from agent.buffer.store import Store
from agent.config import Config, read_policy
from agent.config_reader import Errors, Table
from agent.errors import CommandError
from agent.ledger.policy import Policy

log = logging.getLogger("agent.ledger")


class PolicyOverlay:
    def __init__(self, cfg: Config, store: Store, journal: Journal) -> None:
        self.store = store
        self.journal = journal
        self.policy: Policy = self._load(cfg.policy)

    def _load(self, policy: Policy) -> Policy:
        for key, text in self.journal.policy_overlay().items():
            errors = Errors()
            candidate = read_policy(Table({key: json.loads(text)}, "policy", errors), policy)
            if errors.items:  # a key this version no longer accepts: the base value holds
                log.warning("event=policy_overlay_ignored %s", errors.text())
                continue
            policy = candidate
        return policy

    def apply(self, changes: dict[str, Any], now_s: int) -> None:
        """A `policy` command: the keys given, over the policy in force; durable."""
        errors = Errors()
        policy = read_policy(Table(dict(changes), "policy", errors), self.policy)
        if errors.items:
            raise CommandError("invalid_args", errors.text())
        with self.store.tx():
            for key, value in changes.items():
                self.journal.set_policy_key(key, json.dumps(value, sort_keys=True), now_s)
        self.policy = policy
        log.info("event=policy keys=%s policy=%s", ",".join(sorted(changes)), policy)
