from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.backends import fresh_metastore_url, selected_backends

# Two test processes (scripts/test), each running its group in order: the files that run a
# real Airflow in one (the upgrades use fixed paths and port 8080, and these tests count
# every Airflow scheduler on the host), everything else in the other. Grouped by file, as
# the scheduler sees only node ids.
AIRFLOW_FILES = frozenset(
    {
        "test_upgrade.py",
        "test_upgrade_databases.py",
        "test_real_airflow.py",
        "test_strays.py",
        "test_db_fence_airflow.py",
    }
)


def test_group(nodeid: str) -> str:
    file = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
    return "airflow" if file in AIRFLOW_FILES else "others"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]

    class TwoGroups(LoadScopeScheduling):  # type: ignore[misc]  # xdist has no types
        def _split_scope(self, nodeid: str) -> str:
            return test_group(nodeid)

    return TwoGroups(config, log)


@pytest.fixture(params=selected_backends())
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def metastore_url(backend: str, tmp_path: Path) -> Iterator[str]:
    with fresh_metastore_url(backend, tmp_path) as url:
        yield url
