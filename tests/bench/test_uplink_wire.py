"""bench/uplink_wire.py's live comparison, small: both forms come from the real outbox,
carry every reading once, and the peer's figure is read from bench/results/peer.md."""

from __future__ import annotations

from bench import uplink_wire


def test_series_and_table_from_the_real_outbox_carry_every_reading() -> None:
    readings = uplink_wire.back_to_back(uplink_wire.make_readings(20, 1), 20)
    assert len({r.t for r in readings}) < len(readings)  # polled one after another
    series, n = uplink_wire.live_formed(readings, table_form=False)
    table, m = uplink_wire.live_formed(readings, table_form=True)
    assert n == m == len(readings)
    assert len(table) == 4  # one message a poll cycle
    assert sum(map(len, table)) * 3 < sum(map(len, series))


def test_the_peer_figure_is_the_one_in_peer_md() -> None:
    peer = uplink_wire.peer_live_b()
    assert peer is not None and f"| {peer:.1f} [" in uplink_wire.PEER.read_text()
