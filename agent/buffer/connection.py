"""The store's one SQLite file, opened: checked first, then connected and configured, and
the writer's connection that turns a full disk into ``StoreFullError``.

An existing file is read once, read-only (``check``: ``PRAGMA quick_check`` on an
immutable connection) before the writer opens it, so that a truncated or garbled file
is refused byte for byte as it was, for recovery (``RECOVERY``). The writer's
connection is WAL with ``synchronous=FULL`` (a committed transaction survives kill -9
and a power cut), with no implicit transactions (``isolation_level=None``:
transaction.py says BEGIN and COMMIT itself) and foreign keys on. The CLI and the
status page open the file read-only beside a running agent.

A write that finds no room (SQLITE_FULL, or an I/O error with less than
``FULL_FREE_BYTES`` free) raises ``StoreFullError``: ``raise_if_full`` is the one
place that says so, for every statement of the writer's connection and for the open.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from agent.errors import StoreError, StoreFullError

DB_NAME = "agent.sqlite3"
RECOVERY = "see docs/technician.md, 'Recovering a broken store'"
FULL_HELP = "see docs/technician.md, 'A full disk'"
# An I/O error (not SQLITE_FULL) counts as a full disk when less than this is free: SQLite
# says SQLITE_IOERR_SHMSIZE when the WAL index cannot grow on a full disk (tmpfs, ext4).
FULL_FREE_BYTES = 64 * 1024


def disk_free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def is_full(exc: sqlite3.Error, data_dir: Path) -> bool:
    """Whether ``exc`` means that there was no room to write."""
    name = getattr(exc, "sqlite_errorname", "")
    if name == "SQLITE_FULL":
        return True
    if name.startswith("SQLITE_IOERR"):
        try:
            return disk_free_bytes(data_dir) < FULL_FREE_BYTES
        except OSError:
            return False
    return False


def raise_if_full(exc: sqlite3.Error, data_dir: Path) -> None:
    """The one translation of a full disk: StoreFullError (from ``exc``) when ``exc``
    means that there was no room to write in ``data_dir``; the caller re-raises ``exc``
    otherwise."""
    if is_full(exc, data_dir):
        raise StoreFullError(f"store {data_dir / DB_NAME}: no room to write, the disk is "
                             f"full ({exc}): {FULL_HELP}") from exc


class _Connection(sqlite3.Connection):
    """The writer's connection: a statement that finds no room raises StoreFullError, so that
    no layer above (a contained command, a reading's charge) takes a full disk for a bug
    of its own, and the runtime can make room and run the same work again."""

    data_dir = Path(".")  # set by _configure

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        try:
            return super().execute(sql, parameters)
        except sqlite3.OperationalError as exc:
            raise_if_full(exc, self.data_dir)
            raise

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
        try:
            return super().executemany(sql, parameters)
        except sqlite3.OperationalError as exc:
            raise_if_full(exc, self.data_dir)
            raise


def broken(path: Path, fault: str) -> StoreError:
    """The error of a store file that cannot be used as it is (with the way to recover)."""
    return StoreError(f"store {path} {fault}: {RECOVERY}")


def check(path: Path) -> None:
    """An existing file is read (read-only, nothing written) before the writer opens it:
    a truncated or garbled file must stay byte for byte as it was, for recovery."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise broken(path, f"cannot be read ({exc.strerror})") from exc
    if size == 0:  # SQLite would take an empty file for a new database and write it
        raise broken(path, "is empty (truncated)")
    if not os.access(path, os.R_OK):
        raise broken(path, "cannot be read (permission denied)")
    try:
        # immutable: no lock, and no -wal/-shm files created beside a broken file
        conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, timeout=5.0)
        try:
            result = conn.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise broken(path, f"is not a readable database ({exc})") from exc
    if result != "ok":
        raise broken(path, f"is damaged (quick_check: {result})")


def connect(path: Path, readonly: bool) -> sqlite3.Connection:
    """The file at ``path`` (checked first when it exists), opened for the writer or
    read-only."""
    if path.exists():
        check(path)
    if not readonly and (not os.access(path.parent, os.W_OK)
                         or not path.parent.stat().st_mode & 0o222):  # root ignores modes
        raise broken(path, f"cannot be written (directory {path.parent} is read-only)")
    try:
        return _configure(path, readonly)
    except sqlite3.Error as exc:
        if not readonly:
            raise_if_full(exc, path.parent)
        raise broken(path, f"cannot be opened ({exc})") from exc


def _configure(path: Path, readonly: bool) -> sqlite3.Connection:
    try:
        if readonly:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0,
                                   check_same_thread=False)
        else:
            conn = sqlite3.connect(path, timeout=5.0, isolation_level=None,
                                   factory=_Connection)
            conn.data_dir = path.parent
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {path}: {exc}") from exc
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        if not readonly:
            # WAL + FULL: every commit is fsynced; see the module docstring.
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"{path}: cannot enable WAL (got {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
    except (sqlite3.Error, StoreError):
        conn.close()
        raise
    return conn
