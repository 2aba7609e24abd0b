"""Metastore URLs: accepted schemes, driver mapping, and password masking."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

ACCEPTED = (
    "sqlite:////ABSOLUTE/PATH, mysql+pymysql://USER:PASS@HOST[:PORT]/DB (MySQL, MariaDB), "
    "postgresql+psycopg://USER:PASS@HOST[:PORT]/DB, "
    "zookeeper://[USER:PASS@]HOST[:PORT][,HOST[:PORT]...]/PATH"
)
ZOOKEEPER = "zookeeper"
ZOOKEEPER_PORT = 2181


@dataclass(frozen=True)
class ZooKeeperUrl:
    """`zookeeper://[user:password@]host1:2181,host2:2181/path`: an ensemble and a root."""

    hosts: str
    path: str
    user: str | None
    password: str | None

    @property
    def digest_auth(self) -> str | None:
        return f"{self.user}:{self.password}" if self.user and self.password else None

    @property
    def masked(self) -> str:
        auth = f"{self.user}:***@" if self.password else f"{self.user}@" if self.user else ""
        return f"{ZOOKEEPER}://{auth}{self.hosts}{self.path}"


def parse_zookeeper_url(raw: str) -> ZooKeeperUrl:
    """Parse and check a ZooKeeper URL; ValueError says what is wrong and what is accepted."""
    parts = urlsplit(raw.strip())
    if parts.scheme != ZOOKEEPER:
        raise ValueError(f"not a zookeeper:// URL; accepted: {ACCEPTED}")
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    hosts = []
    for entry in hostlist.split(","):
        host, _, port = entry.strip().rpartition(":") if ":" in entry else (entry.strip(), "", "")
        port_number = int(port) if port.isdigit() else ZOOKEEPER_PORT if not port else -1
        if not host or not 0 < port_number < 65536:
            raise ValueError(f"bad ZooKeeper host '{entry}'; accepted: {ACCEPTED}")
        hosts.append(f"{host}:{port_number}")
    path = parts.path.rstrip("/")
    if not path or parts.query or parts.fragment:
        raise ValueError(
            "a ZooKeeper URL needs a root path for this cluster, such as /airflow-sentinel/prod, "
            "and no query"
        )
    return ZooKeeperUrl(",".join(hosts), path, unquote(user) or None, unquote(password) or None)


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


SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9_+.-]*")  # as SQLAlchemy names drivers


def normalize_metastore_url(raw: str) -> str:
    """The URL with our driver, or ValueError naming what is accepted."""
    raw = raw.strip()
    typed = raw.split("://", 1)[0] if "://" in raw else ""
    scheme = typed.lower()
    if scheme == ZOOKEEPER:
        parse_zookeeper_url(raw)
        return raw
    if scheme == "postgres" or scheme.startswith("postgres+"):
        raw = "postgresql" + raw[len("postgres") :]
        scheme = "postgresql" + scheme[len("postgres") :]
    if scheme not in DRIVER_MAP:
        raise ValueError(_unsupported(typed))
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):
        raise ValueError(f"malformed URL; accepted: {ACCEPTED}") from None
    url = url.set(drivername=DRIVER_MAP[scheme])
    _check_parts(url)
    return url.render_as_string(hide_password=False)


def _unsupported(typed: str) -> str:
    """The scheme as typed, a near miss if there is one, and what is accepted."""
    if not SCHEME.fullmatch(typed):  # nothing like a scheme: show none of it
        return f"malformed URL (no scheme such as postgresql://); accepted: {ACCEPTED}"
    known = [*DRIVER_MAP, ZOOKEEPER]
    near = difflib.get_close_matches(typed.lower(), known, n=1, cutoff=0.75)
    hint = f" (did you mean '{near[0]}://'?)" if near else ""
    return f"unsupported scheme '{typed}://'{hint}; accepted: {ACCEPTED}"


def _check_parts(url: URL) -> None:
    if url.drivername == "sqlite":
        _check_sqlite_path(url)
        return
    if not url.host:
        raise ValueError(f"URL needs a host; accepted: {ACCEPTED}")
    if not url.database:
        raise ValueError(f"URL needs a database name after the host; accepted: {ACCEPTED}")
    try:
        port = url.port
    except ValueError:
        port = -1
    if port is not None and not 0 < port < 65536:
        raise ValueError("URL port must be a number from 1 to 65535")


def _check_sqlite_path(url: URL) -> None:
    database = url.database or ""
    if not database or database == ":memory:" or "memory" in url.query.get("mode", ""):
        raise ValueError("sqlite URL needs a file path (in-memory databases cannot be shared)")
    if not database.startswith("/"):
        # As Airflow does: a relative path would depend on the working directory.
        raise ValueError(
            f"sqlite path '{database}' is relative; use an absolute path (sqlite:////abs/path.db)"
        )


# Query parameters that carry a password (libpq and the MySQL drivers accept these).
SECRET_QUERY_KEYS = ("password", "passwd")


def mask(url: str) -> str:
    """The URL without its password, for logs, errors and status output."""
    if url.startswith(f"{ZOOKEEPER}://"):
        try:
            return parse_zookeeper_url(url).masked
        except ValueError:
            return "<unparseable URL>"
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return "<unparseable URL>"
    hidden = {k: "***" for k in SECRET_QUERY_KEYS if k in parsed.query}
    return parsed.update_query_dict(hidden).render_as_string(hide_password=True)


def password_of(url: str) -> str | None:
    if url.startswith(f"{ZOOKEEPER}://"):
        try:
            return parse_zookeeper_url(url).password
        except ValueError:
            return None
    try:
        parsed: URL = make_url(url)
    except (ArgumentError, ValueError):
        return None
    if isinstance(parsed.password, str) and parsed.password:
        return parsed.password
    for key in SECRET_QUERY_KEYS:
        value = parsed.query.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def scrub(text: str, url: str) -> str:
    """Remove the URL's password from a message (driver errors sometimes echo arguments)."""
    password = password_of(url)
    if password:
        text = text.replace(password, "***")
    return text
