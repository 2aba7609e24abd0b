"""The soak's checker on histories written by hand: it must see every overlap, gap and
orphan, and time recovery from the fault, not from the heal."""

from __future__ import annotations

import random
from typing import Any

import pytest

from airflow_sentinel.errors import UserError
from airflow_sentinel.soak import checker
from airflow_sentinel.soak.checker import (
    THAW_GRACE,
    Fault,
    Write,
    check,
    late_writes,
    merge,
    percentile,
    subtract,
    writes_of,
)
from airflow_sentinel.soak.command import parse_kinds
from airflow_sentinel.soak.nemesis import (
    FREEZE_NODE,
    KINDS,
    PARTITION,
    RESTART_METASTORE,
    kinds_for,
)
from airflow_sentinel.soak.report import summary
from airflow_sentinel.soak.runner import Plan
from airflow_sentinel.soak.servers import Postgres, SqliteFile


def life(node: str, pid: int, start: float, end: float | None, role: str = "scheduler",
         ppid: int = 1) -> dict[str, object]:  # fmt: skip
    return {"node": node, "pid": pid, "ppid": ppid, "role": role, "start": start,
            "last_report": start, "end": end}  # fmt: skip


def fault(kind: str, at: float, healed: float | None = None, ok: bool = True) -> Fault:
    return Fault(kind, "n1", at, at if healed is None else healed, ok)


def test_a_clean_handover_has_no_overlap_and_one_gap() -> None:
    verdict = check([life("n1", 10, 0, 5), life("n2", 20, 6.5, None)], [], (0, 20))
    assert verdict.overlaps == []
    assert verdict.gaps == [(5, 6.5)]
    assert verdict.longest_gap == 1.5
    assert verdict.passed


def test_two_schedulers_at_once_are_an_overlap_with_its_length() -> None:
    verdict = check([life("n1", 10, 0, 5), life("n2", 20, 4.5, 9)], [], (0, 9))
    assert verdict.overlaps == [(4.5, 5)]
    assert verdict.overlap_seconds == pytest.approx(0.5)
    assert not verdict.passed


def test_two_on_the_same_node_count_too() -> None:
    verdict = check([life("n1", 10, 0, 5), life("n1", 11, 3, 9)], [], (0, 9))
    assert verdict.overlaps == [(3, 5)]


def test_a_scheduler_still_alive_at_the_end_lasts_until_the_end() -> None:
    verdict = check([life("n1", 10, 0, None), life("n2", 20, 8, None)], [], (0, 10))
    assert verdict.overlaps == [(8, 10)]


def test_a_child_that_outlives_its_scheduler_extends_it_and_is_an_orphan() -> None:
    lives = [
        life("n1", 10, 0, 5),
        life("n1", 11, 0.2, 7, role="child", ppid=10),
        life("n2", 20, 6, None),
    ]
    verdict = check(lives, [], (0, 10))
    assert verdict.orphans == 1
    assert verdict.overlaps == [(6, 7)]


def test_a_later_probes_child_under_a_reused_parent_pid_is_not_the_first_ones() -> None:
    """Pids wrap: scheduler 10 dies at 5; much later a new scheduler gets pid 10 again and
    forks a child. That child is the new scheduler's, not an orphan of the first."""
    lives = [
        life("n1", 10, 0, 5),
        life("n2", 20, 6, 300),
        life("n3", 10, 301, None),
        life("n3", 12, 301.2, None, role="child", ppid=10),
    ]
    verdict = check(lives, [], (0, 400))
    assert verdict.orphans == 0
    assert verdict.overlaps == []


def test_a_child_dying_with_its_scheduler_is_no_orphan() -> None:
    lives = [life("n1", 10, 0, 5), life("n1", 11, 0.2, 5.1, role="child", ppid=10)]
    assert check(lives, [], (0, 6)).orphans == 0


def test_recovery_runs_from_the_injection_to_the_next_scheduler() -> None:
    lives = [life("n1", 10, 0, 5.2), life("n2", 20, 9, None)]
    verdict = check(lives, [fault("kill-controller", 5, healed=6)], (0, 20))
    [recovery] = verdict.recoveries
    assert recovery.disrupted and recovery.recovered
    assert recovery.seconds == pytest.approx(4)


