"""The `[sentinel]` keys: their types, defaults, documentation and the timing invariants."""

from __future__ import annotations

import ipaddress
import math
import shlex
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Key:
    name: str
    kind: str  # "str", "float", "int", or "choice"
    default: str  # as written in airflow.cfg; "" means "derived, see help"
    help: str
    choices: tuple[str, ...] = ()


KEYS: tuple[Key, ...] = (
    Key("node_id", "str", "", "Name of this node in the cluster. Default: the host name."),
    Key(
        "metastore",
        "str",
        "",
        "Where leadership lives: sqlite:////ABSOLUTE/PATH, mysql+pymysql://USER:PASS@HOST/DB "
        "(MySQL and MariaDB), postgresql+psycopg://USER:PASS@HOST/DB. Default: Airflow's own "
        "sql_alchemy_conn, in tables of our own (sentinel_*).",
    ),
    Key("scheduler_command", "str", "airflow scheduler", "Command that runs the scheduler."),
    Key(
        "lease_ttl",
        "float",
        "10",
        "Seconds a standby waits, after it last saw the lease change, before it takes over.",
    ),
    Key(
        "renew_interval",
        "float",
        "2",
        "Seconds between lease renewals (active) and lease checks (standby). "
        "Must satisfy 3 * renew_interval <= lease_ttl.",
    ),
    Key(
        "standby_poll",
        "float",
        "0.5",
        "Seconds between a standby's reads of the lease (one small read each), between its "
        "cycles. A standby takes over lease_ttl after it first saw the lease's last change, "
        "so a shorter poll sees that change sooner and takes over sooner after a fault. "
        "Values above renew_interval mean renew_interval (no reads between cycles).",
    ),
    Key(
        "stop_timeout",
        "float",
        "5",
        "Seconds a scheduler gets to exit after SIGTERM before it is killed with SIGKILL.",
    ),
    Key(
        "start_timeout",
        "float",
        "60",
        "Seconds a new scheduler has to prove itself: stay alive (health_check = process) or "
        "write its first heartbeat (health_check = heartbeat). Failing counts as a failed start.",
    ),
    Key(
        "max_restarts",
        "int",
        "3",
        "Failed starts in a row on this node before it steps down for `cooldown` seconds.",
    ),
    Key("cooldown", "float", "300", "Seconds a node that stepped down stays unfit to lead."),
    Key(
        "health_check",
        "choice",
        "process",
        "process: the scheduler process is alive. heartbeat: alive, and its heartbeat in "
        "Airflow's job table is younger than heartbeat_grace.",
        choices=("process", "heartbeat"),
    ),
    Key(
        "heartbeat_grace",
        "float",
        "60",
        "Seconds without a scheduler heartbeat before a running scheduler counts as hung.",
    ),
    Key(
        "stray_action",
        "choice",
        "kill",
        "What to do with a scheduler of this installation on this host that no controller "
        "runs (schedulers of other installations are never touched): "
        "kill it, or only report it.",
        choices=("kill", "report"),
    ),
    Key(
        "schema_gate",
        "choice",
        "on",
        "on: before every start, refuse a scheduler whose Airflow expects another database "
        "schema than the database has (its installation must be found through PATH). off: "
        "start without the check (a warning at every start).",
        choices=("on", "off"),
    ),
    Key(
        "db_fence",
        "choice",
        "auto",
        "The fence in Airflow's database: triggers that reject the writes of a scheduler "
        "whose epoch is older than the current one, raised by a new active node before its "
        "scheduler starts. auto: on for PostgreSQL and MySQL/MariaDB, off for SQLite (and "
        "off, with a warning, where it cannot be installed). on: required (a controller "
        "that cannot install it does not start). off: no fence.",
        choices=("auto", "on", "off"),
    ),
    Key(
        "db_fence_wait",
        "float",
        "10",
        "Seconds a new active node waits for the open transactions of an older scheduler "
        "(one on a host that froze) before it ends their connections to raise the fence.",
    ),
    Key("event_retention", "int", "10000", "Events kept in the metastore's event log."),
    Key(
        "log_level",
        "choice",
        "INFO",
        "Log level of the controller.",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
    ),
    Key(
        "log_format",
        "choice",
        "text",
        "text: one line per message, with the time zone, node and epoch. json: one JSON "
        "object per line with the keys time, level, node, instance, epoch, event, detail.",
        choices=("text", "json"),
    ),
    Key(
        "status_log_interval",
        "float",
        "300",
        "Seconds between INFO lines that say what this node is doing (active with its "
        "scheduler's pid, or standby behind which node); 0: never.",
    ),
    Key(
        "scheduler_log",
        "str",
        "",
        "File that gets the scheduler's own output, appended. Default: "
        "sentinel-scheduler.log in Airflow's [logging] base_log_folder. -: the controller's "
        "standard error, mixed with its own lines.",
    ),
    Key(
        "api_address",
        "str",
        "127.0.0.1:8975",
        "HOST:PORT of the controller's HTTP API (probes for load balancers, status, "
        "Prometheus metrics), next to Airflow's 8974; 0.0.0.0:8975 for other hosts; off: none.",
    ),
    Key(
        "api_auth",
        "choice",
        "actions",
        "What needs the token: actions (POST /switchover, /pause, /resume), or all "
        "(the probes, status and metrics too).",
        choices=("actions", "all"),
    ),
    Key(
        "api_token_file",
        "str",
        "",
        "File (owner-only) holding the API's token, sent as `Authorization: Bearer TOKEN` "
        "(or as the password of basic auth). Without a token, the API takes no actions.",
    ),
    Key(
        "api_token_cmd",
        "str",
        "",
        "Instead of api_token_file: a command whose output is the token (as Airflow's "
        "`_cmd` options), run at start by the controller and by the CLI.",
    ),
    Key(
        "api_token_secret",
        "str",
        "",
        "Instead of api_token_file: the key of the token in Airflow's secrets backend "
        "([secrets] backend, as Airflow's `_secret` options), asked through the scheduler's "
        "Airflow.",
    ),
    Key(
        "api_allow",
        "str",
        "",
        "Networks that may use the API, comma-separated (10.0.0.0/8, 127.0.0.1); "
        "empty: any. Others get 403.",
    ),
    Key(
        "api_tls_cert_file",
        "str",
        "",
        "PEM certificate (chain) of the API: with it the API speaks HTTPS only. Also the "
        "client certificate this node and its CLI present to other nodes' APIs.",
    ),
    Key("api_tls_key_file", "str", "", "PEM private key of api_tls_cert_file (owner-only)."),
    Key(
        "api_tls_ca_file",
        "str",
        "",
        "PEM CA certificates that check clients' certificates (with api_tls_verify_client) "
        "and other nodes' server certificates. Empty: the system's CAs, for the latter.",
    ),
    Key(
        "api_tls_verify_client",
        "choice",
        "none",
        "required: only clients with a certificate signed by api_tls_ca_file are served "
        "(load balancers and Prometheus too); none: any client.",
        choices=("none", "required"),
    ),
    Key(
        "alert_email_to",
        "str",
        "",
        "Addresses that get the alerts by email, comma-separated; empty: no email. Sent "
        "through Airflow's [smtp] settings unless the alert_smtp_* keys say otherwise.",
    ),
    Key(
        "alert_email_from",
        "str",
        "",
        "From address of the alert emails. Default: Airflow's [smtp] smtp_mail_from.",
    ),
    Key("alert_smtp_host", "str", "", "SMTP server for alerts. Default: [smtp] smtp_host."),
    Key(
        "alert_smtp_port",
        "int",
        "0",
        "Port of the SMTP server for alerts; 0: Airflow's [smtp] smtp_port.",
    ),
    Key(
        "alert_smtp_user",
        "str",
        "",
        "SMTP user for alerts. Default: [smtp] smtp_user (with its password).",
    ),
    Key(
        "alert_smtp_password_cmd",
        "str",
        "",
        "A command whose output is the SMTP password for alerts (as Airflow's `_cmd` "
        "options). Default: [smtp] smtp_password, smtp_password_cmd or smtp_password_secret.",
    ),
    Key(
        "alert_smtp_password_secret",
        "str",
        "",
        "Instead of alert_smtp_password_cmd: the password's key in Airflow's secrets backend, "
        "asked through the scheduler's Airflow.",
    ),
    Key(
        "alert_smtp_starttls",
        "choice",
        "airflow",
        "on: STARTTLS after connecting; off: not; airflow: as [smtp] smtp_starttls says.",
        choices=("airflow", "on", "off"),
    ),
    Key(
        "alert_smtp_ssl",
        "choice",
        "airflow",
        "on: TLS from the first byte (SMTPS, port 465); off: not; airflow: as [smtp] "
        "smtp_ssl says.",
        choices=("airflow", "on", "off"),
    ),
    Key(
        "alert_webhook_urls",
        "str",
        "",
        "Webhooks that get each alert as a JSON POST with a Slack-compatible `text` field "
        "(Slack and Mattermost incoming webhooks), comma-separated. Secrets: set them in "
        "airflow.cfg or the environment, never as a flag.",
    ),
    Key(
        "alert_webhook_urls_cmd",
        "str",
        "",
        "Instead of alert_webhook_urls: a command whose output is the webhook URLs, "
        "comma- or line-separated (as Airflow's `_cmd` options).",
    ),
    Key(
        "alert_no_scheduler_after",
        "float",
        "120",
        "Seconds without a running scheduler anywhere in the cluster (outside an upgrade "
        "hold) before an alert.",
    ),
    Key(
        "alert_restarts_per_hour",
        "int",
        "5",
        "Scheduler restarts on one node within an hour beyond which an alert goes out.",
    ),
    Key(
        "alert_hold_after",
        "float",
        "3600",
        "Seconds an upgrade may hold the cluster before an alert.",
    ),
    Key(
        "alert_min_interval",
        "float",
        "300",
        "Seconds within which an alert like one already sent (same kind, same node) is not "
        "sent again; the next one says how many were left out.",
    ),
)

