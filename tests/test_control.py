"""The control socket (agent/control.py): one thread serves every CLI connection; a slow
answer (a scan) does not hold up another request; each bound with what happens at it."""

from __future__ import annotations

import queue
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import control, supervisor
from agent.control import ControlError, ControlRequest, ControlServer, call


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, queue.Queue[ControlRequest]]]:
    inbox: queue.Queue[ControlRequest] = queue.Queue()
    server = ControlServer(tmp_path, inbox.put)
    server.start()
    yield tmp_path, inbox
    server.stop()
    assert not (tmp_path / control.SOCKET_NAME).exists()


def _answer_all(inbox: queue.Queue[ControlRequest], stop: threading.Event,
                slow_op: str = "scan") -> None:
    """The runtime's part: answers each request, the slow op after a second."""
    while not stop.is_set():
        try:
            req = inbox.get(timeout=0.05)
        except queue.Empty:
            continue
        if req.op == slow_op:
            threading.Timer(1.0, lambda r=req: r.reply({"found": []})).start()
        else:
            req.reply({"op": req.op})


def test_a_slow_answer_does_not_hold_up_the_next_request(served: tuple[Path, queue.Queue[
        ControlRequest]]) -> None:
    data_dir, inbox = served
    stop = threading.Event()
    runtime = threading.Thread(target=_answer_all, args=(inbox, stop))
    runtime.start()
    try:
        slow: list[dict[str, object]] = []
        before = threading.active_count()
        scanner = threading.Thread(target=lambda: slow.append(call(data_dir, "scan", {})))
        scanner.start()
        time.sleep(0.2)
        started = time.monotonic()
        assert call(data_dir, "status", {}) == {"op": "status"}
        assert time.monotonic() - started < 0.5, "status waited for the scan"
        # the scanner and the slow answer's timer: no thread of the server's per client
        assert threading.active_count() <= before + 2
        scanner.join(5)
        assert slow == [{"found": []}]
    finally:
        stop.set()
        runtime.join(5)


def test_a_request_too_large_or_not_a_request_is_refused(served: tuple[Path, queue.Queue[
        ControlRequest]]) -> None:
    data_dir, inbox = served
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(data_dir / control.SOCKET_NAME))
        s.sendall(b"x" * (control.MAX_REQUEST_BYTES + 10))
        reply = s.recv(1000)
    assert b"larger than" in reply and b'"ok": false' in reply
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(data_dir / control.SOCKET_NAME))
        s.sendall(b'["not", "a", "map"]\n')
        assert b"is a JSON object" in s.recv(1000)
    assert inbox.empty(), "a refused request never reaches the runtime"


def test_more_clients_than_the_cap_are_told_the_agent_is_busy(served: tuple[Path, queue.Queue[
        ControlRequest]]) -> None:
    data_dir, _ = served
    quiet = []
    for _ in range(control.MAX_CLIENTS):
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(data_dir / control.SOCKET_NAME))
        quiet.append(s)
    try:
        time.sleep(0.2)
        with pytest.raises(ControlError, match="agent busy"):
            call(data_dir, "status", {})
    finally:
        for s in quiet:
            s.close()


def test_an_unanswered_request_times_out_and_a_silent_client_is_dropped(
        served: tuple[Path, queue.Queue[ControlRequest]], monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir, inbox = served
    monkeypatch.setattr(control, "ANSWER_TIMEOUT_S", 0.3)
    monkeypatch.setattr(control, "REQUEST_S", 0.3)
    with pytest.raises(ControlError, match="did not answer in time"):
        call(data_dir, "status", {})
    assert isinstance(inbox.get_nowait(), ControlRequest)  # it did reach the runtime
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(data_dir / control.SOCKET_NAME))
        s.settimeout(3)
        assert s.recv(100) == b"", "a client that sends nothing is closed"


