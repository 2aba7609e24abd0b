"""A controller's published view, as unit tests build it: an active node by default."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from airflow_sentinel.controller.published import NodeView

ACTIVE = NodeView(
    node_id="a",
    host="h",
    version="1",
    role="active",
    epoch=7,
    lease_left_s=10.0,
    demote_in_s=4.0,
    scheduler_state="running",
    scheduler_pid=42,
    heartbeat_age_s=1.0,
    paused=False,
    held=None,
    fit=True,
    cooldown_left_s=None,
    conflict=None,
    metastore_reachable=True,
    cycle_at=100.0,
    cycle_every_s=3.0,
    cycle_bound_s=30.0,
)


def node_view(**changes: Any) -> NodeView:
    return replace(ACTIVE, **changes)
