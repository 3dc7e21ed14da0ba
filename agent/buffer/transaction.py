"""The store's transactions: one writer, ``with store.tx():``, savepoints, and the way
out of each (COMMIT, ROLLBACK, a COMMIT that failed).

State that must agree (journal + balance + outbox row + seen command + relay intent)
is changed in ONE ``with store.tx():`` transaction; a nested ``tx()`` joins the outer
one. The outermost transaction has a unit of work (unit.py) that holds its writes in
memory until its commit: ``flush`` before the COMMIT and before a SAVEPOINT, the parts
a read needs before that read (``_flush_batch``, ``_flush_tally``), and ``forget`` on
every undo. An undo also moves ``undone``, the count by which a cache kept beyond one
transaction (the store's open runs, the journal's rows) knows it is stale.

A write that finds no room (at a statement or at the COMMIT) raises ``StoreFullError``
with the transaction undone; any other SQLite error of a transaction is
``StoreError``. ``Transactions`` is the base of ``Store`` (store.py): the file it
opens, and its transactions; the tables are the subclasses'.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Self

from agent.buffer.connection import DB_NAME, broken, connect
from agent.buffer.unit import UnitOfWork
from agent.errors import StoreError, StoreFullError


class _Tx:
    """``with store.tx():`` (Transactions.tx)."""

    __slots__ = ("store",)

    def __init__(self, store: Transactions) -> None:
        self.store = store

    def __enter__(self) -> sqlite3.Connection:
        store = self.store
        if store._depth:
            store._depth += 1  # joins the outer transaction
        else:
            store._begin()
        return store.conn

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        store = self.store
        if store._depth > 1:
            store._depth -= 1
            return
        store._end(exc if kind is not None else None)


class Transactions:
    """The store's file, open, and its transactions. Not thread-safe by design: only the
    runtime thread writes."""

    def __init__(self, data_dir: Path, *, readonly: bool = False) -> None:
        self.path = Path(data_dir) / DB_NAME
        self.readonly = readonly
        if not readonly:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise broken(self.path, f"cannot be created ({exc.strerror})") from exc
        elif not self.path.exists():
            raise StoreError(f"no store at {self.path} (has the agent run with this config?)")
        self.conn = connect(self.path, readonly)
        self._depth = 0
        # The writes the transaction holds in memory until its commit (unit.py): made by
        # tx() for the outermost transaction, None outside one.
        self.unit: UnitOfWork | None = None
        # Transactions (or savepoints) undone so far: a cache read from the database
        # before the last of them (the store's open runs, the journal's rows) is stale.
        self.undone = 0

    @classmethod
    def open_readonly(cls, data_dir: Path) -> Self:
        return cls(data_dir, readonly=True)

    def close(self) -> None:
        self.conn.close()

    @property
    def in_tx(self) -> bool:
        """Inside ``tx()`` (an outer transaction or one joined)."""
        return self._depth > 0

    def tx(self) -> _Tx:
        """One atomic transaction; nested use joins the outer one. A class, not a
        generator: it is entered a few times a reading."""
        return _Tx(self)

    def _begin(self) -> None:
        self._depth = 1
        self.unit = UnitOfWork(self.conn)
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._depth = 0
            self.unit = None
            raise StoreError(f"store transaction failed: {exc}") from exc
        except StoreFullError:
            self._depth = 0
            self.unit = None
            raise

    def _end(self, failed: BaseException | None) -> None:
        """Leave the outermost transaction: COMMIT, or ROLLBACK when ``failed``. A full
        disk (at a statement or at the COMMIT) is StoreFullError, with everything undone."""
        try:
            if failed is None:
                try:
                    self._flush()
                except BaseException as exc:
                    self._undo()
                    if isinstance(exc, sqlite3.Error):
                        raise StoreError(f"store transaction failed: {exc}") from exc
                    raise
                try:
                    self.conn.execute("COMMIT")
                except (sqlite3.Error, StoreFullError) as exc:
                    # A failed COMMIT (disk full, I/O error, busy): undo it all, so that
                    # what memory holds and what the database holds agree again.
                    self._undo()
                    if isinstance(exc, StoreFullError):
                        raise
                    raise StoreError(f"store transaction failed: {exc}") from exc
                return
            self._undo()
            if isinstance(failed, sqlite3.Error):
                raise StoreError(f"store transaction failed: {failed}") from failed
        finally:
            self._depth = 0
            self.unit = None

    def _undo(self) -> None:
        self._rolled_back()
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except (sqlite3.Error, StoreError):
                pass  # the error being raised is the one to report

    def _flush(self) -> None:
        """Everything the unit of work holds, written: before COMMIT and SAVEPOINT."""
        assert self.unit is not None
        self.unit.flush()

    def _flush_batch(self) -> None:
        """The transaction's events and entries into ``pending``: before a read of it."""
        if self.unit is not None:
            self.unit.flush_items()

    def _flush_tally(self) -> None:
        """The tally's changes of this transaction into its table: before every read of
        the tally (and before a commit or a savepoint, with the rest of the unit)."""
        if self.unit is not None:
            self.unit.flush_tally()

    def _rolled_back(self) -> None:
        """Writes were undone: the unit of work forgets its own, and every cache read
        from the database before now is stale (``undone``)."""
        if self.unit is not None:
            self.unit.forget()
        self.undone += 1

    @contextmanager
    def savepoint(self, name: str = "sp") -> Iterator[None]:
        """Inside ``tx()``: undo only this block's writes if it raises (the outer
        transaction goes on), e.g. a command refused half-way keeps its reply."""
        assert self._depth, "a savepoint lives inside a transaction"
        self._flush()  # a rollback to here must undo only what comes after it
        self.conn.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self._rolled_back()
            if self.conn.in_transaction:  # a failed statement may have ended it already
                self.conn.execute(f"ROLLBACK TO {name}")
                self.conn.execute(f"RELEASE {name}")
            raise
        self.conn.execute(f"RELEASE {name}")
