"""The cluster flags as this controller last read them: pause, an upgrade's hold, and a
switchover addressed to this lease holder. Operators and upgrades set them in the store;
the loop reads them once a cycle and the policy decides on what was read. The reading is
kept apart so that a store error leaves the last known values standing, in one place."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from airflow_sentinel.errors import MetastoreError
from airflow_sentinel.metastore.base import HOLD, PAUSED, Lease, Metastore, switchover_flag

log = logging.getLogger("airflow_sentinel.controller")

SERVICE = "scheduler"


def switchover_target(flags: Mapping[str, str], lease: Lease | None) -> str | None:
    """The node a switchover asks this lease holder to hand over to; None when there is no
    request, we hold no lease, or it was addressed to an earlier holder."""
    raw = flags.get(switchover_flag(SERVICE))
    if raw is None or lease is None:
        return None
    epoch, _, target = raw.partition(" ")
    if epoch != str(lease.epoch):
        return None  # addressed to an earlier holder; the CLI will time out and say so
    return target or None


class ClusterFlags:
    def __init__(self, store: Metastore) -> None:
        self._store = store
        self.paused = False
        self.held: str | None = None  # who holds the cluster, when an upgrade does
        self.switchover_to: str | None = None

    def read(self, lease: Lease | None) -> bool:
        """Refresh pause, hold and switchover; False (logged) when the store failed, and
        then the last known values stand."""
        epoch = lease.epoch if lease is not None else None
        try:
            flags = self._store.flags()
        except MetastoreError as exc:
            log.warning("cannot read cluster flags: %s", exc, extra={"epoch": epoch})
            return False
        paused = PAUSED in flags
        if paused != self.paused:
            log.info("cluster %s", "paused" if paused else "resumed", extra={"epoch": epoch})
        self.paused = paused
        held = flags.get(HOLD)
        if held != self.held:
            state = f"held: {held}" if held else "released from hold"
            log.info("cluster %s", state, extra={"epoch": epoch})
        self.held = held
        self.switchover_to = switchover_target(flags, lease)
        return True

    def clear_switchover(self, epoch: int | None) -> None:
        """The request is done with (handed over, or addressed to ourselves): remove it.
        A store error is logged; the request is forgotten here all the same."""
        try:
            self._store.set_flag(switchover_flag(SERVICE), None)
        except MetastoreError as exc:
            log.warning("cannot clear the switchover request: %s", exc, extra={"epoch": epoch})
        self.switchover_to = None
