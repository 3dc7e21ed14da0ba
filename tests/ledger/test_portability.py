"""agent/ledger/ must run under MicroPython (STYLE: the pure parts import only what
MicroPython also has). An AST scan of every module, so nothing slips in unnoticed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LEDGER = ROOT / "agent" / "ledger"
# The ledger's own modules plus agent.errors (LedgerError) and agent.vocab (the words
# it imports), which are portable too.
SCANNED = sorted(LEDGER.glob("*.py")) + [
    ROOT / "agent" / "errors.py",
    ROOT / "agent" / "vocab.py",
    ROOT / "agent" / "__init__.py",
]

# Modules MicroPython has built in per its "Library" docs page (hashlib always with
# sha256), __future__ (a no-op module from micropython-lib), and the project's own
# portable modules.
ALLOWED = {"__future__", "hashlib", "struct", "math", "binascii", "agent.errors", "agent.vocab"}
ALLOWED_PREFIXES = ("agent.ledger",)
# Imported only inside `try: ... except ImportError:` with a fallback in the except.
OPTIONAL = {"dataclasses"}


def _allowed(module: str) -> bool:
    return (
        module in ALLOWED
        or module == "agent.ledger"
        or module.startswith(tuple(p + "." for p in ALLOWED_PREFIXES))
    )


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _catches_import_error(handlers: list[ast.ExceptHandler]) -> bool:
    return any(isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in handlers)


def runtime_imports(tree: ast.Module) -> list[tuple[int, str, bool]]:
    """(line, module, optional) for every import that runs at import time on MicroPython."""
    found: list[tuple[int, str, bool]] = []

    def visit(nodes: list[ast.stmt], optional: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and _is_type_checking(node.test):
                visit(node.orelse, optional)  # the body never runs
                continue
            if isinstance(node, ast.Import):
                found.extend((node.lineno, alias.name, optional) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    found.append((node.lineno, "." * node.level + (node.module or ""), optional))
                else:
                    found.append((node.lineno, node.module or "", optional))
            elif isinstance(node, ast.Try):
                visit(node.body, optional or _catches_import_error(node.handlers))
                for handler in node.handlers:
                    visit(handler.body, optional)
                visit(node.orelse, optional)
                visit(node.finalbody, optional)
            else:
                for field in ("body", "orelse", "finalbody"):
                    children = getattr(node, field, None)
                    if (
                        isinstance(children, list)
                        and children
                        and isinstance(children[0], ast.stmt)
                    ):
                        visit(children, optional)

    visit(tree.body, False)
    return found


@pytest.mark.parametrize("path", SCANNED, ids=lambda p: p.name)
def test_imports_are_micropython_safe(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bad = [
        f"{path.name}:{line}: import {module}"
        for line, module, optional in runtime_imports(tree)
        if not (_allowed(module) or (optional and module in OPTIONAL))
    ]
    assert bad == [], "not available on MicroPython:\n" + "\n".join(bad)


@pytest.mark.parametrize("path", SCANNED, ids=lambda p: p.name)
def test_no_syntax_micropython_lacks(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Match | ast.TryStar):
            bad.append(f"{path.name}:{node.lineno}: {type(node).__name__}")
        if isinstance(node, ast.Call) and any(k.arg == "strict" for k in node.keywords):
            bad.append(f"{path.name}:{node.lineno}: a strict= keyword (zip) MicroPython lacks")
    assert bad == []


def test_scanner_catches_what_it_should() -> None:
    source = (
        "from __future__ import annotations\n"
        "import datetime\n"
        "TYPE_CHECKING = False\n"
        "if TYPE_CHECKING:\n"
        "    from typing import Any\n"
        "try:\n"
        "    from dataclasses import dataclass\n"
        "except ImportError:\n"
        "    dataclass = None\n"
        "def f():\n"
        "    import zoneinfo\n"
        "    from decimal import Decimal\n"
    )
    found = {(module, optional) for _, module, optional in runtime_imports(ast.parse(source))}
    assert found == {
        ("__future__", False),
        ("datetime", False),
        ("dataclasses", True),
        ("zoneinfo", False),
        ("decimal", False),
    }
