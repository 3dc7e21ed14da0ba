"""The reserve and the disk mode (buffer/disk.py): every limit and what happens at it,
with the free space given by the test."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from agent.buffer import disk
from agent.buffer.disk import DEGRADED, NORMAL, DiskGuard

KIB = 1024


class _Free:
    """The disk's free bytes, as the test says."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __call__(self, _path: Path) -> int:
        return self.value


def guard(tmp_path: Path, free: _Free) -> DiskGuard:
    return DiskGuard(tmp_path, reserve_bytes=64 * KIB, keep_bytes=16 * KIB,
                     resume_free_bytes=32 * KIB, check_every_s=10.0, free_bytes=free)


def test_the_defaults_are_what_the_docs_say() -> None:
    assert disk.RESERVE_BYTES == 4 * 1024 * KIB and disk.RESERVE_KEEP_BYTES == 1024 * KIB
    assert disk.RESUME_FREE_BYTES == 2 * 1024 * KIB and disk.CHECK_EVERY_S == 10.0


def test_a_start_with_room_makes_the_whole_reserve_with_real_blocks(tmp_path: Path) -> None:
    g = guard(tmp_path, _Free(1 << 30))
    g.start(100)
    path = tmp_path / disk.RESERVE_NAME
    assert g.state == NORMAL and path.stat().st_size == 64 * KIB
    assert path.stat().st_blocks * 512 >= 64 * KIB  # allocated, not a sparse file
    assert g.status()["mode"] == "normal" and g.status()["reserve_bytes"] == 64 * KIB


def test_a_start_without_room_for_the_reserve_and_its_margin_is_degraded(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    free = _Free(64 * KIB + 32 * KIB - 1)  # one byte short of reserve + resume margin
    g = guard(tmp_path, free)
    with caplog.at_level(logging.INFO, "agent.disk"):
        g.start(100)
    assert g.state == DEGRADED and not (tmp_path / disk.RESERVE_NAME).exists()
    assert g.status()["reason"].startswith("start-up") and g.status()["since"] == 100
    assert [r for r in caplog.records if "event=disk_full" in r.getMessage()]


def test_a_full_write_cuts_the_reserve_to_what_is_kept_then_to_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    g = guard(tmp_path, _Free(1 << 30))
    g.start(100)
    with caplog.at_level(logging.INFO, "agent.disk"):
        assert g.full(200, "readings") == 48 * KIB  # all but keep_bytes
        assert g.state == DEGRADED and g.held_bytes() == 16 * KIB
        assert g.full(201, "readings") == 16 * KIB  # nothing kept back any more
        assert g.held_bytes() == 0 and not (tmp_path / disk.RESERVE_NAME).exists()
        for t in range(202, 210):  # the disk stays full: nothing left, nothing logged
            assert g.full(t, "readings") == 0
    logged = [r for r in caplog.records if "event=disk_full" in r.getMessage()]
    assert len(logged) == 2, "logged when the mode changes or space is released"
    assert g.status()["since"] == 200 and g.status()["reason"] == "readings"
    assert g.status()["fulls"] == 10


def test_release_all_at_once(tmp_path: Path) -> None:
    g = guard(tmp_path, _Free(1 << 30))
    g.start(100)
    assert g.full(200, "start-up: the store", release_all=True) == 64 * KIB
    assert g.held_bytes() == 0


def test_space_back_remakes_the_reserve_once_per_check_and_only_with_the_margin(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    free = _Free(1 << 30)
    g = guard(tmp_path, free)
    g.start(100)
    g.full(200, "readings")  # 16 KiB kept: 48 KiB to make again
    free.value = 48 * KIB + 32 * KIB - 1
    assert not g.check(1000.0, 300) and g.state == DEGRADED
    free.value = 48 * KIB + 32 * KIB
    assert not g.check(1005.0, 305), "looked at no more than once per check_every_s"
    with caplog.at_level(logging.INFO, "agent.disk"):
        assert g.check(1010.0, 310)
    assert g.state == NORMAL and g.held_bytes() == 64 * KIB
    assert g.status()["reason"] == "" and g.status()["since"] is None
    assert [r for r in caplog.records if "event=disk_ok mode=normal" in r.getMessage()]
    assert not g.check(2000.0, 400), "in the normal mode there is nothing to check"


def test_a_reserve_that_cannot_be_allocated_is_left_as_it_was(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The space went to someone else between the look and the allocation."""
    free = _Free(1 << 30)
    g = guard(tmp_path, free)
    g.start(100)
    g.full(200, "readings")

    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with caplog.at_level(logging.INFO, "agent.disk"):
        for i in range(3):
            assert not g.check(1000.0 + 10 * i, 300 + 10 * i)
    assert g.state == DEGRADED and g.held_bytes() == 16 * KIB
    failed = [r for r in caplog.records if "event=reserve_failed" in r.getMessage()]
    assert len(failed) == 1, "logged when the reason changes, not at every check"


def test_an_event_the_table_does_not_have_raises(tmp_path: Path) -> None:
    g = guard(tmp_path, _Free(0))
    with pytest.raises(KeyError):
        g._move("bogus")
