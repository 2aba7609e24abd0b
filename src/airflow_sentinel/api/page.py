"""The status page at `/`: the cluster at a glance, for a person who was just paged.

One HTML document rendered here, with its timeline as inline SVG: no script, no font, no
library from anywhere, so it works on a jump host without internet. It reloads itself.
Every value from the metastore is escaped.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

from airflow_sentinel.metastore.base import EventRecord

REFRESH_S = 5
WINDOW_S = 6 * 3600  # the timeline's reach: the last six hours
# What the timeline marks, and how: the events an operator asks about first.
MARKS = {
    "became_active": ("takeover", "#1f7a3a"),
    "handed_over": ("handover", "#2f6db3"),
    "demoted": ("demoted", "#b36b00"),
    "stepped_down": ("stepped down", "#b36b00"),
    "stood_down": ("stood down", "#7a7a7a"),
    "scheduler_restarted": ("restart", "#b36b00"),
    "scheduler_fenced": ("fenced", "#b3261e"),
    "stray_killed": ("stray stopped", "#6b3fa0"),
    "instance_conflict": ("conflict", "#b3261e"),
}

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1b1b1b;background:#fafafa}
h1{font-size:20px;margin:0 0 4px}.sub{color:#555;margin-bottom:16px}
.banner{padding:10px 14px;border-radius:6px;margin:12px 0;font-weight:600}
.ok{background:#e3f4e8;color:#14532d}.warn{background:#fff4d6;color:#7a4b00}
.bad{background:#fde4e1;color:#7f1d1d}
table{border-collapse:collapse;background:#fff;margin:8px 0 20px;min-width:640px}
th,td{border:1px solid #ddd;padding:6px 10px;text-align:left}th{background:#f0f0f0}
.role-active{color:#14532d;font-weight:700}.role-stopped{color:#777}
.legend span{display:inline-block;margin-right:14px}
.legend i{display:inline-block;width:10px;height:10px;border-radius:5px;margin-right:4px}
"""


@dataclass(frozen=True)
class PageData:
    cluster: dict[str, Any] | None  # ClusterState.to_json(), None when the store failed
    events: list[EventRecord]
    node_id: str  # the node that serves the page
    error: str = ""


def render(data: PageData) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<meta http-equiv='refresh' content='{REFRESH_S}'>",
        "<title>airflow-sentinel</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>airflow-sentinel</h1>",
        f"<div class='sub'>served by {e(data.node_id)}; reloads every {REFRESH_S}s</div>",
    ]
    if data.cluster is None:
        parts.append(f"<div class='banner bad' id='banner'>metastore: {e(data.error)}</div>")
        parts.append("</body></html>")
        return "".join(parts)
    cluster = data.cluster
    parts.append(_banner(cluster))
    parts.append(_nodes(cluster))
    parts.append("<h2>Last six hours</h2>")
    parts.append(_timeline(data.events, [n["node_id"] for n in cluster["nodes"]]))
    parts.append(_legend())
    parts.append(_recent(data.events))
    parts.append("</body></html>")
    return "".join(parts)


def _mode(cluster: dict[str, Any]) -> str:
    if cluster.get("hold"):
        return "held"
    if cluster.get("paused"):
        return "paused"
    return "normal"


def _banner(cluster: dict[str, Any]) -> str:
    e = html.escape
    active = cluster.get("active_node")
    running = [n for n in cluster["nodes"] if n["scheduler_running"] and n["alive"]]
    mode = _mode(cluster)
    since = cluster.get("last_failover")
    took = f", since {_ago(since['age_s'])}" if since and since.get("age_s") is not None else ""
    if len(running) > 1:
        text, kind = f"{len(running)} nodes report a running scheduler", "bad"
    elif active and running:
        text, kind = f"{active} is active, epoch {cluster['epoch']}{took}", "ok"
    elif active:
        text, kind = f"{active} holds the lease; its scheduler is not running yet", "warn"
    else:
        text, kind = "no node is active: no scheduler runs", "bad"
    if mode != "normal":
        kind = "warn" if kind == "ok" else kind
        hold = cluster.get("hold") or {}
        text += f"; cluster {mode}" + (f" ({hold.get('reason')})" if hold.get("reason") else "")
    return f"<div class='banner {kind}' id='banner'>{e(text)}</div>"


