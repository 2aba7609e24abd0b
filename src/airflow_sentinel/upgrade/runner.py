"""Runs the steps in order, journaled; on a failure, runs the rollback steps in order.

The journal is written before a step starts and after it ends, so after a kill -9 the run
can be resumed (the step under way is repeated) or rolled back (every step that began is
undone).
"""

from __future__ import annotations

import logging
import os
import time
import traceback
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


def _perform(
    ctx: Context, record: jr.StepRecord, action: Step, report: Report, strict: bool = True
) -> None:
    """One step, journaled before and after. ``strict``: a journal that cannot be written
    fails the step (forward: no step runs unrecorded); otherwise the step goes on and the
    failure is remembered (a rollback must not stop for a full disk)."""
    record.state, record.started, record.finished = jr.RUNNING, time.time(), None
    _save(ctx, record, strict)
    report(f"{record.name} ...")
    try:
        record.detail = action(ctx)
    except Exception as exc:  # whatever failed, even a bug here, the rollback must still run
        record.state, record.finished = jr.FAILED, time.time()
        record.detail = str(exc) if isinstance(exc, SentinelError) else _unexpected(ctx, exc)
        _save(ctx, record, strict=False)
        raise StepFailed(f"{record.name}: {record.detail}") from None
    record.state, record.finished = jr.DONE, time.time()
    _save(ctx, record, strict)
    report(f"{record.name}: done in {record.seconds or 0:.1f}s: {record.detail}")


def _save(ctx: Context, record: jr.StepRecord | None = None, strict: bool = False) -> None:
    try:
        ctx.journal.save(ctx.run)
    except jr.JournalError as exc:
        ctx.journal_error = str(exc)
        if strict:
            if record is not None:
                record.state, record.finished, record.detail = jr.FAILED, time.time(), str(exc)
            name = record.name if record is not None else "journal"
            raise StepFailed(f"{name}: {exc}") from None
        log.error("%s", exc)  # noqa: TRY400 - a full disk, not a bug: no traceback


def _journal_note(ctx: Context) -> str:
    if not ctx.journal_error:
        return ""
    return (
        f"; {ctx.journal_error}, so it may not show this outcome: free some room there, "
        f"then `airflow-sentinel upgrade status {ctx.run.id}`"
    )


def _unexpected(ctx: Context, exc: Exception) -> str:
    """One line for the operator; the traceback, for a bug report, beside the journal."""
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    detail = f"{type(exc).__name__}: {first}"
    trace = "".join(traceback.format_exception(exc))
    log.debug("step failed unexpectedly\n%s", trace)
    path = ctx.folder / "errors.log"
    try:
        with path.open("a") as out:
            out.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {trace}\n")
    except OSError:
        return detail
    return f"{detail} (traceback in {path})"


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
            _save(ctx)
            raise StepFailed(
                f"{failure}; not rolled back (--no-rollback): "
                f"`airflow-sentinel upgrade rollback {ctx.run.id}` undoes it{_journal_note(ctx)}"
            ) from None
        report(f"failed: {failure}; rolling back")
        restored = backward(ctx, report)
        raise StepFailed(f"{failure}; rolled back: {restored}{_journal_note(ctx)}") from None
    ctx.run.state = jr.SUCCEEDED
    _save(ctx, strict=False)
    if ctx.journal_error:
        report(f"warning: the upgrade succeeded{_journal_note(ctx)}")
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
    _save(ctx)
    actions = dict(BACKWARD)
    try:
        for record in ctx.run.rollback:
            if record.state != jr.DONE:
                _perform(ctx, record, actions[record.name], report, strict=False)
    except StepFailed as failure:
        ctx.run.state = jr.ROLLBACK_FAILED
        _save(ctx)
        raise StepFailed(
            f"rollback failed at {failure}; fix the cause and run "
            f"`airflow-sentinel upgrade rollback {ctx.run.id}` again{_held_note(ctx)}"
            f"{_journal_note(ctx)}"
        ) from None
    ctx.run.state = jr.ROLLED_BACK
    _save(ctx)
    _release_lock(ctx)
    return "; ".join(f"{r.name}: {r.detail}" for r in ctx.run.rollback)


def _held_note(ctx: Context) -> str:
    if ctx.controllers is None or not ctx.leader or not ctx.run.reached("stop"):
        return ""
    return "; the cluster stays held (no scheduler starts) until that rollback succeeds"


def _release_lock(ctx: Context) -> None:
    if ctx.controllers is None or not ctx.leader:
        return
    try:
        ctx.controllers.release_lock(ctx.run.id)
    except SentinelError as exc:
        raise UpgradeError(f"could not release the cluster upgrade lock: {exc}") from None
