"""meter-agent: the edge agent of a prepaid smart-meter data concentrator."""

from __future__ import annotations

__version__ = "0.1.0"
