"""Carry the operator's configuration over to the target version.

The new airflow.cfg is the target's own default file, with every option the operator
changed from the old version's defaults set again, under its new name where Airflow renamed
or moved it. Nothing is dropped silently: the report names every option carried, renamed,
dropped as obsolete, or kept although the target does not know it. Values never appear in
the report: they may be secrets.
"""

from __future__ import annotations

import base64
import configparser
import hashlib
import hmac
import json
import re
import secrets
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from packaging.version import Version

from airflow_sentinel.config.airflow_cfg import SECTION
from airflow_sentinel.metastore.urls import scrub
from airflow_sentinel.upgrade.installation import (
    AirflowEnv,
    UpgradeError,
    airflow_environ,
    last_line,
)

Option = tuple[str, str]

_DEFAULT_LINE = re.compile(r"^#?\s*([A-Za-z0-9_.-]+) = ?(.*)$")
_SECTION_LINE = re.compile(r"^\[([^\]]+)\]\s*$")

# Run in the target's environment: Airflow's own rename and removal tables, as JSON.
MAPS_PROBE = """
import json
out = {"renames": [], "removed": [], "default_changes": []}
try:
    from airflow.configuration import conf
    for (ns, nk), (os_, ok, _v) in type(conf).deprecated_options.items():
        out["renames"].append([os_, ok, ns, nk])
except Exception:
    pass
try:
    from airflow.cli.commands.config_command import CONFIGS_CHANGES
except Exception:
    CONFIGS_CHANGES = []
for c in CONFIGS_CHANGES:
    old = [c.config.section, c.config.option]
    if c.renamed_to:
        out["renames"].append(old + [c.renamed_to.section, c.renamed_to.option])
    elif c.default_change:
        out["default_changes"].append(old + [str(c.old_default), str(c.new_default)])
    elif c.was_removed:
        equals = None if c.remove_if_equals is None else str(c.remove_if_equals)
        out["removed"].append(old + [equals, c.suggestion])
print("SENTINEL-MAPS " + json.dumps(out))
"""


@dataclass(frozen=True)
class Maps:
    renames: dict[Option, Option] = field(default_factory=dict)
    removed: dict[Option, tuple[str | None, str]] = field(default_factory=dict)
    default_changes: dict[Option, tuple[str, str]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, raw: dict[str, list[list[str | None]]]) -> Maps:
        return cls(
            renames={(str(r[0]), str(r[1])): (str(r[2]), str(r[3])) for r in raw["renames"]},
            removed={(str(r[0]), str(r[1])): (r[2], str(r[3] or "")) for r in raw["removed"]},
            default_changes={
                (str(r[0]), str(r[1])): (str(r[2]), str(r[3])) for r in raw["default_changes"]
            },
        )


# Removed in a release whose own change list does not say so: each would otherwise be kept
# in the new file as an option the target does not know. A secret among them must not
# linger in a file for nothing.
UNLISTED_REMOVALS: dict[str, dict[Option, str]] = {
    "3.0.0": {
        ("core", "internal_api_secret_key"): "the internal API (AIP-44) is gone in Airflow 3",
        ("core", "internal_api_url"): "the internal API (AIP-44) is gone in Airflow 3",
        ("core", "database_access_isolation"): "the internal API (AIP-44) is gone in Airflow 3",
    },
}


def with_unlisted_removals(maps: Maps, from_version: str, to_version: str) -> Maps:
    """``maps`` plus the removals of every release crossed that Airflow does not list."""
    low, high = Version(from_version), Version(to_version)
    removed = dict(maps.removed)
    for release, options in UNLISTED_REMOVALS.items():
        if low < Version(release) <= high:
            for option, why in options.items():
                removed.setdefault(option, (None, why))
    return Maps(renames=maps.renames, removed=removed, default_changes=maps.default_changes)


@dataclass
class Report:
    carried: list[str] = field(default_factory=list)
    renamed: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    unknown_kept: list[str] = field(default_factory=list)
    defaults_changed: list[str] = field(default_factory=list)
    environment: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out: list[str] = []
        for title, items in (
            ("conflicts: an old and a new name both set", self.conflicts),
            ("added: needed by the target, not in the old file", self.added),
            ("carried (changed from the old defaults)", self.carried),
            ("renamed or moved", self.renamed),
            ("dropped: obsolete in the target", self.dropped),
            ("kept as they were: not among the target's defaults", self.unknown_kept),
            ("defaults that changed (your value was the old default)", self.defaults_changed),
            ("environment variables to rename yourself", self.environment),
        ):
            out.append(f"{title}: {len(items)}")
            out.extend(f"  {item}" for item in items)
        return out

    def summary(self) -> str:
        text = (
            f"{len(self.carried)} carried, {len(self.renamed)} renamed, "
            f"{len(self.dropped)} dropped as obsolete, {len(self.unknown_kept)} kept unmapped"
        )
        if self.conflicts:
            text += f", {len(self.conflicts)} conflicting pair(s) settled as the old version did"
        if self.added:
            text += f", {len(self.added)} added ({', '.join(a.split(':')[0] for a in self.added)})"
        return text


