"""The status page's request reader (agent/web/request.py): whole, byte by byte, with the
bounds, and fuzzed with the invariant "a Request, NEED_DATA, or an HttpError"."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.web.request import (
    MAX_HEADER_BYTES,
    MAX_REQUEST_LINE,
    NEED_DATA,
    HttpError,
    Request,
    RequestReader,
)

BROWSER = (b"GET /status.json?x=1 HTTP/1.1\r\nHost: 10.0.0.7:8080\r\n"
           b"Authorization: Basic dTpwdw==\r\nAccept: */*\r\n\r\n")


def _read(data: bytes, *, one_by_one: bool = False) -> object:
    reader = RequestReader()
    for chunk in ([data[i:i + 1] for i in range(len(data))] if one_by_one else [data]):
        reader.receive_data(chunk)
        event = reader.next_event()
        if event is not NEED_DATA:
            return event
    return NEED_DATA


@pytest.mark.parametrize("one_by_one", [False, True])
def test_a_browser_request_whole_and_byte_by_byte(one_by_one: bool) -> None:
    request = _read(BROWSER, one_by_one=one_by_one)
    assert request == Request("GET", "/status.json?x=1", "HTTP/1.1", {
        "host": "10.0.0.7:8080", "authorization": "Basic dTpwdw==", "accept": "*/*"})
    assert isinstance(request, Request) and request.path == "/status.json"
    assert _read(BROWSER[:-1]) is NEED_DATA  # one byte short: not yet
    assert _read(BROWSER + b"trailing bytes") == request  # no body is read


@pytest.mark.parametrize(("data", "code"), [
    (b"GET /" + b"a" * MAX_REQUEST_LINE + b" HTTP/1.0\r\n\r\n", 414),
    (b"GET /" + b"a" * MAX_REQUEST_LINE, 414),  # too long before its end has come
    (b"GET / HTTP/1.0\r\nX-Pad: " + b"b" * MAX_HEADER_BYTES + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.0\r\nX-Pad: " + b"b" * MAX_HEADER_BYTES, 431),
    (b"GET\r\n\r\n", 400), (b"GET / HTTP/1.0 extra\r\n\r\n", 400), (b"GET x HTTP/1.0\r\n\r\n", 400),
    (b"GET / HTTP/1.0\r\nno colon here\r\n\r\n", 400), (b"G\xffT / HTTP/1.0\r\n\r\n", 400),
])
def test_bounds_and_malformed_heads(data: bytes, code: int) -> None:
    with pytest.raises(HttpError) as caught:
        _read(data)
    assert caught.value.code == code


@given(st.binary(max_size=600), st.booleans())
def test_any_bytes_give_a_request_need_data_or_an_http_error(data: bytes, split: bool) -> None:
    try:
        event = _read(data, one_by_one=split)
    except HttpError as exc:
        assert exc.code in (400, 414, 431)
    else:
        assert event is NEED_DATA or isinstance(event, Request)
