from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.backends import fresh_metastore_url, selected_backends

# Two test processes, each running its group in order: the real-Airflow tests (upgrades use
# fixed paths and port 8080, and they and the real-scheduler tests count every Airflow
# scheduler on the host) in one, everything else in the other.
AIRFLOW_GROUP_FILES = ("test_upgrade.py", "test_upgrade_databases.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        real_airflow = item.get_closest_marker("airflow") is not None
        group = "airflow" if real_airflow or item.path.name in AIRFLOW_GROUP_FILES else "others"
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(params=selected_backends())
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def metastore_url(backend: str, tmp_path: Path) -> Iterator[str]:
    with fresh_metastore_url(backend, tmp_path) as url:
        yield url
