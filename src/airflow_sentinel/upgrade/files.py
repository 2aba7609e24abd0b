"""Backups of files: configuration copied byte for byte, folders archived with checksums."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from airflow_sentinel.upgrade.installation import UpgradeError


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def private_copy(source: Path, target: Path) -> None:
    """Copy bytes and times; the copy is readable by its owner only."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out, source.open("rb") as src:
        shutil.copyfileobj(src, out)
    shutil.copystat(source, target)
    target.chmod(0o600)


def restore_file(backup: Path, original: Path, mode: int) -> None:
    """Put the original back byte for byte, atomically, with its original mode."""
    fd, tmp = tempfile.mkstemp(dir=original.parent, prefix=f".{original.name}.")
    with os.fdopen(fd, "wb") as out, backup.open("rb") as src:
        shutil.copyfileobj(src, out)
        out.flush()
        os.fsync(out.fileno())
    Path(tmp).chmod(mode)
    Path(tmp).replace(original)


def archive_folder(folder: Path, target: Path) -> dict[str, str]:
    """A private tar.gz of ``folder``; returns the sha256 of every file in it."""
    sums: dict[str, str] = {}
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
        tar.add(folder, arcname=".")
    sums.update(folder_sums(folder))
    return sums


def folder_sums(folder: Path) -> dict[str, str]:
    """The sha256 of every file in ``folder`` (compiled bytecode aside)."""
    return {
        str(path.relative_to(folder)): sha256(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def verify_archive(archive: Path, sums: dict[str, str]) -> None:
    """Every file the manifest names is in the archive with the same checksum."""
    with tarfile.open(archive, "r:gz") as tar:
        for name, expected in sums.items():
            member = tar.extractfile(f"./{name}")
            if member is None:
                raise UpgradeError(f"backup {archive.name}: {name} is missing")
            digest = hashlib.sha256(member.read()).hexdigest()
            if digest != expected:
                raise UpgradeError(f"backup {archive.name}: {name} does not match its checksum")
