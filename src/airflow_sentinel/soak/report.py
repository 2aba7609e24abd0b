"""What a soak found: a table on the terminal, a JSON summary, and a timeline in SVG."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from rich.console import Console
from rich.table import Table

from airflow_sentinel.soak.checker import THAW_GRACE, KindStats, Verdict


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _row(stats: KindStats) -> dict[str, object]:
    return {
        "kind": stats.kind,
        "faults": stats.faults,
        "not_injected": stats.not_injected,
        "disrupted": stats.disrupted,
        "unrecovered": stats.unrecovered,
        "recovery_median_s": stats.percentile(50),
        "recovery_p95_s": stats.percentile(95),
        "recovery_max_s": max(stats.times, default=None),
    }


def summary(
    verdict: Verdict,
    plan: dict[str, object],
    interrupted: str | None,
    fence_epoch: int | None = None,
) -> dict[str, object]:
    writes = verdict.writes
    return {
        "plan": plan,
        "passed": verdict.passed and interrupted is None,
        "interrupted": interrupted,
        "overlaps": len(verdict.overlaps),
        "overlap_seconds": round(verdict.overlap_seconds, 4),
        "thaw_overlaps": len(verdict.thaw_overlaps),
        "thaw_overlap_seconds": round(verdict.thaw_overlap_seconds, 4),
        # None: no Airflow database, so no writes were checked.
        "writes": None if writes is None else len(writes),
        "overlapping_writes": None if writes is None else len(verdict.late_writes),
        "overlapping_write_max_s": (
            None
            if not verdict.late_writes
            else round(max(w.late_by for w in verdict.late_writes), 4)
        ),
        "overlapping_writes_by_epoch": _late_by_epoch(verdict),
        "rejected_writes": None if writes is None else verdict.rejected_writes,
        "fence_epoch": fence_epoch,
        "orphaned_children": verdict.orphans,
        "longest_gap_s": round(verdict.longest_gap, 3),
        "schedulers_started": len(verdict.presences),
        "seconds": round(verdict.span[1] - verdict.span[0], 1),
        "by_kind": [_row(k) for k in verdict.by_kind()],
        "all": _row(verdict.total()),
    }


def _late_by_epoch(verdict: Verdict) -> list[dict[str, object]]:
    rows: dict[tuple[int, str], dict[str, object]] = {}
    for late in verdict.late_writes:
        key = (late.write.epoch, late.write.node)
        row = rows.setdefault(
            key,
            {"epoch": key[0], "node": key[1], "newer_epoch": late.newer_epoch, "writes": 0,
             "max_late_s": 0.0},
        )  # fmt: skip
        row["writes"] = int(str(row["writes"])) + 1
        row["max_late_s"] = round(max(float(str(row["max_late_s"])), late.late_by), 4)
    return [rows[k] for k in sorted(rows)]


def write_json(data: dict[str, object], path: Path) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def print_table(data: dict[str, object], console: Console | None = None) -> None:
    console = console or Console(width=110)
    plan = data["plan"]
    assert isinstance(plan, dict)
    table = Table(
        title=f"soak: {plan['backend']}, {plan['nodes']} nodes, profile {plan['profile']}"
    )
    headers = ("fault", "faults", "disrupted", "median", "p95", "max", "unrecovered", "no target")
    for header in headers:
        table.add_column(header, justify="left" if header == "fault" else "right", no_wrap=True)
    rows = data["by_kind"]
    assert isinstance(rows, list)
    for row in [*rows, data["all"]]:
        assert isinstance(row, dict)
        table.add_row(
            str(row["kind"]), str(row["faults"]), str(row["disrupted"]),
            _s(row["recovery_median_s"]), _s(row["recovery_p95_s"]), _s(row["recovery_max_s"]),
            str(row["unrecovered"]), str(row["not_injected"]),
        )  # fmt: skip
    console.print(table)
    verdict = "PASS" if data["passed"] else "FAIL"
    console.print(
        f"{verdict}: {data['overlaps']} overlaps ({data['overlap_seconds']} s), "
        f"{data['orphaned_children']} orphaned children, longest gap {data['longest_gap_s']} s, "
        f"{data['schedulers_started']} schedulers started in {data['seconds']} s"
        + (f"; interrupted by {data['interrupted']}" if data["interrupted"] else "")
    )
    if data.get("thaw_overlaps"):
        console.print(
            f"after whole-node freezes: {data['thaw_overlaps']} overlaps within "
            f"{THAW_GRACE:g} s of a thaw ({data['thaw_overlap_seconds']} s), judged by the writes"
        )
    if data.get("writes") is not None:
        fence = plan.get("db_fence") or "on"
        late = data["overlapping_writes"]
        by_up_to = f", by up to {data['overlapping_write_max_s']} s" if late else ""
        console.print(
            f"writes in Airflow's database (db_fence {fence}): {data['writes']} committed, "
            f"{late} overlapping (after a newer epoch's first write{by_up_to}), "
            f"{data['rejected_writes']} rejected by the fence"
        )


# -- the timeline -----------------------------------------------------------------------
LANE, TOP, LEFT, RIGHT = 34, 40, 90, 20
COLOURS = {
    "kill-controller": "#d62728",
    "kill-scheduler": "#ff7f0e",
    "freeze-controller": "#1f77b4",
    "partition": "#9467bd",
    "restart-metastore": "#8c564b",
    "restart-controller": "#e377c2",
    "switchover": "#17becf",
    "freeze-metastore": "#bcbd22",
    "duplicate-node": "#7f7f7f",
    "freeze-node": "#08306b",
}


def timeline_svg(
    verdict: Verdict, faults: list[dict[str, object]], title: str, writes_offset: float = 0.0
) -> str:
    """One lane per node (and one for the metastore): scheduler lives as bars, faults as
    marks with their hold as a band, overlaps in red across every lane (after a thaw: in
    orange), overlapping writes as red ticks on their node's lane (``writes_offset`` puts
    the server's clock on the timeline's)."""
    start, end = verdict.span
    span = max(end - start, 1.0)
    width = int(min(6000, max(1000, span * 6)))
    lanes = sorted({p.node for p in verdict.presences} | {str(f["node"]) for f in faults})
    lanes = [lane for lane in lanes if lane != "metastore"] + ["metastore"]
    height = TOP + LANE * len(lanes) + 90
    plot = width - LEFT - RIGHT

    def x(t: float) -> float:
        return LEFT + (t - start) / span * plot

    def y(lane: str) -> int:
        return TOP + LANE * lanes.index(lane)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{LEFT}" y="18" font-size="13">{escape(title)}</text>',
    ]
    for lane in lanes:
        parts.append(f'<text x="8" y="{y(lane) + 21}">{escape(lane)}</text>')
        parts.append(
            f'<line x1="{LEFT}" x2="{width - RIGHT}" y1="{y(lane) + LANE}" '
            f'y2="{y(lane) + LANE}" stroke="#ddd"/>'
        )
    for presence in verdict.presences:
        parts.append(
            f'<rect x="{x(presence.start):.1f}" y="{y(presence.node) + 8}" '
            f'width="{max(x(presence.end) - x(presence.start), 0.8):.1f}" height="16" '
            f'fill="#4caf50"><title>{escape(presence.node)} pid {presence.pid}: '
            f"{presence.end - presence.start:.2f} s</title></rect>"
        )
    for fault in faults:
        at, healed = float(str(fault["at"])), float(str(fault["healed_at"]))
        colour = COLOURS.get(str(fault["kind"]), "black")
        top = y(str(fault["node"]))
        parts.append(
            f'<rect x="{x(at):.1f}" y="{top + 2}" width="{max(x(healed) - x(at), 1):.1f}" '
            f'height="28" fill="{colour}" opacity="0.25"/>'
            f'<line x1="{x(at):.1f}" x2="{x(at):.1f}" y1="{top + 2}" y2="{top + 30}" '
            f'stroke="{colour}" stroke-width="2"><title>{escape(str(fault["kind"]))}'
            f"</title></line>"
        )
    bottom = TOP + LANE * len(lanes)
    for lo, hi in verdict.overlaps:
        parts.append(
            f'<rect x="{x(lo):.1f}" y="{TOP}" width="{max(x(hi) - x(lo), 2):.1f}" '
            f'height="{bottom - TOP}" fill="red" opacity="0.6"><title>OVERLAP</title></rect>'
        )
    for lo, hi in verdict.thaw_overlaps:
        parts.append(
            f'<rect x="{x(lo):.1f}" y="{TOP}" width="{max(x(hi) - x(lo), 2):.1f}" '
            f'height="{bottom - TOP}" fill="orange" opacity="0.5"><title>overlap after a '
            f"whole-node freeze</title></rect>"
        )
    for late in verdict.late_writes:
        node = late.write.node if late.write.node in lanes else lanes[0]
        at = late.write.at + writes_offset
        parts.append(
            f'<line x1="{x(at):.1f}" x2="{x(at):.1f}" y1="{y(node) + 4}" y2="{y(node) + 28}" '
            f'stroke="red" stroke-width="2"><title>write of epoch {late.write.epoch} '
            f"{late.late_by:.3f} s after epoch {late.newer_epoch} began</title></line>"
        )
    parts.extend(_axis(start, span, x, bottom, width))
    parts.extend(_legend(bottom + 36, width))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _axis(start: float, span: float, x: object, bottom: int, width: int) -> list[str]:
    assert callable(x)
    step = next(s for s in (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800) if span / s <= 30)
    parts = [f'<line x1="{LEFT}" x2="{width - RIGHT}" y1="{bottom}" y2="{bottom}" stroke="#999"/>']
    tick = 0
    while tick <= span:
        px = x(start + tick)
        parts.append(
            f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{bottom}" y2="{bottom + 4}" stroke="#999"/>'
        )
        parts.append(f'<text x="{px:.1f}" y="{bottom + 16}" text-anchor="middle">{tick}s</text>')
        tick += step
    return parts


def _legend(top: int, width: int) -> list[str]:
    items = [
        ("scheduler alive", "#4caf50"), *COLOURS.items(), ("overlap", "red"),
        ("after a thaw", "orange"),
    ]  # fmt: skip
    parts, left = [], LEFT
    for label, colour in items:
        step = 30 + 7 * len(label)
        if left + step > width - RIGHT:  # wrap onto a second row
            left, top = LEFT, top + 18
        parts.append(f'<rect x="{left}" y="{top - 9}" width="14" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{left + 18}" y="{top}">{label}</text>')
        left += step
    return parts
