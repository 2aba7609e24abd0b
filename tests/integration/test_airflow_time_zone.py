"""Airflow keeps its times in UTC and on MySQL reads them in a UTC session; an engine of
ours that reads Airflow's tables must do the same, or every age it computes is off by the
server's time zone. Our own tables keep the session the server gives."""

from __future__ import annotations

import sqlalchemy as sa

from airflow_sentinel.metastore.sql import create_sql_engine

MARIADB = "mysql+pymysql://root@127.0.0.1:3306/test"


def test_an_engine_for_airflows_tables_reads_in_utc_on_every_connection() -> None:
    engine = create_sql_engine(MARIADB, 5.0, airflow_tables=True)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SET time_zone = '-05:00'"))  # as a server west of UTC
            conn.invalidate()  # gone: the pool opens a fresh connection
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT @@session.time_zone")).scalar() == "+00:00"
    finally:
        engine.dispose()


def test_an_engine_for_our_own_tables_keeps_the_servers_zone() -> None:
    engine = create_sql_engine(MARIADB, 5.0)
    try:
        with engine.connect() as conn:
            server = conn.execute(sa.text("SELECT @@global.time_zone")).scalar()
            session = conn.execute(sa.text("SELECT @@session.time_zone")).scalar()
    finally:
        engine.dispose()
    assert session == server
