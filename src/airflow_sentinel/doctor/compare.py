"""Comparing the live nodes' fingerprints: one line per value that differs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from airflow_sentinel.doctor.findings import FINDING, INFO, OK, Line
from airflow_sentinel.metastore.base import NodeRecord

CHECK = "fingerprint"
# The order the lines come in; keys a newer version adds follow, sorted.
# The settings that must be alike on every master, in the fingerprint as they are set.
TIMING_KEYS = (
    "lease_ttl",
    "renew_interval",
    "stop_timeout",
    "start_timeout",
    "heartbeat_grace",
    "health_check",
    "max_restarts",
    "cooldown",
)
KEY_ORDER = (
    "database",
    "executor",
    "celery_broker_url",
    "celery_result_backend",
    "dags_folder",
    "plugins_folder",
    "airflow_version",
    "python_version",
    "sentinel_version",
    *TIMING_KEYS,
)
IGNORED = frozenset({"fingerprint_version"})
NOT_RECORDED = "(not recorded)"


@dataclass(frozen=True)
class Group:
    """The nodes that report one value for a key."""

    value: Any
    nodes: tuple[str, ...]


def compare_fingerprints(nodes: Sequence[NodeRecord], active: str | None = None) -> list[Line]:
    """Lines for the live ``nodes``: every difference, the nodes that cannot be compared,
    or why there is nothing to compare."""
    prints, unreadable = parse_fingerprints(nodes)
    lines = [without_fingerprint(unreadable)] if unreadable else []
    if len(prints) < 2:
        return [*lines, nothing_to_compare(list(prints))]
    differences = [
        difference_line(key, groups, active)
        for key in ordered_keys(prints)
        if len(groups := group_by_value(prints, key)) > 1
    ]
    if not differences:
        names = ", ".join(prints)
        differences = [Line(OK, CHECK, f"fingerprints: {names} are alike", {"nodes": [*prints]})]
    return [*lines, *differences]


def parse_fingerprints(
    nodes: Sequence[NodeRecord],
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Each node's fingerprint by node_id; and the nodes without one, with their version."""
    prints: dict[str, dict[str, Any]] = {}
    unreadable: dict[str, str] = {}
    for node in sorted(nodes, key=lambda n: n.node_id):
        try:
            value = json.loads(node.fingerprint) if node.fingerprint else None
        except ValueError:
            value = None
        if isinstance(value, dict):
            prints[node.node_id] = value
        else:
            unreadable[node.node_id] = node.version
    return prints, unreadable


def without_fingerprint(unreadable: dict[str, str]) -> Line:
    named = ", ".join(
        f"{node} (airflow-sentinel {version})" for node, version in unreadable.items()
    )
    return Line(
        FINDING,
        CHECK,
        f"no fingerprint from {named}: not compared; upgrade airflow-sentinel there",
        {"nodes": list(unreadable)},
    )


def nothing_to_compare(nodes: list[str]) -> Line:
    if not nodes:
        text = "no live node reports a fingerprint: nothing to compare"
    else:
        text = f"only {nodes[0]} reports a fingerprint: nothing to compare it with"
    return Line(INFO, CHECK, text, {"nodes": nodes})


def ordered_keys(prints: dict[str, dict[str, Any]]) -> list[str]:
    present = {key for values in prints.values() for key in values} - IGNORED
    known = [key for key in KEY_ORDER if key in present]
    return [*known, *sorted(present - set(KEY_ORDER))]


def group_by_value(prints: dict[str, dict[str, Any]], key: str) -> list[Group]:
    by_value: dict[str, list[str]] = {}
    values: dict[str, Any] = {}
    for node, values_of_node in prints.items():
        value = values_of_node.get(key, NOT_RECORDED)
        canonical = json.dumps(value, sort_keys=True)
        by_value.setdefault(canonical, []).append(node)
        values[canonical] = value
    return [Group(values[c], tuple(names)) for c, names in by_value.items()]


def reference_first(groups: list[Group], active: str | None) -> list[Group]:
    """The most common value first; on a tie, the active node's; then by node name."""
    return sorted(groups, key=lambda g: (-len(g.nodes), active not in g.nodes, g.nodes[0]))


def difference_line(key: str, groups: list[Group], active: str | None) -> Line:
    reference, *others = reference_first(groups, active)
    parts = [
        f"{', '.join(g.nodes)} {'differs' if len(g.nodes) == 1 else 'differ'} ({describe(g.value)})"
        for g in others
    ]
    text = (
        f"{key}: {'; '.join(parts)} from {', '.join(reference.nodes)} ({describe(reference.value)})"
    )
    detail = {
        "key": key,
        "differing": [node for g in others for node in g.nodes],
        "groups": [{"nodes": list(g.nodes), "value": g.value} for g in (reference, *others)],
    }
    return Line(FINDING, CHECK, text, detail)


def describe(value: Any) -> str:
    """A value as one short phrase: a folder hash, a hidden option, or the text itself."""
    if not isinstance(value, dict):
        return str(value)
    if "files" in value and "sha256" in value:
        return f"sha256 {str(value['sha256'])[:8]}…, {value['files']} files"
    if "from" in value:
        return f"given as a {value['from']}, sha256 {str(value.get('sha256', ''))[:8]}…"
    for word in ("too_large", "missing", "error"):
        if word in value:
            return f"{word.replace('_', ' ')}: {value[word]}"
    return json.dumps(value, sort_keys=True)
