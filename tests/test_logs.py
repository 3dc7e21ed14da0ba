"""Structured logs: one key=value line per record, quoted where needed, journald-aware."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.logs import KeyValueFormatter, kv, quote, setup_logging, under_journald

TS = re.compile(r"^ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    setup_logging("DEBUG", stream=stream, journald=False)
    try:
        yield stream
    finally:
        root.handlers[:] = before[0]
        root.setLevel(before[1])


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def parse(line: str) -> dict[str, str]:
    """A logfmt reader: bare values, or JSON strings."""
    fields: dict[str, str] = {}
    pos = 0
    pattern = re.compile(r'([A-Za-z_][A-Za-z0-9_.-]*)=("(?:[^"\\]|\\.)*"|[^ ]*)(?: |$)')
    while pos < len(line):
        m = pattern.match(line, pos)
        assert m, f"not key=value at {pos}: {line[pos:]!r}"
        value = m.group(2)
        fields[m.group(1)] = json.loads(value) if value.startswith('"') else value
        pos = m.end()
    return fields


def test_a_record_is_one_key_value_line_with_a_utc_timestamp(out: io.StringIO) -> None:
    logging.getLogger("agent.runtime").info("event=start gw=%s boot=%d version=%s",
                                            "gw-01", 7, "0.1.0")
    [line] = lines(out)
    assert TS.match(line)
    assert parse(line) == {"ts": line[3:27], "level": "info", "logger": "agent.runtime",
                           "event": "start", "gw": "gw-01", "boot": "7", "version": "0.1.0"}


def test_values_with_spaces_quotes_or_newlines_are_quoted(out: io.StringIO) -> None:
    log = logging.getLogger("agent.x")
    log.warning("event=mqtt_disconnected reason=%s detail=%s", "broker said no",
                'a "b"\nc=₹5')
    [line] = lines(out)
    assert 'reason="broker said no"' in line
    assert parse(line)["detail"] == 'a "b"\nc=₹5'


def test_numbers_keep_their_format(out: io.StringIO) -> None:
    logging.getLogger("agent.x").info("event=poll took_s=%.3f n=%d ok=%s", 0.5, 3, True)
    fields = parse(lines(out)[0])
    assert (fields["took_s"], fields["n"], fields["ok"]) == ("0.500", "3", "True")


def test_a_message_that_is_not_key_value_becomes_msg(out: io.StringIO) -> None:
    logging.getLogger("paho").debug("Sending CONNECT (u%d, p%d)", 0, 0)
    fields = parse(lines(out)[0])
    assert fields["msg"] == "Sending CONNECT (u0, p0)"
    assert fields["level"] == "debug" and fields["logger"] == "paho"


def test_an_exception_stays_on_the_same_line(out: io.StringIO) -> None:
    def inner() -> None:
        raise ValueError("bad\nthing")

    try:
        inner()
    except ValueError:
        logging.getLogger("agent.sup").exception("event=subsystem_crashed name=%s", "bus")
    [line] = lines(out)
    fields = parse(line)
    assert fields["exc"] == "ValueError: bad\nthing"
    assert fields["tb"].startswith("test_logs.py:")
    assert "inner" in fields["tb"]


def test_under_journald_no_timestamp_and_a_priority_prefix() -> None:
    stream = io.StringIO()
    fmt = KeyValueFormatter(journald=True)
    for level, prio in ((logging.DEBUG, 7), (logging.INFO, 6), (logging.WARNING, 4),
                        (logging.ERROR, 3), (logging.CRITICAL, 2)):
        record = logging.LogRecord("agent.x", level, __file__, 1, "event=e n=%d", (1,), None)
        stream.write(fmt.format(record) + "\n")
        assert fmt.format(record).startswith(f"<{prio}>level=")
    assert "ts=" not in stream.getvalue()
    assert under_journald({"JOURNAL_STREAM": "8:12345"})
    assert not under_journald({})


def test_setup_twice_keeps_one_handler_and_checks_the_level() -> None:
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    try:
        first, second = io.StringIO(), io.StringIO()
        setup_logging("info", stream=first, journald=False)
        setup_logging("WARNING", stream=second, journald=False)
        logging.getLogger("agent.x").info("event=hidden")
        logging.getLogger("agent.x").warning("event=shown")
        assert first.getvalue() == ""
        assert "event=shown" in second.getvalue() and "hidden" not in second.getvalue()
        with pytest.raises(ValueError, match="log level"):
            setup_logging("LOUD")
    finally:
        root.handlers[:] = before[0]
        root.setLevel(before[1])


def test_kv_helper() -> None:
    assert kv(event="relay", meter="SDM-0001", reason="no credit") == \
        'event=relay meter=SDM-0001 reason="no credit"'
    assert quote("") == '""'


@given(st.text())
def test_quote_round_trips_and_never_breaks_a_line(text: str) -> None:
    q = quote(text)
    assert len(q.splitlines()) <= 1
    if q.startswith('"'):
        assert json.loads(q) == text
    else:
        assert q == text and text and not re.search(r'[\s"=\\]', text)


@given(st.text(), st.text())
def test_any_argument_gives_one_parseable_line(a: str, b: str) -> None:
    record = logging.LogRecord("agent.x", logging.INFO, __file__, 1, "event=e a=%s b=%s",
                               (a, b), None)
    line = KeyValueFormatter(journald=False).format(record)
    assert len(line.splitlines()) == 1
    fields = parse(line)
    assert (fields["a"], fields["b"]) == (a, b)
