"""Deduplication and a rate limit, so that a flapping cluster is one alert, not a storm.

An alert like one sent less than ``min_interval`` seconds ago (same kind, same node, same
topic) is left out and counted; the next one sent for that key says how many were. Beyond
MAX_PER_HOUR alerts in an hour from this node, the rest are left out too (logged)."""

from __future__ import annotations

from collections import deque

from airflow_sentinel.alerts.model import TEST, Alert

HOUR = 3600.0
MAX_PER_HOUR = 30


class Limiter:
    def __init__(self, min_interval: float, max_per_hour: int = MAX_PER_HOUR) -> None:
        self.min_interval = min_interval
        self.max_per_hour = max_per_hour
        self._last_sent: dict[str, float] = {}
        self._left_out: dict[str, int] = {}
        self._sent: deque[float] = deque()
        self.dropped = 0  # left out by the hourly limit

    def admit(self, alert: Alert, now: float) -> Alert | None:
        """The alert to send (with its count of alike ones left out), or None."""
        if alert.kind == TEST:
            return alert
        key = alert.key
        last = self._last_sent.get(key)
        if last is not None and now - last < self.min_interval:
            self._left_out[key] = self._left_out.get(key, 0) + 1
            return None
        while self._sent and now - self._sent[0] >= HOUR:
            self._sent.popleft()
        if len(self._sent) >= self.max_per_hour:
            self.dropped += 1
            return None
        self._sent.append(now)
        self._last_sent[key] = now
        return alert.with_suppressed(self._left_out.pop(key, 0))
