"""The meters in service: one registry, owned by provisioning, read by everyone.

The board config's ``[[meter]]`` tables, less those removed by ``meter_remove``, plus
those added by ``meter_add`` (``agent.provisioning``, which alone calls ``replace``).
Billing, the relay engine, actuation, the command ops and the runtime hold this one
object, so a meter added at run time is seen by all of them at once; none keeps a copy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from agent.config import MeterConfig


class MeterRegistry(Mapping[str, MeterConfig]):
    """Meter id -> its config, in provisioning order; and the meters of each account."""

    def __init__(self, meters: Iterable[MeterConfig] = ()) -> None:
        self._meters: dict[str, MeterConfig] = {m.id: m for m in meters}
        self._by_account: dict[str, list[MeterConfig]] | None = None
        self._relayed: list[MeterConfig] | None = None
        self.version = 0  # moved by each replace(): a memo of the meters knows it is old

    def replace(self, meters: Iterable[MeterConfig]) -> None:
        """The meters in service now (provisioning, after meter_add or meter_remove)."""
        self._meters = {m.id: m for m in meters}
        self._by_account = None
        self._relayed = None
        self.version += 1

    def of_account(self, acct_id: str) -> list[MeterConfig]:
        """The account's meters, in order. Asked on every reading: indexed once."""
        if self._by_account is None:
            by_account: dict[str, list[MeterConfig]] = {}
            for meter in self._meters.values():
                by_account.setdefault(meter.account, []).append(meter)
            self._by_account = by_account
        return self._by_account.get(acct_id, [])

    def relayed(self) -> list[MeterConfig]:
        """The meters with a relay (any but ``none``), by id. Asked at every loop turn
        that may have moved an intent: listed once."""
        if self._relayed is None:
            self._relayed = sorted((m for m in self._meters.values()
                                    if m.relay_spec.kind != "none"), key=lambda m: m.id)
        return self._relayed

    def __getitem__(self, meter_id: str) -> MeterConfig:
        return self._meters[meter_id]

    def get(self, meter_id: str, default: MeterConfig | None = None) -> MeterConfig | None:  # type: ignore[override]
        return self._meters.get(meter_id, default)

    def __contains__(self, meter_id: object) -> bool:
        return meter_id in self._meters

    def __iter__(self) -> Iterator[str]:
        return iter(self._meters)

    def __len__(self) -> int:
        return len(self._meters)
