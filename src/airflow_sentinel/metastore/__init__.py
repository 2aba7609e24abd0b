"""Metastores behind one interface; the URL's scheme picks the backend."""

from __future__ import annotations

import importlib.util

from airflow_sentinel.clock import Clock
from airflow_sentinel.errors import MetastoreError, MetastoreUnavailable, UserError
from airflow_sentinel.metastore.base import Metastore
from airflow_sentinel.metastore.bounded import open_bounded
from airflow_sentinel.metastore.urls import ZOOKEEPER, mask


def open_metastore(
    url: str, clock: Clock, op_timeout: float = 10.0, lease_ttl: float = 15.0
) -> Metastore:
    """Open the backend for ``url`` (already normalized) and make sure its schema exists.

    ``lease_ttl`` is the session timeout asked of ZooKeeper; SQL leases carry it per call.
    Every call, opening included, returns within ``op_timeout`` (see bounded.py).
    Raises MetastoreUnavailable, naming the host and never the password, when it cannot.
    """
    if url.startswith(f"{ZOOKEEPER}://") and importlib.util.find_spec("kazoo") is None:
        raise UserError(
            "metastore: zookeeper:// needs the ZooKeeper client, which is not installed: "
            "pip install 'airflow-sentinel[zookeeper]' into the controller's environment"
        )
    try:
        store = open_bounded(
            lambda: _backend(url, clock, op_timeout, lease_ttl), op_timeout, mask(url)
        )
    except OSError as exc:  # the SQLite file's folder cannot be created or written
        raise MetastoreUnavailable(f"cannot use metastore {mask(url)}: {exc.strerror}") from None
    except MetastoreError as exc:
        raise MetastoreUnavailable(f"cannot use {exc}") from None
    try:
        store.check()
        store.ensure_schema()
    except MetastoreError as exc:
        store.close()
        raise MetastoreUnavailable(f"cannot use {exc}") from None
    return store


def _backend(url: str, clock: Clock, op_timeout: float, lease_ttl: float) -> Metastore:
    if url.startswith(f"{ZOOKEEPER}://"):
        from airflow_sentinel.metastore.zookeeper import ZooKeeperMetastore

        return ZooKeeperMetastore(url, clock, op_timeout, session_timeout=lease_ttl)
    from airflow_sentinel.metastore.sql import SqlMetastore

    return SqlMetastore(url, clock, op_timeout)


__all__ = ["Metastore", "open_metastore"]
