"""The one backoff formula: exponential from `base`, capped, optionally jittered, never shorter
than what the remote asked for. Used by in-task upload retries, automatic retry rounds and
notification attempts."""

from __future__ import annotations

import random


def delay(attempt: int, base: float, cap: float, *, jitter: bool = True, at_least: float | None = None) -> float:
    """Seconds to wait before attempt `attempt + 1` (attempt counts from 1)."""
    seconds = min(cap, base * 2 ** max(0, attempt - 1))
    if jitter:
        seconds *= random.uniform(0.5, 1.0)  # spread retries of many workers over time
    return max(seconds, at_least or 0.0)
