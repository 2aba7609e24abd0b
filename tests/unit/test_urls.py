"""Metastore URLs: driver mapping, validation, and keeping passwords out of output."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from airflow_sentinel.metastore.urls import mask, normalize_metastore_url, password_of, scrub

SECRET = "s3cretpw"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:////var/lib/sentinel/m.db", "sqlite:////var/lib/sentinel/m.db"),
        ("sqlite+pysqlite:////var/lib/m.db", "sqlite:////var/lib/m.db"),
        ("mysql://u:p@h/db", "mysql+pymysql://u:p@h/db"),
        ("mysql+mysqldb://u:p@h:3306/db", "mysql+pymysql://u:p@h:3306/db"),
        ("mysql+pymysql://u:p@h/db", "mysql+pymysql://u:p@h/db"),
        ("mariadb://u:p@h/db", "mysql+pymysql://u:p@h/db"),
        ("mariadb+pymysql://u:p@h/db", "mysql+pymysql://u:p@h/db"),
        ("postgresql://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
        ("postgres://u:p@h:5433/db", "postgresql+psycopg://u:p@h:5433/db"),
        ("postgres+psycopg2://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
        ("postgresql+psycopg2://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
        ("postgresql+psycopg://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
        ("PostgreSQL://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
        ("  mysql://u:p@h/db \n", "mysql+pymysql://u:p@h/db"),
    ],
)
def test_normalize_maps_to_the_shipped_driver(given: str, expected: str) -> None:
    assert normalize_metastore_url(given) == expected


def test_normalize_keeps_every_part_of_the_url() -> None:
    result = make_url(
        normalize_metastore_url("postgresql+psycopg2://alice:pw@db.example:6432/af?sslmode=require")
    )
    assert result.drivername == "postgresql+psycopg"
    assert result.username == "alice"
    assert result.password == "pw"
    assert result.host == "db.example"
    assert result.port == 6432
    assert result.database == "af"
    assert dict(result.query) == {"sslmode": "require"}


def test_normalize_round_trips_a_password_with_special_characters() -> None:
    # '@', ':' and '/' must be percent-encoded in a URL; the password must survive.
    normalized = normalize_metastore_url("mysql://u:p%40ss%3Aw%2Frd@h/db")
    assert make_url(normalized).password == "p@ss:w/rd"
    assert make_url(normalized).host == "h"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////tmp/m.db",
        "mysql://u:p%40ss@h:3306/db?charset=utf8mb4",
        "postgres://u@h/db",
    ],
)
def test_normalize_is_idempotent(url: str) -> None:
    once = normalize_metastore_url(url)
    assert normalize_metastore_url(once) == once


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("notaurl", "no scheme"),
        ("", "no scheme"),
        ("redis://x", "'redis://'"),
        ("oracle+cx_oracle://u:p@h/db", "'oracle+cx_oracle://'"),
        ("mssql+pyodbc://u:p@h/db", "'mssql+pyodbc://'"),
        ("http://h/db", "'http://'"),
    ],
)
def test_normalize_rejects_unsupported_or_missing_schemes(url: str, needle: str) -> None:
    with pytest.raises(ValueError, match="accepted") as info:
        normalize_metastore_url(url)
    assert needle in str(info.value)
    assert "postgresql+psycopg://" in str(info.value)
    assert "mysql+pymysql://" in str(info.value)


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("postgresql://u@h:notaport/db", "malformed"),
        ("sqlite://", "file path"),
        ("sqlite:///", "file path"),
        ("postgresql:///db", "host"),
        ("mysql://u:p@/db", "host"),
    ],
)
def test_normalize_rejects_malformed_urls(url: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        normalize_metastore_url(url)


@pytest.mark.parametrize("url", ["sqlite:///relative/m.db", "sqlite:///m.db", "sqlite:///~/m.db"])
def test_normalize_refuses_a_relative_sqlite_path_as_airflow_does(url: str) -> None:
    with pytest.raises(ValueError, match="relative") as info:
        normalize_metastore_url(url)
    assert url.removeprefix("sqlite:///") in str(info.value)
    assert "sqlite:////" in str(info.value)  # how to write an absolute one


@pytest.mark.parametrize(
    ("url", "typed", "meant"),
    [
        (f"postgressql://u:{SECRET}@h/db", "postgressql", "postgresql"),
        (f"Postgressql://u:{SECRET}@h/db", "Postgressql", "postgresql"),
        ("postgresql+psycopg3://u@h/db", "postgresql+psycopg3", "postgresql+psycopg"),
        ("mysq://u@h/db", "mysq", "mysql"),
        ("zookeper://h:2181/x", "zookeper", "zookeeper"),
    ],
)
def test_a_scheme_typo_is_shown_as_typed_with_the_near_miss(
    url: str, typed: str, meant: str
) -> None:
    with pytest.raises(ValueError) as info:
        normalize_metastore_url(url)
    message = str(info.value)
    assert f"'{typed}://'" in message
    assert f"did you mean '{meant}://'" in message
    assert "postgresql+psycopg://" in message  # what is accepted
    assert SECRET not in message


def test_a_scheme_far_from_any_known_one_has_no_guess() -> None:
    with pytest.raises(ValueError) as info:
        normalize_metastore_url("redis://x")
    assert "did you mean" not in str(info.value)


def test_text_that_is_no_scheme_is_not_echoed() -> None:
    with pytest.raises(ValueError) as info:
        normalize_metastore_url(f"u:{SECRET}@h://db")
    assert "no scheme" in str(info.value)
    assert SECRET not in str(info.value)


def test_normalize_rejects_in_memory_sqlite() -> None:
    with pytest.raises(ValueError, match="in-memory"):
        normalize_metastore_url("sqlite:///:memory:")


@pytest.mark.parametrize(
    "url",
    [
        f"redis://u:{SECRET}@h/0",
        f"postgresql://u:{SECRET}@h:notaport/db",
        f"postgresql://u:{SECRET}@/db",
    ],
)
def test_normalize_errors_never_contain_the_password(url: str) -> None:
    with pytest.raises(ValueError) as info:
        normalize_metastore_url(url)
    assert SECRET not in str(info.value)


# -- mask -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            f"postgresql+psycopg://alice:{SECRET}@db:5432/af",
            "postgresql+psycopg://alice:***@db:5432/af",
        ),
        (
            f"mysql+pymysql://root:{SECRET}@127.0.0.1/test",
            "mysql+pymysql://root:***@127.0.0.1/test",
        ),
        ("postgresql+psycopg://alice@db/af", "postgresql+psycopg://alice@db/af"),
        ("sqlite:////var/lib/m.db", "sqlite:////var/lib/m.db"),
    ],
)
def test_mask_hides_only_the_password(url: str, expected: str) -> None:
    assert mask(url) == expected


def test_mask_hides_a_percent_encoded_password_in_both_forms() -> None:
    masked = mask("postgresql+psycopg://u:p%40ss%2F1@h/db")
    assert "p@ss" not in masked
    assert "p%40ss" not in masked
    assert "u:***@h/db" in masked


def test_mask_of_an_unparseable_url_shows_nothing_of_it() -> None:
    assert mask(f"not a url {SECRET}") == "<unparseable URL>"


def test_mask_hides_a_password_given_as_query_parameter() -> None:
    assert SECRET not in mask(f"postgresql+psycopg://u@h/db?password={SECRET}")


# -- password_of and scrub -------------------------------------------------------------------


def test_password_of() -> None:
    assert password_of(f"postgresql://u:{SECRET}@h/db") == SECRET
    assert password_of("postgresql://u:p%40ss@h/db") == "p@ss"
    assert password_of("postgresql://u@h/db") is None
    assert password_of("sqlite:////tmp/m.db") is None
    assert password_of("not a url") is None


def test_scrub_removes_every_occurrence_of_the_password() -> None:
    url = f"postgresql+psycopg://u:{SECRET}@h/db"
    text = f"connection failed: password={SECRET} user=u; retry with {SECRET}"
    scrubbed = scrub(text, url)
    assert SECRET not in scrubbed
    assert scrubbed == "connection failed: password=*** user=u; retry with ***"


def test_scrub_removes_the_decoded_form_of_an_encoded_password() -> None:
    scrubbed = scrub("auth failed for password 'p@ss'", "mysql+pymysql://u:p%40ss@h/db")
    assert "p@ss" not in scrubbed
    assert scrubbed == "auth failed for password '***'"


@pytest.mark.parametrize("url", ["postgresql://u@h/db", "sqlite:////tmp/m.db", "not a url"])
def test_scrub_without_a_password_leaves_the_text_alone(url: str) -> None:
    text = "connection refused by h:5432"
    assert scrub(text, url) == text