def test_a_fault_that_left_a_scheduler_running_took_no_time() -> None:
    lives = [life("n1", 10, 0, None)]
    [recovery] = check(lives, [fault("freeze-controller", 3, healed=9)], (0, 20)).recoveries
    assert not recovery.disrupted and recovery.seconds == 0


def test_a_gap_belongs_to_the_last_fault_before_it() -> None:
    lives = [life("n1", 10, 0, 12), life("n2", 20, 13, None)]
    faults = [fault("switchover", 2, healed=3), fault("kill-scheduler", 11.9)]
    first, second = check(lives, faults, (0, 20)).recoveries
    assert not first.disrupted
    assert second.seconds == pytest.approx(1.1)


def test_faults_injected_together_share_their_window() -> None:
    lives = [life("n1", 10, 0, 5.3), life("n2", 20, 8, None)]
    # Healing starts once all of a batch is injected, so every heal comes after every injection.
    faults = [Fault("kill-scheduler", "n1", 5.0, 5.02), Fault("partition", "n2", 5.01, 9.0)]
    first, second = check(lives, faults, (0, 20)).recoveries
    assert first.disrupted and first.seconds == pytest.approx(3)
    assert second.disrupted and second.seconds == pytest.approx(2.99)


def test_a_gap_open_at_the_end_is_unrecovered() -> None:
    verdict = check([life("n1", 10, 0, 5)], [fault("partition", 4.9)], (0, 30))
    assert not verdict.recoveries[0].recovered
    assert not verdict.passed
    assert verdict.by_kind()[0].unrecovered == 1


def test_a_fault_that_could_not_be_injected_is_counted_apart() -> None:
    lives = [life("n1", 10, 0, 5), life("n2", 20, 6, None)]
    verdict = check(lives, [fault("kill-scheduler", 4.9, ok=False)], (0, 10))
    [stats] = verdict.by_kind()
    assert stats.faults == 0 and stats.not_injected == 1


def test_statistics_per_kind() -> None:
    lives = [life("n1", 1, 0, 10), life("n2", 2, 12, 20), life("n3", 3, 21, None)]
    faults = [fault("kill-controller", 9.5), fault("kill-controller", 19.5)]
    [stats] = check(lives, faults, (0, 30)).by_kind()
    assert (stats.faults, stats.disrupted) == (2, 2)
    assert sorted(stats.times) == [pytest.approx(1.5), pytest.approx(2.5)]
    assert stats.percentile(50) == pytest.approx(1.5)
    assert stats.percentile(95) == pytest.approx(2.5)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 95) == 95
    assert percentile(values, 100) == 100
    assert percentile([], 50) is None


def test_merge_joins_touching_intervals() -> None:
    assert merge([(3, 4), (0, 1), (1, 2)]) == [(0, 2), (3, 4)]


def test_the_schedule_is_reproducible_from_the_seed() -> None:
    plan = Plan(backend="postgresql", faults=50, seed=7)
    assert plan.schedule(KINDS) == plan.schedule(KINDS)
    assert plan.schedule(KINDS) != Plan(backend="postgresql", faults=50, seed=8).schedule(KINDS)


def test_the_short_form_has_each_kind_the_same_number_of_times() -> None:
    order = Plan(backend="postgresql", each=2, seed=random.randrange(1000)).schedule(KINDS)
    assert sorted(order) == sorted(KINDS * 2)