KEY_NAMES = frozenset(k.name for k in KEYS)


@dataclass(frozen=True)
class Settings:
    node_id: str
    metastore: str
    scheduler_command: str
    lease_ttl: float
    renew_interval: float
    standby_poll: float
    stop_timeout: float
    start_timeout: float
    max_restarts: int
    cooldown: float
    health_check: str
    heartbeat_grace: float
    stray_action: str
    schema_gate: str
    db_fence: str
    db_fence_wait: float
    event_retention: int
    log_level: str
    log_format: str
    status_log_interval: float
    scheduler_log: str
    api_address: str
    api_auth: str
    api_token_file: str
    api_token_cmd: str
    api_token_secret: str
    api_allow: str
    api_tls_cert_file: str
    api_tls_key_file: str
    api_tls_ca_file: str
    api_tls_verify_client: str
    alert_email_to: str
    alert_email_from: str
    alert_smtp_host: str
    alert_smtp_port: int
    alert_smtp_user: str
    alert_smtp_password_cmd: str
    alert_smtp_password_secret: str
    alert_smtp_starttls: str
    alert_smtp_ssl: str
    alert_webhook_urls: str
    alert_webhook_urls_cmd: str
    alert_no_scheduler_after: float
    alert_restarts_per_hour: int
    alert_hold_after: float
    alert_min_interval: float
    airflow_home: str
    airflow_cfg: str

    @property
    def scheduler_argv(self) -> list[str]:
        return shlex.split(self.scheduler_command)

    @property
    def fence_margin(self) -> float:
        """Seconds between the guard's SIGKILL and the earliest moment another node may lead.

        Covers the kill itself, the guard's wake-up and clock-rate drift between hosts.
        """
        return fence_margin(self.lease_ttl)


