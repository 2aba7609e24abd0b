"""The fence benchmark's own parsing and statistics (the measuring itself needs servers)."""

from __future__ import annotations

import math

import pytest

from benchmarks.fence import Run, modes_table, p95, parse_statsd, pct, runs_order, summary


def test_statsd_packets_give_every_metric_with_its_type() -> None:
    packet = (
        b"airflow.scheduler.scheduler_loop_duration:12.5|ms\n"
        b"airflow.scheduler_heartbeat:1|c|@0.5\n"
        b"garbage\nairflow.pool.open_slots.default_pool:128|g"
    )
    assert parse_statsd(packet) == [
        ("airflow.scheduler.scheduler_loop_duration", 12.5, "ms"),
        ("airflow.scheduler_heartbeat", 1.0, "c"),
        ("airflow.pool.open_slots.default_pool", 128.0, "g"),
    ]


def test_a_value_that_is_no_number_is_skipped() -> None:
    assert parse_statsd(b"a:x|ms\nb:2|ms") == [("b", 2.0, "ms")]


def test_p95_is_the_nearest_rank_and_summary_has_no_samples_as_nan() -> None:
    values = [float(v) for v in range(1, 101)]
    assert p95(values) == 95.0
    assert p95([3.0]) == 3.0
    assert summary(values)["median"] == 50.5
    empty = summary([])
    assert empty["n"] == 0 and math.isnan(empty["median"])


def test_runs_are_off_or_on_only() -> None:
    assert runs_order("off, on,on ,off") == ["off", "on", "on", "off"]
    with pytest.raises(ValueError, match="unknown"):
        runs_order("off,maybe")
    with pytest.raises(ValueError, match="none given"):
        runs_order(" , ")


def test_the_summary_compares_on_with_off_and_leaves_the_warm_up_out() -> None:
    def run(number: int, fence: str, seconds: float, loops: list[float]) -> Run:
        return Run(number, "3.3.2", "postgresql", fence, 60, None, [], loops, tasks_s=seconds)

    runs = [
        run(1, "warm-up", 99.0, [500.0]),
        run(2, "off", 20.0, [100.0, 100.0]),
        run(3, "on", 22.0, [110.0, 110.0]),
    ]
    table = modes_table(runs)
    assert "| 3.3.2 | postgresql | off | 1 | 20.0 s | 3.00 |" in table
    assert "| on vs off | | +10.0 % | -9.1 % | +10.0 % |" in table
    assert "warm-up" not in table
    assert pct(1.0, float("nan")) == "-"
