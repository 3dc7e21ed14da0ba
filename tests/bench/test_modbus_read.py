"""bench.modbus_read's timing after a sleep: every call is slept before and timed."""

from __future__ import annotations

import pytest

from bench import modbus_read


def test_after_sleep_times_each_call_after_its_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    calls: list[int] = []
    monkeypatch.setattr("bench.modbus_read.time.sleep", slept.append)
    us = modbus_read.after_sleep_us(lambda: calls.append(sum(range(10_000))), 0.02)
    assert slept == [0.02] * modbus_read.AFTER_SLEEP_CALLS
    assert len(calls) == modbus_read.AFTER_SLEEP_CALLS
    assert us > 0
