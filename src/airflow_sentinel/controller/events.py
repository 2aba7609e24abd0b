"""Event kinds, and the one place that writes them to the log and the metastore."""

from __future__ import annotations

import logging
from collections import deque

from airflow_sentinel.errors import MetastoreError
from airflow_sentinel.metastore.base import Event, Metastore

BECAME_ACTIVE = "became_active"
DEMOTED = "demoted"
STEPPED_DOWN = "stepped_down"
STOOD_DOWN = "stood_down"
SCHEDULER_REFUSED = "scheduler_refused"
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


# Events that could not be written wait here for the metastore, oldest dropped first.
BACKLOG = 200


class EventLog:
    """Logs every event with the node and the fencing token, and records it in the metastore.

    Events that happen while the metastore is unreachable (often the interesting ones) are
    kept in order and written when it answers again.
    """

    def __init__(self, store: Metastore, node_id: str, service: str, retention: int) -> None:
        self._store = store
        self._node_id = node_id
        self._service = service
        self._retention = retention
        self._pending: deque[Event] = deque(maxlen=BACKLOG)

    def emit(
        self, kind: str, detail: str = "", *, epoch: int | None, level: int = logging.INFO
    ) -> None:
        log.log(level, "%s %s", kind, detail, extra={"epoch": epoch})
        self._pending.append(Event(self._node_id, self._service, kind, detail, epoch))
        self.flush()

    def flush(self) -> None:
        """Write what is pending, in order; stop at the first failure and keep the rest."""
        while self._pending:
            try:
                self._store.record_event(self._pending[0], self._retention)
            except MetastoreError as exc:
                log.debug("%d event(s) wait for the metastore: %s", len(self._pending), exc)
                return
            self._pending.popleft()