def _nodes(cluster: dict[str, Any]) -> str:
    e = html.escape
    rows = [
        "<table id='nodes'><tr><th>node</th><th>host</th><th>role</th><th>scheduler</th>"
        "<th>last report</th><th>fit</th><th>version</th></tr>"
    ]
    for node in cluster["nodes"]:
        role = node["role"] if node["alive"] else f"{node['role']} (silent)"
        scheduler = f"running, pid {node['scheduler_pid']}" if node["scheduler_running"] else "-"
        fit = "yes" if node["fit"] else f"cooling down {node.get('cooldown_left_s') or ''}s"
        rows.append(
            f"<tr><td>{e(node['node_id'])}</td><td>{e(str(node['host']))}</td>"
            f"<td class='role-{e(node['role'])}'>{e(role)}</td><td>{e(scheduler)}</td>"
            f"<td>{_ago(node['last_heartbeat_age_s'])}</td><td>{e(fit)}</td>"
            f"<td>{e(str(node.get('version') or ''))}</td></tr>"
        )
    rows.append("</table>")
    return "".join(rows)


def _timeline(events: list[EventRecord], nodes: list[str]) -> str:
    """One lane per node, newest on the right; a mark per event that matters."""
    lanes = sorted({*nodes, *(ev.node_id for ev in events if ev.kind in MARKS)})
    width, left, lane_h = 900, 110, 26
    height = 30 + lane_h * max(1, len(lanes))
    span = width - left - 10
    out = [
        f"<svg id='timeline' width='{width}' height='{height}' role='img' "
        "aria-label='events of the last six hours' xmlns='http://www.w3.org/2000/svg'>"
    ]
    for hour in range(7):
        x = left + span * (1 - hour / 6)
        label = "now" if hour == 0 else f"-{hour}h"
        out.append(f"<line x1='{x:.0f}' y1='18' x2='{x:.0f}' y2='{height}' stroke='#e2e2e2'/>")
        out.append(f"<text x='{x:.0f}' y='12' font-size='11' text-anchor='middle'>{label}</text>")
    for i, lane in enumerate(lanes):
        y = 30 + lane_h * i + lane_h / 2
        out.append(
            f"<text x='4' y='{y + 4:.0f}' font-size='12'>{html.escape(lane[:14])}</text>"
            f"<line x1='{left}' y1='{y:.0f}' x2='{left + span}' y2='{y:.0f}' stroke='#ccc'/>"
        )
        for event in (ev for ev in events if ev.node_id == lane and ev.kind in MARKS):
            if event.age_s > WINDOW_S:
                continue
            name, color = MARKS[event.kind]
            x = left + span * (1 - event.age_s / WINDOW_S)
            title = html.escape(f"{name} {_ago(event.age_s)}: {event.detail}"[:300])
            out.append(
                f"<circle class='mark' data-kind='{event.kind}' cx='{x:.1f}' cy='{y:.0f}' r='6' "
                f"fill='{color}'><title>{title}</title></circle>"
            )
    out.append("</svg>")
    return "".join(out)


def _legend() -> str:
    seen: dict[str, str] = {}
    for name, color in MARKS.values():
        seen.setdefault(name, color)
    items = "".join(f"<span><i style='background:{c}'></i>{n}</span>" for n, c in seen.items())
    return f"<div class='legend'>{items}</div>"


def _recent(events: list[EventRecord], count: int = 15) -> str:
    e = html.escape
    rows = ["<h2>Recent events</h2><table id='events'><tr><th>when</th><th>node</th>"]
    rows.append("<th>event</th><th>epoch</th><th>detail</th></tr>")
    for event in events[:count]:
        rows.append(
            f"<tr><td>{_ago(event.age_s)}</td><td>{e(event.node_id)}</td><td>{e(event.kind)}</td>"
            f"<td>{event.epoch if event.epoch is not None else ''}</td>"
            f"<td>{e(event.detail[:200])}</td></tr>"
        )
    rows.append("</table>")
    return "".join(rows)


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f}s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"
