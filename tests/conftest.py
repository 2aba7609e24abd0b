from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.backends import fresh_metastore_url, selected_backends


@pytest.fixture(params=selected_backends())
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def metastore_url(backend: str, tmp_path: Path) -> Iterator[str]:
    with fresh_metastore_url(backend, tmp_path) as url:
        yield url
