"""Time, injected.

Every duration and deadline in this package is measured on ``Clock.now()``. On Linux that
is CLOCK_BOOTTIME: monotonic, shared by every process on the host (so the controller can
hand an absolute deadline to its guard process), and it keeps counting while the machine
is suspended, so a suspended node wakes up knowing its lease is gone.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic clock; only differences and deadlines are meaningful."""

    def wall(self) -> float:
        """Seconds since the Unix epoch, for display and for Airflow's own timestamps."""


def boottime() -> float:
    clock_id = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
    return time.clock_gettime(clock_id)


class SystemClock:
    def now(self) -> float:
        return boottime()

    def wall(self) -> float:
        return time.time()


class FakeClock:
    """A clock that moves only when told to, for tests of decision logic."""

    def __init__(self, start: float = 1000.0, wall_start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_start - start

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not run backwards")
        self._now += seconds
