"""The local status page (CONTRACT 11): read-only, for a technician's phone on the LAN.

``GET /`` is one server-rendered HTML page (no JavaScript, no CDN: the site may
have no internet) that reloads itself every 5 s; ``GET /status.json`` is exactly
what ``get_status()`` returns, the data of ``meter-agent status --json``.
Anything else is 404. Only GET and HEAD exist.

Auth: HTTP basic, any user name, the password from ``[local] password_file``
compared in constant time. It is required whenever a password file is set, and
the page refuses to start off loopback without one (the config loader already
insists). The 401 comes before the 404, so a stranger learns no paths.

Bounds, each with what happens at it:
- ``MAX_CONNECTIONS`` requests at once; one more is closed unanswered (a
  browser retries), so a flood cannot grow threads.
- ``MAX_REQUEST_LINE`` bytes of request line (414) and ``MAX_HEADER_BYTES`` of
  headers (431); no body is ever read.
- ``TIMEOUT_S`` per socket read: a client that stalls is dropped.

``get_status`` is called on the HTTP threads: it must be safe there (the
runtime passes its last snapshot, never a live store query).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from agent.config import LocalConfig
from agent.errors import ConfigError
from agent.supervisor import guarded

log = logging.getLogger("agent.web")

MAX_CONNECTIONS = 8
MAX_REQUEST_LINE = 2048
MAX_HEADER_BYTES = 8192
TIMEOUT_S = 10.0
LOOPBACK = ("127.0.0.1", "::1", "localhost")
REALM = "meter-agent"
STALE_S = 30  # the runtime rewrites its status every second; older than this is a warning
EVENTS_SHOWN = 50  # newest first; older ones are in `journalctl` and on the head-end

StatusGetter = Callable[[], dict[str, Any]]


def read_password(path: Path) -> bytes:
    """The first line of ``path``; ConfigError naming ``local.password_file`` otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([("local.password_file", f"cannot read {path}: {reason}")]) from exc
    lines = text.splitlines()
    password = lines[0].strip() if lines else ""
    if not password:
        raise ConfigError([("local.password_file", f"{path} is empty")])
    return password.encode("utf-8")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], get_status: StatusGetter,
                 password: bytes | None) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.get_status = get_status
        self.password = password
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            # At MAX_CONNECTIONS: drop this one rather than start another thread.
            log.warning("event=web_busy client=%s", client_address[0])
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()  # the thread never started, so it cannot release
            raise

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The stdlib prints a traceback to stderr; one log line says the same.
        exc = sys.exc_info()[1]
        log.warning("event=web_request_failed client=%s error=%s", client_address[0],
                    f"{type(exc).__name__}: {exc}")

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "meter-agent"
    sys_version = ""
    timeout = TIMEOUT_S
    protocol_version = "HTTP/1.0"  # one request per connection: the bound is per request

    def handle_one_request(self) -> None:
        self.close_connection = True
        try:
            self._one_request()
        except (TimeoutError, ConnectionError) as exc:  # a stalled or vanished client
            log.debug("event=web_client_dropped client=%s error=%s", self.client_address[0],
                      exc)

    def _one_request(self) -> None:
        # The stdlib reads up to 64 KiB of request line and 100 x 64 KiB of headers;
        # this page needs neither, so both are capped before parsing.
        line = self.rfile.readline(MAX_REQUEST_LINE + 1)
        if not line:
            return
        if len(line) > MAX_REQUEST_LINE:
            self.requestline = self.request_version = self.command = ""
            self.send_error(414)
            return
        self.raw_requestline = line
        self.rfile = _Capped(self.rfile, MAX_HEADER_BYTES)  # type: ignore[assignment]
        try:
            ok = self.parse_request()
        except _TooLong:
            self.send_error(431)
            return
        if not ok:
            return
        if self.command not in ("GET", "HEAD"):
            self.send_error(405)
            return
        self._serve(body=self.command == "GET")
        self.wfile.flush()

    def _serve(self, *, body: bool) -> None:
        if self.server.password is not None and not self._authorized():
            self._send(401, "text/plain; charset=utf-8", b"authentication required\n", body,
                       {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'})
            return
        path = self.path.split("?", 1)[0]
        if path not in ("/", "/index.html", "/status.json"):
            self._send(404, "text/plain; charset=utf-8", b"not found\n", body)
            return
        try:
            status = self.server.get_status()
        except (OSError, ValueError, KeyError) as exc:
            log.warning("event=web_status_unavailable error=%s", exc)
            self._send(503, "text/plain; charset=utf-8", b"status not available yet\n", body)
            return
        if path == "/status.json":
            self._send(200, "application/json", json.dumps(status).encode(), body)
        else:
            page = render_page(status, now_s=int(time.time()))
            self._send(200, "text/html; charset=utf-8", page.encode(), body)

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        _user, sep, given = decoded.partition(b":")
        expected = self.server.password
        return bool(sep) and expected is not None and hmac.compare_digest(given, expected)

    def _send(self, code: int, ctype: str, data: bytes, body: bool,
              extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        # No scripts at all; styles only inline (the page has one <style>).
        self.send_header("Content-Security-Policy",
                         "default-src 'none'; style-src 'unsafe-inline'; form-action 'none'")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        log.debug("event=web_request client=%s line=%s", self.client_address[0],
                  format % args)


class _TooLong(Exception):
    pass


class _Capped:
    """A read-only view of the socket file that refuses to go past ``limit`` bytes."""

    def __init__(self, raw: Any, limit: int) -> None:
        self.raw = raw
        self.left = limit

    def readline(self, size: int = -1) -> bytes:
        cap = self.left + 1 if size < 0 else min(size, self.left + 1)
        line: bytes = self.raw.readline(cap)
        self.left -= len(line)
        if self.left < 0:
            raise _TooLong
        return line

    def read(self, size: int = -1) -> bytes:
        return b""  # no request body is ever read

    def close(self) -> None:
        self.raw.close()


class StatusServer:
    """The status page on ``local.bind``:``local.http_port`` (0: any free port)."""

    def __init__(self, get_status: StatusGetter, local: LocalConfig) -> None:
        self.get_status = get_status
        self.local = local
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the status page is not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Bind and serve on one thread; ConfigError (with a key path) when it cannot."""
        password = None
        if self.local.password_file is not None:
            password = read_password(self.local.password_file)
        elif self.local.bind not in LOOPBACK:
            raise ConfigError([("local.password_file",
                                "is required when bind is not loopback")])
        try:
            self._server = _Server((self.local.bind, self.local.http_port), self.get_status,
                                   password)
        except OSError as exc:
            raise ConfigError([("local.http_port", f"cannot listen on {self.local.bind}:"
                                f"{self.local.http_port}: {exc.strerror or exc}")]) from exc
        self._start_thread()
        log.info("event=web_started bind=%s port=%d auth=%s", self.local.bind, self.port,
                 "basic" if password else "none")

    def _start_thread(self) -> None:
        server = self._server
        assert server is not None
        self._thread = threading.Thread(
            target=guarded("status-page", lambda: server.serve_forever(poll_interval=0.5)),
            name="status-page", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def restart(self) -> None:
        """A new serving thread on the same socket (the supervisor's, after a crash)."""
        self._start_thread()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None


# -- the page ----------------------------------------------------------------------
# Everything from the status dict goes through _e() (html.escape, quotes too): meter
# ids, errors and event details are data, never markup. The dict is read defensively
# (a missing or odd field shows "-"), so a status from an older or newer agent still
# renders rather than failing the page.

_CSS = """
body{font:16px/1.4 system-ui,sans-serif;margin:0;padding:.5rem;background:#f4f4f4;color:#111}
h1{font-size:1.3rem;margin:.2rem 0}h2{font-size:1.05rem;margin:1rem 0 .3rem}
section,.card{background:#fff;border-radius:6px;padding:.5rem .7rem;margin:.4rem 0}
.card{border-left:6px solid #888}.card.on{border-color:#2a7}.card.off{border-color:#c33}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.1rem .8rem;margin:0}
dt{color:#555}dd{margin:0;overflow-wrap:anywhere}
.ok{color:#176;font-weight:600}.bad{color:#b11;font-weight:600}.muted{color:#666}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.15rem .3rem}
tr+tr td{border-top:1px solid #eee}.num{text-align:right;font-variant-numeric:tabular-nums}
h2 small{display:block;font-size:.8rem;font-weight:400;color:#666}
"""


def _e(value: object) -> str:
    return escape("-" if value is None else str(value), quote=True)


def _d(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def rupees(paise: object) -> str:
    """Integer paise as ₹ with Indian digit grouping: 12345678 -> ₹1,23,456.78."""
    p = _int(paise)
    if p is None:
        return "-"
    whole, frac = divmod(abs(p), 100)
    digits = str(whole)
    head, tail = digits[:-3], digits[-3:]
    groups: list[str] = []
    while len(head) > 2:
        groups.insert(0, head[-2:])
        head = head[:-2]
    if head:
        groups.insert(0, head)
    return ("-" if p < 0 else "") + "₹" + ",".join([*groups, tail]) + f".{frac:02d}"


def _fixed(value: object, scale: int, places: int, unit: str) -> str:
    """An integer in 1/scale units as a decimal, without float: 123456, 1000, 3 -> 123.456."""
    v = _int(value)
    if v is None:
        return "-"
    whole, frac = divmod(abs(v), scale)
    text = f"{whole}.{frac * 10**places // scale:0{places}d}" if places else str(whole)
    return ("-" if v < 0 else "") + text + (f" {unit}" if unit else "")


def _utc(t: object) -> str:
    s = _int(t)
    return "-" if s is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(s))


def _age(t: object, now: object) -> str:
    a, b = _int(t), _int(now)
    if a is None or b is None:
        return "-"
    s = max(0, b - a)
    return f"{s} s ago" if s < 120 else f"{s // 60} min ago" if s < 7200 else f"{s // 3600} h ago"


def _flag(value: object, yes: str, no: str) -> str:
    if value is True:
        return f'<span class="ok">{_e(yes)}</span>'
    if value is False:
        return f'<span class="bad">{_e(no)}</span>'
    return '<span class="muted">unknown</span>'


def _dl(rows: list[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"


_READING_FIELDS = (("import_wh", "import", 1000, 3, "kWh"), ("export_wh", "export", 1000, 3,
                   "kWh"), ("p_w", "power", 1, 0, "W"), ("v_dv", "voltage", 10, 1, "V"),
                   ("i_ma", "current", 1000, 3, "A"), ("f_chz", "frequency", 100, 2, "Hz"),
                   ("pf_milli", "power factor", 1000, 3, ""))


def _meter(m: dict[str, Any], now: object) -> str:
    relay = _d(m.get("relay"))
    reading = _d(m.get("reading"))
    state = "on" if m.get("online") is True else "off" if m.get("online") is False else ""
    rows = [("online", _flag(m.get("online"), "yes", "NO")),
            ("account", _e(m.get("account"))),
            ("balance", f'<b>{_e(rupees(m.get("balance")))}</b>'),
            ("relay", f'<b>{_e(relay.get("actual") or "unknown")}</b>'
                      + (f' (wanted {_e(relay.get("intent"))})'
                         if relay.get("intent") not in (None, relay.get("actual")) else "")
                      + (f' <span class="muted">{_e(relay.get("reason"))}</span>'
                         if relay.get("reason") else "")),
            ("read", _e(_age(reading.get("t"), now)))]
    rows += [(label, _e(_fixed(reading[key], scale, places, unit)))
             for key, label, scale, places, unit in _READING_FIELDS if key in reading]
    counters = _d(m.get("errors"))
    if "polls" in counters:
        rows.append(("polls", _e(f"{counters.get('ok', '-')} ok of {counters['polls']}")))
    problems = {k: v for k, v in counters.items() if v and k not in ("polls", "ok")}
    if problems:
        rows.append(("problems", '<span class="bad">' + _e(", ".join(
            f"{k.replace('_', ' ')} {v}" for k, v in sorted(problems.items()))) + "</span>"))
    return (f'<div class="card {state}"><h2>{_e(m.get("id"))} <small>'
            f'{_e(m.get("model"))} · {_e(m.get("bus"))} #{_e(m.get("address"))}</small></h2>'
            + _dl(rows) + "</div>")


def _event(ev: object) -> str:
    d = _d(ev)
    who = " ".join(_e(d[k]) for k in ("m", "acct") if d.get(k))
    detail = ", ".join(f"{k}={v}" for k, v in sorted(_d(d.get("detail")).items()))
    return (f'<tr><td>{_e(_utc(d.get("t")))}</td><td><b>{_e(d.get("type"))}</b> {who}'
            f'<br><span class="muted">{_e(detail)}</span></td></tr>')


def render_page(status: dict[str, Any], now_s: int | None = None) -> str:
    """The whole HTML page for one status dict (pure: the clock is passed in)."""
    now = status.get("time")
    fresh = _e(_utc(now))
    status_s = _int(now)
    if now_s is not None and status_s is not None:
        age_s = now_s - status_s
        fresh += (f' <span class="bad">{age_s} s old: the agent is not updating it</span>'
                  if age_s > STALE_S else f" ({max(0, age_s)} s ago)")
    link, headend, backlog = (_d(status.get(k)) for k in ("link", "headend", "backlog"))
    running = status.get("running", True)
    parts = [
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta http-equiv="refresh" content="5">',
        f"<title>{_e(status.get('gateway'))} · meter-agent</title><style>{_CSS}</style>",
        "</head><body>",
        f"<h1>{_e(status.get('gateway'))}</h1>",
        _dl([("agent", f"meter-agent {_e(status.get('version'))} · boot {_e(status.get('boot'))}"
                       f" · {_flag(running, 'running', 'NOT RUNNING')}"),
             ("status at", fresh),
             ("clock", _flag(status.get("clock_trusted"), "trusted", "NOT TRUSTED"))]),
        "<section><h2>Link</h2>",
        _dl([("broker", f"{_flag(link.get('connected'), 'connected', 'DOWN')} "
                        f"{_e(link.get('host'))}:{_e(link.get('port'))}"),
             ("reconnects", _e(link.get("reconnects"))),
             ("in flight", _e(link.get("inflight"))),
             ("head-end", _flag(headend.get("online"), "online", "offline")),
             ("payments", _flag(headend.get("payments"), "up", "DOWN")),
             ("backlog", f"{_e(backlog.get('messages'))} message(s), oldest "
                         f"{_e(backlog.get('oldest_age_s') or 0)} s, "
                         f"{_e(backlog.get('bytes'))} bytes")]),
        "</section><section><h2>Buses</h2>",
    ]
    for bus in status.get("buses") or []:
        b = _d(bus)
        error = f' <span class="bad">{_e(b["error"])}</span>' if b.get("error") else \
            ' <span class="ok">ok</span>'
        parts.append(f"<div><b>{_e(b.get('name'))}</b> {_e(b.get('protocol'))} on "
                     f"<code>{_e(b.get('port'))}</code>{error}</div>")
    parts.append("</section><h2>Meters</h2>")
    parts += [_meter(_d(m), now) for m in status.get("meters") or []]
    parts.append("<section><h2>Accounts</h2><table>")
    for acct in status.get("accounts") or []:
        a = _d(acct)
        parts.append(f'<tr><td>{_e(a.get("id"))}</td>'
                     f'<td class="num">{_e(rupees(a.get("balance")))}</td></tr>')
    parts.append("</table></section>")
    events = status.get("events")
    if isinstance(events, list):
        parts.append("<section><h2>Recent events</h2><table>")
        parts += [_event(ev) for ev in events[-EVENTS_SHOWN:][::-1]] or \
            ['<tr><td class="muted">none</td></tr>']
        parts.append("</table></section>")
    parts.append("</body></html>\n")
    return "".join(parts)
