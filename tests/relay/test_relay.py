"""Relay backends: switch and read back (agent/relay/base.py), GPIO through a stand-in
with libgpiod v2's API shape (request_lines / LineSettings / line.Value), and the sync
loop that reports to Actuation.relay_result."""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from agent.errors import RelayError
from agent.relay import gpio
from agent.relay.base import Relay, switch_and_confirm, sync
from agent.relay.gpio import GpioRelay, load_gpiod
from tests.ledger.rig import Rig
from tests.relay.fakes import FakeRelay


class Value(enum.Enum):  # gpiod.line.Value
    INACTIVE = 0
    ACTIVE = 1


class Direction(enum.Enum):  # gpiod.line.Direction
    AS_IS = 1
    INPUT = 2
    OUTPUT = 3


class FakeRequest:
    """gpiod.LineRequest: the kernel's view of our requested lines."""

    def __init__(self, chip: str, consumer: str, config: dict[int, Any]) -> None:
        self.chip, self.consumer = chip, consumer
        self.values = {line: s.output_value for line, s in config.items()}
        self.settings = config
        self.stuck = False
        self.released = False

    def set_value(self, line: int, value: Value) -> None:
        if self.released:
            raise OSError(9, "Bad file descriptor")
        if not self.stuck:
            self.values[line] = value

    def get_value(self, line: int) -> Value:
        value: Value = self.values[line]
        return value

    def release(self) -> None:
        self.released = True


def fake_gpiod() -> ModuleType:
    module = ModuleType("gpiod")
    module.line = SimpleNamespace(Value=Value, Direction=Direction)  # type: ignore[attr-defined]
    module.LineSettings = lambda **kw: SimpleNamespace(**kw)  # type: ignore[attr-defined]
    requests: list[FakeRequest] = []

    def request_lines(chip: str, consumer: str, config: dict[int, Any]) -> FakeRequest:
        if chip != gpio.DEFAULT_CHIP:
            raise FileNotFoundError(2, "No such file or directory", chip)
        requests.append(FakeRequest(chip, consumer, config))
        return requests[-1]

    module.request_lines = request_lines  # type: ignore[attr-defined]
    module.requests = requests  # type: ignore[attr-defined]
    return module


def test_gpio_line_starts_at_the_durable_intent_and_switches() -> None:
    gpiod = fake_gpiod()
    relay = GpioRelay(17, connected_at_start=False, gpiod=gpiod)
    [request] = gpiod.requests
    settings = request.settings[17]
    assert (settings.direction, settings.output_value, settings.active_low) == (
        Direction.OUTPUT, Value.INACTIVE, False)  # no blip to connected on a restart
    assert request.consumer == "meter-agent" and relay.read() == "open"
    assert switch_and_confirm(relay, True) == "closed"
    assert request.values[17] is Value.ACTIVE  # CONTRACT 2: a line that is ON = connected
    assert switch_and_confirm(relay, False) == "open"
    relay.close()
    assert request.released


def test_gpio_stuck_line_and_driver_errors_are_relay_errors() -> None:
    gpiod = fake_gpiod()
    relay = GpioRelay(4, connected_at_start=True, gpiod=gpiod, active_low=True)
    request = gpiod.requests[0]
    assert request.settings[4].active_low is True
    request.stuck = True
    with pytest.raises(RelayError, match="read back closed"):
        switch_and_confirm(relay, False)
    relay.close()
    with pytest.raises(RelayError, match="cannot set the line"):
        relay.switch(True)
    with pytest.raises(RelayError, match="cannot request"):
        GpioRelay(4, connected_at_start=True, chip="/dev/gpiochip9", gpiod=gpiod)


def test_missing_or_v1_gpiod_says_how_to_fix_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gpiod", None)  # not installed
    with pytest.raises(RelayError, match=r"meter-agent\[gpio\]"):
        load_gpiod()
    monkeypatch.setitem(sys.modules, "gpiod", ModuleType("gpiod"))  # v1: no request_lines
    with pytest.raises(RelayError, match="not libgpiod v2"):
        GpioRelay(1, connected_at_start=True)
    monkeypatch.setitem(sys.modules, "gpiod", fake_gpiod())
    assert load_gpiod().request_lines


