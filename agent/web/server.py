"""The local status page's server (CONTRACT 11): read-only, for a technician's phone on
the LAN. ``GET /`` is the page (``page.py``); ``GET /status.json`` is exactly what
``get_status()`` returns, the data of ``meter-agent status --json``. Anything else is
404; only GET and HEAD exist; every connection gets one answer and is closed.

One thread and one selector serve every connection, non-blocking, so a connection
that says nothing costs a socket and a few bytes, never a thread: a flood of idle or
half-open connections cannot keep the page from a browser.

Auth: HTTP basic, any user name, the password from ``[local] password_file``
compared in constant time. It is required whenever a password file is set, and the
page refuses to start off loopback without one (the config loader already insists).
The 401 comes before the 404, so a stranger learns no paths.

Bounds, each with what happens at it:
- ``MAX_CONNECTIONS`` open at once; one more closes the oldest connection that has not
  sent a whole request yet (if every one has, the new one is closed unanswered);
- ``IDLE_S`` from accept to a whole request, ``SEND_S`` for the answer to leave: then
  the connection is closed;
- request line and headers: ``request.py`` (414, 431, 400).

``get_status`` is called on this thread: it must be safe there (the runtime passes
its last snapshot, never a live store query).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import selectors
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, Final

from agent.clock import Clock, SystemClock
from agent.config import LocalConfig
from agent.errors import ConfigError
from agent.supervisor import guarded
from agent.web.page import render_page
from agent.web.request import NEED_DATA, HttpError, Request, RequestReader

log = logging.getLogger("agent.web")

MAX_CONNECTIONS: Final = 64
IDLE_S: Final = 5.0
SEND_S: Final = 10.0
RECV_BYTES: Final = 4096
SELECT_S: Final = 0.5  # the longest the thread waits before looking at deadlines and stop
LOOPBACK: Final = ("127.0.0.1", "::1", "localhost")
REALM: Final = "meter-agent"
_HEADERS: Final = (  # every answer: no caching, no framing, no scripts, no referrer
    ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"), ("Referrer-Policy", "no-referrer"),
    ("Content-Security-Policy",
     "default-src 'none'; style-src 'unsafe-inline'; form-action 'none'"))

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


def authorized(header: str, password: bytes) -> bool:
    """Does an ``Authorization`` header carry ``password`` (HTTP basic, any user)?"""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    _user, sep, given = decoded.partition(b":")
    return bool(sep) and hmac.compare_digest(given, password)


def answer(code: int, ctype: str, data: bytes, *, body: bool = True,
           extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    """One whole HTTP/1.0 answer (the connection closes after it)."""
    lines = [f"HTTP/1.0 {code} {HTTPStatus(code).phrase}", "Server: meter-agent",
             f"Content-Type: {ctype}", f"Content-Length: {len(data)}",
             "Connection: close", *(f"{k}: {v}" for k, v in (*_HEADERS, *extra))]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (data if body else b"")


def _text(code: int, text: str, *, body: bool = True,
          extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    return answer(code, "text/plain; charset=utf-8", (text + "\n").encode(), body=body,
                  extra=extra)


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    client: str
    deadline_s: float
    reader: RequestReader = field(default_factory=RequestReader)
    out: bytes = b""  # the answer, once there is one; what is left of it to send


class StatusServer:
    """The status page on ``local.bind``:``local.http_port`` (0: any free port)."""

    def __init__(self, get_status: StatusGetter, local: LocalConfig, *,
                 clock: Clock | None = None) -> None:
        self.get_status = get_status
        self.local = local
        self.clock = clock or SystemClock()
        self.password: bytes | None = None
        self._sock: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._conns: dict[socket.socket, _Conn] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._sock is None:
            raise RuntimeError("the status page is not started")
        return int(self._sock.getsockname()[1])

    def start(self) -> None:
        """Bind and serve on one thread; ConfigError (with a key path) when it cannot."""
        if self.local.password_file is not None:
            self.password = read_password(self.local.password_file)
        elif self.local.bind not in LOOPBACK:
            raise ConfigError([("local.password_file", "is required when bind is not loopback")])
        family = socket.AF_INET6 if ":" in self.local.bind else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.local.bind, self.local.http_port))
            sock.listen(MAX_CONNECTIONS)
        except OSError as exc:
            sock.close()
            raise ConfigError([("local.http_port", f"cannot listen on {self.local.bind}:"
                                f"{self.local.http_port}: {exc.strerror or exc}")]) from exc
        sock.setblocking(False)
        self._sock = sock
        self._selector = selectors.DefaultSelector()
        self._selector.register(sock, selectors.EVENT_READ)
        self._start_thread()
        log.info("event=web_started bind=%s port=%d auth=%s", self.local.bind, self.port,
                 "basic" if self.password else "none")

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=guarded("status-page", self._serve),
                                        name="status-page", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def restart(self) -> None:
        """A new serving thread on the same socket (the supervisor's, after a crash)."""
        self._start_thread()

    def stop(self) -> None:
        if self._sock is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for conn in list(self._conns.values()):
            self._close(conn)
        assert self._selector is not None
        self._selector.close()
        self._sock.close()
        self._sock = self._selector = self._thread = None

    # -- the serving thread ----------------------------------------------------------
    def _serve(self) -> None:
        assert self._selector is not None
        while not self._stop.is_set():
            for key, mask in self._selector.select(SELECT_S):
                if key.fileobj is self._sock:
                    self._accept()
                elif mask & selectors.EVENT_READ:
                    self._receive(self._conns[key.fileobj])  # type: ignore[index]
                else:
                    self._send(self._conns[key.fileobj])  # type: ignore[index]
            now = self.clock.monotonic_s()
            for conn in [c for c in self._conns.values() if now >= c.deadline_s]:
                log.debug("event=web_client_dropped client=%s reason=timeout", conn.client)
                self._close(conn)

    def _accept(self) -> None:
        assert self._sock is not None and self._selector is not None
        try:
            sock, address = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # e.g. out of file descriptors: the next select retries
            log.warning("event=web_accept_failed error=%s", exc)
            return
        if len(self._conns) >= MAX_CONNECTIONS:
            waiting = [c for c in self._conns.values() if not c.out]
            if not waiting:  # every one is being answered: this one waits for nothing
                log.warning("event=web_busy client=%s", address[0])
                sock.close()
                return
            oldest = min(waiting, key=lambda c: c.deadline_s)
            log.info("event=web_idle_closed client=%s reason=over_cap", oldest.client)
            self._close(oldest)
        sock.setblocking(False)
        conn = _Conn(sock, str(address[0]), self.clock.monotonic_s() + IDLE_S)
        self._conns[sock] = conn
        self._selector.register(sock, selectors.EVENT_READ)

    def _receive(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:  # the client went away before its request was whole
            self._close(conn)
            return
        conn.reader.receive_data(data)
        try:
            event = conn.reader.next_event()
        except HttpError as exc:
            self._reply(conn, _text(exc.code, str(exc)))
            return
        if event is NEED_DATA:
            return
        assert isinstance(event, Request)
        self._reply(conn, self._handle(event))

    def _reply(self, conn: _Conn, data: bytes) -> None:
        assert self._selector is not None
        conn.out = data
        conn.deadline_s = self.clock.monotonic_s() + SEND_S
        self._selector.modify(conn.sock, selectors.EVENT_WRITE)
        self._send(conn)

    def _send(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        conn.out = conn.out[sent:]
        if not conn.out:
            self._close(conn)

    def _close(self, conn: _Conn) -> None:
        assert self._selector is not None
        self._conns.pop(conn.sock, None)
        try:
            self._selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    # -- one request -----------------------------------------------------------------
    def _handle(self, request: Request) -> bytes:
        if request.method not in ("GET", "HEAD"):
            return _text(405, "only GET and HEAD", extra=(("Allow", "GET, HEAD"),))
        body = request.method == "GET"
        if self.password is not None and not authorized(
                request.headers.get("authorization", ""), self.password):
            return _text(401, "authentication required", body=body, extra=(
                ("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"'),))
        if request.path not in ("/", "/index.html", "/status.json"):
            return _text(404, "not found", body=body)
        try:
            status = self.get_status()
        except (OSError, ValueError, KeyError) as exc:
            log.warning("event=web_status_unavailable error=%s", exc)
            return _text(503, "status not available yet", body=body)
        log.debug("event=web_request method=%s path=%s", request.method, request.path)
        if request.path == "/status.json":
            return answer(200, "application/json", json.dumps(status).encode(), body=body)
        page = render_page(status, now_s=int(self.clock.time_s()))
        return answer(200, "text/html; charset=utf-8", page.encode(), body=body)
