"""Metastores behind one interface; the URL's scheme picks the backend."""

from __future__ import annotations

from sqlalchemy.engine import make_url

from airflow_sentinel.clock import Clock
from airflow_sentinel.errors import MetastoreError, MetastoreUnavailable
from airflow_sentinel.metastore.base import Metastore
from airflow_sentinel.metastore.urls import mask


def open_metastore(url: str, clock: Clock, op_timeout: float = 10.0) -> Metastore:
    """Open the backend for ``url`` (already normalized) and make sure its schema exists.

    Raises MetastoreUnavailable, naming the host and never the password, when it cannot.
    """
    from airflow_sentinel.metastore.sql import SqlMetastore

    try:
        store: Metastore = SqlMetastore(url, clock, op_timeout)
    except OSError as exc:  # the SQLite file's folder cannot be created or written
        raise MetastoreUnavailable(f"cannot use metastore {mask(url)}: {exc.strerror}") from None
    try:
        store.check()
        store.ensure_schema()
    except MetastoreError as exc:
        store.close()
        raise MetastoreUnavailable(f"cannot use {exc}") from None
    return store


def backend_name(url: str) -> str:
    return make_url(url).get_backend_name()


__all__ = ["Metastore", "backend_name", "open_metastore"]