def test_sqlite_has_no_wire_to_cut_and_no_server_to_restart(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    sqlite = kinds_for(SqliteFile(tmp_path, "10.0.0.1"))
    assert PARTITION not in sqlite and RESTART_METASTORE not in sqlite
    assert kinds_for(Postgres(tmp_path, "127.0.0.1"), airflow_db=True) == KINDS


def test_a_whole_node_freeze_is_drawn_only_with_airflows_database(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    for server in (SqliteFile(tmp_path, "10.0.0.1"), Postgres(tmp_path, "127.0.0.1")):
        assert FREEZE_NODE not in kinds_for(server)
        assert FREEZE_NODE in kinds_for(server, airflow_db=True)
    assert checker.FREEZE_NODE == FREEZE_NODE


def test_unknown_fault_kinds_are_refused_naming_the_accepted_ones() -> None:
    with pytest.raises(UserError, match=r"unknown fault explode; accepted: kill-controller"):
        parse_kinds("kill-controller,explode")
    assert parse_kinds(" partition , switchover ") == ("partition", "switchover")


# -- whole-node freezes ------------------------------------------------------------------
def freeze(node: str, at: float, healed: float) -> Fault:
    return Fault(FREEZE_NODE, node, at, healed)


def test_a_frozen_scheduler_is_a_gap_and_its_moment_after_the_thaw_is_apart() -> None:
    """n1 frozen whole at 5 (nothing can kill its scheduler), n2 takes over at 9, n1 thaws
    at 12 and its guard kills its scheduler 0.02 s later."""
    lives = [life("n1", 10, 0, 12.02), life("n2", 20, 9, None)]
    verdict = check(lives, [freeze("n1", 5, 12)], (0, 20), writes=[])
    assert verdict.overlaps == []
    assert verdict.thaw_overlaps == [(12.0, pytest.approx(12.02))]  # type: ignore[comparison-overlap]
    assert verdict.gaps == [(5, 9)]
    [recovery] = verdict.recoveries
    assert recovery.disrupted and recovery.seconds == pytest.approx(4)
    assert verdict.passed


def test_a_thawed_scheduler_that_runs_on_past_the_grace_is_an_overlap() -> None:
    lives = [life("n1", 10, 0, 12 + THAW_GRACE + 1), life("n2", 20, 9, None)]
    verdict = check(lives, [freeze("n1", 5, 12)], (0, 20), writes=[])
    assert verdict.thaw_overlaps == [(12, 12 + THAW_GRACE)]
    assert verdict.overlaps == [(12 + THAW_GRACE, 12 + THAW_GRACE + 1)]
    assert not verdict.passed


def test_overlaps_after_a_thaw_fail_when_no_writes_were_checked() -> None:
    lives = [life("n1", 10, 0, 12.02), life("n2", 20, 9, None)]
    verdict = check(lives, [freeze("n1", 5, 12)], (0, 20))
    assert verdict.thaw_overlaps and verdict.writes is None
    assert not verdict.passed


def test_a_freeze_of_another_node_or_one_not_injected_excuses_nothing() -> None:
    lives = [life("n1", 10, 0, 12.02), life("n2", 20, 9, None)]
    for fault_ in (freeze("n3", 5, 12), Fault(FREEZE_NODE, "n1", 5, 12, ok=False)):
        verdict = check(lives, [fault_], (0, 20), writes=[])
        assert verdict.overlaps == [(9.0, pytest.approx(12.02))]  # type: ignore[comparison-overlap]
        assert verdict.thaw_overlaps == []


def test_subtract_cuts_holes_out_of_intervals() -> None:
    assert subtract([(0, 10)], [(2, 3), (5, 20)]) == [(0, 2), (3, 5)]
    assert subtract([(0, 1)], [(0, 1)]) == []


# -- writes in Airflow's database --------------------------------------------------------
def write(epoch: int, at: float, node: str = "n1") -> Write:
    return Write(node, 100 + epoch, epoch, at, epoch)


def test_writes_in_epoch_order_are_not_late() -> None:
    writes = [write(1, 0.0), write(1, 1.0), write(2, 1.5, "n2"), write(3, 4.0, "n3")]
    assert late_writes(writes) == []


def test_a_write_after_a_newer_epochs_first_write_is_late() -> None:
    writes = [write(1, 0.0), write(2, 2.0, "n2"), write(1, 2.5), write(1, 3.0), write(2, 3.1)]
    found = late_writes(writes)
    assert [(w.write.at, w.newer_epoch) for w in found] == [(2.5, 2), (3.0, 2)]
    assert found[0].late_by == pytest.approx(0.5)


def test_a_late_write_counts_against_any_higher_epoch() -> None:
    """Epoch 2 never wrote (its node lost the lease before its scheduler did anything):
    epoch 1 writing after epoch 3 began is still late."""
    [late] = late_writes([write(1, 0.0), write(3, 5.0, "n3"), write(1, 6.0)])
    assert late.newer_epoch == 3 and late.late_by == pytest.approx(1.0)


def test_a_write_at_the_very_moment_is_not_late() -> None:
    assert late_writes([write(1, 0.0), write(2, 1.0, "n2"), write(1, 1.0)]) == []


# Rows from a control run (db_fence = off, three whole-node freezes): each frozen
# scheduler wrote once more after its thaw, before its guard killed it.
CONTROL_ROWS = [
    {"node": "n3", "pid": 32382, "epoch": 1, "session_epoch": None, "at": 1556.853},
    {"node": "n2", "pid": 32570, "epoch": 2, "session_epoch": None, "at": 1561.354},
    {"node": "n2", "pid": 32570, "epoch": 2, "session_epoch": None, "at": 1567.876},
    {"node": "n3", "pid": 32382, "epoch": 1, "session_epoch": None, "at": 1567.913},
    {"node": "n2", "pid": 32570, "epoch": 2, "session_epoch": None, "at": 1567.947},
    {"node": "n2", "pid": 32570, "epoch": 2, "session_epoch": None, "at": 1569.359},
    {"node": "n3", "pid": 627, "epoch": 3, "session_epoch": None, "at": 1574.822},
    {"node": "n3", "pid": 627, "epoch": 3, "session_epoch": None, "at": 1581.315},
    {"node": "n2", "pid": 32570, "epoch": 2, "session_epoch": None, "at": 1581.321},
    {"node": "n3", "pid": 627, "epoch": 3, "session_epoch": None, "at": 1581.394},
    {"node": "n1", "pid": 853, "epoch": 4, "session_epoch": None, "at": 1587.386},
    {"node": "n1", "pid": 853, "epoch": 4, "session_epoch": None, "at": 1594.607},
    {"node": "n3", "pid": 627, "epoch": 3, "session_epoch": None, "at": 1594.651},
    {"node": "n1", "pid": 853, "epoch": 4, "session_epoch": None, "at": 1594.699},
    {"node": "n1", "pid": 853, "epoch": None, "session_epoch": None, "at": 1594.8},
]


def test_the_recorded_control_run_has_one_late_write_per_freeze() -> None:
    writes = writes_of(CONTROL_ROWS)
    assert len(writes) == len(CONTROL_ROWS) - 1  # a row without an epoch is not judged
    found = late_writes(writes)
    assert [(w.write.node, w.write.epoch, w.newer_epoch) for w in found] == [
        ("n3", 1, 2),
        ("n2", 2, 3),
        ("n3", 3, 4),
    ]
    lives = [life("n3", 32382, 1553.4, 1567.93), life("n2", 32570, 1560.9, 1581.33),
             life("n3", 627, 1574.3, 1594.66), life("n1", 853, 1587.0, None)]  # fmt: skip
    faults = [freeze("n3", 1556.86, 1567.91), freeze("n2", 1569.46, 1581.32),
              freeze("n3", 1583.57, 1594.65)]  # fmt: skip
    verdict = check(lives, faults, (1553.4, 1600), writes)
    assert verdict.overlaps == [] and len(verdict.thaw_overlaps) == 3
    assert len(verdict.late_writes) == 3
    assert not verdict.passed
    data: dict[str, Any] = summary(verdict, {"backend": "sqlite"}, None)
    assert data["overlapping_writes"] == 3 and data["writes"] == 14
    assert data["overlapping_writes_by_epoch"][0] == {
        "epoch": 1, "node": "n3", "newer_epoch": 2, "writes": 1,
        "max_late_s": pytest.approx(6.559),
    }  # fmt: skip


def test_rejected_writes_are_summed_from_the_stand_ins_reports() -> None:
    lives = [life("n1", 10, 0, 5), life("n2", 20, 6, None)]
    lives[0]["rejected"] = 3
    lives[1]["rejected"] = 1
    verdict = check(lives, [], (0, 10), writes=[write(1, 0.0), write(2, 1.0, "n2")])
    assert verdict.rejected_writes == 4 and verdict.late_writes == []
    assert verdict.passed
    data = summary(verdict, {"backend": "sqlite"}, None)
    assert (data["writes"], data["overlapping_writes"], data["rejected_writes"]) == (2, 0, 4)


def test_without_airflows_database_the_writes_are_not_reported_as_zero() -> None:
    data = summary(check([life("n1", 10, 0, None)], [], (0, 10)), {"backend": "sqlite"}, None)
    assert data["writes"] is None and data["overlapping_writes"] is None
