"""Content hashes of the DAG and plugin folders, bounded so that a huge folder cannot hold
up a controller's start."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SKIPPED_DIRS = frozenset({"__pycache__"})
SKIPPED_SUFFIXES = (".pyc",)
CHUNK = 1 << 20


@dataclass(frozen=True)
class Budget:
    """How much a folder hash may cost; beyond it the folder is recorded as too large."""

    max_files: int = 20_000
    max_bytes: int = 512 * 1024 * 1024
    max_seconds: float = 5.0


class TooLarge(Exception):
    """The folder is beyond the budget; the message says which limit."""


def folder_digest(
    folder: Path, budget: Budget | None = None, now: Callable[[], float] = time.monotonic
) -> dict[str, Any]:
    """``{"sha256", "files"}`` over sorted relative paths and file bytes; ``{"missing"}``,
    ``{"too_large"}`` or ``{"error"}`` when it cannot be taken."""
    if not folder.is_dir():
        return {"missing": "no such folder"}
    budget = budget or Budget()
    limits = _Limits(budget, now() + budget.max_seconds, now)
    try:
        digest, files = _hash(folder, limits)
    except TooLarge as exc:
        return {"too_large": str(exc)}
    except OSError as exc:
        return {"error": f"cannot be read ({exc.strerror or type(exc).__name__})"}
    return {"sha256": digest, "files": files}


def _hash(folder: Path, limits: _Limits) -> tuple[str, int]:
    total = hashlib.sha256()
    files = 0
    size = 0
    for relative, path in _files(folder):
        files += 1
        if files > limits.budget.max_files:
            raise TooLarge(f"more than {limits.budget.max_files} files")
        size += _feed(total, relative, path, limits.budget.max_bytes - size, limits)
        limits.check_time()
    return total.hexdigest(), files


def _files(folder: Path) -> Iterator[tuple[str, Path]]:
    """Every file Airflow would see, in a stable order; symbolic links followed (as
    Airflow does), each real folder once."""
    seen: set[str] = set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS)
        for name in sorted(names):
            if name.endswith(SKIPPED_SUFFIXES):
                continue
            path = Path(root) / name
            if path.is_file():
                yield path.relative_to(folder).as_posix(), path


def _feed(total: Any, relative: str, path: Path, room: int, limits: _Limits) -> int:
    """Add one file (its path, then its bytes) to the hash; the bytes it read."""
    total.update(relative.encode("utf-8", "surrogateescape") + b"\0")
    read = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            read += len(chunk)
            if read > room:
                raise TooLarge(f"more than {_size(limits.budget.max_bytes)}")
            total.update(chunk)
            limits.check_time()
    total.update(b"\0")
    return read


@dataclass(frozen=True)
class _Limits:
    budget: Budget
    give_up: float
    now: Callable[[], float]

    def check_time(self) -> None:
        if self.now() > self.give_up:
            raise TooLarge(f"not hashed within {self.budget.max_seconds:g}s")


def _size(count: int) -> str:
    mib = 1024 * 1024
    return f"{count // mib} MiB" if count >= mib else f"{count} bytes"
