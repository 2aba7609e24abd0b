"""Runs the steps in order, journaled; on a failure, runs the rollback steps in order.

The journal is written before a step starts and after it ends, so after a kill -9 the run
can be resumed (the step under way is repeated) or rolled back (every step that began is
undone).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from airflow_sentinel.errors import SentinelError
from airflow_sentinel.upgrade import journal as jr
from airflow_sentinel.upgrade.installation import UpgradeError
from airflow_sentinel.upgrade.steps import BACKWARD, FORWARD, Context, Step, forward_steps

log = logging.getLogger("airflow_sentinel.upgrade")

# A drill for operators and tests: fail right after the named step has completed.
FAIL_AFTER_ENV = "AIRFLOW_SENTINEL_UPGRADE_FAIL_AFTER"

Report = Callable[[str], None]


class StepFailed(SentinelError):
    """A step failed; the run stopped (and was rolled back unless asked not to)."""


def new_steps(in_place: bool) -> list[jr.StepRecord]:
    return [jr.StepRecord(name) for name in forward_steps(in_place)]


def _perform(ctx: Context, record: jr.StepRecord, action: Step, report: Report) -> None:
    record.state, record.started, record.finished = jr.RUNNING, time.time(), None
    ctx.journal.save(ctx.run)
    report(f"{record.name} ...")
    try:
        record.detail = action(ctx)
    except Exception as exc:  # whatever failed, even a bug here, the rollback must still run
        record.state, record.finished = jr.FAILED, time.time()
        record.detail = str(exc) if isinstance(exc, SentinelError) else _unexpected(exc)
        ctx.journal.save(ctx.run)
        raise StepFailed(f"{record.name}: {record.detail}") from None
    record.state, record.finished = jr.DONE, time.time()
    ctx.journal.save(ctx.run)
    report(f"{record.name}: done in {record.seconds or 0:.1f}s: {record.detail}")


def _unexpected(exc: Exception) -> str:
    log.exception("step failed unexpectedly")  # the traceback goes to the log, not the user
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {first}"


def forward(ctx: Context, report: Report) -> None:
    """Every forward step not done yet; on failure, the rollback (unless --no-rollback)."""
    ctx.run.state = jr.IN_PROGRESS
    try:
        for record in ctx.run.steps:
            if record.state == jr.DONE:
                continue
            _perform(ctx, record, FORWARD[record.name], report)
            _maybe_inject_failure(record)
    except StepFailed as failure:
        ctx.run.error = str(failure)
        if ctx.run.no_rollback:
            ctx.run.state = jr.FAILED_RUN
            ctx.journal.save(ctx.run)
            raise StepFailed(
                f"{failure}; not rolled back (--no-rollback): "
                f"`airflow-sentinel upgrade rollback {ctx.run.id}` undoes it"
            ) from None
        report(f"failed: {failure}; rolling back")
        restored = backward(ctx, report)
        raise StepFailed(f"{failure}; rolled back: {restored}") from None
    ctx.run.state = jr.SUCCEEDED
    ctx.journal.save(ctx.run)
    _release_lock(ctx)


def _maybe_inject_failure(record: jr.StepRecord) -> None:
    if os.environ.get(FAIL_AFTER_ENV) == record.name:
        record.state = jr.FAILED
        record.detail += f" (then failed on purpose: {FAIL_AFTER_ENV})"
        raise StepFailed(f"{record.name}: failure injected after this step")


def backward(ctx: Context, report: Report) -> str:
    """Undo whatever the run began, in reverse; resumable like the forward steps."""
    if not ctx.run.rollback:
        ctx.run.rollback = [jr.StepRecord(name) for name, _ in BACKWARD]
    ctx.run.state = jr.ROLLING_BACK
    ctx.journal.save(ctx.run)
    actions = dict(BACKWARD)
    try:
        for record in ctx.run.rollback:
            if record.state != jr.DONE:
                _perform(ctx, record, actions[record.name], report)
    except StepFailed as failure:
        ctx.run.state = jr.ROLLBACK_FAILED
        ctx.journal.save(ctx.run)
        raise StepFailed(
            f"rollback failed at {failure}; fix the cause and run "
            f"`airflow-sentinel upgrade rollback {ctx.run.id}` again"
        ) from None
    ctx.run.state = jr.ROLLED_BACK
    ctx.journal.save(ctx.run)
    _release_lock(ctx)
    return "; ".join(f"{r.name}: {r.detail}" for r in ctx.run.rollback)


def _release_lock(ctx: Context) -> None:
    if ctx.controllers is None or not ctx.leader:
        return
    try:
        ctx.controllers.release_lock(ctx.run.id)
    except SentinelError as exc:
        raise UpgradeError(f"could not release the cluster upgrade lock: {exc}") from None
