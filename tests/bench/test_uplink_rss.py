"""bench.uplink_rss's baselines measure what they say: the agent's Modbus client and the
bare frames against the real simulator on a pty, each reading answered in full."""

from __future__ import annotations

from bench.uplink_rss import bus_alone


def test_the_bus_side_baselines_read_a_real_meter_on_a_pty() -> None:
    client_us, bare_us = bus_alone(5)
    # CPU is spent on both (a failed read would raise, a silent meter would time out)
    assert client_us > 0 and bare_us > 0