def scheduler_command_problem(command: str) -> str | None:
    """Why the command cannot be split into a program and its arguments, or None.

    It is split as a POSIX shell would (no expansion), here at load time, so that a bad quote
    is a configuration problem of every command and not a crash of `start`. The command is not
    echoed: it may carry credentials.
    """
    if not command.strip():
        return "must not be empty"
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        return f"cannot be split into arguments ({exc}); check its quotes"
    if not argv or not argv[0]:
        return "must start with the program to run"
    return None


def api_address_problem(value: str) -> str | None:
    """Why ``value`` is neither off nor HOST:PORT, or None."""
    if value == "off":
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host.strip("[]") or not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"'{value}' must be HOST:PORT (port 1 to 65535), e.g. 127.0.0.1:8975, or off"
    return None


def api_allow_problem(value: str) -> str | None:
    try:
        parse_api_allow(value)
    except ValueError as exc:
        return f"'{value}': {exc}; give networks such as 10.0.0.0/8, 127.0.0.1"
    return None


def api_token_problems(values: dict[str, Any]) -> list[str]:
    given = [k for k in ("api_token_file", "api_token_cmd", "api_token_secret") if values.get(k)]
    if len(given) > 1:
        return [f"{', '.join(given)}: give the token one way only"]
    return []


def api_tls_problems(values: dict[str, Any]) -> list[str]:
    """The TLS keys that only make sense together."""
    cert, key = values.get("api_tls_cert_file"), values.get("api_tls_key_file")
    problems = []
    if bool(cert) != bool(key):
        problems.append(
            "api_tls_cert_file, api_tls_key_file: give both (HTTPS) or neither (plain HTTP)"
        )
    if values.get("api_tls_verify_client") == "required" and not (
        cert and values.get("api_tls_ca_file")
    ):
        problems.append(
            "api_tls_verify_client: required needs api_tls_cert_file, api_tls_key_file and "
            "api_tls_ca_file (the CA that signs the clients' certificates)"
        )
    return problems


