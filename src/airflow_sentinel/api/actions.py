"""What the API reads from and does through the metastore: the cluster and its history,
pause, resume, switch over. Like the CLI, on a connection of its own (never the loop's),
one call at a time; an action wakes this node's loop, so that a switchover starts now and
not at the next cycle."""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict
from http import HTTPStatus
from typing import Any

from airflow_sentinel.api.page import PageData
from airflow_sentinel.errors import MetastoreError, SentinelError, UserError
from airflow_sentinel.metastore.base import PAUSED, Metastore, switchover_flag
from airflow_sentinel.status import choose_target, read_cluster

log = logging.getLogger("airflow_sentinel.api")

SERVICE = "scheduler"
MAX_WAIT = 600.0
PAGE_EVENTS = 500  # the timeline's reach on a busy cluster

RECONNECT_EVERY = 5.0  # seconds between tries to open the connection while it fails

Result = tuple[int, dict[str, Any]]


class LazyStore:
    """The API's own metastore connection, opened at the first call that needs it and
    again after a failure to open, at most every RECONNECT_EVERY seconds: a metastore that
    is down when the controller starts costs the API its actions only until it is back."""

    def __init__(
        self, open_store: Callable[[], Metastore], now: Callable[[], float] = time.monotonic
    ) -> None:
        self._open = open_store
        self._now = now
        self._store: Metastore | None = None
        self._next_try = 0.0
        self._why = "not connected yet"

    def get(self) -> Metastore:
        if self._store is not None:
            return self._store
        if self._now() < self._next_try:
            raise MetastoreError(f"{self._why}; the API tries again shortly")
        try:
            self._store = self._open()
        except SentinelError as exc:
            self._why = str(exc)
            self._next_try = self._now() + RECONNECT_EVERY
            log.warning(
                "HTTP API: cannot open its metastore connection (%s); /cluster, /history, "
                "the page and the actions answer 503 until it opens",
                self._why,
            )
            raise MetastoreError(self._why) from None
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


