"""Raising the fence in Airflow's database before this node's scheduler starts.

The loop's part of it: before every start, the fence must be whole (a migration that
rebuilt a table may have dropped a trigger: then no scheduler starts, and the operator is
told), and raised to this lease's epoch. A raise blocked by the open transactions of an
older scheduler waits a cycle at a time (the loop renews in between), and after
``db_fence_wait`` ends them. The scheduler then gets the environment that makes its
connections carry the epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from airflow_sentinel.clock import Clock
from airflow_sentinel.config.settings import Settings
from airflow_sentinel.controller import events as ev
from airflow_sentinel.fence import DbFence, FenceError

log = logging.getLogger("airflow_sentinel.controller")

Emit = Callable[[str, str, int], None]


@dataclass(frozen=True)
class Verdict:
    """May the scheduler start now? ``refusal`` counts as a failed start; ``wait`` does
    not (the next cycle tries again)."""

    start: bool
    refusal: str | None = None
    wait: str | None = None


START = Verdict(True)


class FenceKeeper:
    def __init__(
        self, fence: DbFence, settings: Callable[[], Settings], clock: Clock, emit: Emit
    ) -> None:
        self.fence = fence
        self._settings = settings
        self._clock = clock
        self._emit = emit
        self._blocked_since: float | None = None
        self.raised_epoch: int | None = None

    def before_start(self, epoch: int) -> Verdict:
        """Check the fence and raise it to ``epoch``."""
        try:
            problem = self.fence.state().problem()
        except FenceError as exc:
            return Verdict(False, refusal=f"db_fence: {exc}")
        if problem is not None:
            return Verdict(
                False,
                refusal=(
                    f"db_fence: the fence in Airflow's database is not whole ({problem}); "
                    "no scheduler starts without it: run airflow-sentinel fence install "
                    "(or set db_fence = off)"
                ),
            )
        return self._raise(epoch)

    def _raise(self, epoch: int) -> Verdict:
        settings = self._settings()
        now = self._clock.now()
        blocked_for = 0.0 if self._blocked_since is None else now - self._blocked_since
        # Half a renew_interval at a time: the cycle that waits must still renew in time on
        # the shortest leases (the loop renews between attempts).
        attempt = settings.renew_interval / 2
        wait = max(0.1, min(attempt, settings.db_fence_wait - blocked_for))
        end_blockers = blocked_for + wait >= settings.db_fence_wait
        result = self.fence.raise_to(epoch, settings.node_id, wait, end_blockers)
        if result.ended:
            self._emit(
                ev.DB_FENCE_RAISED,
                f"ended {len(result.ended)} connection(s) of an older scheduler that held the "
                f"fence for {blocked_for + result.waited_s:.1f}s (backends "
                f"{', '.join(map(str, result.ended))})",
                logging.WARNING,
            )
        if result.raised:
            self._blocked_since = None
            self.raised_epoch = epoch
            self._emit(
                ev.DB_FENCE_RAISED,
                f"fence at epoch {epoch} in {result.waited_s * 1000:.0f} ms",
                logging.INFO,
            )
            if result.waited_s > settings.renew_interval / 2:
                # The lease was renewed a while ago: start after the next renewal.
                return Verdict(False, wait="the fence is raised; starting after the next renewal")
            return START
        if result.epoch > epoch:
            return Verdict(
                False,
                refusal=(
                    f"db_fence: {result.why}: if this metastore is new (its epochs started "
                    "again), run airflow-sentinel fence reset once no other scheduler runs"
                ),
            )
        if self._blocked_since is None:
            self._blocked_since = now
            self._emit(ev.DB_FENCE_WAITING, result.why, logging.WARNING)
        return Verdict(False, wait=result.why)

    def scheduler_env(self, epoch: int, environ: Mapping[str, str]) -> dict[str, str]:
        return self.fence.dialect.scheduler_env(epoch, self.fence.url, dict(environ))