# -- the wake pipe: the thread sleeps until there is something to do ------------------
@pytest.fixture
def sleepy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[
        tuple[ControlServer, queue.Queue[ControlRequest], list[int]]]:
    """A server whose backstop sleep is longer than any test waits, so only the pipe (or
    a deadline) can wake it; a list that grows each time its select() returns."""
    monkeypatch.setattr(control, "MAX_SLEEP_S", 30.0)
    inbox: queue.Queue[ControlRequest] = queue.Queue()
    server = ControlServer(tmp_path, inbox.put)
    wakes: list[int] = []
    select = server._selector.select

    def counted(timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = select(timeout)
        wakes.append(len(ready))
        return ready

    monkeypatch.setattr(server._selector, "select", counted)
    server.start()
    yield server, inbox, wakes
    server.stop()


def _answer_one(inbox: queue.Queue[ControlRequest]) -> threading.Thread:
    """The runtime's part, on its own thread: answers the next request."""
    def answer() -> None:
        req = inbox.get(timeout=5)
        req.reply({"op": req.op})
    runtime = threading.Thread(target=answer)
    runtime.start()
    return runtime


def test_an_idle_server_does_not_wake(sleepy: tuple[ControlServer, queue.Queue[
        ControlRequest], list[int]]) -> None:
    _, _, wakes = sleepy
    time.sleep(0.1)
    before = len(wakes)
    time.sleep(0.5)
    assert len(wakes) - before == 0, "the thread woke with nothing to do"


def test_an_answer_from_another_thread_wakes_the_server(sleepy: tuple[
        ControlServer, queue.Queue[ControlRequest], list[int]]) -> None:
    server, inbox, _ = sleepy
    runtime = _answer_one(inbox)
    # without the wake the answer would wait for the 30 s backstop
    assert call(server.path.parent, "status", {}, timeout_s=5) == {"op": "status"}
    runtime.join(5)


def test_stop_ends_the_thread_at_once(sleepy: tuple[ControlServer, queue.Queue[
        ControlRequest], list[int]]) -> None:
    server, _, _ = sleepy
    time.sleep(0.1)  # asleep in select()
    started = time.monotonic()
    server.stop()
    assert not server.alive(), "stop() did not wake the thread"
    assert time.monotonic() - started < 1.5  # stop() joins for at most 2 s


def test_a_deadline_wakes_the_server(sleepy: tuple[ControlServer, queue.Queue[
        ControlRequest], list[int]], monkeypatch: pytest.MonkeyPatch) -> None:
    server, inbox, _ = sleepy
    monkeypatch.setattr(control, "ANSWER_TIMEOUT_S", 0.3)
    monkeypatch.setattr(control, "REQUEST_S", 0.3)
    with pytest.raises(ControlError, match="did not answer in time"):
        call(server.path.parent, "status", {}, timeout_s=5)
    assert isinstance(inbox.get_nowait(), ControlRequest)
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(server.path))
        s.settimeout(5)
        assert s.recv(100) == b"", "a client that sends nothing is closed"


def test_a_restarted_thread_is_woken_by_the_pipe(sleepy: tuple[
        ControlServer, queue.Queue[ControlRequest], list[int]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    server, inbox, _ = sleepy
    monkeypatch.setattr(supervisor, "crashes", deque(maxlen=supervisor.MAX_CRASHES))
    drain = server._drain

    def crash() -> None:
        monkeypatch.setattr(server, "_drain", drain)  # once
        raise RuntimeError("a bug in the control thread")

    monkeypatch.setattr(server, "_drain", crash)
    server._wake()
    server.thread.join(5)
    assert not server.alive() and supervisor.crashes[-1][0] == "control"
    server.start()  # as the supervisor does
    runtime = _answer_one(inbox)
    assert call(server.path.parent, "status", {}, timeout_s=5) == {"op": "status"}
    runtime.join(5)


def test_a_second_answer_is_logged_and_does_not_wake(caplog: pytest.LogCaptureFixture) -> None:
    woken: list[None] = []
    req = ControlRequest("status", {}, wake=lambda: woken.append(None))
    req.reply({"n": 1})
    req.reply({"n": 2})
    assert req.answer.get_nowait() == {"ok": True, "result": {"n": 1}}
    assert len(woken) == 1
    assert "event=control_double_answer op=status" in caplog.text


def test_a_request_made_without_a_server_can_be_answered() -> None:
    req = ControlRequest("token_enter", {})  # as the simulation does
    req.reply(error="no")
    assert req.answer.get_nowait() == {"ok": False, "result": {}, "error": "no"}


def test_a_busy_answer_sent_before_the_request_is_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent may answer "busy" and close before the CLI has sent its request: the
    CLI's send then breaks, and the answer is still there to read."""
    closed = threading.Event()
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(tmp_path / control.SOCKET_NAME))
        listener.listen(1)

        def busy() -> None:
            conn, _ = listener.accept()
            conn.sendall(b'{"ok": false, "error": "agent busy: too many control clients"}\n')
            conn.close()
            closed.set()

        agent = threading.Thread(target=busy)
        agent.start()
        send = control._send

        def late(conn: socket.socket, body: dict[str, object]) -> None:
            closed.wait(5)
            send(conn, body)

        monkeypatch.setattr(control, "_send", late)
        with pytest.raises(ControlError, match="agent busy"):
            call(tmp_path, "status", {}, timeout_s=5)
        agent.join(5)