class ClusterActions:
    def __init__(
        self,
        store: LazyStore,
        node_id: str,
        lease_ttl: float,
        wake: Callable[[], None],
        host: str = "",
    ) -> None:
        self._stores = store
        self._node_id = node_id
        self._lease_ttl = lease_ttl
        self._wake = wake
        self._host = host  # this controller's host identity (name/boot id)
        self._lock = threading.Lock()  # one store call at a time, whatever the threads
        self._switching = threading.Lock()  # one switchover at a time

    @property
    def _store(self) -> Metastore:
        return self._stores.get()  # MetastoreError while it cannot be opened

    def cluster(self) -> Result:
        try:
            with self._lock:
                state = read_cluster(self._store, SERVICE, self._lease_ttl, with_history=True)
        except MetastoreError as exc:
            return HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"metastore: {exc}"}
        return HTTPStatus.OK, state.to_json()

    def history(self, limit: int) -> Result:
        try:
            with self._lock:
                events = self._store.events(limit)
        except MetastoreError as exc:
            return HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"metastore: {exc}"}
        return HTTPStatus.OK, {"events": [asdict(e) for e in events]}

    def page(self) -> PageData:
        """What the status page shows: the cluster and the last hours' events."""
        try:
            with self._lock:
                state = read_cluster(self._store, SERVICE, self._lease_ttl, with_history=True)
                events = self._store.events(PAGE_EVENTS)
        except MetastoreError as exc:
            return PageData(None, [], self._node_id, str(exc))
        return PageData(state.to_json(), events, self._node_id)

    def api_of(self, node_id: str) -> str | None:
        """Where ``node_id``'s API answers, as its last report says, if that address is
        its own host's (the token is sent there)."""
        try:
            with self._lock:
                nodes = self._store.nodes()
        except MetastoreError:
            return None
        node = next((n for n in nodes if n.node_id == node_id), None)
        if node is None or not node.api or not api_on_host(node.api, node.host, self._host):
            return None
        return node.api

    def wake_self(self) -> Result:
        self._wake()
        return HTTPStatus.OK, {"woken": True}

    def pause(self) -> Result:
        return self._flag(PAUSED, "1", {"paused": True})

    def resume(self) -> Result:
        return self._flag(PAUSED, None, {"paused": False})

    def _flag(self, name: str, value: str | None, answer: dict[str, Any]) -> Result:
        try:
            with self._lock:
                self._store.set_flag(name, value)
        except MetastoreError as exc:
            return HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"metastore: {exc}"}
        self._wake()
        return HTTPStatus.OK, answer

    def switchover(self, target: str | None, timeout: float) -> Result:
        """Hand the scheduler from this node (it must be the active one) to ``target`` or
        the freshest healthy standby; answers once the target runs it, or at ``timeout``.
        One at a time: a second request meanwhile is a 409."""
        if not self._switching.acquire(blocking=False):
            return HTTPStatus.CONFLICT, {"error": "a switchover is already under way"}
        try:
            return self._switchover(target, timeout)
        finally:
            self._switching.release()

    def _switchover(self, target: str | None, timeout: float) -> Result:
        try:
            with self._lock:
                state = read_cluster(self._store, SERVICE, self._lease_ttl)
            if PAUSED in state.flags:
                return HTTPStatus.CONFLICT, {"error": "the cluster is paused; resume it first"}
            active = state.active_node
            if active != self._node_id or state.lease is None:
                return HTTPStatus.CONFLICT, {"error": "not the active node", "active": active}
            chosen = choose_target(state, active, target)
            with self._lock:
                self._store.set_flag(switchover_flag(SERVICE), f"{state.lease.epoch} {chosen}")
        except UserError as exc:
            return HTTPStatus.BAD_REQUEST, {"error": str(exc)}
        except MetastoreError as exc:
            return HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"metastore: {exc}"}
        started = time.monotonic()
        self._wake()  # the loop hands over now, not at its next cycle
        while time.monotonic() - started < timeout:
            if self._runs_on(chosen):
                seconds = round(time.monotonic() - started, 3)
                return HTTPStatus.OK, {"from": active, "to": chosen, "seconds": seconds}
            time.sleep(0.05)
        return HTTPStatus.GATEWAY_TIMEOUT, {
            "error": f"switchover to {chosen} not confirmed within {timeout:g}s",
            "to": chosen,
        }

    def _runs_on(self, node: str) -> bool:
        try:
            with self._lock:
                state = read_cluster(self._store, SERVICE, self._lease_ttl)
        except MetastoreError:
            return False
        running = any(n.node_id == node and n.scheduler_running for n in state.running_nodes())
        return running and state.active_node == node


def switchover_request(body: object) -> tuple[str | None, float] | str:
    """(target, timeout) from a request body, or what is wrong with it."""
    if body is None:
        return None, 60.0
    if not isinstance(body, dict):
        return 'the body must be a JSON object, e.g. {"to": "node-b", "timeout": 60}'
    unknown = sorted(set(body) - {"to", "timeout"})
    if unknown:
        return f"unknown field(s) {', '.join(unknown)}; accepted: to, timeout"
    target = body.get("to")
    if target is not None and not isinstance(target, str):
        return '"to" must be a node_id (a string) or null'
    timeout = body.get("timeout", 60.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        return '"timeout" must be a number of seconds'
    if not 0 < timeout <= MAX_WAIT:
        return f'"timeout" must be more than 0 and at most {MAX_WAIT:g} seconds'
    return target, float(timeout)


def api_on_host(url: str, node_host: str, my_host: str) -> bool:
    """Whether ``url`` points at the host the node reports from: its name (the part of
    its host identity before the boot id), or loopback when that host is ours."""
    host = urllib.parse.urlsplit(url).hostname or ""
    name = node_host.split("/", 1)[0]
    if host in ("127.0.0.1", "::1", "localhost"):
        return node_host == my_host
    return host == name or host.split(".", 1)[0] == name.split(".", 1)[0]
