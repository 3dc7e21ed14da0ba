"""Tariff versions: the config's ``[tariff.*]`` and the ``tariff`` command (CONTRACT 7).

Every version is stored (``journal.tariff_versions``) with the time it is in force
from; a reading is priced by the versions in force over its interval
(``agent.ledger.tariff.version_parts``). The config's tables are version 1, in force
from the beginning; an edited config file is a new version from now; a command's
version stays in force across restarts until the config file itself changes.
docs/billing.md explains what a new version does to the open month.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from agent.buffer.journal import Journal, TariffVersion
from agent.buffer.store import Store
from agent.config import Config, read_tariff
from agent.config_reader import ID_RE, Errors, Table
from agent.errors import CommandError, LedgerError
from agent.ledger.tariff import Tariff, tariff_problems, tariff_table, version_at

log = logging.getLogger("agent.ledger")


def canonical_body(tariff: Tariff) -> str:
    return json.dumps(tariff_table(tariff), sort_keys=True, separators=(",", ":"))


class Tariffs:
    def __init__(self, cfg: Config, store: Store, journal: Journal) -> None:
        self.cfg = cfg
        self.store = store
        self.journal = journal
        self.versions: dict[str, list[tuple[int, Tariff]]] = self._load()

    def _decode(self, v: TariffVersion) -> Tariff:
        errors = Errors()
        tariff = read_tariff(v.name, Table(json.loads(v.body), f"tariff.{v.name}", errors))
        if errors.items:  # only the agent writes bodies, after validating them
            raise LedgerError(f"stored tariff {v.name}@{v.version}: {errors.text()}")
        return dataclasses.replace(tariff, version=v.version)

    def _load(self) -> dict[str, list[tuple[int, Tariff]]]:
        versions: dict[str, list[tuple[int, Tariff]]] = {}
        for v in self.journal.tariff_versions():
            versions.setdefault(v.name, []).append((v.effective_s, self._decode(v)))
        for tariff in self.cfg.tariffs:  # before sync_config() has stored them: version 1
            versions.setdefault(tariff.name, [(0, dataclasses.replace(tariff, version=1))])
        return versions

    def reload(self) -> None:
        """The versions as stored (after ``sync_config``)."""
        self.versions = self._load()

    def sync_config(self, now_s: int) -> None:
        """The config's [tariff.*] is version 1 (in force from the beginning); an edited
        config file is a new version from now. A `tariff` command's version stays in
        force across restarts until the config file itself changes. In the caller's tx."""
        stored: dict[str, list[TariffVersion]] = {}
        for v in self.journal.tariff_versions():
            stored.setdefault(v.name, []).append(v)
        for tariff in self.cfg.tariffs:
            body = canonical_body(tariff)
            have = stored.get(tariff.name, [])
            from_config = [v for v in have if v.source == "config"]
            if from_config and from_config[-1].body == body:
                continue
            version = have[-1].version + 1 if have else 1
            effective = max(now_s, have[-1].effective_s) if have else 0
            self.journal.add_tariff_version(TariffVersion(tariff.name, version, body,
                                                          effective, "config"))
            log.info("event=tariff_version name=%s version=%d source=config effective=%d",
                     tariff.name, version, effective)

    def tariff_at(self, name: str, t: int) -> Tariff:
        """The version of tariff ``name`` in force at unix time ``t``."""
        return version_at(self.versions[name], t)

    def apply(self, name: str, table: dict[str, Any], now_s: int) -> int:
        """A `tariff` command (CONTRACT 7): a new version of ``name``, in force from now.

        The open month's accrual carries on: energy used from now on is priced
        E_new(C2) - E_new(C1) on the same month's C (docs/billing.md)."""
        body_in = {k: v for k, v in table.items() if k != "name"}
        if not isinstance(name, str) or not ID_RE.match(name):
            raise CommandError("invalid_args", "name: must match [A-Za-z0-9_-]{1,64}")
        errors = Errors()
        tariff = read_tariff(name, Table(body_in, "", errors))
        if not errors.items:
            errors.items.extend(tariff_problems(tariff))
        if errors.items:
            raise CommandError("invalid_args", errors.text())
        with self.store.tx():
            have = [v for v in self.journal.tariff_versions() if v.name == name]
            version = have[-1].version + 1 if have else 1
            effective = max(now_s, have[-1].effective_s) if have else now_s
            self.journal.add_tariff_version(TariffVersion(name, version, canonical_body(tariff),
                                                          effective, "command"))
        self.versions.setdefault(name, []).append(
            (effective, dataclasses.replace(tariff, version=version)))
        log.info("event=tariff_version name=%s version=%d source=command effective=%d",
                 name, version, effective)
        return version
