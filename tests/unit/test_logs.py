"""What the operator reads: line formats, the takeover line, the pid in scheduler lines,
and the periodic status line."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from airflow_sentinel.api.metrics import exit_outcome
from airflow_sentinel.config.airflow_cfg import load_airflow_config
from airflow_sentinel.controller import events as ev
from airflow_sentinel.controller.exits import describe_end
from airflow_sentinel.controller.lease_keeper import describe_takeover
from airflow_sentinel.controller.scheduler import RunState
from airflow_sentinel.controller.status_line import StatusLine, describe
from airflow_sentinel.logging_setup import JSON_KEYS, JsonFormatter, TextFormatter, _ContextFilter
from airflow_sentinel.metastore.base import Lease, LeaseRecord
from airflow_sentinel.process.handle import RunEnded
from tests.support.views import node_view

ISO_WITH_ZONE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(_ContextFilter("node-a", "host-1 pid 42"))
    logger = logging.getLogger("airflow_sentinel.test_logs")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield logger, stream, handler
    logger.removeHandler(handler)


def test_a_text_line_has_the_time_with_its_zone_the_node_and_the_epoch(
    captured: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, stream, handler = captured
    handler.setFormatter(TextFormatter())
    logger.info("scheduler healthy", extra={"epoch": 7})
    logger.warning("no epoch here")
    first, second = stream.getvalue().splitlines()
    assert re.fullmatch(rf"{ISO_WITH_ZONE} INFO    node=node-a epoch=7 scheduler healthy", first)
    assert second.endswith("WARNING node=node-a epoch=- no epoch here")


def test_json_lines_have_stable_keys_and_an_event_keeps_its_kind_and_detail(
    captured: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, stream, handler = captured
    handler.setFormatter(JsonFormatter())
    detail = 'took the scheduler lease from a (its epoch 6) after 4.1s of silence, epoch 7 "q"'
    extra = {"epoch": 7, "event": ev.BECAME_ACTIVE, "detail": detail}
    logger.warning("%s %s", ev.BECAME_ACTIVE, detail, extra=extra)
    logger.info("cluster paused")
    try:
        _fail()
    except RuntimeError:
        logger.exception("a listener of the controller failed")
    event, plain, failed = (json.loads(line) for line in stream.getvalue().splitlines())
    assert tuple(event) == JSON_KEYS and tuple(plain) == JSON_KEYS
    assert re.fullmatch(ISO_WITH_ZONE, event["time"])
    assert event["level"] == "WARNING" and event["node"] == "node-a"
    assert event["instance"] == "host-1 pid 42" and event["epoch"] == 7
    assert event["event"] == "became_active" and event["detail"] == detail
    assert plain["event"] is None and plain["epoch"] is None
    assert plain["detail"] == "cluster paused"
    assert "RuntimeError: boom" in failed["exception"]


def _fail() -> None:
    raise RuntimeError("boom")


def test_the_takeover_line_names_the_old_holder_its_epoch_and_the_silence() -> None:
    taken = Lease("scheduler", "b", 7, 100.0, taken_from="a", silent_for=15.24)
    assert describe_takeover(taken, "b") == (
        "took the scheduler lease from a (its epoch 6) after 15.2s of silence, epoch 7"
    )
    free = Lease("scheduler", "b", 1, 100.0)
    assert describe_takeover(free, "b") == "holds the scheduler lease (it was free), epoch 1"


def test_the_end_of_a_scheduler_names_its_pid() -> None:
    kind, detail, _ = describe_end(RunEnded("exited", 1), RunState.RUNNING, False, None, 0, 4242)
    assert (kind, detail) == (ev.SCHEDULER_EXITED, "pid 4242 exited code 1")
    assert exit_outcome(detail) == "exited"  # the metrics' label reads past the pid
    assert exit_outcome("lost code None") == "lost"
    kind, detail, _ = describe_end(RunEnded("fenced"), RunState.RUNNING, False, None, 0, 4242)
    assert kind == ev.SCHEDULER_FENCED and detail.startswith("pid 4242 killed by the guard")


VIEW = node_view(epoch=12, lease_left_s=11.04, scheduler_pid=4242, heartbeat_age_s=3.2)


def test_the_status_line_of_an_active_node_names_epoch_pid_and_health() -> None:
    assert describe(VIEW, None) == (
        "status: active with epoch 12, healthy scheduler pid 4242, heartbeat 3s ago, "
        "lease 11.0s left"
    )
    starting = replace(VIEW, scheduler_state="starting", scheduler_pid=None, heartbeat_age_s=None)
    assert describe(starting, None) == "status: active with epoch 12, scheduler starting"


def test_the_status_line_of_a_standby_names_the_leader_and_the_mode() -> None:
    standby = replace(VIEW, role="standby", epoch=None, scheduler_state=None, scheduler_pid=None)
    lease = LeaseRecord("scheduler", "b", 12, 40, 15.0, 1.0)
    assert describe(standby, lease) == "status: standby behind b (epoch 12)"
    paused = replace(standby, paused=True, cooldown_left_s=250.0)
    assert describe(paused, lease) == (
        "status: standby behind b (epoch 12); cluster paused; cooling down 250s more"
    )
    assert describe(standby, None) == "status: standby, no node holds the lease"
    assert describe(standby, None, reachable=False) == "status: standby, metastore unreachable"


def test_the_status_line_is_due_once_per_interval_and_never_at_zero() -> None:
    line = StatusLine(300, now=1000.0)
    assert not line.due(1000.0) and not line.due(1299.9)
    assert line.due(1300.0)
    assert not line.due(1300.5)
    assert line.due(1600.0)
    assert not StatusLine(0, now=0.0).due(10_000.0)


@pytest.mark.parametrize(
    ("written", "found"),
    [
        (None, "logs"),
        ("$AIRFLOW_HOME/logs", "logs"),
        ("${AIRFLOW_HOME}/other", "other"),
        ("{AIRFLOW_HOME}/placeholder", "placeholder"),
    ],
)
def test_the_scheduler_log_goes_to_airflows_log_folder_as_airflow_finds_it(
    tmp_path: Path, written: str | None, found: str
) -> None:
    """The default of scheduler_log: Airflow's base_log_folder, with the home filled in."""
    if written is not None:
        (tmp_path / "airflow.cfg").write_text(f"[logging]\nbase_log_folder = {written}\n")
    assert load_airflow_config(tmp_path, {}).base_log_folder() == tmp_path / found
