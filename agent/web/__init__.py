"""The local status page (CONTRACT 11).

    request.py   the HTTP request head reader, sans-IO, with its bounds
    server.py    StatusServer: one thread, one selector; auth, routes, answers
    page.py      the HTML page of a status dict (pure)
"""

from agent.web.page import render_page, rupees
from agent.web.request import MAX_HEADER_BYTES, MAX_REQUEST_LINE
from agent.web.server import IDLE_S, MAX_CONNECTIONS, StatusServer, read_password

__all__ = ["IDLE_S", "MAX_CONNECTIONS", "MAX_HEADER_BYTES", "MAX_REQUEST_LINE",
           "StatusServer", "read_password", "render_page", "rupees"]
