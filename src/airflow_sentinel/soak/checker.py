"""The verdict on a recorded history: overlaps, gaps, and recovery after every fault.

Pure functions over plain data, so they are tested without processes. A probe's
*presence* runs from its fork to the death of the last of it and its children: a child
that outlives its scheduler is still that scheduler's work. Two presences that intersect
are an overlap, whichever nodes they are on (two on one node count too).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

Interval = tuple[float, float]


@dataclass(frozen=True)
class Presence:
    node: str
    pid: int
    start: float
    end: float
    orphaned_children: int = 0


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
        return not self.overlaps and not self.orphans and not self.total().unrecovered


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def presences(lives: Iterable[dict[str, object]], end_of_run: float) -> list[Presence]:
    """One presence per scheduler probe, stretched over the lives of its children."""
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
        result.append(Presence(str(life["node"]), int(str(life["pid"])), start, end, orphans))
    return sorted(result, key=lambda p: p.start)


# A child may die a moment after its parent even when everything works: the guard kills
# the process group in one call but the kernel reaps them one by one.
ORPHAN_GRACE = 0.5


def _end(life: dict[str, object], end_of_run: float) -> float:
    end = life.get("end")
    return end_of_run if end is None else float(str(end))


def overlaps(found: Sequence[Presence]) -> list[Interval]:
    """Merged intervals in which two or more presences were alive at once."""
    pairs = []
    for i, first in enumerate(found):
        for second in found[i + 1 :]:
            start, end = max(first.start, second.start), min(first.end, second.end)
            if start < end:
                pairs.append((start, end))
    return merge(pairs)


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
    for start, end in merge((p.start, p.end) for p in found):
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


def check(lives: Iterable[dict[str, object]], faults: Sequence[Fault], span: Interval) -> Verdict:
    """``span``: from the first scheduler's start (or the run's start) to the run's end."""
    found = presences(lives, span[1])
    holes = gaps(found, span)
    return Verdict(
        presences=found,
        overlaps=overlaps(found),
        gaps=holes,
        recoveries=recoveries(faults, holes, span[1]),
        orphans=sum(p.orphaned_children for p in found),
        span=span,
    )
