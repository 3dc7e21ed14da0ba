"""Logs: one line per event, ``key=value`` (logfmt), readable by journald and grep.

A line looks like::

    ts=2026-03-01T10:15:02.120Z level=info logger=agent.runtime event=start gw=gw-01 boot=7

- Messages are written as ``"event=start gw=%s boot=%d"`` with %-args; every
  argument whose text holds a space, a quote, ``=`` or a control character is
  quoted (JSON string rules), so each line splits on spaces unambiguously.
- A message that is not ``key=value`` (a library's) becomes ``msg="..."``.
- An exception is kept on the same line (``exc=... tb=...``): journald would
  turn a multi-line traceback into many entries, only the first with a priority.
- Under systemd (``JOURNAL_STREAM`` is set) there is no ``ts=`` (journald
  stamps every line itself) and each line starts with ``<N>``, the syslog
  priority, which journald strips and records, so ``journalctl -p warning``
  works.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Mapping
from typing import Any, TextIO

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# journald's priorities (syslog(3)): err, warning, info, debug.
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
             logging.DEBUG: 7}
# Characters str.splitlines() breaks on besides \n and \r: escaped, or a reader that
# splits lines the Python way would see two records.
_LINE_BREAKS = frozenset("\x85\u2028\u2029")
_NEEDS_QUOTES = re.compile(r'[\s"=\\]|[\x00-\x1f\x7f\x85\u2028\u2029]')
_KV_START = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*=")
# A traceback on one line keeps at most this many frames (the innermost ones):
# the line must stay a line, and the last frames say where it broke.
TB_MAX_FRAMES = 8
# One record's text is cut here; journald's own line limit is 48 KiB.
LINE_MAX_CHARS = 8192


def quote(value: object) -> str:
    """A value as it appears after ``key=``: bare when safe, else a JSON-style string."""
    text = value if isinstance(value, str) else str(value)
    if text and not _NEEDS_QUOTES.search(text):
        return text
    out = ['"']
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F or ch in _LINE_BREAKS:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)  # non-ASCII (₹, names) stays readable
    out.append('"')
    return "".join(out)


def kv(**fields: object) -> str:
    """``key=value`` pairs in the order given, values quoted where needed."""
    return " ".join(f"{k}={quote(v)}" for k, v in fields.items())


def under_journald(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return bool(env.get("JOURNAL_STREAM"))


class KeyValueFormatter(logging.Formatter):
    def __init__(self, *, journald: bool) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        message = self._message(record)
        if not _KV_START.match(message):
            message = "msg=" + quote(message)
        head = f"level={record.levelname.lower()} logger={quote(record.name)}"
        if self.journald:
            line = f"<{_priority(record.levelno)}>{head} {message}"
        else:
            line = f"ts={_utc(record.created)} {head} {message}"
        if record.exc_info and record.exc_info[1] is not None:
            line += " " + _exception(record.exc_info[1])
        if len(line) > LINE_MAX_CHARS:
            line = line[:LINE_MAX_CHARS] + " truncated=true"
        return line.replace("\n", "\\n")  # one record, one line, whatever got through

    @staticmethod
    def _message(record: logging.LogRecord) -> str:
        args = record.args
        if not args:
            return str(record.msg)
        if isinstance(args, Mapping):
            quoted: Any = {k: _quoted_arg(v) for k, v in args.items()}
        else:
            quoted = tuple(_quoted_arg(v) for v in args)
        try:
            return str(str(record.msg) % quoted)
        except (TypeError, ValueError):  # a %d given a quoted string: format plainly
            return record.getMessage()


def _quoted_arg(value: object) -> object:
    # Numbers keep their type so %d and %.3f still work; text is quoted when needed.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return quote(value)
    return value


def _priority(levelno: int) -> int:
    for level in sorted(_PRIORITY, reverse=True):
        if levelno >= level:
            return _PRIORITY[level]
    return 7


def _utc(created: float) -> str:
    whole = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + \
        f".{int((created - whole) * 1000):03d}Z"


def _exception(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)[-TB_MAX_FRAMES:]
    tb = " < ".join(f"{os.path.basename(f.filename)}:{f.lineno}:{f.name}"
                    for f in reversed(frames))
    return kv(exc=f"{type(exc).__name__}: {exc}", tb=tb)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler this module installed, so a second setup replaces it."""


def setup_logging(level: str = "INFO", *, stream: TextIO | None = None,
                  journald: bool | None = None) -> None:
    """Route every logger to one key=value line per record on ``stream`` (stderr).

    ``level`` is a name of ``LEVELS`` (case-insensitive); ValueError otherwise.
    Calling it again replaces the earlier setup (tests, ``--log-level``).
    """
    name = level.upper()
    if name not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    handler = _Handler(sys.stderr if stream is None else stream)
    handler.setFormatter(KeyValueFormatter(
        journald=under_journald() if journald is None else journald))
    root.addHandler(handler)
    root.setLevel(getattr(logging, name))
