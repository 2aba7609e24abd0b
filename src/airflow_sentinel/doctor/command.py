"""`airflow-sentinel doctor`: are the live nodes alike, and is this node set up to run
exactly one scheduler. Exit 0 when consistent, 1 with findings, 2 on a usage error."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from airflow_sentinel.cli import metastore_for, setting_options, settings_from
from airflow_sentinel.config.airflow_cfg import load_airflow_config
from airflow_sentinel.config.settings import Settings
from airflow_sentinel.doctor.compare import compare_fingerprints
from airflow_sentinel.doctor.findings import INFO, Line, Report
from airflow_sentinel.doctor.local import (
    fence_line,
    multi_scheduler_line,
    scheduler_command_line,
)
from airflow_sentinel.doctor.skew import clock_line
from airflow_sentinel.doctor.starters import Host, starter_lines
from airflow_sentinel.status import ClusterState, read_cluster

SERVICE = "scheduler"
OP_TIMEOUT = 10.0


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (stable schema).")
@setting_options
def doctor(as_json: bool, **flags: Any) -> None:
    """Compare every live node's setup and check this one (exit 1 with findings)."""
    settings = settings_from(flags)
    with metastore_for(settings, OP_TIMEOUT) as store:
        state = read_cluster(store, SERVICE, settings.lease_ttl)
    report = diagnose(settings, state, Host())
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        for line in report.text_lines():
            click.echo(line)
    sys.exit(report.exit_code)


def diagnose(settings: Settings, state: ClusterState, host: Host) -> Report:
    """The whole report: the cluster's fingerprints, then this node's own checks."""
    live = [node for node in state.nodes if state.alive(node)]
    airflow_cfg = load_airflow_config(Path(settings.airflow_home))
    lines = [
        *compare_fingerprints(live, state.active_node),
        *this_node_lines(settings, [n.node_id for n in live]),
        *starter_lines(settings.scheduler_argv, host),
        scheduler_command_line(settings),
        clock_line(settings.metastore, OP_TIMEOUT, settings.lease_ttl),
        multi_scheduler_line(airflow_cfg, OP_TIMEOUT),
        fence_line(settings, airflow_cfg, OP_TIMEOUT),
    ]
    return Report(state.metastore, settings.node_id, [n.node_id for n in live], lines)


def this_node_lines(settings: Settings, live: list[str]) -> list[Line]:
    if settings.node_id in live:
        return []
    text = (
        f"this node ({settings.node_id}) has no live controller: its own setup was checked, "
        "but it is not among the nodes compared"
    )
    return [Line(INFO, "this_node", text, {"node_id": settings.node_id})]
