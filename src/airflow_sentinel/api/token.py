"""The API's token, from one of three places, as Airflow takes its own secrets: a file only
its owner may read (`api_token_file`), the output of a command (`api_token_cmd`), or a key
in Airflow's own secrets backend (`api_token_secret`, looked up by the Airflow the
scheduler command runs, so with its `[secrets] backend` and credentials). The token never
appears in an argument list, a log line or an error."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from airflow_sentinel.airflow_schema import airflow_interpreter, resolve_program
from airflow_sentinel.config.airflow_cfg import run_command
from airflow_sentinel.config.settings import Settings
from airflow_sentinel.errors import UserError

MIN_LENGTH = 16
SECRET_TIMEOUT = 60.0  # importing Airflow and asking a remote backend take seconds

# Run by the scheduler's own Airflow: the key comes on stdin, the value goes to stdout.
LOOKUP = """
import sys
from airflow.configuration import get_custom_secret_backend
backend = get_custom_secret_backend()
if backend is None:
    sys.exit(3)
value = backend.get_config(sys.stdin.read().strip())
if value is None:
    sys.exit(4)
sys.stdout.write(value)
"""


def load_api_token(settings: Settings) -> bytes:
    """The token, b"" when none is configured; UserError (one line) when it cannot be had."""
    if settings.api_token_file:
        token, origin = _from_file(settings.api_token_file), "api_token_file"
    elif settings.api_token_cmd:
        token, origin = (
            run_command("api_token_cmd", settings.api_token_cmd).encode(),
            "api_token_cmd",
        )
    elif settings.api_token_secret:
        origin = "api_token_secret"
        token = from_secrets_backend(settings, settings.api_token_secret, origin).encode()
    else:
        return b""
    token = token.strip()
    if len(token) < MIN_LENGTH:
        raise UserError(f"{origin}: the token must be {MIN_LENGTH} characters or more")
    return token


def _from_file(path: str) -> bytes:
    file = Path(path)
    try:
        mode = file.stat().st_mode
        token = file.read_bytes()
    except OSError as exc:
        raise UserError(f"api_token_file: cannot read {path} ({exc.strerror})") from None
    if mode & 0o077:
        raise UserError(
            f"api_token_file: {path} is readable by others (mode {mode & 0o777:o}); "
            f"chmod 600 {path}"
        )
    return token


def from_secrets_backend(settings: Settings, key: str, origin: str) -> str:
    """``key``'s value in Airflow's secrets backend, asked through the scheduler's Airflow;
    UserError naming ``origin`` (the setting) when it cannot be had."""
    program = resolve_program(settings.scheduler_argv, os.environ.get("PATH", os.defpath))
    interpreter = airflow_interpreter(program) if program is not None else None
    if interpreter is None:
        raise UserError(
            f"{origin}: no Airflow to ask: the scheduler_command's program is not "
            "an Airflow script or a Python interpreter"
        )
    # As for the scheduler: none of our settings (the metastore URL may carry a password).
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__SENTINEL__")}
    env["AIRFLOW_HOME"] = settings.airflow_home
    try:
        done = subprocess.run(
            [interpreter, "-c", LOOKUP],
            input=key,
            capture_output=True,
            text=True,
            timeout=SECRET_TIMEOUT,
            check=False,
            env=env,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"{origin}: Airflow could not be asked ({type(exc).__name__})") from None
    if done.returncode == 3:
        raise UserError(f"{origin}: Airflow has no secrets backend ([secrets] backend)")
    if done.returncode == 4:
        raise UserError(f"{origin}: Airflow's secrets backend has no config '{key}'")
    if done.returncode != 0:
        # Only the error's type: its message may carry the backend's own credentials.
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        kind = last.split(":", 1)[0].strip()[:80]
        raise UserError(
            f"{origin}: Airflow's secrets backend failed ({kind}); run "
            "`airflow config get-value secrets backend` with the scheduler's Airflow to check it"
        )
    return done.stdout
