from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_sentinel.clock import FakeClock
from airflow_sentinel.config import Settings, load_settings
from airflow_sentinel.metastore import open_metastore
from tests.support.fakes import FlakyStore

NEVER_MATCHES = "no-such-scheduler-binary-7f3a run"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No AIRFLOW* variable of the real environment may reach the code under test."""
    for name in list(os.environ):
        if name.upper().startswith("AIRFLOW"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    yield


# The controller's tests (the loop and its parts): one node on a SQLite metastore, a clock
# that moves only when told, and a store that fails on demand.
@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(
        {
            "node_id": "a",
            "metastore": f"sqlite:///{tmp_path / 'm.db'}",
            "scheduler_command": NEVER_MATCHES,
            "lease_ttl": "15",
            "renew_interval": "3",
            "stop_timeout": "5",
            "start_timeout": "20",
            "max_restarts": "3",
            "cooldown": "100",
        },
        environ={},
        airflow_home=tmp_path,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(settings: Settings, clock: FakeClock) -> Iterator[FlakyStore]:
    inner = open_metastore(settings.metastore, clock)
    yield FlakyStore(inner)
    inner.close()
