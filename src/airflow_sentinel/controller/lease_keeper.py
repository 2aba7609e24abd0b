"""The scheduler lease as this controller holds it: taken, renewed within the demote
deadline, given up. The decisions about it are the policy's; this is their I/O."""

from __future__ import annotations

import logging
from collections.abc import Callable

from airflow_sentinel.clock import Clock
from airflow_sentinel.config.settings import Settings
from airflow_sentinel.controller.policy import LeaseStatus, Timing
from airflow_sentinel.errors import MetastoreError
from airflow_sentinel.identity import Instance
from airflow_sentinel.metastore.base import Lease, Metastore

log = logging.getLogger("airflow_sentinel.controller")

SERVICE = "scheduler"


class LeaseKeeper:
    def __init__(
        self, store: Metastore, settings: Callable[[], Settings], instance: Instance, clock: Clock
    ) -> None:
        self._store = store
        self._settings = settings
        self._instance = instance
        self._clock = clock
        self.lease: Lease | None = None
        # The store failed a call since the last renewal: see `renew_in_time`.
        self.store_failed = False
        self.acquire_failed = False  # the last try to take the lease got no answer
        # Hears how long each renewal took and whether it held (the metrics' histogram).
        self.on_renewal: Callable[[float | None, bool], None] | None = None

    @property
    def epoch(self) -> int | None:
        return self.lease.epoch if self.lease is not None else None

    def renew_in_time(self, timing: Timing) -> LeaseStatus:
        """Renew; once the store has failed any call since the last renewal, only if the
        call cannot outlast the demote deadline.

        A failing metastore call can block for its whole operation timeout
        (``renew_interval``); one started too late would push the graceful stop past the
        guard's fence. A store that hangs right after a renewal delays the next one by the
        calls that hung, so any failure counts, not only a failed renewal. While the store
        answers, every cycle renews.
        """
        assert self.lease is not None
        left = timing.demote_at(self.lease.valid_until) - self._clock.now()
        if self.store_failed and left < self._settings().renew_interval:
            self._observe(None, ok=False)
            return LeaseStatus.UNREACHABLE  # not renewed; at the deadline the policy demotes
        began = self._clock.now()
        status = self._renew()
        self._observe(self._clock.now() - began, ok=status is LeaseStatus.HELD)
        self.store_failed = status is LeaseStatus.UNREACHABLE
        return status

    def _observe(self, seconds: float | None, ok: bool) -> None:
        """Tell the listener (None: not tried); its failure never reaches the lease."""
        if self.on_renewal is None:
            return
        try:
            self.on_renewal(seconds, ok)
        except Exception:  # a metrics bug must not cost a renewal
            log.exception("the renewal listener failed")

    def _renew(self) -> LeaseStatus:
        assert self.lease is not None
        try:
            renewed = self._store.renew(self.lease, self._settings().lease_ttl)
        except MetastoreError as exc:
            left = self.lease.valid_until - self._clock.now()
            log.warning(
                "cannot renew (%.1fs of lease left): %s", left, exc, extra={"epoch": self.epoch}
            )
            return LeaseStatus.UNREACHABLE
        if renewed is None:
            return LeaseStatus.LOST
        self.lease = renewed
        return LeaseStatus.HELD

    def acquire(self, quiet: bool = False) -> Lease | None:
        """Take the lease if the store allows it now. A store error is logged (``quiet``:
        only at DEBUG, for the reads between cycles) and noted in ``acquire_failed``."""
        self.acquire_failed = False
        try:
            lease = self._store.try_acquire(SERVICE, self._instance, self._settings().lease_ttl)
        except MetastoreError as exc:
            self.acquire_failed = True
            level = logging.DEBUG if quiet else logging.WARNING
            log.log(level, "cannot check the lease: %s", exc, extra={"epoch": None})
            return None
        if lease is not None:
            # The store has just answered, as at a renewal: failures from before (while
            # a standby) must not refuse this lease's first renewal.
            self.lease = lease
            self.store_failed = False
        return lease

    def release(self) -> bool:
        """Give the lease up at once; False when the store did not answer (it expires)."""
        if self.lease is None:
            return False
        try:
            self._store.release(self.lease)
        except MetastoreError as exc:
            log.warning("cannot release the lease: %s", exc, extra={"epoch": self.epoch})
            return False
        return True

    def transfer(self, target: str) -> bool:
        """Hand the lease to ``target``; True when moved. MetastoreError propagates."""
        assert self.lease is not None
        return self._store.transfer(self.lease, target)

    def drop(self) -> None:
        """No longer ours: released, lost, expired or handed over."""
        self.lease = None
        self.store_failed = False


def describe_takeover(lease: Lease, node_id: str) -> str:
    """How the lease was taken, for the log: from whom, and after how long a silence."""
    if lease.taken_from is None:
        return f"holds the scheduler lease (it was free), epoch {lease.epoch}"
    if lease.silent_for is None:
        return f"holds the scheduler lease (taken back or handed over), epoch {lease.epoch}"
    holder = lease.taken_from if lease.taken_from != node_id else f"another {node_id}"
    # Taken after a silence, the epoch always steps by one (a handover's claim keeps it).
    return (
        f"took the scheduler lease from {holder} (its epoch {lease.epoch - 1}) after "
        f"{lease.silent_for:.1f}s of silence, epoch {lease.epoch}"
    )
