"""Durable DLMS invocation counters: ours never reused, the meter's never accepted twice.

AES-GCM is broken by one reuse of an IV under a key, and a DLMS IV is our system
title || our invocation counter (IC): so the client's counter for a key must never
repeat, across restarts, kill -9 and power loss. And a response whose counter is not
above the last one seen from that meter is a replay, across restarts too.

One file per meter, ``<directory>/<meter id>.ic.json``, mode 0600, owned by the
bus thread (the only thread that talks to that meter; not the SQLite store, whose
single writer is the runtime thread):

    {"version": 1,
     "client": {"<key id>": R},            values below R may have been used
     "server": {"<key id>:<title hex>": N}} the highest counter seen from the meter

``<key id>`` is a one-way fingerprint of the encryption key (``security.key_id``):
a new key starts its own counter, and the key itself is never written.

Client counters are reserved in blocks of ``IC_BLOCK``: before the first value at
or above the recorded reservation R is handed out, R' = value + IC_BLOCK is
written (temp file, fsync, rename over the old file, fsync of the directory) and
only then is the value used. At start the counter resumes at R: the values
between the last one used and R are skipped, never reused.

Why that survives power loss: a value v >= R is only handed out once the rename
that records R' > v is durable (the directory fsync returned). After a crash the
file is the old one or the new one, never half of either (rename is atomic; the
temp file was fsync'd before it). If it is the old one, no value >= R was sent;
if the new one, none >= R'. Either way the next run starts above every value
sent. kill -9 is the easy case of the same argument (the page cache survives).
Cost: one write per IC_BLOCK protected APDUs (a meter polled every 15 s uses 4-6
a poll: one write every hour or so); at most IC_BLOCK values are skipped a restart,
so 2^32 lasts over four million restarts.

The meter's counter is written after each association's HLS pass 4
(``persist``) and whenever a reservation is written. A crash may lose the last
few values seen, but never lets a replay through: every association starts with
a fresh HLS exchange whose pass 4 is bound to our random challenge (its counter
is inside the GMAC's IV), so any response recorded before the crash carries a
lower counter than that pass 4 and is refused in memory from then on.

Bounds: ``IC_MAX`` (2^32-1) is never used: at it ``next_client`` raises
DlmsSecurityError why "counter_exhausted" (a new key is needed). A file over
MAX_FILE_BYTES, unparseable, or with values out of range raises the same: which
values were used cannot be proven, so nothing is sent until a person restores
the file or installs a new key. At most MAX_KEYS keys per meter and kind (a
new one beyond is refused the same way: retired keys are kept, never dropped,
since a dropped key's counter would restart at 1). A directory of None keeps the
counters in memory only: for tests; a restart then reuses counters.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Final

from agent.drivers.dlms.ciphered import IC_MAX
from agent.drivers.dlms.errors import DlmsSecurityError

IC_BLOCK: Final = 1000
FILE_VERSION: Final = 1
MAX_FILE_BYTES: Final = 64 * 1024
MAX_KEYS: Final = 32
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class InvocationCounters:
    """One meter's counters (see the module doc); ``directory`` None: memory only."""

    def __init__(self, directory: Path | None, name: str, *, block: int = IC_BLOCK) -> None:
        if not _NAME_RE.match(name):
            raise ValueError(f"counter file name {name!r} must match {_NAME_RE.pattern}")
        if not 1 <= block <= IC_MAX:
            raise ValueError("block must be 1..2^32-1")
        self.path = None if directory is None else directory / f"{name}.ic.json"
        self.block = block
        self._loaded = False
        self._reserved: dict[str, int] = {}  # on disk: values below it may have been used
        self._next: dict[str, int] = {}  # in memory: the next value to hand out
        self._server: dict[str, int] = {}
        self._server_written: dict[str, int] = {}
        self.writes = 0  # files written (tests, diagnostics)

    @property
    def durable(self) -> bool:
        return self.path is not None

    # -- the client's counter ----------------------------------------------------------
    def next_client(self, key_id: str) -> int:
        """The next unused counter for the key ``key_id``, reserved durably first."""
        self._load()
        value = self._next.get(key_id, max(1, self._reserved.get(key_id, 0)))
        if value >= IC_MAX:
            raise DlmsSecurityError(
                f"invocation counter of key {key_id} reached 2^32-1 in {self._where}: "
                "a new key is needed", "counter_exhausted")
        if key_id not in self._reserved and len(self._reserved) >= MAX_KEYS:
            raise DlmsSecurityError(f"{self._where} already holds {MAX_KEYS} keys' counters",
                                    "counter_exhausted")
        if value >= self._reserved.get(key_id, 0):
            reserved = dict(self._reserved)
            reserved[key_id] = min(value + self.block, IC_MAX)
            self._write(reserved, self._server)
            self._reserved = reserved
        self._next[key_id] = value + 1
        return value

    # -- the meter's counter -----------------------------------------------------------
    def last_server(self, key_id: str, title: bytes) -> int:
        """The highest counter seen from the meter with ``title`` under the key (-1: none)."""
        self._load()
        return self._server.get(_server_key(key_id, title), -1)

    def see_server(self, key_id: str, title: bytes, ic: int) -> None:
        """Record ``ic`` as seen (kept if higher than what is recorded)."""
        self._load()
        if not 0 <= ic <= IC_MAX:
            raise ValueError("invocation counter out of 0..2^32-1")
        key = _server_key(key_id, title)
        if key not in self._server and len(self._server) >= MAX_KEYS:
            raise DlmsSecurityError(f"{self._where} already holds {MAX_KEYS} meter counters",
                                    "counter_exhausted")
        self._server[key] = max(ic, self._server.get(key, -1))

    def persist(self) -> None:
        """Write the meter's counters if they moved since the last write."""
        self._load()
        if self._server != self._server_written:
            self._write(self._reserved, self._server)

    # -- the file ----------------------------------------------------------------------
    @property
    def _where(self) -> str:
        return str(self.path) if self.path is not None else "the in-memory counters"

    def _refuse(self, problem: str) -> DlmsSecurityError:
        return DlmsSecurityError(
            f"counter file {self.path}: {problem}; which invocation counters were used cannot "
            "be proven, so nothing is sent (restore the file, or install a new key)",
            "counter_exhausted")

    def _load(self) -> None:
        if self._loaded:
            return
        if self.path is not None:
            try:
                with self.path.open("rb") as f:
                    raw = f.read(MAX_FILE_BYTES + 1)
            except FileNotFoundError:
                raw = None
            except OSError as exc:
                raise self._refuse(f"cannot read it ({exc.strerror})") from exc
            if raw is not None:
                self._reserved, self._server = self._parse(raw)
        self._server_written = dict(self._server)
        self._loaded = True

    def _parse(self, raw: bytes) -> tuple[dict[str, int], dict[str, int]]:
        if len(raw) > MAX_FILE_BYTES:
            raise self._refuse(f"over {MAX_FILE_BYTES} bytes")
        try:
            doc: Any = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            raise self._refuse("not JSON") from None
        if not isinstance(doc, dict) or doc.get("version") != FILE_VERSION:
            raise self._refuse(f"not a version {FILE_VERSION} counter file")
        out = []
        for part, low in (("client", 0), ("server", -1)):
            table = doc.get(part)
            if not isinstance(table, dict) or len(table) > MAX_KEYS or not all(
                isinstance(k, str) and type(v) is int and low <= v <= IC_MAX
                for k, v in table.items()
            ):
                raise self._refuse(f"its {part!r} table is not {{key id: 0..2^32-1}}")
            out.append(dict(table))
        return out[0], out[1]

    def _write(self, reserved: dict[str, int], server: dict[str, int]) -> None:
        if self.path is not None:
            doc = {"version": FILE_VERSION, "client": reserved, "server": server}
            data = json.dumps(doc, sort_keys=True).encode()
            tmp = self.path.with_name(self.path.name + ".tmp")
            try:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, self.path)
                dir_fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)  # the rename itself must be on disk
                finally:
                    os.close(dir_fd)
            except OSError as exc:
                raise DlmsSecurityError(
                    f"counter file {self.path}: cannot record a reservation ({exc.strerror}); "
                    "no invocation counter is used until it can be", "counter_exhausted",
                ) from exc
            self.writes += 1
        self._server_written = dict(server)


def _server_key(key_id: str, title: bytes) -> str:
    return f"{key_id}:{title.hex()}"
