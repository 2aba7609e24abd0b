"""Real metastores for tests: a fresh namespace (file, database or schema) per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from tests.support.zookeeper import shared_server_hosts

MYSQL_URL = os.environ.get("SENTINEL_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
POSTGRES_URL = os.environ.get(
    "SENTINEL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
ALL_BACKENDS = ("sqlite", "mariadb", "postgresql", "zookeeper")


def selected_backends() -> tuple[str, ...]:
    """SENTINEL_TEST_BACKENDS=sqlite,postgresql narrows the matrix; CI runs all of them."""
    raw = os.environ.get("SENTINEL_TEST_BACKENDS")
    if not raw:
        return ALL_BACKENDS
    chosen = tuple(b.strip() for b in raw.split(",") if b.strip())
    unknown = set(chosen) - set(ALL_BACKENDS)
    if unknown:
        raise ValueError(f"SENTINEL_TEST_BACKENDS: unknown {sorted(unknown)}; use {ALL_BACKENDS}")
    return chosen


@contextmanager
def fresh_metastore_url(backend: str, tmp_path: Path) -> Iterator[str]:
    name = f"sentinel_t_{uuid.uuid4().hex[:10]}"
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'metastore.db'}"
    elif backend == "mariadb":
        admin = sa.create_engine(MYSQL_URL)
        with admin.begin() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
        try:
            yield str(sa.make_url(MYSQL_URL).set(database=name).render_as_string(False))
        finally:
            with admin.begin() as conn:
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
            admin.dispose()
    elif backend == "postgresql":
        admin = sa.create_engine(POSTGRES_URL)
        with admin.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {name}"))
        url = sa.make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={name}"})
        try:
            yield url.render_as_string(False)
        finally:
            with admin.begin() as conn:
                conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {name} CASCADE"))
            admin.dispose()
    elif backend == "zookeeper":
        # A root of its own under a shared server: the URL's path is the cluster's namespace.
        yield f"zookeeper://{shared_server_hosts()}/sentinel-test/{name}"
    else:
        raise ValueError(backend)
