"""ZooKeeper metastore on kazoo.

Layout under the URL's path (the root of this cluster; several clusters can share one
ensemble under different roots):

    leases/<service>/holder   ephemeral: {"holder", "epoch"}; exists while its session lives
    leases/<service>/epoch    the fencing token, bumped by versioned set on every acquisition
    leases/<service>/handoff  a planned switchover's target, honoured for one TTL
    nodes/<node_id>           the node registry (heartbeat = the znode's mtime)
    events/e-<sequence>       the event log, pruned to the retention
    flags/<name>              cluster flags (pause, switchover requests)
    clock                     touched to read the ensemble's time, for ages in `status`

Expiry is judged by the ZooKeeper servers: the holder znode is ephemeral and disappears
when its session expires, which happens no sooner than ``session timeout`` after the
servers last heard from the holder. Each renewal is a round trip that proves the session
was alive when it was sent, so the holder's lease is valid until ``sent + session timeout``
on its own clock. While the connection is SUSPENDED no renewal succeeds, so the holder's
fence falls before the session can expire and before any standby can create the znode.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    BadVersionError,
    KazooException,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import ZnodeStat
from kazoo.security import CREATOR_ALL_ACL, OPEN_ACL_UNSAFE

from airflow_sentinel.clock import Clock
from airflow_sentinel.errors import MetastoreError, UserError
from airflow_sentinel.metastore.base import (
    Event,
    EventRecord,
    Lease,
    LeaseRecord,
    Metastore,
    NodeRecord,
    NodeReport,
)
from airflow_sentinel.metastore.urls import ZooKeeperUrl, parse_zookeeper_url

log = logging.getLogger(__name__)

PRUNE_EVERY = 50
UNREACHABLE = (KazooException, KazooTimeoutError)


@dataclass(frozen=True)
class _Seen:
    value: bytes
    since: float


class ZooKeeperMetastore(Metastore):
    def __init__(self, url: str, clock: Clock, op_timeout: float, session_timeout: float) -> None:
        self._url: ZooKeeperUrl = parse_zookeeper_url(url)
        self._clock = clock
        self._op_timeout = op_timeout
        auth = self._url.digest_auth
        self._client = KazooClient(
            hosts=self._url.hosts,
            timeout=session_timeout,
            auth_data=[("digest", auth)] if auth else None,
            default_acl=CREATOR_ALL_ACL if auth else OPEN_ACL_UNSAFE,
        )
        self._closing = False
        self._client.add_listener(self._on_state)
        self._root = self._url.path.rstrip("/")
        self._handoffs: dict[str, _Seen] = {}
        self._events_written = 0
        try:
            self._client.start(timeout=op_timeout)
        except UNREACHABLE as exc:
            self._client.close()
            raise MetastoreError(self._explain(exc)) from None
        if self.session_timeout < session_timeout - 0.001:
            self.close()
            raise UserError(
                f"lease_ttl: ZooKeeper granted a session timeout of {self.session_timeout:g}s, "
                f"less than lease_ttl ({session_timeout:g}s); lower lease_ttl or raise the "
                "servers' maxSessionTimeout"
            )

    # -- plumbing ------------------------------------------------------------------------
    @property
    def description(self) -> str:
        return self._url.masked

    @property
    def session_timeout(self) -> float:
        """The session timeout the ensemble granted (it may differ from the one asked)."""
        return float(self._client._session_timeout) / 1000.0

    def _on_state(self, state: str) -> None:
        # Listeners must not block: only log. The lease logic relies on round trips.
        if self._closing:
            return
        level = logging.INFO if state == KazooState.CONNECTED else logging.WARNING
        log.log(level, "ZooKeeper connection %s", state)

    def _explain(self, exc: BaseException) -> str:
        reason = type(exc).__name__ if not str(exc) else f"{type(exc).__name__}: {exc}"
        return f"metastore {self.description}: {reason}"

    def _wait(self, async_result: Any) -> Any:
        try:
            return async_result.get(timeout=self._op_timeout)
        except (NoNodeError, NodeExistsError, BadVersionError, NotEmptyError):
            raise
        except UNREACHABLE as exc:
            raise MetastoreError(self._explain(exc)) from None

    def _get(self, path: str) -> tuple[bytes, ZnodeStat] | None:
        try:
            data, stat = self._wait(self._client.get_async(path))
        except NoNodeError:
            return None
        return data, stat

    def _children(self, path: str) -> list[str]:
        try:
            return list(self._wait(self._client.get_children_async(path)))
        except NoNodeError:
            return []

    def _path(self, *parts: str) -> str:
        return "/".join((self._root, *parts))

    def _ensure(self, path: str) -> None:
        try:
            self._client.ensure_path(path)
        except UNREACHABLE as exc:
            raise MetastoreError(self._explain(exc)) from None

    def _server_now(self) -> float:
        """The ensemble's time in seconds, read from the mtime of a touched znode."""
        try:
            stat = self._wait(self._client.set_async(self._path("clock"), b""))
        except NoNodeError:
            self._ensure(self._path("clock"))
            stat = self._wait(self._client.set_async(self._path("clock"), b""))
        return float(stat.mtime) / 1000.0

    def ensure_schema(self) -> None:
        for part in ("leases", "nodes", "events", "flags", "clock"):
            self._ensure(self._path(part))

    def check(self) -> str:
        self._wait(self._client.exists_async("/"))
        host, port = self._client._connection._socket.getpeername()[:2]
        return f"ZooKeeper at {host}:{port}, session timeout {self.session_timeout:g}s"

    # -- lease ---------------------------------------------------------------------------
    def _lease_paths(self, service: str) -> tuple[str, str, str]:
        base = self._path("leases", service)
        return f"{base}/holder", f"{base}/epoch", f"{base}/handoff"

    def _my_session(self) -> int:
        return int(self._client.client_id[0]) if self._client.client_id else -1

    def try_acquire(self, service: str, node_id: str, ttl: float) -> Lease | None:
        sent = self._clock.now()
        holder_path, _epoch_path, handoff_path = self._lease_paths(service)
        self._ensure(self._path("leases", service))
        held = self._get(holder_path)
        if held is not None:
            record, stat = json.loads(held[0]), held[1]
            if stat.ephemeralOwner == self._my_session() and record["holder"] == node_id:
                return Lease(service, node_id, int(record["epoch"]), sent + self.session_timeout)
            if record["holder"] != node_id:
                return None  # another node's session holds it
            # Our own node_id, left by an earlier incarnation of this controller whose
            # session has not expired yet: that process is gone (the node lock proves it).
            if not self._delete_if_unchanged(holder_path, stat.version):
                return None
        handoff = self._get(handoff_path)
        if handoff is not None and not self._may_ignore_handoff(service, handoff[0], node_id):
            return None
        return self._create_holder(service, node_id, handoff is not None, sent)

    def _may_ignore_handoff(self, service: str, raw: bytes, node_id: str) -> bool:
        """A handoff binds others for one TTL of locally observed time, then lapses."""
        target = json.loads(raw)
        if target["to"] == node_id:
            return True
        now = self._clock.now()
        seen = self._handoffs.get(service)
        if seen is None or seen.value != raw:
            self._handoffs[service] = _Seen(raw, now)
            return False
        return now - seen.since >= float(target["ttl"])

    def _delete_if_unchanged(self, path: str, version: int) -> bool:
        try:
            self._wait(self._client.delete_async(path, version=version))
        except (NoNodeError, BadVersionError):
            return False
        return True

    def _read_epoch(self, epoch_path: str) -> tuple[int, int]:
        found = self._get(epoch_path)
        if found is None:
            with contextlib.suppress(NodeExistsError):
                self._wait(self._client.create_async(epoch_path, b"0"))
            found = self._get(epoch_path)
            if found is None:
                raise MetastoreError(f"metastore {self.description}: epoch counter vanished")
        return int(found[0] or b"0"), found[1].version

    def _create_holder(
        self, service: str, node_id: str, handoff: bool, sent: float
    ) -> Lease | None:
        holder_path, epoch_path, handoff_path = self._lease_paths(service)
        epoch, version = self._read_epoch(epoch_path)
        record = json.dumps({"holder": node_id, "epoch": epoch + 1}).encode()
        transaction = self._client.transaction()
        transaction.set_data(epoch_path, str(epoch + 1).encode(), version=version)
        transaction.create(holder_path, record, ephemeral=True)
        if handoff:
            transaction.delete(handoff_path)
        results = self._wait(transaction.commit_async())
        if any(isinstance(result, Exception) for result in results):
            return None  # another node moved the epoch or created the holder first
        self._handoffs.pop(service, None)
        return Lease(service, node_id, epoch + 1, sent + self.session_timeout)

    def _held_by(self, lease: Lease) -> ZnodeStat | None:
        """The holder znode's stat if it is still this session's, for this epoch."""
        held = self._get(self._lease_paths(lease.service)[0])
        if held is None:
            return None
        record, stat = json.loads(held[0]), held[1]
        mine = stat.ephemeralOwner == self._my_session() and record["holder"] == lease.holder
        return stat if mine and int(record["epoch"]) == lease.epoch else None

    def renew(self, lease: Lease, ttl: float) -> Lease | None:
        sent = self._clock.now()
        if self._held_by(lease) is None:
            return None
        return Lease(lease.service, lease.holder, lease.epoch, sent + self.session_timeout)

    def release(self, lease: Lease) -> bool:
        stat = self._held_by(lease)
        return stat is not None and self._delete_if_unchanged(
            self._lease_paths(lease.service)[0], stat.version
        )

    def transfer(self, lease: Lease, to_node: str) -> bool:
        stat = self._held_by(lease)
        if stat is None:
            return False
        holder_path, _, handoff_path = self._lease_paths(lease.service)
        self._delete_if_unchanged(handoff_path, -1)  # an earlier, unclaimed handoff lapses
        handoff = {"to": to_node, "from": lease.holder, "ttl": self.session_timeout}
        transaction = self._client.transaction()
        transaction.delete(holder_path, version=stat.version)
        transaction.create(handoff_path, json.dumps(handoff).encode())
        results = self._wait(transaction.commit_async())
        return not any(isinstance(result, Exception) for result in results)

    def read_lease(self, service: str) -> LeaseRecord | None:
        holder_path, epoch_path, _ = self._lease_paths(service)
        held = self._get(holder_path)
        ttl = self.session_timeout
        if held is not None:
            record = json.loads(held[0])
            # An ephemeral znode exists only while its session lives: no age to judge.
            return LeaseRecord(
                service, record["holder"], int(record["epoch"]), held[1].version, ttl, None
            )
        counter = self._get(epoch_path)
        if counter is None:
            return None
        return LeaseRecord(service, None, int(counter[0] or b"0"), counter[1].version, ttl, None)

    # -- node registry -------------------------------------------------------------------
    def heartbeat(self, report: NodeReport) -> None:
        path = self._path("nodes", report.node_id)
        data = json.dumps(report.__dict__).encode()
        try:
            self._wait(self._client.set_async(path, data))
        except NoNodeError:
            try:
                self._wait(self._client.create_async(path, data, makepath=True))
            except NodeExistsError:
                self._wait(self._client.set_async(path, data))

    def nodes(self) -> list[NodeRecord]:
        now = self._server_now()
        records = []
        for name in sorted(self._children(self._path("nodes"))):
            found = self._get(self._path("nodes", name))
            if found is None:
                continue
            report = json.loads(found[0])
            age = max(0.0, now - found[1].mtime / 1000.0)
            records.append(NodeRecord(**report, last_heartbeat_age_s=age))
        return records

    # -- events --------------------------------------------------------------------------
    def record_event(self, event: Event, retention: int) -> None:
        data = json.dumps({**event.__dict__, "detail": event.detail[:1000]}).encode()
        self._wait(
            self._client.create_async(
                self._path("events", "e-"), data, sequence=True, makepath=True
            )
        )
        self._events_written += 1
        if self._events_written % PRUNE_EVERY == 1:
            self._prune_events(retention)

    def _prune_events(self, retention: int) -> None:
        names = sorted(self._children(self._path("events")))
        for name in names[: max(0, len(names) - retention)]:
            try:
                self._wait(self._client.delete_async(self._path("events", name)))
            except NoNodeError:
                continue

    def events(self, limit: int) -> list[EventRecord]:
        now = self._server_now()
        records = []
        for name in sorted(self._children(self._path("events")), reverse=True)[:limit]:
            found = self._get(self._path("events", name))
            if found is None:
                continue
            event = json.loads(found[0])
            age = max(0.0, now - found[1].ctime / 1000.0)
            records.append(EventRecord(id=int(name.rsplit("-", 1)[1]), age_s=age, **event))
        return records

    # -- flags ---------------------------------------------------------------------------
    def set_flag(self, name: str, value: str | None) -> None:
        path = self._path("flags", name)
        if value is None:
            self._delete_if_unchanged(path, -1)
            return
        try:
            self._wait(self._client.set_async(path, value.encode()))
        except NoNodeError:
            try:
                self._wait(self._client.create_async(path, value.encode(), makepath=True))
            except NodeExistsError:
                self._wait(self._client.set_async(path, value.encode()))

    def flags(self) -> dict[str, str]:
        found = {}
        for name in self._children(self._path("flags")):
            item = self._get(self._path("flags", name))
            if item is not None:
                found[name] = item[0].decode()
        return found

    def clear(self) -> None:
        for part in ("nodes", "events", "flags"):
            for name in self._children(self._path(part)):
                self._delete_if_unchanged(self._path(part, name), -1)

    def close(self) -> None:
        self._closing = True
        try:
            self._client.stop()
        finally:
            self._client.close()
