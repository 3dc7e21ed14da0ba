"""agent/events.py: one frozen record per CONTRACT 5 type, and uplink/forming.py's
``event_item`` the one function from a record to an item's bytes. Each record's item is
byte for byte what the map its callers used to write gives (the maps below, keys in the
order the log line shows), and a valid CONTRACT 5 event."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest

from agent import events
from agent.buffer.store import LANE_EVENTS, Store
from agent.eventlog import EventLog
from agent.uplink import cbor, forming, wire

T = 1_767_225_600

# (record, m, acct, detail): what the event's callers wrote before the records.
CASES: list[tuple[events.Event, str | None, str | None, dict[str, Any]]] = [
    (events.Tamper("M1", "A1", "magnet", 201, "open"), "M1", "A1",
     {"kind": "magnet", "code": 201, "action": "open"}),
    (events.Tamper("M1", None, "other", 7, "none"), "M1", None,
     {"kind": "other", "code": 7, "action": "none"}),
    (events.Relay("M1", "A1", "open", "credit"), "M1", "A1",
     {"state": "open", "reason": "credit"}),
    (events.RelayFailed("M1", "A1", "open", "unknown", "timeout", 3), "M1", "A1",
     {"want": "open", "actual": "unknown", "error": "timeout", "attempts": 3}),
    (events.RelayOverride("M1", "A1", "connect", None, "local"), "M1", "A1",
     {"action": "connect", "until": None, "source": "local"}),
    (events.RelayOverride("M1", "A1", "disconnect", T + 60, "cloud"), "M1", "A1",
     {"action": "disconnect", "until": T + 60, "source": "cloud"}),
    (events.DisconnectDeferred("M1", "A1", ("holiday", "notice"), -500), "M1", "A1",
     {"reasons": ["holiday", "notice"], "reason": "holiday", "balance": -500}),
    (events.LowBalance("A1", 20, 10_000, 4), None, "A1",
     {"level_pct": 20, "balance": 10_000, "days_left": 4}),
    (events.LowBalance("A1", 0, 0, None), None, "A1",
     {"level_pct": 0, "balance": 0, "days_left": None}),
    (events.CreditExhausted("A1", -10_001), None, "A1", {"balance": -10_001}),
    (events.TokenRejected("A1", "bad_mac"), None, "A1", {"why": "bad_mac"}),
    (events.TokenRejected("A1", "used", 12, T + 900), None, "A1",
     {"why": "used", "counter": 12, "locked_until": T + 900}),
    (events.TokenRejected("A1", "locked", None, T + 900), None, "A1",
     {"why": "locked", "locked_until": T + 900}),
    (events.MeterOffline("M1", "A1", "no answer"), "M1", "A1", {"error": "no answer"}),
    (events.MeterOffline("M1", None, ""), "M1", None, {}),
    (events.MeterOnline("M1", "A1"), "M1", "A1", {}),
    (events.MeterSecurity("M1", None, "bad_tag", "GMAC tag mismatch"), "M1", None,
     {"why": "bad_tag", "error": "GMAC tag mismatch"}),
    (events.MeterDiscovered("rs485-0", 7, "SN123", "modbus"), None, None,
     {"bus": "rs485-0", "address": 7, "serial": "SN123", "protocol": "modbus"}),
    (events.BadReading(meter="M1", acct="A1", why="charge_error", error="KeyError: 'x'",
                       import_wh=None), "M1", "A1",
     {"why": "charge_error", "error": "KeyError: 'x'", "import_wh": None}),
    (events.BadReading(meter="M1", acct="A1", why="implausible", reason="too fast",
                       rebased=False, baseline_wh=1000, import_wh=9000), "M1", "A1",
     {"why": "implausible", "reason": "too fast", "rebased": False, "baseline_wh": 1000,
      "import_wh": 9000}),
    (events.BadReading(meter="M1", acct="A1", why="register_reset", reason="3 in a row",
                       rebased=True, baseline_wh=1000, import_wh=12, reset_wh=10), "M1", "A1",
     {"why": "register_reset", "reason": "3 in a row", "rebased": True, "baseline_wh": 1000,
      "import_wh": 12, "reset_wh": 10}),
    (events.DataDropped(what="instantaneous", count=40, quantities=("p_w", "v_dv"),
                        from_s=T, to_s=T + 600), None, None,
     {"what": "instantaneous", "count": 40, "quantities": ["p_w", "v_dv"], "from": T,
      "to": T + 600}),
    (events.DataDropped(what="readings", count=40, from_s=T, to_s=T + 600), None, None,
     {"what": "readings", "count": 40, "from": T, "to": T + 600}),
    (events.DataDropped(what="readings", count=40, from_s=T, to_s=T + 600,
                        reason="disk_full", seqs=(3, 9)), None, None,
     {"what": "readings", "count": 40, "from": T, "to": T + 600, "reason": "disk_full",
      "seqs": [3, 9]}),
]


def old_item(t: int, type_: str, m: str | None, acct: str | None,
             detail: dict[str, Any]) -> bytes:
    """The item as forming.event_item wrote it from its arguments before the records."""
    event: dict[str, Any] = {"t": t, "type": type_, "detail": detail}
    if m is not None:
        event["m"] = m
    if acct is not None:
        event["acct"] = acct
    return cbor.dumps(event)


@pytest.mark.parametrize(("record", "m", "acct", "detail"), CASES)
def test_a_records_item_is_the_map_its_callers_wrote(
        record: events.Event, m: str | None, acct: str | None,
        detail: dict[str, Any]) -> None:
    item = forming.event_item(T, record)
    assert item == old_item(T, record.TYPE, m, acct, detail)
    assert list(record.detail().items()) == list(detail.items())  # the log line's order
    wire.check_events({**wire.envelope("gw-1", 1, 1), "events": [cbor.loads(item)]})


def test_every_record_type_has_a_case_and_every_contract_type_a_record() -> None:
    assert {type(r) for r, *_ in CASES} == set(events.EVENTS)
    types = [cls.TYPE for cls in events.EVENTS]
    assert len(set(types)) == len(types)
    assert set(wire.EVENT_TYPES) <= set(types)


@pytest.mark.parametrize("cls", events.EVENTS)
def test_records_are_frozen_with_slots(cls: type) -> None:
    record: Any = next(r for r, *_ in CASES if type(r) is cls)
    assert not hasattr(record, "__dict__")
    field = dataclasses.fields(record)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(record, field, None)


def test_a_bad_reading_is_a_rule_or_a_charge_error_never_both() -> None:
    with pytest.raises(AssertionError):
        events.BadReading(meter="M1", acct=None, why="x", import_wh=1)
    with pytest.raises(AssertionError):
        events.BadReading(meter="M1", acct=None, why="x", import_wh=1, error="e",
                          reason="r", rebased=False, baseline_wh=0)
    with pytest.raises(AssertionError):
        events.Tamper("M1", None, "wet", 1, "none")  # normalised to "other" by the caller


def test_the_event_log_writes_the_item_and_logs_the_detail(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = Store(tmp_path)
    record = events.LowBalance("A1", 20, 10_000, None)
    with caplog.at_level(logging.INFO, logger="agent.ledger"), store.tx():
        EventLog(store).emit(T, record)
    assert store.pending_stats(LANE_EVENTS) == (1, T)
    assert caplog.messages == ["event=low_balance t=1767225600 meter=None acct=A1 "
                               "detail={'level_pct': 20, 'balance': 10000, 'days_left': None}"]
