"""What a configuration reload may change in a running controller, and what it may not."""

from __future__ import annotations

import logging
from dataclasses import replace

from airflow_sentinel.config.settings import KEYS, Settings

log = logging.getLogger("airflow_sentinel.controller")

# Settings a reload cannot change in a running controller: its identity and store, and what
# the heartbeat probe and the schema gate were built for at start (a probe that is not
# there would make every start look failed).
FIXED_ON_RELOAD = (
    "node_id",
    "metastore",
    "airflow_home",
    "airflow_cfg",
    "health_check",
    "schema_gate",
    "db_fence",  # the fence is opened (and installed) once, at start
    "scheduler_command",
    "log_format",  # the handler is set up once, at start
    "scheduler_log",
    "api_address",  # the server, its token and its allowlist are set up at start
    "api_auth",
    "api_token_file",
    "api_token_cmd",
    "api_token_secret",
    "api_allow",
    "api_tls_cert_file",
    "api_tls_key_file",
    "api_tls_ca_file",
    "api_tls_verify_client",
    # The alert channels and their thresholds are built once, at start.
    *(key.name for key in KEYS if key.name.startswith("alert_")),
)


def merge_reload(current: Settings, new: Settings) -> tuple[Settings, list[str]]:
    """The settings to run with (the fixed ones kept, each change of one warned about),
    and the names of those that changed."""
    fixed = {name: getattr(current, name) for name in FIXED_ON_RELOAD}
    for name in FIXED_ON_RELOAD:
        if getattr(new, name) != fixed[name]:
            log.warning("reload: %s changed; it takes effect after a restart", name)
    merged = replace(new, **fixed)
    changed = sorted(k for k, v in vars(merged).items() if getattr(current, k) != v)
    return merged, changed