def parse_api_allow(value: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(
        ipaddress.ip_network(part.strip(), strict=False)
        for part in value.split(",")
        if part.strip()
    )


def parse_api_address(value: str) -> tuple[str, int] | None:
    """(host, port) to bind, None when off; ``value`` already checked."""
    if value == "off":
        return None
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def fence_margin(lease_ttl: float) -> float:
    return min(1.0, lease_ttl * 0.1)


def _parse_float(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(raw)
    return value


PARSERS: dict[str, Callable[[str], Any]] = {
    "str": str,
    "float": _parse_float,
    "int": int,
}


def timing_problems(values: dict[str, Any]) -> list[str]:
    """The invariants between timing keys that make the fence hold (see README, Safety)."""
    problems: list[str] = []
    positive = (
        "lease_ttl",
        "renew_interval",
        "standby_poll",
        "stop_timeout",
        "start_timeout",
        "heartbeat_grace",
        "db_fence_wait",
    )
    for name in positive:
        if name in values and values[name] <= 0:
            problems.append(
                f"{name}: must be a number of seconds greater than 0, got {values[name]}"
            )
    if values["cooldown"] < 0:
        problems.append(f"cooldown: must be 0 or more seconds, got {values['cooldown']}")
    if values["max_restarts"] < 1:
        problems.append(
            f"max_restarts: must be a whole number of 1 or more, got {values['max_restarts']}"
        )
    if values.get("status_log_interval", 0) < 0:
        problems.append(
            f"status_log_interval: must be 0 (never) or more seconds, "
            f"got {values['status_log_interval']}"
        )
    if values["event_retention"] < 100:
        problems.append(f"event_retention: must be 100 or more, got {values['event_retention']}")
    if problems:
        return problems
    ttl, renew, stop = values["lease_ttl"], values["renew_interval"], values["stop_timeout"]
    if renew * 3 > ttl:
        problems.append(
            f"renew_interval: 3 * renew_interval ({renew * 3:g}) must be <= lease_ttl ({ttl:g})"
        )
    budget = 2 * renew + stop + fence_margin(ttl)
    if budget > ttl:
        problems.append(
            f"lease_ttl: must be >= 2 * renew_interval + stop_timeout + fence margin "
            f"({budget:g}), got {ttl:g}"
        )
    return problems


def split_list(value: str) -> list[str]:
    """Items of a comma-, space- or line-separated list, such as addresses or URLs."""
    return [item for item in value.replace(",", " ").split() if item]


def webhook_problem(url: str) -> str | None:
    """Why ``url`` cannot be a webhook, or None. The URL itself is never echoed: Slack's
    carry their secret in the path; scheme://host is as much as may be shown."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        shown = f"{parts.scheme}://{parts.hostname}" if parts.hostname else "a URL without a host"
        return f"{shown}: must be an http:// or https:// URL with a host"
    try:
        _ = parts.port  # a port that is not a number, or out of range
    except ValueError:
        return f"{parts.scheme}://{parts.hostname}: its port must be a number from 1 to 65535"
    return None


def alert_problems(values: dict[str, Any], origins: dict[str, str]) -> list[str]:
    """What is wrong with the alert keys, each named by where its value came from."""
    problems = []
    if origins.get("alert_webhook_urls", "").startswith("--"):
        problems.append(
            "--alert-webhook-urls: webhook URLs are secrets and the process list shows every "
            "flag; set them in airflow.cfg [sentinel] alert_webhook_urls or "
            "AIRFLOW__SENTINEL__ALERT_WEBHOOK_URLS"
        )
    else:
        for number, url in enumerate(split_list(values.get("alert_webhook_urls", "")), 1):
            problem = webhook_problem(url)
            if problem:
                problems.append(f"{origins['alert_webhook_urls']}: webhook {number}: {problem}")
    for address in split_list(values.get("alert_email_to", "")):
        if "@" not in address:
            problems.append(f"{origins['alert_email_to']}: '{address}' is not an email address")
    pairs = (
        ("alert_webhook_urls", "alert_webhook_urls_cmd"),
        ("alert_smtp_password_cmd", "alert_smtp_password_secret"),
    )
    for one, other in pairs:
        if values.get(one) and values.get(other):
            problems.append(f"{one}, {other}: give one of them only")
    return problems + _alert_number_problems(values)


def _alert_number_problems(values: dict[str, Any]) -> list[str]:
    problems = []
    port = values.get("alert_smtp_port")
    if port is not None and not 0 <= port <= 65535:
        problems.append(f"alert_smtp_port: must be 1 to 65535 (0: Airflow's), got {port}")
    for name in ("alert_no_scheduler_after", "alert_hold_after"):
        if name in values and values[name] <= 0:
            problems.append(f"{name}: must be a number of seconds greater than 0")
    if values.get("alert_restarts_per_hour", 1) < 1:
        problems.append("alert_restarts_per_hour: must be a whole number of 1 or more")
    if values.get("alert_min_interval", 0) < 0:
        problems.append("alert_min_interval: must be 0 or more seconds")
    return problems