def test_the_gpio_module_imports_without_gpiod() -> None:
    source = Path(gpio.__file__).read_text()
    assert "\nimport gpiod" not in source and "\nfrom gpiod" not in source


def test_fake_relay_follows_the_protocol() -> None:
    relay: Relay = FakeRelay("coil")
    assert switch_and_confirm(relay, False) == "open"
    armed = FakeRelay("dlms", state="armed")
    armed.stuck = True
    assert switch_and_confirm(armed, True) == "armed"  # waiting for the consumer's button
    with pytest.raises(RelayError, match="read back armed"):
        switch_and_confirm(armed, False)


def test_sync_switches_gpio_jobs_and_reports_to_actuation(tmp_path: Path) -> None:
    rig = Rig(tmp_path, meters=2, tariff={"fixed_per_day": 0, "slabs": [{"rate": 10_000}]})
    for m in ("M1", "M2"):
        rig.read(m, 1_000_000)
    rig.advance(300)
    rig.read("M1", 1_000_200)  # A1 out of credit: M1's relay should open
    rig.read("M2", 1_000_200)
    relays = {"M1": FakeRelay("gpio:17")}  # M2's relay is the bus's business
    broken = FakeRelay("gpio:18")
    broken.fail = True

    def report(meter: str, connected: bool | None, error: str, state: str | None) -> None:
        rig.ledger.actuation.relay_result(meter, connected, error, rig.now, state=state)

    jobs = rig.ledger.actuation.jobs(rig.now)
    assert sorted(jobs) == [("M1", False), ("M2", False)]
    assert sync(relays, jobs, report) == 1
    assert relays["M1"].state == "open" and rig.meter("M1").relay_actual == "open"
    assert rig.ledger.actuation.jobs(rig.now) == [("M2", False)]
    assert sync({"M2": broken}, rig.ledger.actuation.jobs(rig.now), report) == 1
    assert rig.meter("M2").relay_attempts == 1  # the failure is on record, with back-off
    assert rig.ledger.actuation.jobs(rig.now) == []
    rig.close()


def test_kernel_clock_check_reads_adjtimex_and_timesyncd(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    from agent.relay import disconnect

    flag = tmp_path / "synchronized"
    monkeypatch.setattr(disconnect, "TIMESYNCD_FLAG", flag)

    def fake(state: int, status: int) -> Any:
        def adjtimex(ref: Any) -> int:
            assert ref._obj.modes == 0  # read only: never steer the clock
            ref._obj.status = status
            return state
        return lambda: adjtimex

    cases = [((0, 0), True), ((4, 0x2001), True), ((5, 0), False), ((0, 0x40), False),
             ((-1, 0), False)]
    for (state, status), want in cases:
        monkeypatch.setattr(disconnect, "_adjtimex", fake(state, status))
        assert disconnect.kernel_clock_synchronised() is want, (state, status)
    monkeypatch.setattr(disconnect, "_adjtimex", lambda: None)  # not Linux / no libc
    assert disconnect.kernel_clock_synchronised() is False
    flag.touch()  # systemd-timesyncd has synchronised since boot
    assert disconnect.kernel_clock_synchronised() is True
    monkeypatch.undo()
    if sys.platform.startswith("linux"):
        assert disconnect._adjtimex() is not None  # glibc and musl both have adjtimex


def test_an_untrusted_clock_is_asked_once_a_second_not_once_an_account() -> None:
    """Every account a tick decides asks whether the clock is trusted; while it is not,
    the kernel (adjtimex, a file's stat) is asked once per ledger second, and once it
    says yes the answer is latched."""
    from agent.relay.disconnect import Disconnection

    asked: list[int] = []
    answer = [False]

    def synchronised() -> bool:
        asked.append(1)
        return answer[0]

    relays = object.__new__(Disconnection)  # only the clock's part is under test
    relays.clock_trusted = False
    relays._clock_synchronised = synchronised
    relays._clock_asked_s = None
    assert [relays.refresh_clock_trust(100) for _ in range(250)] == [False] * 250
    assert len(asked) == 1
    answer[0] = True
    assert relays.refresh_clock_trust(100) is False  # the same second: the same answer
    assert relays.refresh_clock_trust(101) is True and len(asked) == 2
    assert relays.refresh_clock_trust(102) is True and len(asked) == 2  # latched
    assert relays.refresh_clock_trust() is True
