"""Unix seconds to the gateway's local wall-clock seconds (tariff slots, protected hours,
billing days are all local)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo


class LocalTime:
    """Unix seconds to local wall-clock seconds in one zone; asked several times a
    reading, so each hour's offset is kept once known to hold for the whole hour (no
    transition in it). At most OFFSETS_KEPT hours, then they are read again."""

    OFFSETS_KEPT = 1024

    def __init__(self, tz: ZoneInfo) -> None:
        self.tz = tz
        self._offsets: dict[int, int] = {}  # unix hour -> UTC offset in s

    def local_s(self, unix_s: int) -> int:
        hour = unix_s // 3600
        offset_s = self._offsets.get(hour)
        if offset_s is None:
            offset_s = self._offset_s(unix_s)
            if self._offset_s(hour * 3600) == self._offset_s(hour * 3600 + 3599):
                if len(self._offsets) >= self.OFFSETS_KEPT:
                    self._offsets.clear()
                self._offsets[hour] = offset_s
        return unix_s + offset_s

    def _offset_s(self, unix_s: int) -> int:
        offset = datetime.fromtimestamp(unix_s, self.tz).utcoffset()
        return int(offset.total_seconds()) if offset else 0
