"""Metastore URLs: accepted schemes, driver mapping, and password masking."""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

ACCEPTED = (
    "sqlite:///PATH, mysql+pymysql://USER:PASS@HOST[:PORT]/DB (MySQL, MariaDB), "
    "postgresql+psycopg://USER:PASS@HOST[:PORT]/DB"
)

# Airflow's own connection strings often name other drivers; we ship one per database.
DRIVER_MAP = {
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite",
    "mysql": "mysql+pymysql",
    "mysql+pymysql": "mysql+pymysql",
    "mysql+mysqldb": "mysql+pymysql",
    "mariadb": "mysql+pymysql",
    "mariadb+pymysql": "mysql+pymysql",
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
    "postgresql+psycopg2": "postgresql+psycopg",
}


def normalize_metastore_url(raw: str) -> str:
    """The URL with our driver, or ValueError naming what is accepted."""
    raw = raw.strip()
    scheme = raw.split("://", 1)[0].lower() if "://" in raw else ""
    if scheme.startswith("postgres") and not scheme.startswith("postgresql"):
        raw = "postgresql" + raw[len("postgres") :]
        scheme = "postgresql" + scheme[len("postgres") :]
    if scheme not in DRIVER_MAP:
        shown = f"'{scheme}://'" if scheme else "no scheme"
        raise ValueError(f"malformed or unsupported URL ({shown}); accepted: {ACCEPTED}")
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):
        raise ValueError(f"malformed URL; accepted: {ACCEPTED}") from None
    url = url.set(drivername=DRIVER_MAP[scheme])
    if url.drivername == "sqlite" and not url.database:
        raise ValueError("sqlite URL needs a file path (in-memory databases cannot be shared)")
    if url.drivername != "sqlite" and not url.host:
        raise ValueError(f"URL needs a host; accepted: {ACCEPTED}")
    return url.render_as_string(hide_password=False)


def mask(url: str) -> str:
    """The URL without its password, for logs, errors and status output."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<unparseable URL>"


def password_of(url: str) -> str | None:
    try:
        parsed: URL = make_url(url)
    except (ArgumentError, ValueError):
        return None
    return parsed.password if isinstance(parsed.password, str) else None


def scrub(text: str, url: str) -> str:
    """Remove the URL's password from a message (driver errors sometimes echo arguments)."""
    password = password_of(url)
    if password:
        text = text.replace(password, "***")
    return text
