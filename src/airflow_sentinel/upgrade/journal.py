"""The journal of one upgrade run: a JSON file written before and after every step.

Each write goes to a temporary file that is fsynced and renamed over the journal, so a
kill -9 or a power cut leaves either the previous record or the next one, never half.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from airflow_sentinel.errors import SentinelError, UserError

JOURNAL = "journal.json"

# Step states
PENDING, RUNNING, DONE, FAILED, SKIPPED = "pending", "running", "done", "failed", "skipped"
# Run states
IN_PROGRESS = "in progress"
SUCCEEDED = "succeeded"
FAILED_RUN = "failed"  # stopped on a failure and was not rolled back (--no-rollback)
ROLLING_BACK = "rolling back"
ROLLED_BACK = "rolled back"
ROLLBACK_FAILED = "rollback failed"


@dataclass
class StepRecord:
    name: str
    state: str = PENDING
    started: float | None = None
    finished: float | None = None
    detail: str = ""

    @property
    def seconds(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started


@dataclass
class Run:
    id: str
    node: str
    home: str
    env_link: str
    old_env: str
    new_env: str
    from_version: str
    to_version: str
    cluster_role: str  # "leader": does the cluster-wide steps; "follower": node-local only
    in_place: bool = False
    no_rollback: bool = False
    constraints: str = ""
    state: str = IN_PROGRESS
    error: str = ""
    created: float = field(default_factory=time.time)
    steps: list[StepRecord] = field(default_factory=list)
    rollback: list[StepRecord] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)  # what later steps must know

    def step(self, name: str) -> StepRecord:
        for record in self.steps:
            if record.name == name:
                return record
        raise KeyError(name)

    def reached(self, name: str) -> bool:
        """The step began (and so may have changed something)."""
        return self.step(name).state in (RUNNING, DONE, FAILED)

    @property
    def finished(self) -> bool:
        return self.state in (SUCCEEDED, ROLLED_BACK)


class JournalError(SentinelError):
    """The journal could not be written (a full disk, a read-only folder)."""


class Journal:
    """The runs of one AIRFLOW_HOME, each in its own owner-only folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, run_id: str) -> Path:
        return self.root / run_id

    def create(self, run: Run) -> Path:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.root.chmod(0o700)
        folder = self.folder(run.id)
        folder.mkdir(mode=0o700)
        self.save(run)
        return folder

    def save(self, run: Run) -> None:
        folder = self.folder(run.id)
        data = json.dumps(asdict(run), indent=2, sort_keys=True).encode()
        tmp: str | None = None
        try:
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".journal-")
            try:
                if os.write(fd, data) != len(data):
                    raise OSError(28, "No space left on device")  # a short write: full
                os.fsync(fd)
            finally:
                os.close(fd)
            Path(tmp).replace(folder / JOURNAL)
            tmp = None
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise JournalError(
                f"cannot write the journal in {folder}: {exc.strerror or exc}"
            ) from None
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)  # what room there is goes to the rollback

    def load(self, run_id: str) -> Run:
        path = self.folder(run_id) / JOURNAL
        if not path.is_file():
            known = ", ".join(r.id for r in self.runs()[-5:]) or "none"
            raise UserError(f"no upgrade run {run_id!r} in {self.root}; known runs: {known}")
        raw = json.loads(path.read_text())
        raw["steps"] = [StepRecord(**s) for s in raw.get("steps", [])]
        raw["rollback"] = [StepRecord(**s) for s in raw.get("rollback", [])]
        return Run(**raw)

    def runs(self) -> list[Run]:
        if not self.root.is_dir():
            return []
        found = [self.load(p.parent.name) for p in self.root.glob(f"*/{JOURNAL}")]
        return sorted(found, key=lambda r: r.created)

    def latest(self, run_id: str | None) -> Run:
        if run_id:
            return self.load(run_id)
        runs = self.runs()
        if not runs:
            raise UserError(f"no upgrade runs recorded in {self.root}")
        return runs[-1]
