"""sim/iec_line.py's IecLineServer: the one IEC 62056-21 mode C session of the simulated
meters, sans-IO (the pty simulator and the neighbourhood's IecMemLine both drive it)."""

from __future__ import annotations

from dataclasses import dataclass

from agent.drivers.iec62056.codec import (
    Identification,
    encode_ack,
    encode_break,
    encode_identification,
    encode_request,
)
from sim.iec_line import IecLineServer

IDENT = Identification("SIM", "5", "IEC1PH-SIM")


@dataclass
class Meter:
    baud: str = "5"
    silent: bool = False
    message: bytes | None = b"\x02data\x03x"

    def identification(self) -> Identification:
        return IDENT

    def data_message(self) -> bytes | None:
        return self.message


def replies(server: IecLineServer, *requests: bytes) -> list[tuple[bytes, int]]:
    for request in requests:
        server.receive_data(request)
    out = []
    while (reply := server.next_reply()) is not None:
        out.append(reply)
    return out


def test_a_session_answers_at_300_then_at_the_chosen_speed() -> None:
    server = IecLineServer({"7": Meter()})
    assert replies(server, encode_request("7")) == [(encode_identification(IDENT), 300)]
    assert replies(server, encode_ack("4")) == [(b"\x02data\x03x", 4800)]
    assert replies(server, encode_ack("4")) == []  # the session ended with the readout


def test_requests_arrive_byte_by_byte() -> None:
    server = IecLineServer({"7": Meter()})
    for byte in encode_request("7") + encode_ack("5"):
        server.receive_data(bytes([byte]))
    assert [baud for _frame, baud in replies(server)] == [300, 9600]


def test_what_gets_no_answer() -> None:
    meters = {"7": Meter(), "8": Meter(silent=True), "9": Meter(message=None)}
    server = IecLineServer(meters)
    assert replies(server, encode_request("6")) == []  # no such address
    assert replies(server, encode_request("8")) == []  # silent
    assert replies(server, encode_ack("5")) == []  # no session
    assert len(replies(server, encode_request("7"), encode_ack("6"))) == 1  # above the offer
    assert len(replies(server, encode_request("7"), encode_ack("5", mode="1"))) == 1
    assert len(replies(server, encode_request("7"), encode_break(), encode_ack("5"))) == 1
    assert len(replies(server, encode_request("9"), encode_ack("5"))) == 1  # the meter is gone
    assert replies(server, encode_request("")) == []  # "/?!" with three meters listening


def test_sign_on_without_address_on_a_one_meter_line() -> None:
    server = IecLineServer({"7": Meter()})
    assert [baud for _f, baud in replies(server, encode_request(""), encode_ack("5"))] \
        == [300, 9600]
