"""The one line `systemctl status` shows for the controller (STATUS=), from its view."""

from __future__ import annotations

import math

from airflow_sentinel.controller.published import ACTIVE, STOPPED, NodeView


def status_text(view: NodeView) -> str:
    """What this node is doing, in one line: "active, epoch 12, scheduler pid 4242",
    "standby", "paused; standby", "held by upgrade ...; standby"."""
    if view.role == STOPPED:
        return "stopped"
    parts = [_role_text(view)]
    if view.held is not None:
        parts.insert(0, f"held by {view.held}")
    if view.paused:
        parts.insert(0, "paused")
    if view.conflict is not None:
        parts.append(f"node_id also in use by a live controller on {view.conflict}")
    if not view.metastore_reachable:
        parts.append("metastore unreachable")
    # One line: a line break would start another assignment of the notify message.
    return " ".join("; ".join(parts).splitlines())


def _role_text(view: NodeView) -> str:
    if view.role == ACTIVE:
        return f"active, epoch {view.epoch}, {_scheduler_text(view)}"
    if not view.fit and view.cooldown_left_s is not None:
        # In minutes: a count of seconds would change, and be sent, at every cycle.
        return f"standby, cooling down ({math.ceil(view.cooldown_left_s / 60)} min left)"
    return "standby"


def _scheduler_text(view: NodeView) -> str:
    pid, state = view.scheduler_pid, view.scheduler_state
    if pid is None:
        return "no scheduler" if state is None else f"scheduler {state}"
    if view.leaving or state == "stopping":
        return f"stopping scheduler pid {pid}"
    if state == "starting":
        return f"starting scheduler pid {pid}"
    return f"scheduler pid {pid}"
