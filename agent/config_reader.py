"""Reading a TOML table with errors named by key path: the public reader of the board
config (``agent.config``) and of the commands that carry config tables (``tariff``,
``policy``: ``agent.tariffs``, ``agent.policy_overlay``), so one validator serves both.

    errors = Errors()
    t = Table(data, "tariff.dom", errors)       # "must be a table" if data is not one
    rate = t.get("rate", int, 0, required=True, check=lambda v: None if v >= 0 else "...")
    t.finish()                                  # every key not asked for: "unknown key"
    errors.items                                # [("tariff.dom.rate", "must be an integer")]

A getter never raises: a missing, mistyped or failed value records one (key path,
message) pair and returns the default, so a reader goes on and every mistake of a
file is reported in one pass. A TOML ``true`` is never taken for a number.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final, TypeVar

# An identifier: gateway, bus, meter, account and tariff names (CONTRACT 2).
ID_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

T = TypeVar("T")


class Errors:
    """Collects (key path, message) pairs while a table is read."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, path: str, message: str) -> None:
        self.items.append((path, message))

    def text(self) -> str:
        """The problems as one line: ``key: message; key: message``."""
        return "; ".join(f"{key}: {msg}" for key, msg in self.items)


class Table:
    """One TOML table being read: typed getters that record errors by key path."""

    def __init__(self, data: Any, path: str, errors: Errors) -> None:
        self.path = path
        self.errors = errors
        self.ok = isinstance(data, dict)
        if not self.ok:
            errors.add(path, "must be a table")
        self.data: dict[str, Any] = data if isinstance(data, dict) else {}
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(
        self,
        name: str,
        kind: type[T] | tuple[type, ...],
        default: T | None = None,
        *,
        required: bool = False,
        check: Callable[[Any], str | None] | None = None,
    ) -> Any:
        self.used.add(name)
        if name not in self.data:
            if required:
                self.errors.add(self.key(name), "is required")
            return default
        value = self.data[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python; a TOML `true` where a number belongs is an error.
        if isinstance(value, bool) and bool not in kinds:
            self.errors.add(self.key(name), f"must be {kind_name(kinds)}, not a boolean")
            return default
        if not isinstance(value, kinds):
            self.errors.add(self.key(name), f"must be {kind_name(kinds)}")
            return default
        if check is not None:
            problem = check(value)
            if problem:
                self.errors.add(self.key(name), problem)
                return default
        return value

    def finish(self) -> None:
        for name in sorted(set(self.data) - self.used):
            self.errors.add(self.key(name), "unknown key")


def kind_name(kinds: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             list: "an array", dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)
