"""A meter reading in the agent's integer units (CONTRACT 1)."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.vocab import QUANTITIES  # a quantity the meter does not measure is absent

__all__ = ["QUANTITIES", "Reading"]


@dataclass(frozen=True, slots=True)
class Reading:
    meter: str
    t: int  # Unix seconds UTC, when the meter answered
    values: dict[str, int] = field(default_factory=dict)
    serial: str | None = None  # the meter's own serial number, when read

    def __post_init__(self) -> None:
        for key, value in self.values.items():
            assert key in QUANTITIES, key
            assert isinstance(value, int), (key, value)
