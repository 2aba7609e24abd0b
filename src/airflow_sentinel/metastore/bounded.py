"""Every metastore call returns within its operation timeout, whatever the store does.

``BoundedMetastore`` wraps a backend and runs each call on a daemon thread of its own
(see :mod:`airflow_sentinel.deadline`). The caller waits at most ``timeout`` seconds on its
own monotonic clock, and then gets ``MetastoreError("metastore X: no answer within Ns")``.
That holds when a server or a proxy stops answering without closing the connection, where
no client library gives up by itself: libpq has no read timeout, a stopped server's kernel
still answers keepalives, and PyMySQL's read timeout counts one round trip of several.

A call that was given up on cannot be cancelled. If it is still running when the next call
comes, the backend it runs on is discarded (closed in the background, best effort) and a
fresh one is opened for the next call, within that call's deadline too. One that ends
before then leaves its backend in use. The wrapper is for one caller at a time, like the
controller's loop.

What an abandoned call can still do when it completes later, and why that is safe:

* **An acquire** that lands after we gave up leaves the lease recorded for this instance
  while the controller believes it is a standby, with no scheduler. Other nodes see a new
  state and wait a full TTL from then; this controller takes the lease back at its next
  attempt (it is its own), with a new epoch. Only time is lost.
* **A renewal** that lands late moves the lease's version once more. Standbys restart their
  wait, so they wait longer. The controller did not move its fence for it (the fence moves
  only after a renewal returned), so its scheduler still dies by the old deadline. A late
  renewal of an epoch that has since changed matches nothing.
* **A release** that lands late frees a lease whose scheduler was stopped before the
  release was sent, which is what a release is for. If this controller has taken the lease
  again meanwhile, the epoch moved and the late release matches nothing.
* **A transfer** that lands late would hand the lease over, and the target claims a
  handover at once, after the controller had decided that the switchover failed and might
  run its scheduler again under the same epoch. So a lease that a transfer or a release
  did not answer for is treated as gone: ``renew`` returns None for it from then on (the
  controller demotes; its scheduler is already stopped), and the controller can only lead
  again with a new epoch, which the late transfer no longer matches.
* **A heartbeat, an event or a flag** that lands late is an old report written once more
  (until the next heartbeat), an event recorded twice (the controller keeps an event until
  a write of it returned), or a flag set that the caller was told may not be.

Backend state that a fresh backend starts without only makes others wait longer: a SQL
backend's observed expiry restarts, so a standby waits a full TTL again. A fresh ZooKeeper
backend is a new session, and a lease is bound to the session that took it: the lease is
lost, and the controller demotes. ZooKeeper's calls therefore give up by themselves a
little before the deadline (``zookeeper.py``), so that a slow ensemble fails the call
without the session being discarded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from airflow_sentinel.deadline import Call, DeadlinePassed, call_with_deadline, when_done
from airflow_sentinel.errors import MetastoreError, SentinelError
from airflow_sentinel.identity import Instance
from airflow_sentinel.metastore.base import (
    Event,
    EventRecord,
    Lease,
    LeaseRecord,
    Metastore,
    NodeRecord,
    NodeReport,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
Connect = Callable[[], Metastore]


def open_bounded(connect: Connect, timeout: float, description: str) -> BoundedMetastore:
    """Open the first backend within ``timeout``; its own errors pass through unchanged.

    A backend that finishes opening after the deadline is closed in the background.
    """
    opening: Call[Metastore] = Call(connect, "metastore-open")
    if not opening.wait(timeout):
        when_done(opening, Metastore.close)
        raise MetastoreError(f"metastore {description}: no answer within {timeout:g}s")
    return BoundedMetastore(opening.result(), connect, timeout)


class BoundedMetastore(Metastore):
    """A backend whose every call ends, with an answer or an error, within ``timeout``."""

    def __init__(self, first: Metastore, connect: Connect, timeout: float) -> None:
        self._store: Metastore | None = first
        self._connect = connect
        self._timeout = timeout
        self._description = first.description
        self._stuck: Call[object] | None = None  # a call given up on, on self._store
        self._opening: Call[Metastore] | None = None  # a fresh backend, still connecting
        self._maybe_handed_off: set[tuple[str, int, str]] = set()  # see the module

    @property
    def description(self) -> str:
        return self._description

    # -- plumbing ------------------------------------------------------------------------
    def _call(self, what: str, call: Callable[[Metastore], T]) -> T:
        deadline = time.monotonic() + self._timeout
        store = self._backend(deadline)
        left = deadline - time.monotonic()
        if left <= 0:
            raise self._no_answer()  # opening a fresh backend took all the time
        try:
            return call_with_deadline(lambda: call(store), left, f"metastore-{what}")
        except DeadlinePassed as late:
            self._stuck = late.call
            raise self._no_answer() from None

    def _no_answer(self) -> MetastoreError:
        return MetastoreError(f"metastore {self._description}: no answer within {self._timeout:g}s")

    def _backend(self, deadline: float) -> Metastore:
        self._discard_if_stuck()
        if self._store is None:
            self._store = self._open_by(deadline)
        return self._store

    def _discard_if_stuck(self) -> None:
        stuck, self._stuck = self._stuck, None
        if stuck is None or stuck.done() or self._store is None:
            return
        log.warning("metastore %s: a call still hangs; opening a new connection", self._description)
        Call(self._store.close, "metastore-discard")  # best effort; it may hang as well
        self._store = None

    def _open_by(self, deadline: float) -> Metastore:
        """A fresh backend; one that opened too slowly for an earlier call is taken now."""
        if self._opening is None or self._opening.failed():
            self._opening = Call(self._reconnect, "metastore-open")
        opening = self._opening
        if not opening.wait(deadline - time.monotonic()):
            raise self._no_answer()
        self._opening = None
        return opening.result()

    def _reconnect(self) -> Metastore:
        try:
            return self._connect()
        except MetastoreError:
            raise
        except (SentinelError, OSError) as exc:  # the running controller carries on
            raise MetastoreError(f"metastore {self._description}: {exc}") from None

    def _key(self, lease: Lease) -> tuple[str, int, str]:
        return (lease.service, lease.epoch, lease.instance)

    def _hand_off(self, lease: Lease, call: Callable[[Metastore], bool], what: str) -> bool:
        """Release or transfer: if it did not answer, it may still land; see the module."""
        try:
            return self._call(what, call)
        except MetastoreError:
            self._maybe_handed_off.add(self._key(lease))
            raise

    # -- the interface -------------------------------------------------------------------
    def ensure_schema(self) -> None:
        self._call("ensure-schema", lambda s: s.ensure_schema())

    def check(self) -> str:
        return self._call("check", lambda s: s.check())

    def try_acquire(self, service: str, me: Instance, ttl: float) -> Lease | None:
        return self._call("acquire", lambda s: s.try_acquire(service, me, ttl))

    def takeover_due(self, service: str) -> float | None:
        store = self._store  # in memory: no call, no deadline; a fresh backend knows none
        return None if store is None else store.takeover_due(service)

    def renew(self, lease: Lease, ttl: float) -> Lease | None:
        if self._key(lease) in self._maybe_handed_off:
            return None  # a release or transfer of it may still land
        return self._call("renew", lambda s: s.renew(lease, ttl))

    def release(self, lease: Lease) -> bool:
        return self._hand_off(lease, lambda s: s.release(lease), "release")

    def transfer(self, lease: Lease, to_node: str) -> bool:
        return self._hand_off(lease, lambda s: s.transfer(lease, to_node), "transfer")

    def read_lease(self, service: str) -> LeaseRecord | None:
        return self._call("read-lease", lambda s: s.read_lease(service))

    def heartbeat(
        self, report: NodeReport, stale_after: float, me: Instance | None = None
    ) -> str | None:
        return self._call("heartbeat", lambda s: s.heartbeat(report, stale_after, me))

    def nodes(self) -> list[NodeRecord]:
        return self._call("nodes", lambda s: s.nodes())

    def record_event(self, event: Event, retention: int) -> None:
        self._call("record-event", lambda s: s.record_event(event, retention))

    def events(self, limit: int) -> list[EventRecord]:
        return self._call("events", lambda s: s.events(limit))

    def set_flag(self, name: str, value: str | None) -> None:
        self._call("set-flag", lambda s: s.set_flag(name, value))

    def claim_flag(self, name: str, value: str) -> bool:
        return self._call("claim-flag", lambda s: s.claim_flag(name, value))

    def flags(self) -> dict[str, str]:
        return self._call("flags", lambda s: s.flags())

    def clear(self) -> None:
        self._call("clear", lambda s: s.clear())

    def close(self) -> None:
        """Close within the timeout; whatever still hangs is closed in the background."""
        store, self._store = self._store, None
        if self._opening is not None:
            when_done(self._opening, Metastore.close)
            self._opening = None
        if store is None:
            return
        if self._stuck is not None and not self._stuck.done():
            Call(store.close, "metastore-discard")
            return
        try:
            call_with_deadline(store.close, self._timeout, "metastore-close")
        except DeadlinePassed:
            log.debug("metastore %s: closing goes on in the background", self._description)
