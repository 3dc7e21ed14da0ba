"""Faults the runtime meets on a board, in-process (the e2e tests inject them into the
agent as a process): a status file that cannot be written is logged once and skipped."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.runtime import Runtime
from tests.test_supervisor import _config, idle_bus


def test_a_status_file_that_cannot_be_written_is_logged_once_and_skipped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rt = Runtime(_config(tmp_path, meters=1), bus_factory=idle_bus, control=False)
    blocker = Path(rt.cfg.gateway.data_dir) / "status.tmp"
    blocker.mkdir()  # the temp file cannot be created: as with a full or read-only card
    with caplog.at_level(logging.INFO, "agent.runtime"):
        for _ in range(3):
            rt.status.write()
    failed = [r for r in caplog.records if "event=status_file_failed" in r.getMessage()]
    assert len(failed) == 1, "logged when the reason changes, not every second"
    assert rt.status.snapshot["gateway"] == "gw-test"  # the page still has its status
    blocker.rmdir()
    with caplog.at_level(logging.INFO, "agent.runtime"):
        rt.status.write()
    assert (Path(rt.cfg.gateway.data_dir) / "status.json").exists()
    assert any("event=status_file_ok" in r.getMessage() for r in caplog.records)
    rt.store.close()


def test_a_meter_with_keys_on_a_board_without_cryptography_is_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PyPI has no cryptography wheel for 32-bit ARM; there it is an extra. A board
    installed without it says at start which meter needs it (exit 2 with the key), not at
    the first poll; a board with only unkeyed meters needs none of it."""
    import dataclasses
    import importlib.util

    from agent.errors import ConfigError
    from agent.preflight import check_installed

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "cryptography" else real(name, *a))
    cfg = _config(tmp_path, meters=2)
    check_installed(cfg)  # no meter has keys
    keyed = dataclasses.replace(cfg, meters=(cfg.meters[0], dataclasses.replace(
        cfg.meters[1], ek_file=tmp_path / "m.ek", ak_file=tmp_path / "m.ak")))
    with pytest.raises(ConfigError) as refused:
        check_installed(keyed)
    assert refused.value.errors[0][0] == "meter[1].ek_file"
    assert "meter-agent[dlms-security]" in refused.value.errors[0][1]
