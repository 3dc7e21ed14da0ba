"""Faults the runtime meets on a board, in-process (the e2e tests inject them into the
agent as a process): a status file that cannot be written is logged once and skipped."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.runtime import Runtime
from tests.test_supervisor import _config, _IdleBus


def test_a_status_file_that_cannot_be_written_is_logged_once_and_skipped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rt = Runtime(_config(tmp_path, meters=1), bus_factory=_IdleBus, control=False)
    blocker = Path(rt.cfg.gateway.data_dir) / "status.tmp"
    blocker.mkdir()  # the temp file cannot be created: as with a full or read-only card
    with caplog.at_level(logging.INFO, "agent.runtime"):
        for _ in range(3):
            rt._write_status()
    failed = [r for r in caplog.records if "event=status_file_failed" in r.getMessage()]
    assert len(failed) == 1, "logged when the reason changes, not every second"
    assert rt.status_snapshot["gateway"] == "gw-test"  # the page still has its status
    blocker.rmdir()
    with caplog.at_level(logging.INFO, "agent.runtime"):
        rt._write_status()
    assert (Path(rt.cfg.gateway.data_dir) / "status.json").exists()
    assert any("event=status_file_ok" in r.getMessage() for r in caplog.records)
    rt.store.close()
