"""Give back the lease of a controller that died while its host lives.

When a controller dies (kill -9, the OOM killer, a crash) its guard sees the pipe from it
close, stops the scheduler and kills every process of the run, as it always did. If it
then finds none left, it runs this helper, which gives the lease back by compare-and-set
on the holder, its instance and the epoch: a standby takes over at its next read instead
of after the lease's TTL.

Why it is safe (the README's argument, in short):

* Only a dead controller closes that pipe. A frozen or cut-off one keeps it open, so its
  guard never gets here: it fences the scheduler at its deadline, and the lease expires.
* The release comes after every process of the run is gone, which is exactly what the
  controller itself waits for before it releases on a clean stop.
* It changes the lease only if it still names this node, this controller instance and this
  epoch. A lease a standby has taken meanwhile, or that the restarted controller took
  back, has another instance or a later epoch, and is left alone.

The guard hands over what the release needs as one JSON line on this helper's stdin, never
on a command line or in the environment: the metastore's URL may carry a password.
"""

from __future__ import annotations

import json
import signal
import sys
from dataclasses import asdict, dataclass

MODULE = "airflow_sentinel.crash_release"
SERVICE = "scheduler"


@dataclass(frozen=True)
class MetastoreAccess:
    """How the controller reaches its metastore, for the helper its guard may start."""

    url: str
    op_timeout: float
    lease_ttl: float


@dataclass(frozen=True)
class ReleaseRequest:
    access: MetastoreAccess
    holder: str
    instance: str
    epoch: int

    def to_line(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_line(cls, line: str) -> ReleaseRequest:
        data = json.loads(line)
        return cls(
            MetastoreAccess(**data["access"]), data["holder"], data["instance"], int(data["epoch"])
        )


def release(request: ReleaseRequest) -> str:
    """Give the lease back if it is still the dead controller's; what happened, in words."""
    from airflow_sentinel.clock import SystemClock
    from airflow_sentinel.errors import SentinelError
    from airflow_sentinel.metastore import open_metastore
    from airflow_sentinel.metastore.base import Lease

    access = request.access
    lease = Lease(SERVICE, request.holder, request.epoch, 0.0, instance=request.instance)
    try:
        store = open_metastore(access.url, SystemClock(), access.op_timeout, access.lease_ttl)
        try:
            given_back = store.release(lease)
        finally:
            store.close()
    except SentinelError as exc:  # it expires after its TTL, as it would without us
        return f"could not give the lease of epoch {request.epoch} back: {exc}"
    if given_back:
        return f"gave the lease of epoch {request.epoch} back: its controller died"
    return f"left the lease alone: it is no longer epoch {request.epoch} of this controller"


def main() -> int:
    request = ReleaseRequest.from_line(sys.stdin.readline())
    # Every metastore call is bounded; this bounds the whole helper too.
    signal.alarm(int(3 * request.access.op_timeout) + 5)
    print(f"airflow-sentinel: {release(request)}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
