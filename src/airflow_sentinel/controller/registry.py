"""This controller's row in the metastore's node registry, and the node_id it guards: a
second live instance reporting under the same node_id is a conflict, and this one never
leads while it lasts."""

from __future__ import annotations

import logging
from collections.abc import Callable

from airflow_sentinel.config.settings import Settings
from airflow_sentinel.controller import events as ev
from airflow_sentinel.errors import MetastoreError
from airflow_sentinel.identity import Instance, describe_token
from airflow_sentinel.metastore.base import CONFLICT_PREFIX, Metastore, NodeReport

log = logging.getLogger("airflow_sentinel.controller")

Emit = Callable[[str, str, int], None]


class Registry:
    def __init__(
        self,
        store: Metastore,
        settings: Callable[[], Settings],
        host: str,
        instance: Instance,
        emit: Emit,
    ) -> None:
        self._store = store
        self._settings = settings
        self._host = host
        self._instance = instance
        self._emit = emit
        # The host of another live instance that reports under our node_id, if any.
        self.conflict: str | None = None

    def report(self, report: NodeReport, epoch: int | None, at_start: bool = False) -> bool:
        """Write this node's row; False when the store did not answer."""
        try:
            other = self._store.heartbeat(report, self._settings().lease_ttl, self._instance)
        except MetastoreError as exc:
            log.warning("heartbeat not recorded: %s", exc, extra={"epoch": epoch})
            return False
        self._note_conflict(other, epoch, at_start)
        return True

    def _note_conflict(self, other_host: str | None, epoch: int | None, at_start: bool) -> None:
        """Another live instance owns our node_id's row: we never lead until it is gone.
        Refused at start, this controller exits: only the event tells, no flag stays."""
        if other_host == self.conflict:
            return
        node_id = self._settings().node_id
        if other_host is not None:
            self._emit(
                ev.INSTANCE_CONFLICT,
                f"node_id '{node_id}' is in use by a live controller on {other_host}; this "
                f"one ({describe_token(self._instance.token)}) will not lead",
                logging.ERROR,
            )
            value: str | None = f"{self._host} ({describe_token(self._instance.token)})"
        else:
            self._emit(
                ev.INSTANCE_CONFLICT, "resolved: this instance owns its node_id again", logging.INFO
            )
            value = None
        self.conflict = other_host
        if at_start:
            return
        try:
            self._store.set_flag(f"{CONFLICT_PREFIX}{node_id}", value)
        except MetastoreError as exc:
            log.warning("cannot record the conflict: %s", exc, extra={"epoch": epoch})
