"""Recording fakes for unit tests of the controller's wiring (never for integration tests)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_sentinel.errors import MetastoreError
from airflow_sentinel.metastore.base import Metastore
from airflow_sentinel.process.guard import RunOwner
from airflow_sentinel.process.handle import RunEnded


@dataclass
class FakeRun:
    argv: list[str]
    fence_at: float
    grace: float
    scheduler_pid: int | None = 4242
    owner: RunOwner | None = None
    fences: list[float] = field(default_factory=list)
    stops: list[float] = field(default_factory=list)
    ended: RunEnded | None = None

    def fileno(self) -> int:
        raise NotImplementedError("the unit tests drive the controller by tick()")

    def extend(self, fence_at: float) -> None:
        self.fences.append(fence_at)

    def stop(self, grace: float) -> None:
        self.stops.append(grace)

    def poll(self) -> RunEnded | None:
        return self.ended

    def wait(self, timeout: float) -> RunEnded | None:
        # A stop requested through the guard ends the run promptly.
        if self.ended is None and self.stops:
            self.ended = RunEnded("exited", 0)
        return self.ended


class RecordingLauncher:
    def __init__(self) -> None:
        self.runs: list[FakeRun] = []
        self.fail_with: OSError | None = None

    def launch(
        self,
        argv: list[str],
        env: Mapping[str, str],
        fence_at: float,
        grace: float,
        owner: RunOwner | None = None,
    ) -> FakeRun:
        if self.fail_with is not None:
            raise self.fail_with
        run = FakeRun(list(argv), fence_at, grace, owner=owner)
        self.runs.append(run)
        return run

    @property
    def last(self) -> FakeRun:
        return self.runs[-1]


class FlakyStore:
    """A real metastore that can be made unreachable on demand."""

    def __init__(self, inner: Metastore) -> None:
        self._inner = inner
        self.broken = False
        self.failing: set[str] = set()  # only these calls fail
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            if self.broken or name in self.failing:
                raise MetastoreError("metastore sqlite:///x: unreachable (test)")
            return attribute(*args, **kwargs)

        return call
