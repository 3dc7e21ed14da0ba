"""The local control socket: how the CLI changes state through the running agent.

A Unix socket ``control.sock`` in the data dir, mode 0600 (only the agent's
user). One JSON request per connection, one JSON reply:
``{"op": str, "args": {...}}`` → ``{"ok": bool, "error": str?, "result": {...}}``.
The socket's thread never touches the store: it hands the request to the runtime
thread (the single writer) through the inbox, and sends the answer when it comes.
One thread and one selector serve every connection (a scan that takes a minute does
not hold up a ``status``). The thread sleeps until a socket is ready, a deadline is due,
or a byte on its wake pipe says an answer came (or stop() was called): an idle agent
does not wake it.

Bounds: requests over ``MAX_REQUEST_BYTES`` are refused; ``MAX_CLIENTS``
connections are served at once (one more is told the agent is busy); a request must
arrive within ``REQUEST_S`` of connecting; one not answered within
``ANSWER_TIMEOUT_S`` gets an error (the runtime may still apply it).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import selectors
import socket
import threading
import time
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
REQUEST_S = 10.0  # from connecting to a whole request
ANSWER_TIMEOUT_S = 120.0  # a bus scan of 247 addresses takes a while
SEND_S = 10.0  # for the answer to leave
# The longest the thread sleeps: every answer and stop() wake it through the pipe, so
# this is only a backstop that bounds how late an answer goes out if a wake were lost.
MAX_SLEEP_S = 1.0


class ControlError(AgentError):
    """The agent is not running, or refused the request."""


@dataclass
class ControlRequest:
    op: str
    args: dict[str, Any]
    answer: queue.Queue[dict[str, Any]] = field(default_factory=lambda: queue.Queue(maxsize=1))
    # called once the answer is in `answer`: the server's wake pipe (a request made
    # without a server, as the simulation does, has nobody to wake)
    wake: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    def reply(self, result: dict[str, Any] | None = None, error: str = "") -> None:
        body: dict[str, Any] = {"ok": not error, "result": result or {}}
        if error:
            body["error"] = error
        try:
            self.answer.put_nowait(body)
        except queue.Full:  # answered twice: a bug, but never block the runtime on it
            log.error("event=control_double_answer op=%s", self.op)
            return
        if self.wake is not None:
            self.wake()


@dataclass(eq=False)
class _Client:
    sock: socket.socket
    deadline_s: float  # for its request, then for the runtime's answer, then to send it
    data: bytes = b""
    request: ControlRequest | None = None
    out: bytes = b""


class ControlServer:
    def __init__(self, data_dir: Path, post: Callable[[ControlRequest], None]) -> None:
        self.path = Path(data_dir) / SOCKET_NAME
        self.post = post
        self._stop = threading.Event()
        self._clients: dict[socket.socket, _Client] = {}
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
        self.sock.setblocking(False)
        # the wake pipe: one byte from another thread ends the thread's select()
        self._woken, self._waker = socket.socketpair()
        self._woken.setblocking(False)
        self._waker.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.sock, selectors.EVENT_READ)
        self._selector.register(self._woken, selectors.EVENT_READ)
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
        self._wake()
        self.thread.join(timeout=2)
        for client in list(self._clients.values()):
            self._close(client)
        self._selector.close()
        self.sock.close()
        self._woken.close()
        self._waker.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def _wake(self) -> None:
        """Any thread: the socket's thread looks at its clients now."""
        try:
            self._waker.send(b"\0")
        except OSError:  # full (a wake is pending already) or closed (stopped: nobody waits)
            pass

    # -- the socket's thread -----------------------------------------------------------
    def _serve(self) -> None:
        while not self._stop.is_set():
            for key, mask in self._selector.select(self._sleep_s()):
                if key.fileobj is self.sock:
                    self._accept()
                elif key.fileobj is self._woken:
                    self._drain()
                elif mask & selectors.EVENT_READ:
                    self._receive(self._clients[key.fileobj])  # type: ignore[index]
                else:
                    self._send(self._clients[key.fileobj])  # type: ignore[index]
            now = time.monotonic()
            for client in list(self._clients.values()):
                if client.request is not None and not client.out:
                    try:
                        self._reply(client, client.request.answer.get_nowait())
                        continue
                    except queue.Empty:
                        pass
                if now >= client.deadline_s:
                    if client.request is not None and not client.out:
                        self._reply(client, {"ok": False,
                                             "error": "the agent did not answer in time"})
                    else:
                        self._close(client)

    def _sleep_s(self) -> float:
        """Until the nearest deadline, at most MAX_SLEEP_S."""
        if not self._clients:
            return MAX_SLEEP_S
        nearest_s = min(client.deadline_s for client in self._clients.values())
        return max(0.0, min(MAX_SLEEP_S, nearest_s - time.monotonic()))

    def _drain(self) -> None:
        """Empty the wake pipe; the loop then looks at every client anyway."""
        try:
            while self._woken.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("event=control_accept_failed error=%s", exc)
            return
        conn.setblocking(False)
        client = _Client(conn, time.monotonic() + REQUEST_S)
        self._clients[conn] = client
        if len(self._clients) > MAX_CLIENTS:
            self._reply(client, {"ok": False, "error": "agent busy: too many control clients"})
            return
        self._selector.register(conn, selectors.EVENT_READ)

    def _receive(self, client: _Client) -> None:
        try:
            chunk = client.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(client)
            return
        client.data += chunk
        if len(client.data) > MAX_REQUEST_BYTES:
            self._reply(client, {"ok": False,
                                 "error": f"request larger than {MAX_REQUEST_BYTES} bytes"})
            return
        if chunk and not chunk.endswith(b"\n"):
            return  # more to come
        self._selector.unregister(client.sock)
        try:
            request = _parse(client.data, "request")
            op, args = request.get("op"), request.get("args", {})
            if not isinstance(op, str) or not isinstance(args, dict):
                raise ControlError("a request is {\"op\": str, \"args\": {...}}")
        except (ControlError, ValueError) as exc:
            self._reply(client, {"ok": False, "error": str(exc)}, registered=False)
            return
        client.request = ControlRequest(op, args, wake=self._wake)
        client.deadline_s = time.monotonic() + ANSWER_TIMEOUT_S
        self.post(client.request)

    def _reply(self, client: _Client, body: dict[str, Any], *, registered: bool = True) -> None:
        client.out = json.dumps(body).encode() + b"\n"
        client.deadline_s = time.monotonic() + SEND_S
        if registered and client.sock in self._selector.get_map():
            self._selector.modify(client.sock, selectors.EVENT_WRITE)
        else:
            self._selector.register(client.sock, selectors.EVENT_WRITE)
        self._send(client)

    def _send(self, client: _Client) -> None:
        try:
            sent = client.sock.send(client.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(client)
            return
        client.out = client.out[sent:]
        if not client.out:
            self._close(client)

    def _close(self, client: _Client) -> None:
        self._clients.pop(client.sock, None)
        try:
            self._selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()


def _parse(data: bytes, what: str) -> dict[str, Any]:
    if not data:
        raise ControlError(f"the connection closed before a {what} arrived"
                           + (" (did the agent stop? see its log)" if what == "reply" else ""))
    body = json.loads(data)
    if not isinstance(body, dict):
        raise ControlError(f"a {what} is a JSON object")
    return body


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
    return _parse(b"".join(chunks), what)


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
        try:
            _send(sock, {"op": op, "args": args})
        except BrokenPipeError:
            pass  # it answered (busy) and closed before reading: the answer is still there
        try:
            answer = _receive(sock, "reply")
        except ValueError as exc:
            raise ControlError(f"the agent's reply is not JSON: {exc}") from exc
    if not answer.get("ok"):
        raise ControlError(str(answer.get("error", "refused")))
    result: dict[str, Any] = answer.get("result", {})
    return result
