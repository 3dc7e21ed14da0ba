"""The store below the wire format: buffer/ keeps opaque bytes and imports nothing from
agent.uplink; uplink/forming.py is the one module outside the wire format's own that
imports ``wire`` and ``cbor``; cbor2 is read in two places only (the hardened adapter,
and the store's framing of a row)."""

from __future__ import annotations

import ast
from pathlib import Path

AGENT = Path(__file__).resolve().parents[2] / "agent"


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (late imports included), with the
    names taken from a package (``from agent.uplink import cbor`` -> agent.uplink.cbor)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def modules() -> dict[str, set[str]]:
    return {str(p.relative_to(AGENT)): imports(p) for p in sorted(AGENT.rglob("*.py"))}


def test_buffer_imports_nothing_from_uplink() -> None:
    graph = modules()
    offenders = {name: sorted(m for m in imported if m.startswith("agent.uplink"))
                 for name, imported in graph.items() if name.startswith("buffer/")}
    assert {name: found for name, found in offenders.items() if found} == {}
    assert "buffer/store.py" in graph and "buffer/bounds.py" in graph  # the walk saw them


def test_forming_is_the_one_module_that_imports_the_wire_format_for_uplink_bytes() -> None:
    wire_format = {"uplink/cbor.py", "uplink/wire.py", "uplink/table.py",  # the format
                   "uplink/cose.py", "uplink/commands.py"}  # commands in, not bytes out
    users = {name for name, imported in modules().items()
             if imported & {"agent.uplink.cbor", "agent.uplink.wire"}}
    assert users - wire_format == {"uplink/forming.py"}


def test_cbor2_is_read_in_the_adapter_and_the_store_framing_only() -> None:
    users = {name for name, imported in modules().items() if "cbor2" in imported}
    assert users == {"uplink/cbor.py", "buffer/sequence.py"}


def test_only_the_store_reads_its_private_fields() -> None:
    """Store.in_tx, Store.unit and Store.undone are what others read; ``_depth`` is the
    transactions' own (transaction.py), the open runs the store's (store.py)."""
    readers: dict[str, set[str]] = {"_depth": set(), "_open_runs": set()}
    for path in sorted(AGENT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in readers:
                readers[node.attr].add(str(path.relative_to(AGENT)))
    assert readers == {"_depth": {"buffer/transaction.py"}, "_open_runs": {"buffer/store.py"}}
