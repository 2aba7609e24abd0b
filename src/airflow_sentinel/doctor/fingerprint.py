"""What must be the same on every master, as this node sees it.

A small JSON object of named values, so that `doctor` can name what differs. It never holds
a secret: database and broker URLs lose their user and password, and options given as a
command or a secret are recorded by a hash of their text, never run.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_sentinel import __version__
from airflow_sentinel.airflow_schema import installed_version_in, locate_airflow, resolve_program
from airflow_sentinel.config.airflow_cfg import AirflowConfig, load_airflow_config
from airflow_sentinel.config.settings import Settings
from airflow_sentinel.controller.published import READY
from airflow_sentinel.doctor.compare import TIMING_KEYS
from airflow_sentinel.doctor.folders import Budget, folder_digest
from airflow_sentinel.doctor.options import (
    UNSET,
    database_identity,
    folder_option,
    plain_option,
    secretless_option,
)
from airflow_sentinel.errors import SentinelError

if TYPE_CHECKING:
    from airflow_sentinel.controller.loop import Controller

log = logging.getLogger(__name__)

FINGERPRINT_VERSION = 1
NOT_FOUND = "(not found)"


def node_fingerprint(settings: Settings) -> str | None:
    """JSON for the registry; None when it cannot be taken (logged, the start goes on)."""
    try:
        return json.dumps(take_fingerprint(settings), sort_keys=True, separators=(",", ":"))
    except (SentinelError, OSError, ValueError) as exc:
        log.warning("no fingerprint for doctor: %s", exc)
        return None


def take_fingerprint(
    settings: Settings,
    environ: Mapping[str, str] | None = None,
    budget: Budget | None = None,
) -> dict[str, Any]:
    environ = os.environ if environ is None else environ
    config = load_airflow_config(Path(settings.airflow_home), environ)
    path = environ.get("PATH", os.defpath)  # the scheduler gets the controller's PATH
    airflow_version, python_version = installation_versions(settings.scheduler_argv, path)
    return {
        "fingerprint_version": FINGERPRINT_VERSION,
        **airflow_values(config, budget),
        "airflow_version": airflow_version,
        "python_version": python_version,
        "sentinel_version": __version__,
        **{key: _timing(getattr(settings, key)) for key in TIMING_KEYS},
    }


def airflow_values(config: AirflowConfig, budget: Budget | None) -> dict[str, Any]:
    return {
        "database": database_identity(config),
        "executor": plain_option(config, "core", "executor") or UNSET,
        "celery_broker_url": secretless_option(config, "celery", "broker_url"),
        "celery_result_backend": secretless_option(config, "celery", "result_backend"),
        "dags_folder": folder_digest(folder_option(config, "dags_folder", "dags"), budget),
        "plugins_folder": folder_digest(folder_option(config, "plugins_folder", "plugins"), budget),
    }


def installation_versions(argv: list[str], path: str) -> tuple[str, str]:
    """Airflow's version and its Python's, for the installation the scheduler command runs,
    read from its files (importing Airflow would take seconds)."""
    program = resolve_program(argv, path)
    packages = locate_airflow(program) if program is not None else None
    if packages is None:
        return NOT_FOUND, NOT_FOUND
    return installed_version_in(packages) or NOT_FOUND, python_version_of(packages)


def python_version_of(packages: Path) -> str:
    """From the environment's pyvenv.cfg (``version_info``), else the lib/pythonX.Y name."""
    config = packages.parent.parent.parent / "pyvenv.cfg"
    try:
        for line in config.read_text().splitlines():
            name, _, value = line.partition("=")
            if name.strip() in ("version_info", "version"):
                return value.strip()
    except OSError:
        pass
    folder = packages.parent.name
    return folder[len("python") :] if folder.startswith("python") else NOT_FOUND


def _timing(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# A DAG deploy or an edited airflow.cfg shows in `doctor` within this many seconds.
REFRESH_EVERY = 600.0


class FingerprintKeeper:
    """Keeps a running controller's fingerprint current: taken at start, again every
    REFRESH_EVERY seconds and at once after a reload, on a thread of its own (a large DAG
    folder takes seconds to hash; the loop must not wait for it). The heartbeat sends
    whatever the last one was."""

    def __init__(self, controller: Controller, every: float = REFRESH_EVERY) -> None:
        self._controller = controller
        self._every = every
        self._wake = threading.Event()
        self._stopped = False
        self._ready_seen = False
        self._thread = threading.Thread(target=self._run, name="fingerprint", daemon=True)

    def start(self) -> None:
        self._controller.published.on_lifecycle(self._on_lifecycle)
        self._thread.start()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=1)  # a daemon: a hash under way need not be waited for

    def _on_lifecycle(self, state: str) -> None:
        if state != READY:
            return
        if self._ready_seen:  # READY again: a reload is done
            self._wake.set()
        self._ready_seen = True

    def _run(self) -> None:
        # The first at once (the registry shows none until then: a hung DAG folder on NFS
        # must not hold up the start), then on each wake-up.
        while not self._stopped:
            self._take()
            self._wake.wait(self._every)
            self._wake.clear()

    def _take(self) -> None:
        try:
            taken = node_fingerprint(self._controller.settings)
        except Exception:  # a bug here must not end the refreshes, nor reach the loop
            log.exception("no fingerprint for doctor")
            return
        if taken is not None:
            self._controller.fingerprint = taken


def keep_fingerprint(controller: Controller) -> Callable[[], None]:
    keeper = FingerprintKeeper(controller)
    keeper.start()
    return keeper.stop
