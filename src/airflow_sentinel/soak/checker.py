"""The verdict on a recorded history: overlaps, gaps, and recovery after every fault.

Pure functions over plain data, so they are tested without processes. A probe's
*presence* runs from its fork to the death of the last of it and its children: a child
that outlives its scheduler is still that scheduler's work. Two presences that intersect
are an overlap, whichever nodes they are on (two on one node count too).

A whole-node freeze (``freeze-node``) stops a scheduler together with its guard, so
nothing can end it before the thaw: while frozen it does nothing (that stretch is a gap,
not a presence), and after the thaw it runs until its guard, thawed with it, kills it.
An overlap within ``THAW_GRACE`` of such a thaw is counted apart (``thaw_overlaps``):
what makes it harmless is the fence in Airflow's database, and that is judged by the
writes. A *write* is a row a stand-in scheduler committed there; a row of epoch e whose
server timestamp is later than the first committed row of any higher epoch is a *late
write* (an overlapping write): a scheduler that had been replaced still changed what
runs. With the fence there must be none.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

Interval = tuple[float, float]
FREEZE_NODE = "freeze-node"
# Seconds after a whole-node freeze ends in which its scheduler may still run: its guard
# wakes with it and kills it at once, but on a loaded machine that may take a moment.
THAW_GRACE = 2.0


@dataclass(frozen=True)
class Presence:
    node: str
    pid: int
    start: float
    end: float
    orphaned_children: int = 0
    frozen: tuple[Interval, ...] = ()  # its node frozen whole: it did nothing

    def working(self) -> list[Interval]:
        """Its presence without the stretches in which its node was frozen."""
        return subtract([(self.start, self.end)], self.frozen)

    def thawing(self) -> list[Interval]:
        """The moments after each freeze of its node in which it may still run."""
        return [(healed, healed + THAW_GRACE) for _, healed in self.frozen]


@dataclass(frozen=True)
class Write:
    """A row a stand-in scheduler committed in Airflow's database; ``at`` is the server's
    clock_timestamp() in seconds (a clock of its own: compared only with other writes)."""

    node: str
    pid: int
    epoch: int
    at: float
    session_epoch: int | None = None  # the epoch its connection carried for the fence


@dataclass(frozen=True)
class LateWrite:
    """A write of an epoch already replaced: after the first write of ``newer_epoch``."""

    write: Write
    newer_epoch: int
    late_by: float


@dataclass(frozen=True)
class Fault:
    kind: str
    node: str
    at: float
    healed_at: float
    ok: bool = True
    detail: str = ""


@dataclass(frozen=True)
class Recovery:
    fault: Fault
    seconds: float  # 0 when the fault never left the cluster without a scheduler
    disrupted: bool
    recovered: bool


@dataclass
class KindStats:
    kind: str
    faults: int = 0
    not_injected: int = 0  # the fault had no target (say, no scheduler to kill)
    disrupted: int = 0
    unrecovered: int = 0
    times: list[float] = field(default_factory=list)

    def percentile(self, q: float) -> float | None:
        return percentile(self.times, q)


@dataclass
class Verdict:
    presences: list[Presence]
    overlaps: list[Interval]
    gaps: list[Interval]
    recoveries: list[Recovery]
    orphans: int
    span: Interval
    thaw_overlaps: list[Interval] = field(default_factory=list)
    writes: list[Write] | None = None  # None: the soak had no Airflow database
    late_writes: list[LateWrite] = field(default_factory=list)
    rejected_writes: int = 0  # writes the fence refused, as the stand-ins counted them

    @property
    def thaw_overlap_seconds(self) -> float:
        return sum(end - start for start, end in self.thaw_overlaps)

    @property
    def overlap_seconds(self) -> float:
        return sum(end - start for start, end in self.overlaps)

    @property
    def longest_gap(self) -> float:
        return max((end - start for start, end in self.gaps), default=0.0)

    def by_kind(self) -> list[KindStats]:
        stats: dict[str, KindStats] = {}
        for recovery in self.recoveries:
            kind = stats.setdefault(recovery.fault.kind, KindStats(recovery.fault.kind))
            if not recovery.fault.ok:
                kind.not_injected += 1
                continue
            kind.faults += 1
            if not recovery.recovered:
                kind.unrecovered += 1
            elif recovery.disrupted:
                kind.disrupted += 1
                kind.times.append(recovery.seconds)
        return sorted(stats.values(), key=lambda k: k.kind)

    def total(self) -> KindStats:
        total = KindStats("all")
        for kind in self.by_kind():
            total.faults += kind.faults
            total.not_injected += kind.not_injected
            total.disrupted += kind.disrupted
            total.unrecovered += kind.unrecovered
            total.times.extend(kind.times)
        return total

    @property
    def passed(self) -> bool:
        return (
            not self.overlaps
            and not self.orphans
            and not self.total().unrecovered
            and not self.late_writes
            and (not self.thaw_overlaps or self.writes is not None)
        )


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def presences(
    lives: Iterable[dict[str, object]], end_of_run: float, faults: Sequence[Fault] = ()
) -> list[Presence]:
    """One presence per scheduler probe, stretched over the lives of its children, with
    the stretches in which a whole-node freeze held it."""
    lives = list(lives)
    schedulers = [life for life in lives if life["role"] == "scheduler"]
    result = []
    for life in schedulers:
        start, end = float(str(life["start"])), _end(life, end_of_run)
        died = end
        orphans = 0
        for child in lives:
            # Its child started while it lived: pids wrap (every few minutes where pid_max
            # is 32768), and a later probe's child may name the same parent pid.
            if (
                child["role"] == "child"
                and child["ppid"] == life["pid"]
                and start <= float(str(child["start"])) <= died
            ):
                child_end = _end(child, end_of_run)
                orphans += child_end > end + ORPHAN_GRACE
                end = max(end, child_end)
        node = str(life["node"])
        frozen = tuple(
            (max(start, f.at), min(end, f.healed_at))
            for f in faults
            if f.kind == FREEZE_NODE and f.ok and f.node == node and start < f.at < end
        )
        result.append(Presence(node, int(str(life["pid"])), start, end, orphans, frozen))
    return sorted(result, key=lambda p: p.start)


# A child may die a moment after its parent even when everything works: the guard kills
# the process group in one call but the kernel reaps them one by one.
ORPHAN_GRACE = 0.5


def _end(life: dict[str, object], end_of_run: float) -> float:
    end = life.get("end")
    return end_of_run if end is None else float(str(end))


def overlaps(found: Sequence[Presence]) -> list[Interval]:
    """Merged intervals in which two or more presences were at work at once (not counting
    the moments after a whole-node freeze: see ``thaw_overlaps``)."""
    return _overlaps(found)[0]


def thaw_overlaps(found: Sequence[Presence]) -> list[Interval]:
    """Merged intervals in which a scheduler thawed after a whole-node freeze ran beside
    another, within THAW_GRACE of the thaw."""
    return _overlaps(found)[1]


def _overlaps(found: Sequence[Presence]) -> tuple[list[Interval], list[Interval]]:
    plain: list[Interval] = []
    thawing: list[Interval] = []
    for i, first in enumerate(found):
        for second in found[i + 1 :]:
            both = intersect(first.working(), second.working())
            if not both:
                continue
            excused = merge([*first.thawing(), *second.thawing()])
            plain.extend(subtract(both, excused))
            thawing.extend(intersect(both, excused))
    return merge(plain), merge(thawing)


def intersect(first: Sequence[Interval], second: Sequence[Interval]) -> list[Interval]:
    result = []
    for a_start, a_end in first:
        for b_start, b_end in second:
            start, end = max(a_start, b_start), min(a_end, b_end)
            if start < end:
                result.append((start, end))
    return merge(result)


def subtract(intervals: Sequence[Interval], holes: Iterable[Interval]) -> list[Interval]:
    """``intervals`` without the parts inside ``holes``."""
    result = list(intervals)
    for hole_start, hole_end in merge(holes):
        kept = []
        for start, end in result:
            if hole_end <= start or end <= hole_start:
                kept.append((start, end))
                continue
            if start < hole_start:
                kept.append((start, hole_start))
            if hole_end < end:
                kept.append((hole_end, end))
        result = kept
    return [(s, e) for s, e in result if e > s]


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def gaps(found: Sequence[Presence], span: Interval) -> list[Interval]:
    """Intervals within ``span`` in which no scheduler was alive."""
    result = []
    cursor = span[0]
    for start, end in merge(w for p in found for w in p.working()):
        if start > cursor:
            result.append((cursor, min(start, span[1])))
        cursor = max(cursor, end)
    if cursor < span[1]:
        result.append((cursor, span[1]))
    return [(s, e) for s, e in result if e > s]


def recoveries(faults: Sequence[Fault], holes: Sequence[Interval], end: float) -> list[Recovery]:
    """For each fault: how long until a scheduler ran again, if the fault left none.

    A fault disrupted the cluster when a gap was open at its injection or opened before
    the next fault injected after it was healed (faults injected together share their
    window); its recovery time runs from the injection to that gap's end. A gap still open
    at the end of the run means the cluster never recovered.
    """
    ordered = sorted(faults, key=lambda f: f.at)
    result = []
    for fault in ordered:
        window_end = next((f.at for f in ordered if f.at > fault.healed_at), end)
        hole = next((h for h in holes if h[1] > fault.at and h[0] < window_end), None)
        if hole is None:
            result.append(Recovery(fault, 0.0, disrupted=False, recovered=True))
        else:
            recovered = hole[1] < end
            result.append(Recovery(fault, hole[1] - fault.at, disrupted=True, recovered=recovered))
    return result


def late_writes(writes: Iterable[Write]) -> list[LateWrite]:
    """Every write later than the first write of a higher epoch, in the order written."""
    firsts: dict[int, float] = {}
    ordered = sorted(writes, key=lambda w: w.at)
    for write in ordered:
        firsts.setdefault(write.epoch, write.at)
    # For each epoch, the earliest first write among the epochs above it.
    newer: dict[int, tuple[float, int]] = {}
    earliest: tuple[float, int] | None = None
    for epoch in sorted(firsts, reverse=True):
        if earliest is not None:
            newer[epoch] = earliest
        if earliest is None or firsts[epoch] < earliest[0]:
            earliest = (firsts[epoch], epoch)
    result = []
    for write in ordered:
        above = newer.get(write.epoch)
        if above is not None and write.at > above[0]:
            result.append(LateWrite(write, above[1], write.at - above[0]))
    return result


def writes_of(rows: Iterable[dict[str, object]]) -> list[Write]:
    """Writes from their JSON form (history.json), skipping rows without an epoch."""
    result = []
    for row in rows:
        if row.get("epoch") is None:
            continue
        session = row.get("session_epoch")
        result.append(
            Write(
                node=str(row["node"]),
                pid=int(str(row["pid"])),
                epoch=int(str(row["epoch"])),
                at=float(str(row["at"])),
                session_epoch=None if session in (None, "") else int(str(session)),
            )
        )
    return result


def check(
    lives: Iterable[dict[str, object]],
    faults: Sequence[Fault],
    span: Interval,
    writes: Sequence[Write] | None = None,
) -> Verdict:
    """``span``: from the first scheduler's start (or the run's start) to the run's end;
    ``writes``: the rows committed in Airflow's database (None: there was none)."""
    lives = list(lives)
    found = presences(lives, span[1], faults)
    holes = gaps(found, span)
    plain, thawing = _overlaps(found)
    return Verdict(
        presences=found,
        overlaps=plain,
        gaps=holes,
        recoveries=recoveries(faults, holes, span[1]),
        orphans=sum(p.orphaned_children for p in found),
        span=span,
        thaw_overlaps=thawing,
        writes=None if writes is None else list(writes),
        late_writes=[] if writes is None else late_writes(writes),
        rejected_writes=sum(int(str(life.get("rejected") or 0)) for life in lives),
    )
