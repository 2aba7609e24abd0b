"""One line of a doctor report, and the report itself: what it prints and how it exits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1  # additions keep the version; a change or removal bumps it
FINDING = "finding"  # something to fix: the report exits 1
INFO = "info"  # worth knowing; nothing to fix
OK = "ok"
MARKS = {FINDING: "FINDING", INFO: "info", OK: "ok"}


@dataclass(frozen=True)
class Line:
    level: str
    check: str  # what was looked at: "fingerprint", "systemd", "cron", "clock", ...
    text: str  # one line, as printed
    detail: dict[str, Any] = field(default_factory=dict)  # the same, for --json

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "level": self.level, "text": self.text, **self.detail}


@dataclass(frozen=True)
class Report:
    metastore: str
    node_id: str
    live_nodes: list[str]
    lines: list[Line]

    @property
    def findings(self) -> list[Line]:
        return [line for line in self.lines if line.level == FINDING]

    @property
    def exit_code(self) -> int:
        return 1 if self.findings else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "metastore": self.metastore,
            "node_id": self.node_id,
            "live_nodes": self.live_nodes,
            "consistent": not self.findings,
            "findings": len(self.findings),
            "checks": [line.to_json() for line in self.lines],
        }

    def text_lines(self) -> list[str]:
        """The human form: a header, one line per check, a verdict."""
        nodes = ", ".join(self.live_nodes) or "none"
        out = [f"metastore: {self.metastore}", f"live nodes: {nodes}   this node: {self.node_id}"]
        width = max(len(mark) for mark in MARKS.values())
        out += [f"{MARKS[line.level]:<{width}}  {line.text}" for line in self.lines]
        count = len(self.findings)
        out.append(
            "consistent: no findings" if not count else f"{count} finding{'s' if count > 1 else ''}"
        )
        return out
