"""The MQTT API documents against the code: the AsyncAPI document names every topic of
CONTRACT 3 with its QoS and retain flag; the CDDL files define every rule they use and
list exactly the codes, kinds, types and quantities the wire module knows; and the
example head-end (no agent code in it) talks to a real agent through a real broker."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.uplink import wire
from agent.uplink.commands import OPS
from sim.broker import find_mosquitto
from tests.e2e.harness import ROOT, Gateway, wait_until

DOCS = ROOT / "docs"
CDDL = DOCS / "cddl"
PRELUDE = {"any", "uint", "nint", "int", "bstr", "bytes", "tstr", "text", "bool", "true",
           "false", "nil", "null", "float", "undefined", "regexp", "cbor", "size", "ge",
           "le", "lt", "gt", "default", "within", "and", "eq", "ne", "bits", "cborseq"}


def cddl_rules(text: str) -> tuple[set[str], set[str]]:
    """(rules defined, names used) of CDDL text, comments and strings left out."""
    text = re.sub(r";[^\n]*", "", text)
    text = re.sub(r'"[^"]*"', '""', text)
    defined = set(re.findall(r"^([A-Za-z][\w-]*)\s*=", text, re.M))
    used = set()
    for name in re.findall(r"(?<![\w.#-])([A-Za-z][\w-]*)(?![\w-]*\s*:)", text):
        used.add(name)
    return defined, used - PRELUDE


def test_every_cddl_rule_used_is_defined() -> None:
    common = (CDDL / "common.cddl").read_text()
    files = sorted(CDDL.glob("*.cddl"))
    assert {f.stem for f in files} >= {"common", "readings", "events", "ledger", "reply",
                                       "command", "state"}
    for f in files:
        text = f.read_text()
        assert text.count("{") == text.count("}") and text.count("[") == text.count("]")
        defined, used = cddl_rules(common + "\n" + text)
        labels = set(re.findall(r"([A-Za-z][\w-]*)\s*:", re.sub(r";[^\n]*", "", text)))
        missing = used - defined - labels
        assert not missing, f"{f.name}: used but not defined: {sorted(missing)}"


def quoted(path: Path) -> set[str]:
    return set(re.findall(r'"([^"]+)"', re.sub(r";[^\n]*", "", path.read_text())))


def test_the_cddl_knows_what_the_code_knows() -> None:
    assert set(wire.QUANTITIES) <= quoted(CDDL / "readings.cddl")
    # the table form (agent/uplink/table.py): its message, its body's every field
    readings_rules, _ = cddl_rules((CDDL / "readings.cddl").read_text())
    assert {"readings-msg", "table-msg", "table-body", "up-readings"} <= readings_rules
    assert {"table", "bn", "m", "t", *wire.QUANTITIES} <= quoted(CDDL / "readings.cddl")
    assert set(wire.EVENT_TYPES) | set(wire.TAMPER_KINDS) | set(wire.DEFERRAL_REASONS) \
        <= quoted(CDDL / "events.cddl")
    assert set(wire.ENTRY_KINDS) <= quoted(CDDL / "ledger.cddl")
    assert set(wire.REPLY_CODES) <= quoted(CDDL / "reply.cddl")
    assert set(OPS) <= quoted(CDDL / "command.cddl")


def test_the_asyncapi_document_has_every_topic() -> None:
    text = (DOCS / "asyncapi.yaml").read_text()
    assert text.startswith("#") and "\nasyncapi: 3.0.0\n" in text
    addresses = set(re.findall(r'address: "([^"]+)"', text))
    assert addresses == {"{prefix}/{gw}/state", "{prefix}/{gw}/cmd", "{prefix}/headend/state"
                         } | {"{prefix}/{gw}/up/" + kind for kind in wire.KINDS}
    for ref in re.findall(r'\$ref: "#/([^"]+)"', text):  # every local $ref resolves
        *parents, name = ref.split("/")
        assert re.search(rf"^\s+{re.escape(name)}:", text, re.M), ref
    for cddl in re.findall(r"x-cddl: (\S+)#", text):
        assert (ROOT / cddl).exists()
    # up/readings in both forms: the series of CONTRACT 4 and the table form
    assert "x-cddl: docs/cddl/readings.cddl#up-readings" in text
    assert '$ref: "#/components/schemas/table"' in text
    assert "\t" not in text


@pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto not installed")
def test_the_example_head_end_against_a_real_agent(tmp_path: Path) -> None:
    g = Gateway(tmp_path, meters=1)
    try:
        g.start_agent()
        wait_until(lambda: g.headend.readings(g.gw), 30, "the agent's first reading")
        out = subprocess.run(
            [sys.executable, "examples/headend_example.py", "--port", str(g.broker.port),
             "--gw", g.gw, "--key-file", g.raw["security"]["command_key_file"], "--ping",
             "--topup", "ACC-0001", "2500", "--readings", "3", "--timeout", "30"],
            cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        lines: list[dict[str, Any]] = [json.loads(line) for line in out.stdout.splitlines()]
        readings = [x["reading"] for x in lines if "reading" in x]
        assert len(readings) >= 3
        for r in readings:
            assert r["m"] == "SDM-0001" and r["gw"] == g.gw
            assert all(isinstance(v, int) for k, v in r.items() if k not in ("m", "gw"))
        replies = {x["reply"]["id"]: x["reply"] for x in lines if "reply" in x}
        sent = [x["sent"] for x in lines if "sent" in x]
        assert [s["op"] for s in sent] == ["ping", "topup"]
        for s in sent:
            assert replies[s["id"]]["ok"] is True, replies
        topup = replies[sent[1]["id"]]
        assert topup["result"]["balance"] >= 2500 - 100_000  # credited (minus charges)
        wait_until(lambda: any(e["ref"] == sent[1]["args"]["txn"]
                               for e in g.headend.ledger_entries(g.gw, "ACC-0001")), 15,
                   "the top-up on up/ledger")
    finally:
        g.close()


def test_the_example_head_end_decodes_the_table_form() -> None:
    """examples/headend_example.py reads both forms of up/readings, as the page says."""
    import importlib.util

    from agent.drivers.reading import Reading
    from agent.uplink import table

    spec = importlib.util.spec_from_file_location("headend_example",
                                                  ROOT / "examples" / "headend_example.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    readings = [Reading("SDM-0001", 1767225600, {"import_wh": 123456, "v_dv": 2301}),
                Reading("SDM-0002", 1767225601, {"import_wh": 98000, "v_dv": 2298}),
                Reading("SDM-0003", 1767225601, {"import_wh": 250000})]
    msg = table.table_message("gw-demo-01", 3, 42, readings)
    assert example.readings_of(msg) == [{"m": r.meter, "t": r.t, **r.values}
                                        for r in readings]
    assert example.readings_of(wire.readings_message("gw-demo-01", 3, 43, readings)) == \
        example.readings_of(msg)
    # and the page's byte-by-byte table is that message's encoding
    from agent.uplink import cbor

    text = (DOCS / "mqtt-api.md").read_text()
    section = text[text.index("## The table form"):text.index("## `up/events`")]
    rows = [line.split(" | ")[0] for line in section.splitlines() if line.startswith("| `")]
    documented = "".join(re.findall(r"`([0-9a-f ]+)`", " ".join(rows))).replace(" ", "")
    assert documented == cbor.dumps(msg).hex()
