"""Finding the schedulers on this host, and telling whose each one is.

A scheduler is a process that runs the configured command (``matches``, which also knows
the titles Airflow gives its processes). Whose it is comes from evidence that Airflow
cannot erase. Airflow's setproctitle overwrites a process's title and environment (the
2.10 scheduler's own environment within seconds of its start, and that of every worker and
DAG processor in 2.10 and 3.x), so the scheduler's environment is trusted only while it
is intact, and never needed for our own runs:

* Under a guard (its nearest ``airflow_sentinel.process.guard`` ancestor), the owner named
  on the guard's command line decides. Our controller's current run is ours. A run of
  another node_id is that node's business. A run of our node_id and installation by an
  earlier controller process is a stray of ours. Anything else (our node_id for another
  installation, a guard that names no owner) is foreign.
* Under no guard, the installation it serves decides. Its environment, while intact, names
  it: AIRFLOW_HOME (or HOME), AIRFLOW_CONFIG, and the database if it names one. Otherwise
  the files that it and its descendants hold open do: our SQLite database, or a file in one
  of our log folders (2.10's DAG processor manager keeps its log open there). A working
  directory, or a parent's environment, tells where a process was started from, not what it
  serves, and is not used.

A scheduler that is not established as ours is foreign: reported, never signalled. Reading
/proc is done in ``read_facts`` alone; ``classify`` is a pure function of what was read.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path, PurePath

import psutil
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from airflow_sentinel.config.airflow_cfg import AirflowConfig, load_airflow_config
from airflow_sentinel.errors import SentinelError
from airflow_sentinel.identity import Instance
from airflow_sentinel.process.guard import RunOwner, is_guard, owner_of
from airflow_sentinel.process.tree import descendants, is_alive

DATABASE_VARS = ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__SQL_ALCHEMY_CONN")
SQLITE_SIDE_FILES = ("", "-wal", "-shm", "-journal")
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}


class Kind(str, Enum):
    CURRENT = "current"  # the run of this very controller process
    STRAY = "stray"  # this installation's, not our current run: ours to stop
    DENIED = "denied"  # a stray of ours that we may not signal (another user's)
    OTHER_NODE = "other_node"  # under the live guard of another node: its business
    FOREIGN = "foreign"  # another installation's, or not established as ours: never touched


@dataclass(frozen=True)
class Verdict:
    kind: Kind
    why: str


@dataclass(frozen=True)
class Installation:
    """This Airflow installation, as the files and names by which its processes show it.

    Paths are kept as configured and with symlinks resolved (the kernel shows open files
    resolved). ``database`` is compared, never shown: it may carry a password.
    """

    homes: frozenset[str]
    configs: frozenset[str]
    database: str | None = None
    database_files: frozenset[str] = frozenset()
    log_folders: frozenset[str] = frozenset()

    def serves(self, home: str, config: str) -> bool:
        return os.path.normpath(home) in self.homes and os.path.normpath(config) in self.configs

    def uses_database(self, url: str) -> bool:
        return self.database is None or same_database(url, self.database)

    def owns_file(self, path: str) -> bool:
        return path in self.database_files or any(
            path.startswith(folder + os.sep) for folder in self.log_folders
        )


@dataclass(frozen=True)
class Identity:
    """Who is asking: this controller process, of a node, for an installation."""

    node_id: str
    instance: str
    installation: Installation


@dataclass(frozen=True)
class GuardMark:
    owner: RunOwner | None  # None: a guard that names no owner (an older version)
    # The owning controller is proven gone (same boot and PID namespace, pid not alive).
    owner_gone: bool = False


@dataclass(frozen=True)
class Facts:
    """What /proc shows of one scheduler process (and of its descendants' open files)."""

    environ: Mapping[str, str] | None  # None: erased by setproctitle, or not ours to read
    guard: GuardMark | None = None
    open_files: frozenset[str] = frozenset()
    may_signal: bool = True


# -- classification (pure) ---------------------------------------------------------------
def classify(facts: Facts, me: Identity) -> Verdict:
    """Whose scheduler this is, and why, from what /proc showed of it."""
    if facts.guard is not None:
        verdict = _by_guard(facts.guard, me)
    else:
        verdict = _by_installation(facts, me.installation)
    if verdict.kind is Kind.STRAY and not facts.may_signal:
        return Verdict(Kind.DENIED, f"{verdict.why}; not allowed to signal it")
    return verdict


def _by_guard(mark: GuardMark, me: Identity) -> Verdict:
    owner = mark.owner
    if owner is None:
        return Verdict(Kind.FOREIGN, "under a guard that names no owner")
    if owner.node_id != me.node_id:
        return Verdict(Kind.OTHER_NODE, f"under the guard of node {owner.node_id}")
    if not me.installation.serves(owner.airflow_home, owner.airflow_config):
        return Verdict(
            Kind.FOREIGN,
            f"under a guard of node {owner.node_id} for AIRFLOW_HOME {owner.airflow_home}",
        )
    if owner.instance == me.instance:
        return Verdict(Kind.CURRENT, "our own run")
    if not mark.owner_gone:
        # A live twin (a clone with our node_id) or one we cannot see: its guard fences
        # its run; killing it would be one instance fighting another.
        return Verdict(
            Kind.OTHER_NODE, f"under the guard of another live controller ({owner.instance})"
        )
    return Verdict(Kind.STRAY, f"under the guard of an earlier controller ({owner.instance})")


def _by_installation(facts: Facts, ours: Installation) -> Verdict:
    if facts.environ is not None:
        served = served_by_environment(facts.environ)
        if served is not None:
            return _by_environment(facts.environ, served, ours)
    held = sorted(path for path in facts.open_files if ours.owns_file(path))
    if held:
        return Verdict(Kind.STRAY, f"it holds {held[0]} open")
    environment = (
        "no readable environment (erased by setproctitle, or another user's)"
        if facts.environ is None
        else "an environment that does not tell its AIRFLOW_HOME"
    )
    return Verdict(
        Kind.FOREIGN,
        f"installation not established: {environment}, and no file of this one open",
    )


def _by_environment(env: Mapping[str, str], served: tuple[str, str], ours: Installation) -> Verdict:
    home, config = served
    if not ours.serves(home, config):
        return Verdict(Kind.FOREIGN, f"its environment names AIRFLOW_HOME {home} ({config})")
    named = next((env[name].strip() for name in DATABASE_VARS if env.get(name)), None)
    if named is not None and not ours.uses_database(named):
        return Verdict(Kind.FOREIGN, "its environment names another database")
    return Verdict(Kind.STRAY, "its environment names this installation")


def served_by_environment(env: Mapping[str, str]) -> tuple[str, str] | None:
    """(AIRFLOW_HOME, airflow.cfg) as Airflow derives them from this environment; None
    when it cannot be told without the process (a relative path, a variable in it)."""
    home = _expand(env.get("AIRFLOW_HOME") or "~/airflow", env)
    if home is None:
        return None
    given = env.get("AIRFLOW_CONFIG")
    config = _expand(given, env) if given else str(PurePath(home) / "airflow.cfg")
    return None if config is None else (home, config)


def _expand(path: str, env: Mapping[str, str]) -> str | None:
    if path == "~" or path.startswith("~/"):
        user_home = env.get("HOME")
        if not user_home:
            return None
        path = user_home + path[1:]
    if "$" in path or not PurePath(path).is_absolute():
        return None
    return os.path.normpath(path)


def same_database(one: str, other: str) -> bool:
    """Whether two SQLAlchemy URLs name one database (drivers and passwords aside)."""
    if one.strip() == other.strip():
        return True
    try:
        return _database_key(one) == _database_key(other)
    except (ArgumentError, ValueError):
        return False


def _database_key(url: str) -> tuple[str, str | None, int | None, str | None, str | None]:
    parsed = make_url(url.strip())
    backend = {"postgres": "postgresql", "mariadb": "mysql"}.get(
        parsed.get_backend_name(), parsed.get_backend_name()
    )
    database = parsed.database
    if backend == "sqlite" and database:
        database = os.path.normpath(database)
    port = parsed.port or DEFAULT_PORTS.get(backend)
    return backend, parsed.host, port, database, parsed.username


# -- this installation ---------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def installation(airflow_home: str, airflow_config: str) -> Installation:
    """This installation, read once from its airflow.cfg (and the environment, as Airflow
    reads it); what cannot be read stays unknown."""
    try:
        config: AirflowConfig | None = load_airflow_config(Path(airflow_home))
    except SentinelError:
        config = None
    database = _lookup(config.sql_alchemy_conn) if config is not None else None
    return Installation(
        homes=_spellings(airflow_home),
        configs=_spellings(airflow_config),
        database=database,
        database_files=_sqlite_files(database),
        log_folders=frozenset(
            spelling
            for folder in _log_folders(airflow_home, config)
            for spelling in _spellings(folder)
        ),
    )


def _lookup(read: Callable[[], str | None]) -> str | None:
    """A value read from the configuration; None when it is unset or cannot be read (a
    failing ``_cmd``)."""
    try:
        return read() or None
    except SentinelError:
        return None


def _spellings(path: str) -> frozenset[str]:
    return frozenset({os.path.normpath(Path(path).absolute()), str(Path(path).resolve())})


def _sqlite_files(url: str | None) -> frozenset[str]:
    if url is None:
        return frozenset()
    try:
        parsed = make_url(url)
    except ArgumentError:
        return frozenset()
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return frozenset()
    return frozenset(
        spelling + side for spelling in _spellings(parsed.database) for side in SQLITE_SIDE_FILES
    )


def _log_folders(airflow_home: str, config: AirflowConfig | None) -> list[str]:
    """The default log folder, and the configured ones (base_log_folder and the folder of
    2.10's DAG processor manager log)."""
    folders = [str(PurePath(airflow_home) / "logs")]
    if config is None:
        return folders
    for section, key, folder_of in (
        ("logging", "base_log_folder", str),
        ("core", "base_log_folder", str),
        ("logging", "dag_processor_manager_log_location", _parent),
    ):
        value = _lookup(functools.partial(_option, config, section, key))
        if value is not None and PurePath(value).is_absolute():
            folders.append(folder_of(value))
    return folders


def _parent(path: str) -> str:
    return str(PurePath(path).parent)


def _option(config: AirflowConfig, section: str, key: str) -> str | None:
    return config.from_env(section, key) or config.from_file(section, key)


# -- reading /proc (the one thin place) --------------------------------------------------
@dataclass(frozen=True)
class Finding:
    proc: psutil.Process
    verdict: Verdict
    cmdline: str = "?"

    @property
    def detail(self) -> str:
        return f"pid {self.proc.pid}: {self.cmdline}: {self.verdict.why}"


def find_schedulers(command: list[str], me: Identity, skip: set[int]) -> list[Finding]:
    """Every scheduler on this host outside ``skip`` (outermost processes only), judged."""
    found = []
    for proc in _outermost_schedulers(command, skip):
        facts = read_facts(proc)
        if is_alive(proc):  # one that exited meanwhile showed nothing: no verdict on it
            found.append(Finding(proc, classify(facts, me), describe(proc)))
    return found


def read_facts(proc: psutil.Process) -> Facts:
    tree = [proc, *descendants(proc)]
    return Facts(
        environ=_environment(proc),
        guard=_guard_above(proc),
        open_files=frozenset(path for member in tree for path in _open_files(member.pid)),
        may_signal=_may_signal(proc.pid),
    )


def _environment(proc: psutil.Process) -> dict[str, str] | None:
    try:
        env = proc.environ()
    except psutil.Error:
        return None
    return env or None  # nothing but zeros: erased by setproctitle


@functools.cache
def _this_controller() -> Instance:
    """Read once: only its boot and PID namespace are used, and they never change."""
    return Instance.of_this_process("")


def _guard_above(proc: psutil.Process) -> GuardMark | None:
    try:
        parents = proc.parents()
    except psutil.Error:
        return None
    for parent in parents:
        try:
            cmdline = parent.cmdline()
        except psutil.Error:
            continue
        if is_guard(cmdline):
            owner = owner_of(cmdline)
            gone = owner is not None and _this_controller().proven_dead(owner.instance)
            return GuardMark(owner, owner_gone=gone)
    return None


def _open_files(pid: int) -> list[str]:
    try:
        entries = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return []  # gone, or another user's
    paths = []
    for entry in entries:
        try:
            target = str(entry.readlink())
        except OSError:
            continue
        if target.startswith("/"):  # not a socket, pipe or anonymous inode
            paths.append(target.removesuffix(" (deleted)"))
    return paths


def _may_signal(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except PermissionError:
        return False
    except ProcessLookupError:
        return True  # gone: there is nothing to refuse
    return True


def _outermost_schedulers(command: list[str], skip: set[int]) -> list[psutil.Process]:
    me = os.getpid()
    found: list[psutil.Process] = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        pid = proc.info["pid"]
        if pid == me or pid in skip or not proc.info["cmdline"]:
            continue
        if matches(proc.info["cmdline"], command):
            found.append(proc)
    pids = {p.pid for p in found}
    return [p for p in found if not _has_ancestor_in(p, pids)]


def _has_ancestor_in(proc: psutil.Process, pids: set[int]) -> bool:
    try:
        return any(parent.pid in pids for parent in proc.parents())
    except psutil.Error:
        return False


def _words(args: Iterable[str]) -> list[str]:
    """Command-line words; a process title set with setproctitle arrives as one string."""
    return [word for arg in args for word in arg.split()]


def matches(cmdline: list[str], command: list[str]) -> bool:
    """Whether a process runs the scheduler command: its program (compared by file name,
    so ``/venv/bin/airflow`` is ``airflow``) followed by exactly its arguments."""
    wanted, words = _words(command), _words(cmdline)
    if not wanted or not words:
        return False
    program, arguments = PurePath(wanted[0]).name, wanted[1:]
    # The program is the process's own first word, or the script an interpreter runs:
    # never a word further along (`airflow-sentinel start --scheduler-command "airflow
    # scheduler"` and `grep airflow scheduler` are not schedulers).
    starts = [0, 1] if PurePath(words[0]).name.startswith("python") else [0]
    return any(
        i < len(words)
        and PurePath(words[i]).name == program
        and words[i + 1 : i + 1 + len(arguments)] == arguments
        for i in starts
    )


def describe(proc: psutil.Process) -> str:
    try:
        return " ".join(_words(proc.cmdline()))[:200]
    except psutil.Error:
        return "?"
