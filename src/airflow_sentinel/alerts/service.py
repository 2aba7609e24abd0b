"""The alerts of a running controller, fed by what its loop publishes.

Who sends what, so that each alert goes out once per cluster:

* what one node saw (its takeover after a failover, its fence, its step-down, its
  scheduler restarts, a stray on its host, its node_id conflict, its schema refusal) is
  sent by that node: no other node saw it;
* what is true of the whole cluster (no scheduler anywhere, a hold that lasts, and their
  end) is watched by every node on a metastore connection of its own and sent by one: the
  active node, or when none is active the live node with the lowest node_id.

The loop's thread only enqueues (a bounded queue; what does not fit is counted and
dropped). This service's thread decides; each channel has a thread of its own that sends,
with retries and backoff, so that a dead or hanging server delays only its own channel.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from airflow_sentinel.alerts.channels import Source, configured, sources
from airflow_sentinel.alerts.cluster import ClusterFacts, ClusterWatch, ReachWatch
from airflow_sentinel.alerts.delivery import DEFAULT_BACKOFF, Backoff, ChannelWorker, Delivery
from airflow_sentinel.alerts.limiter import Limiter
from airflow_sentinel.alerts.model import Alert
from airflow_sentinel.alerts.rules import EventRules
from airflow_sentinel.clock import Clock
from airflow_sentinel.config.settings import Settings
from airflow_sentinel.errors import MetastoreError, SentinelError
from airflow_sentinel.metastore import Metastore, open_metastore
from airflow_sentinel.metastore.base import Event
from airflow_sentinel.status import read_cluster

if TYPE_CHECKING:
    from airflow_sentinel.controller.loop import Controller

log = logging.getLogger("airflow_sentinel.alerts")

SERVICE = "scheduler"
INBOX = 1000  # events waiting for this service's thread
STOP_GRACE = 5.0  # seconds the channels get at shutdown to send what is due
REBUILD_EVERY = 60.0  # seconds between tries of a channel source that failed (a `_cmd`)
REOPEN_EVERY = 5.0  # seconds between tries to open the metastore connection


class AlertDesk:
    """The decisions, without threads or I/O: what to send for an event of this node and
    for a read of the cluster, deduplicated and rate-limited."""

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.node_id = settings.node_id
        self.clock = clock
        self.rules = EventRules(settings.node_id, settings.alert_restarts_per_hour)
        self.watch = ClusterWatch(settings.alert_no_scheduler_after, settings.alert_hold_after)
        self.reach = ReachWatch(settings.node_id, settings.alert_no_scheduler_after)
        self.limiter = Limiter(settings.alert_min_interval)

    def on_event(self, event: Event) -> list[Alert]:
        alert = self.rules.on_event(event, self.clock.now(), self.clock.wall())
        return self._admit([alert] if alert is not None else [])

    def on_cluster(self, facts: ClusterFacts) -> list[Alert]:
        """Every node watches (so that whoever becomes the sender knows how long a
        condition has lasted); only the sender sends."""
        alerts = self.watch.observe(facts, self.clock.now(), self.clock.wall())
        return self._admit(alerts) if facts.sender == self.node_id else []

    def on_reach(self, reachable: bool, why: str = "") -> list[Alert]:
        """Whether this node could read the cluster: its own alert, sent by itself."""
        alerts = self.reach.observe(reachable, why, self.clock.now(), self.clock.wall())
        return self._admit(alerts)

    def _admit(self, alerts: list[Alert]) -> list[Alert]:
        admitted = []
        for alert in alerts:
            sent = self.limiter.admit(alert, self.clock.now())
            if sent is None:
                log.info(
                    "alert left out (alike one sent lately, or hourly limit): %s", alert.summary
                )
            else:
                admitted.append(sent)
        return admitted


class ClusterReader:
    """This service's own metastore connection (never the loop's), opened when first
    needed and again after a failure to open, at most every REOPEN_EVERY seconds."""

    def __init__(self, open_store: Callable[[], Metastore], clock: Clock, lease_ttl: float) -> None:
        self._open = open_store
        self._clock = clock
        self._lease_ttl = lease_ttl
        self._store: Metastore | None = None
        self._next_try = 0.0
        self._failing = False
        self.last_error = ""  # why the last read failed

    def read(self) -> ClusterFacts | None:
        """The cluster now, or None while the metastore cannot be read (said once)."""
        try:
            store = self._get()
            facts = ClusterFacts.of(read_cluster(store, SERVICE, self._lease_ttl))
        except SentinelError as exc:
            if not self._failing:
                log.warning("alerts: cannot read the cluster (%s); its alerts wait", exc)
            self._failing = True
            self.last_error = str(exc)
            return None
        if self._failing:
            log.info("alerts: the cluster can be read again")
        self._failing = False
        return facts

    def _get(self) -> Metastore:
        if self._store is not None:
            return self._store
        if self._clock.now() < self._next_try:
            raise MetastoreError(self.last_error or "not connected")
        self._next_try = self._clock.now() + REOPEN_EVERY
        self._store = self._open()
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


class AlertService:
    def __init__(
        self,
        desk: AlertDesk,
        reader: ClusterReader,
        channel_sources: list[Source],
        clock: Clock,
        poll_every: float,
        backoff: Backoff = DEFAULT_BACKOFF,
    ) -> None:
        self.desk = desk
        self.reader = reader
        self.clock = clock
        self.poll_every = poll_every
        self.backoff = backoff
        self._unbuilt = list(channel_sources)
        self._next_build = 0.0
        self.workers: list[ChannelWorker] = []
        self._inbox: queue.Queue[Event | None] = queue.Queue(INBOX)
        self.dropped = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="alerts", daemon=True)

    # -- on the loop's thread: enqueue only --------------------------------------------
    def on_event(self, event: Event) -> None:
        try:
            self._inbox.put_nowait(event)
        except queue.Full:
            self.dropped += 1  # counted, and said by this service's thread

    # -- life -----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Decide on what is queued, give the channels ``grace`` seconds, close."""
        give_up = self.clock.now() + grace
        self._stopping = True
        with contextlib.suppress(queue.Full):  # full: it wakes at its next poll anyway
            self._inbox.put_nowait(None)  # wakes the thread: it empties the inbox and returns
        self._thread.join(grace)
        for worker in self.workers:
            worker.stop(max(0.0, give_up - self.clock.now()))
        self.reader.close()

    # -- this service's thread ------------------------------------------------------------
    def _run(self) -> None:
        self._guarded(self._build_channels)
        next_poll = self.clock.now()
        while True:
            timeout = max(0.0, next_poll - self.clock.now())
            try:
                event = self._inbox.get(timeout=timeout)
            except queue.Empty:
                event = None
            if event is not None:
                self._guarded(functools.partial(self._decide, event))
            if self._stopping:
                self._guarded(self._drain)
                return
            if self.clock.now() >= next_poll:
                next_poll = self.clock.now() + self.poll_every
                self._guarded(self._poll)

    @staticmethod
    def _guarded(step: Callable[[], None]) -> None:
        """One step of this thread; a bug in it is logged and the next step runs: alerts
        that stop for good because of one bad event would be worse than one lost alert."""
        try:
            step()
        except Exception:
            log.exception("alerts: a step failed; the alerts go on")

    def _decide(self, event: Event) -> None:
        self._dispatch(self.desk.on_event(event))

    def _drain(self) -> None:
        while True:
            try:
                event = self._inbox.get_nowait()
            except queue.Empty:
                return
            if event is not None:
                self._dispatch(self.desk.on_event(event))

    def _poll(self) -> None:
        if self._unbuilt and self.clock.now() >= self._next_build:
            self._build_channels()
        if self.dropped:
            log.warning(
                "alerts: %d event(s) did not fit in the queue and were dropped", self.dropped
            )
            self.dropped = 0
        facts = self.reader.read()
        self._dispatch(self.desk.on_reach(facts is not None, self.reader.last_error))
        if facts is not None:
            self._dispatch(self.desk.on_cluster(facts))

    def _build_channels(self) -> None:
        self._next_build = self.clock.now() + REBUILD_EVERY
        for source in list(self._unbuilt):
            try:
                channels = source.build()
            except SentinelError as exc:
                log.error(  # noqa: TRY400 - a configuration problem: one line
                    "alerts: %s cannot be used (%s); tried again in %gs",
                    source.name,
                    exc,
                    REBUILD_EVERY,
                )
                continue
            self._unbuilt.remove(source)
            for channel in channels:
                delivery = Delivery(channel, self.desk.node_id, self.clock.now, self.backoff)
                worker = ChannelWorker(delivery)
                worker.start()
                self.workers.append(worker)
                log.info("alerts: sending through %s", channel.name)

    def _dispatch(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            log.warning("alert: %s", alert.summary)
            for worker in self.workers:
                worker.delivery.offer(alert)


def start_alerts(
    settings: Settings, controller: Controller, clock: Clock
) -> Callable[[], None] | None:
    """Start sending this controller's alerts; returns what stops it, None when none are
    configured."""
    if not configured(settings):
        return None
    reader = ClusterReader(
        lambda: open_metastore(
            settings.metastore, clock, settings.renew_interval, settings.lease_ttl
        ),
        clock,
        settings.lease_ttl,
    )
    service = AlertService(
        AlertDesk(settings, clock), reader, sources(settings), clock, settings.renew_interval
    )
    controller.published.subscribe(service.on_event)
    service.start()
    return service.stop
