"""Event kinds, and the one place that logs them and queues them for the metastore."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

from airflow_sentinel.clock import Clock, SystemClock
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
DB_FENCE_RAISED = "db_fence_raised"
DB_FENCE_WAITING = "db_fence_waiting"
STRAY_KILLED = "stray_killed"
STRAY_FOUND = "stray_found"
SCHEDULER_FOREIGN = "scheduler_foreign"
CONTROLLER_STARTED = "controller_started"
CONTROLLER_STOPPED = "controller_stopped"
INSTANCE_CONFLICT = "instance_conflict"
RELOADED = "reloaded"
ERROR = "error"

log = logging.getLogger("airflow_sentinel.controller")


# Events not yet written wait here for the metastore, oldest dropped first.
BACKLOG = 200


class EventLog:
    """Logs every event with the node and the fencing token, and queues it for the metastore.

    Nothing is written on the hot path: ``emit`` only logs and queues, so a store that is
    down or hangs never holds up a stop, a start or a demotion. The controller flushes at
    the end of a cycle in which the store answered, and at shutdown. Events that happen
    while the metastore is unreachable (often the interesting ones) are kept in order and
    written when it answers again.
    """

    def __init__(
        self,
        store: Metastore,
        node_id: str,
        service: str,
        retention: int,
        clock: Clock | None = None,
    ) -> None:
        self._store = store
        self._node_id = node_id
        self._service = service
        self.retention = retention
        self._clock = clock or SystemClock()
        self._pending: deque[Event] = deque(maxlen=BACKLOG)
        self.on_event: Callable[[Event], None] | None = None  # hears each one as it happens

    @property
    def pending(self) -> int:
        return len(self._pending)

    def emit(
        self, kind: str, detail: str = "", *, epoch: int | None, level: int = logging.INFO
    ) -> None:
        extra = {"epoch": epoch, "event": kind, "detail": detail}  # own keys in JSON lines
        log.log(level, "%s %s", kind, detail, extra=extra)
        event = Event(self._node_id, self._service, kind, detail, epoch)
        self._pending.append(event)
        if self.on_event is not None:
            self.on_event(event)

    def flush(self, budget: float | None = None) -> bool:
        """Write what is pending, in order; stop at the first failure and keep the rest.

        No write starts once ``budget`` seconds have passed, so that a long backlog on a
        slow store does not delay the next renewal (each write is bounded by the store's
        operation timeout). True when nothing is left.
        """
        give_up_at = None if budget is None else self._clock.now() + budget
        while self._pending:
            if give_up_at is not None and self._clock.now() >= give_up_at:
                return False
            try:
                self._store.record_event(self._pending[0], self.retention)
            except MetastoreError as exc:
                log.debug("%d event(s) wait for the metastore: %s", len(self._pending), exc)
                return False
            self._pending.popleft()
        return True
