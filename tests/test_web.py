"""The local status page (CONTRACT 11) with the status of a real simulated gateway,
rendered in headless Chromium (Debian's `chromium`); the screenshot is kept in
test-output/web/status.png."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import LocalConfig
from agent.errors import ConfigError
from agent.web import IDLE_S, MAX_CONNECTIONS, MAX_REQUEST_LINE, StatusServer, render_page, rupees
from tests.e2e.harness import Gateway, wait_until

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "test-output" / "web"
TOPUP_PAISE = (123456, 50000, 7)  # ₹1,234.56, ₹500.00, ₹0.07 before charges


@pytest.fixture(scope="module")
def status() -> Iterator[dict[str, Any]]:
    """The status.json of a running simulated gateway (broker, pty meters, agent, head-end),
    with a top-up on each account so the balances are the ledger's own numbers."""
    with tempfile.TemporaryDirectory(prefix="web-gw-") as tmp:
        gw = Gateway(Path(tmp))
        try:
            gw.start_agent()
            wait_until(lambda: link_up(gw), 20, "the agent's MQTT link")
            for i, account in enumerate(a["id"] for a in gw.raw["account"]):
                reply = gw.command("topup", {"account": account, "amount": TOPUP_PAISE[i],
                                             "txn": f"web-test-{i}"})
                assert reply["ok"], reply

            def ready() -> dict[str, Any] | None:
                try:
                    s = gw.status()
                except (OSError, ValueError):
                    return None
                done = all(m["reading"] and m["relay"]["actual"] and m["balance"] is not None
                           and m["balance"] > TOPUP_PAISE[i] - 1000
                           for i, m in enumerate(s["meters"]))
                return s if done and s["link"]["connected"] else None

            yield wait_until(ready, 30, "every meter read, topped up and its relay known")
        finally:
            gw.close()


def link_up(gw: Gateway) -> bool:
    try:
        return bool(gw.status()["link"]["connected"])
    except (OSError, ValueError):
        return False


def serve(get_status: Any, **local: Any) -> StatusServer:
    server = StatusServer(get_status, LocalConfig(**{"http_port": 0, "bind": "127.0.0.1",
                                                     **local}))
    server.start()
    return server


