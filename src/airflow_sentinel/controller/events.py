"""Event kinds, and the one place that writes them to the log and the metastore."""

from __future__ import annotations

import logging

from airflow_sentinel.errors import MetastoreError
from airflow_sentinel.metastore.base import Event, Metastore

BECAME_ACTIVE = "became_active"
DEMOTED = "demoted"
STEPPED_DOWN = "stepped_down"
HANDED_OVER = "handed_over"
SCHEDULER_STARTED = "scheduler_started"
SCHEDULER_EXITED = "scheduler_exited"
SCHEDULER_RESTARTED = "scheduler_restarted"
SCHEDULER_FENCED = "scheduler_fenced"
STRAY_KILLED = "stray_killed"
STRAY_FOUND = "stray_found"
CONTROLLER_STARTED = "controller_started"
CONTROLLER_STOPPED = "controller_stopped"
ERROR = "error"

log = logging.getLogger("airflow_sentinel.controller")


class EventLog:
    """Logs every event with the node and the fencing token, and records it in the metastore."""

    def __init__(self, store: Metastore, node_id: str, service: str, retention: int) -> None:
        self._store = store
        self._node_id = node_id
        self._service = service
        self._retention = retention

    def emit(
        self, kind: str, detail: str = "", *, epoch: int | None, level: int = logging.INFO
    ) -> None:
        log.log(level, "%s %s", kind, detail, extra={"epoch": epoch})
        event = Event(self._node_id, self._service, kind, detail, epoch)
        try:
            self._store.record_event(event, self._retention)
        except MetastoreError as exc:
            log.warning("event not recorded: %s", exc, extra={"epoch": epoch})
