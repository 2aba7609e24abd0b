"""What this controller says about itself, built from its state and nothing else: the
NodeView that readers in this process get (API, metrics, status line, systemd) and the
NodeReport its registry row carries for the other nodes. Both are plain data built by
pure functions, so the loop only gathers their inputs, and both say the same about fitness
and cooldown."""

from __future__ import annotations

from airflow_sentinel import __version__
from airflow_sentinel.config.settings import Settings
from airflow_sentinel.controller.flags import ClusterFlags
from airflow_sentinel.controller.policy import Timing
from airflow_sentinel.controller.published import NodeView
from airflow_sentinel.controller.scheduler import RunState, RunView
from airflow_sentinel.controller.supervisor import cycle_bound
from airflow_sentinel.metastore.base import Lease, NodeReport

# A scheduler in these states is ours and alive, as far as the registry is told.
RUNNING_STATES = (RunState.STARTING, RunState.RUNNING, RunState.STOPPING)


def cooldown_left(unfit_until: float, now: float) -> float | None:
    """Seconds of cooldown left after a step-down, rounded; None once this node is fit."""
    left = unfit_until - now
    return round(left, 1) if left > 0 else None


def node_view(
    *,
    settings: Settings,
    host: str,
    role: str,
    lease: Lease | None,
    timing: Timing,
    run: RunView,
    heartbeat_age: float | None,
    flags: ClusterFlags,
    unfit_until: float,
    conflict: str | None,
    reachable: bool,
    now: float,
    leaving: bool = False,
) -> NodeView:
    """This controller at ``now``, for readers outside the loop."""
    cooldown = cooldown_left(unfit_until, now)
    return NodeView(
        node_id=settings.node_id,
        host=host,
        version=__version__,
        role=role,
        epoch=None if lease is None else lease.epoch,
        lease_left_s=None if lease is None else round(lease.valid_until - now, 3),
        demote_in_s=None if lease is None else round(timing.demote_at(lease.valid_until) - now, 3),
        scheduler_state=None if run.state is RunState.STOPPED else run.state.value,
        scheduler_pid=run.pid,
        heartbeat_age_s=heartbeat_age,
        paused=flags.paused,
        held=flags.held,
        fit=cooldown is None,
        cooldown_left_s=cooldown,
        conflict=conflict,
        metastore_reachable=reachable,
        cycle_at=now,
        cycle_every_s=settings.renew_interval,
        cycle_bound_s=cycle_bound(settings),
        leaving=leaving,
    )


def node_report(
    *,
    node_id: str,
    host: str,
    role: str,
    run: RunView,
    epoch: int | None,
    instance: str,
    unfit_until: float,
    now: float,
    api: str | None,
    fingerprint: str | None,
) -> NodeReport:
    """This controller's registry row at ``now``; ``instance`` is its instance token."""
    cooldown = cooldown_left(unfit_until, now)
    return NodeReport(
        node_id=node_id,
        host=host,
        role=role,
        scheduler_running=run.state in RUNNING_STATES,
        scheduler_pid=run.pid,
        fit=cooldown is None,
        version=__version__,
        epoch=epoch,
        instance=instance,
        cooldown_left_s=cooldown,
        api=api,
        fingerprint=fingerprint,
    )