def fetch(url: str, auth: tuple[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture
def page_server(status: dict[str, Any]) -> Iterator[StatusServer]:
    server = serve(lambda: status)
    try:
        yield server
    finally:
        server.stop()


def test_the_page_shows_every_meter_balance_and_relay(status: dict[str, Any],
                                                      page_server: StatusServer) -> None:
    code, headers, body = fetch(f"http://127.0.0.1:{page_server.port}/")
    html = body.decode()
    assert code == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert status["meters"], "the gateway has meters"
    for meter in status["meters"]:
        assert meter["id"] in html
        assert rupees(meter["balance"]) in html
        assert f"<b>{meter['relay']['actual']}</b>" in html
    for account in status["accounts"]:
        assert account["id"] in html and rupees(account["balance"]) in html
    assert status["gateway"] in html
    # Works on a phone without internet: viewport, self-refresh, nothing fetched elsewhere.
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert '<meta http-equiv="refresh" content="5">' in html
    assert "<script" not in html and "http://" not in html and "https://" not in html


def test_status_json_is_exactly_the_status(status: dict[str, Any],
                                           page_server: StatusServer) -> None:
    code, headers, body = fetch(f"http://127.0.0.1:{page_server.port}/status.json")
    assert code == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == status


def test_other_paths_are_404(page_server: StatusServer) -> None:
    assert fetch(f"http://127.0.0.1:{page_server.port}/admin")[0] == 404
    assert fetch(f"http://127.0.0.1:{page_server.port}/status.json/../x")[0] == 404


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="Debian's chromium is not installed (apt-get install chromium)")
def test_chromium_renders_the_page_on_a_phone_screen(page_server: StatusServer) -> None:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    shot = OUTPUT / "status.png"
    shot.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        proc = subprocess.Popen(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             "--hide-scrollbars", f"--user-data-dir={profile}", f"--screenshot={shot}",
             "--window-size=412,915", f"http://127.0.0.1:{page_server.port}/"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            log, _ = proc.communicate(timeout=90)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: chromium and helpers
                proc.wait()
    assert proc.returncode == 0, log.decode(errors="replace")[-2000:]
    assert shot.exists(), log.decode(errors="replace")[-2000:]
    assert png_size(shot) == (412, 915)
    # A blank 412x915 page compresses to about 2 KB; text, cards and colours do not.
    assert shot.stat().st_size > 15_000, f"suspiciously small screenshot {shot}"


def test_basic_auth_refuses_without_or_with_a_wrong_password(tmp_path: Path,
                                                             status: dict[str, Any]) -> None:
    password_file = tmp_path / "web.password"
    password_file.write_text("s3cret pass phrase\n")
    server = serve(lambda: status, password_file=password_file)
    base = f"http://127.0.0.1:{server.port}"
    try:
        for auth in (None, ("tech", "wrong"), ("tech", "s3cret pass phras"), ("", "")):
            code, headers, body = fetch(base + "/", auth)
            assert code == 401, auth
            assert headers["WWW-Authenticate"].startswith('Basic realm="meter-agent"')
            assert b"SDM-" not in body
            assert fetch(base + "/status.json", auth)[0] == 401
            assert fetch(base + "/nothing-here", auth)[0] == 401  # auth before 404
        good = ("any-user", "s3cret pass phrase")
        code, _, body = fetch(base + "/", good)
        assert code == 200 and status["meters"][0]["id"].encode() in body
        code, _, body = fetch(base + "/status.json", good)
        assert code == 200 and json.loads(body) == status
        assert fetch(base + "/nothing-here", good)[0] == 404
    finally:
        server.stop()


def test_off_loopback_it_will_not_start_without_a_password(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        StatusServer(dict, LocalConfig(http_port=0, bind="0.0.0.0")).start()
    assert info.value.errors[0][0] == "local.password_file"
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError) as info:
        StatusServer(dict, LocalConfig(http_port=0, bind="127.0.0.1",
                                       password_file=empty)).start()
    assert info.value.errors[0] == ("local.password_file", f"{empty} is empty")


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_requests_are_bounded(page_server: StatusServer) -> None:
    port = page_server.port
    long_line = b"GET /" + b"a" * MAX_REQUEST_LINE + b" HTTP/1.0\r\n\r\n"
    assert raw_request(port, long_line).startswith(b"HTTP/1.0 414")
    big_headers = b"GET / HTTP/1.0\r\n" + b"X-Pad: " + b"b" * 9000 + b"\r\n\r\n"
    assert raw_request(port, big_headers).startswith(b"HTTP/1.0 431")
    assert raw_request(port, b"POST / HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc") \
        .startswith(b"HTTP/1.0 405")
    assert raw_request(port, b"HEAD / HTTP/1.0\r\n\r\n").endswith(b"\r\n\r\n")  # no body


def test_idle_connections_cannot_starve_the_page(page_server: StatusServer) -> None:
    """300 connections that say nothing (a scan, a broken phone app, a flood): one thread
    serves them all; over MAX_CONNECTIONS the oldest idle one is closed, so a browser's
    request is still answered at once, and each idle one is closed after IDLE_S."""
    port = page_server.port
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(300)]
    try:
        started = time.monotonic()
        assert fetch(f"http://127.0.0.1:{port}/")[0] == 200
        assert time.monotonic() - started < 2
        assert threading.active_count() < 40, "a thread per connection"
        idle[-1].settimeout(IDLE_S + 5)
        assert idle[-1].recv(100) == b"", "an idle connection is closed after IDLE_S"
        closed = 0
        for s in idle[:-MAX_CONNECTIONS]:  # the oldest: closed to make room, at once
            s.settimeout(0.5)
            try:
                closed += s.recv(100) == b""
            except ConnectionError:
                closed += 1
        assert closed == 300 - MAX_CONNECTIONS
    finally:
        for s in idle:
            s.close()
    assert fetch(f"http://127.0.0.1:{port}/status.json")[0] == 200


def test_everything_from_the_status_is_escaped_and_events_are_shown() -> None:
    evil = '<script>alert("x")</script>'
    html = render_page({
        "gateway": "gw-1", "time": 1_767_225_600,
        "meters": [{"id": evil, "balance": -150, "relay": {"actual": "open", "intent": "open",
                                                          "reason": "credit & <notice>"},
                    "reading": {"t": 1_767_225_590, "import_wh": 1_234_567, "v_dv": 2301,
                                "pf_milli": 987}}],
        "events": [{"t": 1_767_225_500, "type": "tamper", "m": "SDM-1",
                    "detail": {"kind": "cover_open", "note": "<b>"}}],
    })
    assert evil not in html and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert "credit &amp; &lt;notice&gt;" in html
    assert "-₹1.50" in html and "1234.567 kWh" in html and "230.1 V" in html
    assert "0.987" in html and "10 s ago" in html
    assert "Recent events" in html and "tamper" in html and "kind=cover_open" in html
    assert "note=&lt;b&gt;" in html
    assert "(10 s ago)" in render_page({"time": 1000}, now_s=1010)
    assert "40 s old: the agent is not updating it" in render_page({"time": 1000}, now_s=1040)
    # A status without events (today's runtime) has no events section; an odd one renders.
    assert "Recent events" not in render_page({"gateway": "gw-1"})
    assert "gw-1" in render_page({"gateway": "gw-1", "meters": [None, 3], "link": "down"})


@pytest.mark.parametrize(("paise", "text"), [
    (0, "₹0.00"), (7, "₹0.07"), (-5, "-₹0.05"), (100, "₹1.00"), (99_999, "₹999.99"),
    (123_456, "₹1,234.56"), (12_345_678, "₹1,23,456.78"), (-1_000_000_000, "-₹1,00,00,000.00"),
    (None, "-"),
])
def test_rupees_use_paise_and_indian_grouping(paise: int | None, text: str) -> None:
    assert rupees(paise) == text


def test_the_page_counts_items_not_yet_formed_in_the_backlog() -> None:
    """With the link down readings pile up as items before any message is formed."""
    html = render_page({"backlog": {"messages": 0, "pending": 7, "oldest_age_s": 30,
                                    "bytes": 512}})
    assert "0 message(s) + 7 item(s) not yet formed, oldest 30 s" in html
