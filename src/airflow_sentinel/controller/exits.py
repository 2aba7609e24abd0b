"""How a scheduler's end is told: fenced, expected (we stopped it) or not, and whether a
stop needed SIGKILL because stop_timeout was too short for it."""

from __future__ import annotations

import logging
import signal

from airflow_sentinel.controller import events as ev
from airflow_sentinel.controller.scheduler import RunState, StopRequest
from airflow_sentinel.process.handle import RunEnded


def describe_end(
    ended: RunEnded,
    was: RunState | None,
    failed: bool,
    stop: StopRequest | None,
    now: float,
    pid: int | None = None,
) -> tuple[str, str, int]:
    """The event kind, its detail and its log level. ``was`` None: a stop we waited for.
    ``pid``: the scheduler's, when the guard had named it."""
    who = f"pid {pid} " if pid is not None else ""
    if ended.outcome == "fenced":
        why = f"{who}killed by the guard: lease deadline passed"
        return ev.SCHEDULER_FENCED, why, logging.ERROR
    expected = was is None or was is RunState.STOPPING
    level = logging.INFO if expected else logging.WARNING
    detail = f"{who}{ended.outcome} code {ended.code}" + (" (failed start)" if failed else "")
    if expected and stop is not None:
        took = now - stop.at
        if ended.code == -signal.SIGKILL and took >= stop.grace:
            level = logging.WARNING
            detail += (
                f"; killed: it did not exit within stop_timeout ({stop.grace:g}s) after "
                "SIGTERM (a real Airflow scheduler needs 1 to 3s; raise stop_timeout)"
            )
        else:
            detail += f"; stopped {took:.1f}s after SIGTERM"
    return ev.SCHEDULER_EXITED, detail, level
