"""When a standby reads the lease between its cycles.

A standby takes over ``lease_ttl`` after it first saw the lease's last change (observed
expiry). Two things make that moment early and exact: it reads the lease every
``standby_poll`` (one small read), so it sees a change soon after it is made; and it reads
it again at the very instant the store says the wait ends (``takeover_due``), not at the
next poll. Neither touches the safety argument: only the store's expiry rule decides.
"""

from __future__ import annotations

import math

from airflow_sentinel.clock import Clock


class StandbyPoll:
    def __init__(self, clock: Clock, every: float) -> None:
        self._clock = clock
        self.every = every
        self._next = clock.now()
        self._last = -math.inf
        self.failed = False  # the last read failed: wait for the next cycle, which logs it

    def cycle_ran(self) -> None:
        """A full cycle read the lease: the next read between cycles is a poll away."""
        self._last = self._clock.now()
        self._next = self._last + self.every
        self.failed = False

    def polled(self, failed: bool) -> None:
        self.cycle_ran()
        self.failed = failed

    def due(self, takeover_due: float | None) -> float:
        """When to read next: the next poll, or the end of the wait if it comes first. An
        end already looked at (the read failed, or the lease changed) counts no more."""
        if self.failed:
            return math.inf
        if takeover_due is not None and takeover_due > self._last:
            return min(self._next, takeover_due)
        return self._next
