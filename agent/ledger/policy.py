"""Disconnection policy settings (CONTRACT 2 [policy], DOMAIN "When the relay may open").

Pure: imports only what MicroPython also has.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Policy:
    # (from_min, to_min) local minutes after midnight; to may be < from (wraps); () none
    protected_hours: tuple[tuple[int, int], ...] = ((18 * 60, 8 * 60),)
    protected_weekdays: tuple[int, ...] = (6,)  # 0 = Monday .. 6 = Sunday
    holidays: tuple[str, ...] = ()  # "YYYY-MM-DD", local dates
    emergency_credit: int = 30000  # paise
    alert_levels_pct: tuple[int, ...] = (30, 10, 0)
    payment_outage_h: int = 6
    min_notice_h: int = 24
    max_disconnects_per_hour: int = 60
    disconnect_on_tamper: bool = False
