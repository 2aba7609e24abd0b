"""What "it works" means, before and after: DAGs, import errors, plugins, a heartbeat,
the api-server's health (the canary task is in canary.py)."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from airflow_sentinel.controller.health import JobTableProbe
from airflow_sentinel.upgrade.installation import AirflowEnv, UpgradeError, mask_url_password


@dataclass(frozen=True)
class Facts:
    dags: list[str]
    import_errors: dict[str, str]  # file -> first line of the error
    plugins: list[str]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Facts:
        return cls(dags=raw["dags"], import_errors=raw["import_errors"], plugins=raw["plugins"])


def _rows(raw: object) -> list[dict[str, Any]]:
    return [r for r in raw if isinstance(r, dict)] if isinstance(raw, list) else []


def gather(
    env: AirflowEnv,
    home: Path,
    secret_url: str = "",
    extra_env: dict[str, str] | None = None,
) -> Facts:
    """The DAGs and import errors as Airflow parses the DAG folder, and the plugins it loads.
    Nothing is written to the database."""
    local = ["--local"] if int(env.version.split(".")[0]) >= 3 else []
    commands = {
        "dags": ["dags", "list", *local],
        "errors": ["dags", "list-import-errors", *local],
        "plugins": ["plugins"],
    }
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        futures = {
            k: pool.submit(env.run_json, v, home, secret_url, extra_env)
            for k, v in commands.items()
        }
        results = {k: _rows(f.result()) for k, f in futures.items()}
    return Facts(
        dags=sorted(str(r.get("dag_id")) for r in results["dags"]),
        import_errors={
            str(r.get("filepath")): (str(r.get("error", "")).strip().splitlines() or [""])[-1]
            for r in results["errors"]
        },
        plugins=sorted(str(r.get("name")) for r in results["plugins"]),
    )


def problems(before: Facts, after: Facts) -> list[str]:
    found = []
    lost = sorted(set(before.dags) - set(after.dags))
    if lost:
        found.append(f"DAGs no longer load: {', '.join(lost)}")
    new_errors = sorted(set(after.import_errors) - set(before.import_errors))
    if new_errors:
        first = new_errors[0]
        found.append(
            f"new import errors in {len(new_errors)} file(s), e.g. {first}: "
            f"{after.import_errors[first][:200]}"
        )
    missing = sorted(set(before.plugins) - set(after.plugins))
    if missing:
        found.append(f"plugins no longer load: {', '.join(missing)}")
    return found


def wait_for_heartbeat(airflow_db_url: str, since_wall: float, timeout: float) -> float:
    """Seconds until a scheduler started after ``since_wall`` heartbeats; UpgradeError if
    none does within ``timeout``."""
    probe = JobTableProbe(airflow_db_url, 10.0, any_scheduler=True)  # on any node
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        age = probe.age(since_wall, time.time())
        if age is not None and age < timeout:
            return time.monotonic() - started
        time.sleep(0.2)  # the downtime ends with this heartbeat: see it soon
    raise UpgradeError(f"no scheduler heartbeat within {timeout:g}s")


def wait_until(condition: Callable[[], bool], timeout: float, failure: str) -> float:
    """Seconds until ``condition`` holds; UpgradeError(``failure``) at the deadline."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started >= timeout:
            raise UpgradeError(failure)
        time.sleep(0.5)
    return time.monotonic() - started


def health_url(base_url: str, version: str) -> str:
    """Airflow 3's api-server answers /api/v2/monitor/health; 2.x's webserver /health."""
    major = int(version.split(".", maxsplit=1)[0])
    path = "/api/v2/monitor/health" if major >= 3 else "/health"
    return base_url.rstrip("/") + path


def wait_for_api(base_url: str, version: str, timeout: float) -> str:
    """Until the api-server says its metadatabase is healthy; the components it reports,
    or UpgradeError with the last answer at the deadline."""
    url = health_url(base_url, version)
    last = "no answer"
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        statuses, last = _health(url)
        if statuses.get("metadatabase") == "healthy":
            seen = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
            return f"api-server healthy after {time.monotonic() - started:.1f}s ({seen})"
        time.sleep(0.5)
    raise UpgradeError(
        f"the api-server at {mask_url_password(url)} did not answer healthy within "
        f"{timeout:g}s: {last}"
    )


def _health(url: str) -> tuple[dict[str, str], str]:
    """The components' statuses of one health answer, and what was wrong if anything."""
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 (operator's URL)
            health = json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return {}, f"HTTP {exc.code}"
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return {}, type(exc).__name__  # the text may quote the URL
    if not isinstance(health, dict):
        return {}, "not a health answer"
    statuses = {n: str(part.get("status")) for n, part in health.items() if isinstance(part, dict)}
    return statuses, f"metadatabase {statuses.get('metadatabase')}"
