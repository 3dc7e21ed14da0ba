"""The local control socket: how the CLI changes state through the running agent.

A Unix socket ``control.sock`` in the data dir, mode 0600 (only the agent's
user). One JSON request per connection, one JSON reply:
``{"op": str, "args": {...}}`` → ``{"ok": bool, "error": str?, "result": {...}}``.
The socket thread never touches the store: it hands the request to the runtime
thread (the single writer) through the inbox and waits for the answer.

Bounds: requests over ``MAX_REQUEST_BYTES`` are refused; ``MAX_CLIENTS``
connections are served at once; a request not answered within
``ANSWER_TIMEOUT_S`` gets an error (the runtime may still apply it).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import queue
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import AgentError
from agent.supervisor import guarded

log = logging.getLogger("agent.control")

SOCKET_NAME = "control.sock"
MAX_REQUEST_BYTES = 64 * 1024
MAX_CLIENTS = 4
ANSWER_TIMEOUT_S = 120.0  # a bus scan of 247 addresses takes a while


class ControlError(AgentError):
    """The agent is not running, or refused the request."""


@dataclass
class ControlRequest:
    op: str
    args: dict[str, Any]
    answer: queue.Queue[dict[str, Any]] = field(default_factory=lambda: queue.Queue(maxsize=1))

    def reply(self, result: dict[str, Any] | None = None, error: str = "") -> None:
        body: dict[str, Any] = {"ok": not error, "result": result or {}}
        if error:
            body["error"] = error
        try:
            self.answer.put_nowait(body)
        except queue.Full:  # answered twice: a bug, but never block the runtime on it
            log.error("event=control_double_answer op=%s", self.op)


class ControlServer:
    def __init__(self, data_dir: Path, post: Callable[[ControlRequest], None]) -> None:
        self.path = Path(data_dir) / SOCKET_NAME
        self.post = post
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self._stop = threading.Event()
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()  # a stale socket from a killed agent
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # created 0600: readable only by the agent's user
        try:
            self.sock.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self.sock.listen(MAX_CLIENTS)
        self.sock.settimeout(0.5)
        self.thread = self._new_thread()

    def _new_thread(self) -> threading.Thread:
        return threading.Thread(target=guarded("control", self._serve), name="control",
                                daemon=True)

    def start(self) -> None:
        if self.thread.ident is not None:  # ended (the supervisor restarts it): a new one
            self.thread = self._new_thread()
        self.thread.start()

    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=2)
        self.sock.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._slots.acquire(blocking=False):
                _send(conn, {"ok": False, "error": "agent busy: too many control clients"})
                conn.close()
                continue
            client = functools.partial(self._client, conn)
            threading.Thread(target=guarded("control-client", client), daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(10)
            request = _receive(conn)
            op, args = request.get("op"), request.get("args", {})
            if not isinstance(op, str) or not isinstance(args, dict):
                raise ControlError("a request is {\"op\": str, \"args\": {...}}")
            req = ControlRequest(op, args)
            self.post(req)
            try:
                answer = req.answer.get(timeout=ANSWER_TIMEOUT_S)
            except queue.Empty:
                answer = {"ok": False, "error": "the agent did not answer in time"}
            _send(conn, answer)
        except (ControlError, OSError, ValueError) as exc:
            try:
                _send(conn, {"ok": False, "error": str(exc)})
            except OSError:
                pass
        finally:
            conn.close()
            self._slots.release()


def _receive(conn: socket.socket, what: str = "request") -> dict[str, Any]:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = conn.recv(4096)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_REQUEST_BYTES:
            raise ControlError(f"request larger than {MAX_REQUEST_BYTES} bytes")
        if chunk.endswith(b"\n"):
            break
    if not chunks:
        raise ControlError(f"the connection closed before a {what} arrived"
                           + (" (did the agent stop? see its log)" if what == "reply" else ""))
    data = json.loads(b"".join(chunks))
    if not isinstance(data, dict):
        raise ControlError(f"a {what} is a JSON object")
    return data


def _send(conn: socket.socket, body: dict[str, Any]) -> None:
    conn.sendall(json.dumps(body).encode() + b"\n")


def call(data_dir: Path, op: str, args: dict[str, Any], timeout_s: float = 130.0) -> dict[str, Any]:
    """The CLI side: one request to the running agent; ControlError when none runs."""
    path = Path(data_dir) / SOCKET_NAME
    if not path.exists():
        raise ControlError(f"no agent is running (no control socket at {path})")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(path))
        except OSError as exc:
            raise ControlError(f"no agent is running ({path}: {exc.strerror})") from exc
        _send(sock, {"op": op, "args": args})
        try:
            answer = _receive(sock, "reply")
        except ValueError as exc:
            raise ControlError(f"the agent's reply is not JSON: {exc}") from exc
    if not answer.get("ok"):
        raise ControlError(str(answer.get("error", "refused")))
    result: dict[str, Any] = answer.get("result", {})
    return result