def parse_defaults(text: str) -> dict[Option, str]:
    """Options of a default airflow.cfg, commented out or not."""
    found: dict[Option, str] = {}
    section = None
    for line in text.splitlines():
        header = _SECTION_LINE.match(line)
        if header:
            section = header.group(1)
            continue
        match = _DEFAULT_LINE.match(line)
        if section and match and (line.startswith("# ") or not line.startswith("#")):
            found[(section, match.group(1))] = match.group(2).strip()
    return found


def read_raw(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path, encoding="utf-8")
    return parser


def carry_over(
    old_cfg: configparser.ConfigParser,
    old_defaults: dict[Option, str],
    new_defaults_text: str,
    maps: Maps,
    environ: dict[str, str],
    old_renames: dict[Option, Option] | None = None,
) -> tuple[str, Report]:
    """The target's airflow.cfg text and what was done to each option.

    ``old_renames``: the old version's own rename map. When the file sets both an old name
    and its new one, the value carried is the one the old version read: the new name's if
    the old version already knew it (Airflow reads a deprecated name only as a fallback),
    the old name's if the new one is new in the target.
    """
    report = Report()
    new_defaults = parse_defaults(new_defaults_text)
    placed: dict[Option, str] = {}
    settled = _settle_conflicts(old_cfg, maps, old_renames or {}, report)
    for section in old_cfg.sections():
        if section == SECTION:
            continue  # copied whole, comments included, by the caller
        for key, value in old_cfg.items(section, raw=True):
            option = (section, key)
            name = f"[{section}] {key}"
            if option in settled:
                placed[settled[option][0]] = settled[option][1]
                continue
            if old_defaults.get(option) == value.strip():
                if option in maps.default_changes:
                    old, new = maps.default_changes[option]
                    report.defaults_changed.append(f"{name}: {old} -> {new}")
                continue
            if option in maps.renames:
                target = maps.renames[option]
                placed[target] = value
                report.renamed.append(f"{name} -> [{target[0]}] {target[1]}")
            elif option in maps.removed and maps.removed[option][0] in (None, value.strip()):
                why = maps.removed[option][1] or "removed in the target"
                report.dropped.append(f"{name}: {why}".strip())
            else:
                placed[option] = value
                bucket = report.carried if option in new_defaults else report.unknown_kept
                bucket.append(name)
    _environment_notes(environ, maps, report)
    _shared_jwt_secret(old_cfg, new_defaults, environ, placed, report)
    return render(new_defaults_text, placed), report


JWT_SECRET: Option = ("api_auth", "jwt_secret")
_JWT_ALTERNATIVES = (JWT_SECRET, ("api_auth", "jwt_private_key_path"))
# Secrets every node of a cluster already shares, in the order one is used as a seed.
_JWT_SEEDS = (("webserver", "secret_key"), ("api", "secret_key"), ("core", "fernet_key"))


def _shared_jwt_secret(
    old_cfg: configparser.ConfigParser,
    new_defaults: dict[Option, str],
    environ: dict[str, str],
    placed: dict[Option, str],
    report: Report,
) -> None:
    """Airflow 3's scheduler signs the tokens its tasks present to the api-server. With no
    `[api_auth] jwt_secret` in the file, each process draws a random one of its own and
    every task fails. Derived from a secret the cluster's nodes already share, every node
    upgraded from the same file gets the same one: 64 bytes, as HS512 (Airflow's choice
    for a shared secret) wants."""
    if JWT_SECRET not in new_defaults or any(o in placed for o in _JWT_ALTERNATIVES):
        return
    if any(old_cfg.has_option(*o) and old_cfg.get(*o, raw=True).strip() for o in _JWT_ALTERNATIVES):
        return
    variable = "AIRFLOW__API_AUTH__JWT_SECRET"
    if any(name in environ for name in (variable, f"{variable}_CMD", f"{variable}_SECRET")):
        return
    seed = _jwt_seed(old_cfg, environ)
    if seed is None:
        placed[JWT_SECRET] = secrets.token_urlsafe(64)
        report.added.append(
            "[api_auth] jwt_secret: random (no shared secret to derive it from); give every "
            "node and the api-server the same value"
        )
        return
    source, value = seed
    digest = hmac.new(value.encode(), b"airflow-sentinel [api_auth] jwt_secret", hashlib.sha512)
    placed[JWT_SECRET] = base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")
    report.added.append(
        f"[api_auth] jwt_secret: derived from {source}, so every node upgraded with the same "
        "one shares it (the scheduler and the api-server must)"
    )


def _jwt_seed(
    old_cfg: configparser.ConfigParser, environ: dict[str, str]
) -> tuple[str, str] | None:
    """The first shared secret the old version used, and where it came from: a variable
    overrides the file (the file's value is then each host's own random default)."""
    for section, key in _JWT_SEEDS:
        variable = f"AIRFLOW__{section.upper()}__{key.upper()}"
        if environ.get(variable, "").strip():
            return variable, environ[variable].strip()
        if old_cfg.has_option(section, key) and old_cfg.get(section, key, raw=True).strip():
            return f"[{section}] {key}", old_cfg.get(section, key, raw=True).strip()
    return None


