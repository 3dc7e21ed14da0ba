"""When a poll cycle is complete: the trigger that sends live readings in the table form
(``[mqtt] live_readings = "table"``, docs/mqtt-api.md "The table form").

The table form puts a poll cycle's readings of every meter of the gateway in one
message, so it waits until the cycle is done: every meter due in it has reported (a
reading, or a poll that failed) since the last message. The bus schedulers post no
"cycle done"; this decides it from what the runtime sees:
- a reading of a meter (``reading``);
- a failed poll (``failed``): the runtime sees it in the bus's per-meter counters
  (``MeterStats.consecutive_failures`` going up; ``watch`` turns the counter into
  this), since a failed poll posts no event until the meter is offline;
- a meter offline (``set_offline``): polled once per back-off period, so not waited
  for; it counts again with its next reading.

A meter is due in the current cycle if it has not reported since the runtime started,
or if its last report plus its bus's poll interval falls before the cycle's first
report plus the linger bound: a meter of a slow bus is not waited for by the cycles of
a fast one. When the guess is wrong (a bus thread stalls, a meter answers late), the
linger bound sends the message anyway: the outbox never waits longer than
``linger_s`` after the oldest live reading (``forming.form_messages``).

Bound: ``linger_s`` is ``max_linger_s`` (forming.TABLE_LINGER_S) or the shortest poll
interval of the gateway, whichever is less, so a reading is on its way within one
poll cycle whatever this guesses. Pure: no I/O, no clock (times are passed in).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping


class PollCycle:
    """The meters a poll cycle waits for, and which of them have reported."""

    def __init__(self, intervals: Mapping[str, float], max_linger_s: float) -> None:
        """``intervals``: meter id -> its bus's poll interval, s."""
        assert max_linger_s > 0, max_linger_s
        self.max_linger_s = max_linger_s
        self._intervals: dict[str, float] = {}
        self.linger_s = max_linger_s
        self._last: dict[str, float] = {}  # meter -> when it last reported
        self._failures: dict[str, int] = {}  # meter -> consecutive failures last seen
        self._offline: set[str] = set()
        self._reported: set[str] = set()  # since the last message
        self._opened: float | None = None  # the first report since the last message
        self.set_meters(intervals)

    def set_meters(self, intervals: Mapping[str, float]) -> None:
        """The gateway's meters changed (``meter_add`` / ``meter_remove``)."""
        self._intervals = dict(intervals)
        for interval in self._intervals.values():
            assert interval > 0, interval
        self.linger_s = min([self.max_linger_s, *self._intervals.values()])
        for meter in set(self._last) - set(self._intervals):
            del self._last[meter]

    def reading(self, meter: str, at_s: float) -> None:
        self._report(meter, at_s)

    def failed(self, meter: str, at_s: float) -> None:
        """A poll of ``meter`` gave no reading."""
        self._report(meter, at_s)

    def watch(self, meter: str, consecutive_failures: int, at_s: float) -> None:
        """The bus's count of ``meter``'s failed polls in a row, as it is now: a count
        that went up (or started again after a reading) is a failed poll."""
        seen = self._failures.get(meter, 0)
        if consecutive_failures != seen:
            self._failures[meter] = consecutive_failures
            if consecutive_failures > 0:
                self.failed(meter, at_s)

    def set_offline(self, meters: Iterable[str]) -> None:
        """The meters offline now (polled once per back-off: not waited for)."""
        self._offline = set(meters)

    def _report(self, meter: str, at_s: float) -> None:
        self._last[meter] = at_s
        self._reported.add(meter)
        if self._opened is None:
            self._opened = at_s

    def waiting_for(self) -> list[str]:
        """The meters due in this cycle that have not reported yet (sorted)."""
        return sorted(self._missing())

    def _missing(self) -> Iterator[str]:
        if self._opened is None:
            yield from (m for m in self._intervals if m not in self._offline)
            return
        horizon = self._opened + self.linger_s
        for meter, interval in self._intervals.items():
            if meter in self._reported or meter in self._offline:
                continue
            last = self._last.get(meter)
            if last is None or last + interval <= horizon:
                yield meter

    def complete(self) -> bool:
        """Something has reported since the last message, and nothing due is missing
        (asked after every batch of readings: stops at the first meter missing)."""
        return self._opened is not None and next(self._missing(), None) is None

    def sent(self) -> None:
        """A live message went: a new cycle starts with the next report."""
        self._reported.clear()
        self._opened = None
