"""Lease expiry judged on locally observed time, shared by every backend.

A standby may take a lease held by another node only after it has seen the lease in the
same state (holder, epoch, version) for the holder's TTL on its own monotonic clock. Every
renewal changes the version, so the wait restarts with each renewal the standby sees. No
host compares its time of day with another's: only clock rates matter.

``due`` says when the state being watched will have been seen for its TTL, so that the
standby can look again at that instant instead of at its next poll. Looking early is
harmless: ``expired`` alone decides.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(frozen=True)
class _Seen:
    state: Hashable
    since: float
    ttl: float


class ObservedExpiry:
    def __init__(self) -> None:
        self._seen: dict[str, _Seen] = {}

    def expired(self, service: str, state: Hashable, ttl: float, now: float) -> bool:
        """True once ``state`` has been seen unchanged for ``ttl``; a new state restarts."""
        seen = self._seen.get(service)
        if seen is None or seen.state != state:
            self._seen[service] = _Seen(state, now, ttl)
            return False
        if seen.ttl != ttl:
            self._seen[service] = _Seen(state, seen.since, ttl)
        return now - seen.since >= ttl

    def due(self, service: str) -> float | None:
        """When the state last judged will have been seen unchanged for its TTL."""
        seen = self._seen.get(service)
        return None if seen is None else seen.since + seen.ttl

    def seen_for(self, service: str, state: Hashable, now: float) -> float | None:
        """How long ``state`` has been seen unchanged so far; None when it is new to us."""
        seen = self._seen.get(service)
        return now - seen.since if seen is not None and seen.state == state else None

    def forget(self, service: str) -> None:
        self._seen.pop(service, None)
