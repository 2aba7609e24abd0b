"""ZooKeeper metastore on kazoo.

Layout under the URL's path (the root of this cluster; several clusters can share one
ensemble under different roots):

    leases/<service>/lease    {"holder", "epoch", "ttl"}; changed only by compare-and-set
    leases/<service>/holder   ephemeral copy of the lease, present while the holder's
                              session lives (what `status` shows as alive)
    nodes/<node_id>           the node registry (heartbeat = the znode's mtime)
    events/e-<sequence>       the event log, pruned to the retention
    flags/<name>              cluster flags (pause, switchover requests)
    clock                     touched to read the ensemble's time, for ages in `status`

Expiry is judged exactly as in the SQL backend, on locally observed time: every renewal is a
versioned write to the lease znode, and a standby takes over only after it has seen the same
version for the holder's TTL. That keeps the fence sound even when a session is expired
early (by an operator, or a test harness): the vanishing of an ephemeral znode proves nothing
about the old holder's scheduler, and no standby relies on it.

Connection states: while SUSPENDED no write succeeds, so the active node cannot renew and
stops its scheduler at its demote deadline, before its fence falls and before any standby
may win. A lease is bound to the session that took it: after LOST (session expired) the
node is a standby, and may take the lease again like anyone else.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

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
from kazoo.retry import KazooRetry
from kazoo.security import CREATOR_ALL_ACL, OPEN_ACL_UNSAFE

from airflow_sentinel.clock import Clock
from airflow_sentinel.errors import MetastoreError, UserError
from airflow_sentinel.identity import HANDOVER, Instance
from airflow_sentinel.metastore.base import (
    Event,
    EventRecord,
    Lease,
    LeaseRecord,
    Metastore,
    NodeRecord,
    NodeReport,
)
from airflow_sentinel.metastore.observed import ObservedExpiry
from airflow_sentinel.metastore.urls import ZooKeeperUrl, parse_zookeeper_url, scrub

log = logging.getLogger(__name__)

PRUNE_EVERY = 50
RECONNECT_MAX_DELAY = 1.0
NODE_FIELDS = frozenset(f.name for f in fields(NodeReport))
UNREACHABLE = (KazooException, KazooTimeoutError)


@dataclass(frozen=True)
class LeasePaths:
    lease: str  # persistent {"holder", "epoch", "ttl"}; every write is a compare-and-set
    holder: str  # ephemeral copy, present while the holder's session lives


@dataclass(frozen=True)
class _Held:
    version: int  # the lease znode's version after our last write
    session: int  # the ZooKeeper session that holds the lease


class _KazooLog:
    """kazoo's logger: its lines go to DEBUG, except errors, which keep their level.

    The state listener already logs each connection state change once, and a failed connect
    becomes one error naming the hosts. kazoo's own warnings (one per retry) would only repeat
    them, and where logging is not configured (every command but `start`) Python prints them
    raw. The first warning is kept: it says why a connect failed (later ones say only that
    retrying stopped).
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self.first_warning: str | None = None

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if "passwd" in str(msg):  # kazoo logs the session's password when it connects
            msg, args = "ZooKeeper session established", ()
        if level >= logging.ERROR:
            self._logger.log(level, msg, *args, **kwargs)
            return
        if level >= logging.WARNING and self.first_warning is None:
            try:
                self.first_warning = str(msg) % args if args else str(msg)
            except (TypeError, ValueError):
                self.first_warning = str(msg)
        self._logger.debug(msg, *args, **kwargs)

    def debug(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self.log(logging.DEBUG, msg, *args, **kwargs)

    def info(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self.log(logging.INFO, msg, *args, **kwargs)

    def warning(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self.log(logging.WARNING, msg, *args, **kwargs)

    warn = warning

    def error(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self.log(logging.ERROR, msg, *args, **kwargs)

    def exception(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self.log(logging.ERROR, msg, *args, exc_info=True, **kwargs)


# The round trips of one public call (a renewal is a get and a set) share one deadline, a
# little inside the operation timeout: a slow ensemble then fails the call here, with the
# session kept, before the bounded wrapper (bounded.py) gives up on the call and discards
# this backend, and its session with it.
CALL_BUDGET = 0.9

_T = TypeVar("_T")
_Store = TypeVar("_Store", bound=Metastore)


class _CallDeadline(threading.local):
    """When the public call running on this thread must end; None while none runs."""

    at: float | None = None


def _one_deadline_per_call(cls: type[_Store]) -> type[_Store]:
    """Give every method of the Metastore interface one deadline for all its round trips."""
    for name in Metastore.__abstractmethods__ - {"close"}:
        method = cls.__dict__.get(name)
        if inspect.isfunction(method):
            setattr(cls, name, _within_one_deadline(method))
    return cls


def _within_one_deadline(method: Callable[..., _T]) -> Callable[..., _T]:
    @functools.wraps(method)
    def bounded(self: ZooKeeperMetastore, *args: Any, **kwargs: Any) -> _T:
        deadline = self._call_deadline
        if deadline.at is not None:  # called by another public call: its deadline holds
            return method(self, *args, **kwargs)
        deadline.at = time.monotonic() + CALL_BUDGET * self._op_timeout
        try:
            return method(self, *args, **kwargs)
        finally:
            deadline.at = None

    return bounded


@_one_deadline_per_call
class ZooKeeperMetastore(Metastore):
    _call_deadline = _CallDeadline()  # per thread; one store's call never runs inside another's

    def __init__(self, url: str, clock: Clock, op_timeout: float, session_timeout: float) -> None:
        self._url: ZooKeeperUrl = parse_zookeeper_url(url)
        self._clock = clock
        self._op_timeout = op_timeout
        auth = self._url.digest_auth
        self._kazoo_log = _KazooLog(log.getChild("kazoo"))
        self._client = KazooClient(
            hosts=self._url.hosts,
            timeout=session_timeout,
            auth_data=[("digest", auth)] if auth else None,
            default_acl=CREATOR_ALL_ACL if auth else OPEN_ACL_UNSAFE,
            logger=self._kazoo_log,
            # kazoo's default waits up to an hour between reconnects after a long outage;
            # a controller must be back within about a second of the ensemble.
            connection_retry=KazooRetry(
                max_tries=-1, delay=0.1, backoff=2, max_jitter=0.2, max_delay=RECONNECT_MAX_DELAY
            ),
        )
        self._closing = False
        self._client.add_listener(self._on_state)
        self._root = self._url.path.rstrip("/")
        self._expiry = ObservedExpiry()
        self._held: dict[str, _Held] = {}
        self._events_written = 0
        try:
            # Inside the operation timeout, as every call: the error then says why (below).
            self._client.start(timeout=CALL_BUDGET * op_timeout)
        except UNREACHABLE as exc:
            self._client.close()
            why = self._kazoo_log.first_warning
            raise MetastoreError(self._explain(exc, scrub(why, url) if why else None)) from None
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

    def _explain(self, exc: BaseException, cause: str | None = None) -> str:
        if isinstance(exc, KazooTimeoutError):
            reason = f"no answer within {self._op_timeout:g}s"
        else:
            reason = type(exc).__name__ if not str(exc) else f"{type(exc).__name__}: {exc}"
        return f"metastore {self.description}: {reason}" + (f" ({cause})" if cause else "")

    def _wait(self, async_result: Any) -> Any:
        """The answer to one request, within what is left of the public call's deadline."""
        at = self._call_deadline.at
        left = self._op_timeout if at is None else at - time.monotonic()
        if left <= 0:  # the call's earlier round trips took all of its time
            raise MetastoreError(self._explain(KazooTimeoutError()))
        try:
            return async_result.get(timeout=left)
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
        self._wait(self._client.ensure_path_async(path))

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
    def _lease_paths(self, service: str) -> LeasePaths:
        base = self._path("leases", service)
        return LeasePaths(f"{base}/lease", f"{base}/holder")

    def _my_session(self) -> int:
        return int(self._client.client_id[0]) if self._client.client_id else -1

    def _read_record(self, service: str) -> tuple[dict[str, Any], ZnodeStat]:
        path = self._lease_paths(service).lease
        found = self._get(path)
        if found is None:
            empty = json.dumps({"holder": None, "epoch": 0, "ttl": 0.0}).encode()
            with contextlib.suppress(NodeExistsError):
                self._wait(self._client.create_async(path, empty, makepath=True))
            found = self._get(path)
            if found is None:
                raise MetastoreError(f"metastore {self.description}: lease znode vanished")
        return json.loads(found[0]), found[1]

    def _write_record(self, service: str, record: dict[str, Any], version: int) -> ZnodeStat | None:
        """Compare-and-set on the lease znode; None when another writer got there first."""
        path = self._lease_paths(service).lease
        try:
            stat: ZnodeStat = self._wait(
                self._client.set_async(path, json.dumps(record).encode(), version=version)
            )
        except (NoNodeError, BadVersionError):
            return None
        return stat

    def try_acquire(self, service: str, me: Instance, ttl: float) -> Lease | None:
        record, stat = self._read_record(service)
        seen_at = self._clock.now()
        holder = record["holder"]
        state = (holder, int(record["epoch"]), stat.version)
        silent_for = self._expiry.seen_for(service, state, seen_at)
        mine = holder == me.node_id and me.may_reclaim(record.get("instance"))
        waited = holder is not None and not mine
        if waited and not self._expiry.expired(service, state, float(record["ttl"]), seen_at):
            return None
        sent = self._clock.now()
        # Claiming a handover keeps the epoch the transfer gave it: one step per holder.
        step = 0 if holder == me.node_id and record.get("instance") == HANDOVER else 1
        epoch = int(record["epoch"]) + step
        taken = {"holder": me.node_id, "instance": me.token, "epoch": epoch, "ttl": ttl}
        written = self._write_record(service, taken, stat.version)
        if written is None:
            return None
        self._expiry.forget(service)
        self._held[service] = _Held(written.version, self._my_session())
        self._mark_presence(service, taken)
        return Lease(
            service,
            me.node_id,
            epoch,
            sent + ttl,
            instance=me.token,
            taken_from=holder,
            silent_for=silent_for if waited else None,
        )

    def _mark_presence(self, service: str, record: dict[str, Any]) -> None:
        """The ephemeral holder znode: shows who leads while that session lives (status)."""
        path = self._lease_paths(service).holder
        self._delete_quietly(path)
        with contextlib.suppress(NodeExistsError):
            self._wait(self._client.create_async(path, json.dumps(record).encode(), ephemeral=True))

    def _delete_quietly(self, path: str) -> None:
        with contextlib.suppress(NoNodeError):
            self._wait(self._client.delete_async(path))

    def _update_held(
        self, lease: Lease, changes: dict[str, Any], another_session: bool = False
    ) -> ZnodeStat | None:
        """Write the lease znode if this lease is still ours in this ZooKeeper session
        (``another_session``: if the znode still names it, whichever session took it)."""
        held = self._held.get(lease.service)
        if held is None and not another_session:
            return None
        session = self._my_session()
        if session == -1:  # SUSPENDED: the session may still live; say so, do not give up
            raise MetastoreError(f"metastore {self.description}: not connected")
        if held is not None and held.session != session:
            return None  # LOST: the session expired; this node is a standby now
        record, stat = self._read_record(lease.service)
        if (record["holder"], int(record["epoch"]), record.get("instance")) != (
            lease.holder,
            lease.epoch,
            lease.instance,
        ):
            return None
        written = self._write_record(lease.service, {**record, **changes}, stat.version)
        if written is not None and held is not None:
            self._held[lease.service] = _Held(written.version, held.session)
        return written

    def takeover_due(self, service: str) -> float | None:
        return self._expiry.due(service)

    def renew(self, lease: Lease, ttl: float) -> Lease | None:
        """A versioned write: standbys see the lease znode's version move."""
        sent = self._clock.now()
        if self._update_held(lease, {"ttl": ttl}) is None:
            return None
        return replace(lease, valid_until=sent + ttl)

    def release(self, lease: Lease) -> bool:
        """Also for a lease another session took: a dead controller's, given back by its
        guard (crash_release.py); the compare-and-set on holder, instance and epoch holds."""
        if lease.service not in self._held:
            released = {"holder": None, "instance": None}
            # Its holder znode goes with the dead session; it is not ours to delete.
            return self._update_held(lease, released, another_session=True) is not None
        if self._update_held(lease, {"holder": None, "instance": None}) is None:
            return False
        self._held.pop(lease.service, None)
        self._delete_quietly(self._lease_paths(lease.service).holder)
        return True

    def transfer(self, lease: Lease, to_node: str) -> bool:
        changes = {"holder": to_node, "instance": HANDOVER, "epoch": lease.epoch + 1}
        if self._update_held(lease, changes) is None:
            return False
        self._held.pop(lease.service, None)
        self._delete_quietly(self._lease_paths(lease.service).holder)
        return True

    def read_lease(self, service: str) -> LeaseRecord | None:
        found = self._get(self._lease_paths(service).lease)
        if found is None:
            return None
        record, stat = json.loads(found[0]), found[1]
        age = max(0.0, self._server_now() - stat.mtime / 1000.0)
        return LeaseRecord(
            service,
            record["holder"],
            int(record["epoch"]),
            stat.version,
            float(record["ttl"]),
            age,
            record.get("instance"),
        )

    # -- node registry -------------------------------------------------------------------
    def heartbeat(
        self, report: NodeReport, stale_after: float, me: Instance | None = None
    ) -> str | None:
        path = self._path("nodes", report.node_id)
        data = json.dumps(report.__dict__).encode()
        found = self._get(path)
        if found is None:
            try:
                self._wait(self._client.create_async(path, data, makepath=True))
            except NodeExistsError:
                found = self._get(path)
            else:
                return None
        if found is None:
            return self.heartbeat(report, stale_after, me)  # deleted meanwhile
        other, stat = json.loads(found[0]), found[1]
        gone = me is not None and me.proven_dead(other.get("instance"))
        if not gone and self._another_live_instance(report, other, stat, stale_after):
            return str(other.get("host", "?"))
        try:
            self._wait(self._client.set_async(path, data, version=stat.version))
        except (BadVersionError, NoNodeError):
            return self.heartbeat(report, stale_after, me)  # raced another writer: look again
        return None

    def _another_live_instance(
        self, report: NodeReport, other: dict[str, Any], stat: ZnodeStat, stale_after: float
    ) -> bool:
        """Whether the row belongs to another instance that has not stopped and wrote it
        within ``stale_after`` seconds (on the ensemble's clock, as the SQL backends do)."""
        if other.get("instance") in (None, report.instance) or other.get("role") == "stopped":
            return False
        return self._server_now() - float(stat.mtime) / 1000.0 < stale_after

    def nodes(self) -> list[NodeRecord]:
        now = self._server_now()
        records = []
        for name in sorted(self._children(self._path("nodes"))):
            found = self._get(self._path("nodes", name))
            if found is None:
                continue
            report = json.loads(found[0])
            age = max(0.0, now - found[1].mtime / 1000.0)
            known = {k: v for k, v in report.items() if k in NODE_FIELDS}
            records.append(NodeRecord(**known, last_heartbeat_age_s=age))
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
            self._delete_quietly(path)
            return
        try:
            self._wait(self._client.set_async(path, value.encode()))
        except NoNodeError:
            try:
                self._wait(self._client.create_async(path, value.encode(), makepath=True))
            except NodeExistsError:
                self._wait(self._client.set_async(path, value.encode()))

    def claim_flag(self, name: str, value: str) -> bool:
        try:
            self._wait(
                self._client.create_async(self._path("flags", name), value.encode(), makepath=True)
            )
        except NodeExistsError:
            return False
        return True

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
                self._delete_quietly(self._path(part, name))

    def close(self) -> None:
        self._closing = True
        try:
            self._client.stop()
        finally:
            self._client.close()