def _settle_conflicts(
    old_cfg: configparser.ConfigParser,
    maps: Maps,
    old_renames: dict[Option, Option],
    report: Report,
) -> dict[Option, tuple[Option, str]]:
    """Both names of one option set to different values: each of the pair mapped to the
    target option and the value the old version used."""
    settled: dict[Option, tuple[Option, str]] = {}
    for old, new in maps.renames.items():
        if not (old_cfg.has_option(*old) and old_cfg.has_option(*new)):
            continue
        old_value, new_value = old_cfg.get(*old, raw=True), old_cfg.get(*new, raw=True)
        if old_value.strip() == new_value.strip():
            continue  # the same value twice: a plain rename
        used, value = (new, new_value) if old_renames.get(old) == new else (old, old_value)
        settled[old] = settled[new] = (new, value)
        report.conflicts.append(
            f"[{old[0]}] {old[1]} and [{new[0]}] {new[1]} differ: carried the value of "
            f"[{used[0]}] {used[1]}, the one the old version used"
        )
    return settled


def _environment_notes(environ: dict[str, str], maps: Maps, report: Report) -> None:
    for (section, key), (new_section, new_key) in maps.renames.items():
        variable = f"AIRFLOW__{section.upper()}__{key.upper()}"
        if variable in environ:
            report.environment.append(
                f"{variable} -> AIRFLOW__{new_section.upper()}__{new_key.upper()}"
            )


def _value_lines(key: str, value: str) -> list[str]:
    first, *rest = value.split("\n")
    return [f"{key} = {first}", *(f"\t{line}" for line in rest)]


def render(defaults_text: str, placed: dict[Option, str]) -> str:
    """The default file with ``placed`` options set: in place of their commented default,
    or at the end of their section, or in a new section at the end."""
    remaining = dict(placed)
    out: list[str] = []
    section: str | None = None

    def flush(current: str | None) -> None:
        extra = [o for o in remaining if o[0] == current]
        for option in extra:
            out.extend(_value_lines(option[1], remaining.pop(option)))
        if extra:
            out.append("")

    for line in defaults_text.splitlines():
        header = _SECTION_LINE.match(line)
        if header:
            flush(section)
            section = header.group(1)
            out.append(line)
            continue
        match = _DEFAULT_LINE.match(line)
        option = (section or "", match.group(1)) if match else None
        if option is not None and option in remaining and line.startswith(("# ", option[1])):
            out.extend(_value_lines(option[1], remaining.pop(option)))
            continue
        out.append(line)
    flush(section)
    for new_section in dict.fromkeys(o[0] for o in remaining):
        out.extend(["", f"[{new_section}]"])
        flush(new_section)
    return "\n".join(out).rstrip("\n") + "\n"


def sentinel_block(cfg_text: str) -> str:
    """The `[sentinel]` section of a file, verbatim."""
    lines, inside = [], False
    for line in cfg_text.splitlines():
        header = _SECTION_LINE.match(line)
        if header:
            inside = header.group(1) == SECTION
        if inside:
            lines.append(line)
    return "\n".join(lines).rstrip("\n") + "\n" if lines else ""


def defaults_text(env: AirflowEnv, home: Path, secret_url: str = "") -> str:
    """The version's default airflow.cfg for this AIRFLOW_HOME, untouched by the operator's
    file (Airflow 3 would otherwise mix that file's extra sections in)."""
    args = ["config", "list", "--defaults"]
    if int(env.version.split(".")[0]) >= 3:
        args.append("--show-values")  # Airflow 3 hides values unless asked
    with tempfile.TemporaryDirectory(prefix="sentinel-defaults-") as scratch:
        extra = {"AIRFLOW_CONFIG": str(Path(scratch) / "airflow.cfg")}
        text = env.run(args, home, secret_url=secret_url, extra_env=extra).stdout
    return without_section(text, SECTION)


def without_section(text: str, name: str) -> str:
    lines, inside = [], False
    for line in text.splitlines():
        header = _SECTION_LINE.match(line)
        if header:
            inside = header.group(1) == name
        if not inside:
            lines.append(line)
    return "\n".join(lines) + "\n"


def target_maps(env: AirflowEnv, home: Path, secret_url: str = "") -> Maps:
    done = subprocess.run(
        [str(env.python), "-c", MAPS_PROBE],
        env=airflow_environ(home),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    for line in done.stdout.splitlines():
        if line.startswith("SENTINEL-MAPS "):
            return Maps.from_json(json.loads(line[len("SENTINEL-MAPS ") :]))
    why = scrub(last_line(done.stderr), secret_url)
    raise UpgradeError(f"cannot read Airflow {env.version}'s option maps: {why}")
