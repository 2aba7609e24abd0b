"""The example Prometheus rules in docs/prometheus parse, and fire when they should:
promtool's own rule unit tests (alerts_test.yml) run against them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DOCS = Path(__file__).parents[2] / "docs" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    program = shutil.which("promtool")
    if program is None:
        pytest.fail("promtool is missing: scripts/setup-services installs it (Debian: prometheus)")
    return subprocess.run(
        [program, *args], cwd=DOCS, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_alert_rules_parse() -> None:
    done = promtool("check", "rules", "alerts.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_alert_rules_fire_as_their_unit_tests_say() -> None:
    done = promtool("test", "rules", "alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_scrape_config_is_valid() -> None:
    done = promtool("check", "config", "scrape.yml")
    assert done.returncode == 0, done.stdout + done.stderr
