"""Real downtime benchmark: with a real Airflow scheduler, the time from a fault until the
new scheduler's first heartbeat in Airflow's `job` table, and Airflow's own start time.

Configurations: Airflow 3.3.2 on PostgreSQL (`postgresql`) and Airflow 2.10.5 on MariaDB
(`mariadb`), each in a fresh database (created, migrated, dropped at the end) on the local
servers, LocalExecutor, one DAG of one task every 10 s (tests/support/fenced_airflow.py's
installation; on Airflow 3 its api-server and dag-processor run beside it, unfenced). Two
controllers, nodes a and b, run with the shipped settings (`default`: whatever the
[sentinel] keys' defaults are, printed at the start; health_check process, db_fence auto,
i.e. on, schema_gate on) or the `fast` profile of airflow_sentinel.config.profiles; only
log_format is json (the breakdown below is read from the controllers' logs). The metastore
is Airflow's own database, as by default.

Every process of a node (its controller, its guards, its crash-release helpers, its
scheduler) reaches the database through a TCP proxy of its own (tests/support/proxy.py) in
this process: for "node cut off", and alike in every row. The floor's scheduler goes
through such a proxy too.

Downtime = from the fault (time.time() just before the signal or the write that is the
fault) until this benchmark first sees a SchedulerJob row in `job` that did not exist at
the fault (a higher id than any before it: a job the old scheduler did not own), in state
running, with a latest_heartbeat later than the fault. The benchmark polls the table every
50 ms on a direct connection and takes the start of the first query that saw the row (the
row was committed before that query began): the figures are at most ~50 ms late, never
early, and use no clock of the database. The row's own start_date (written by the
scheduler from this host's clock, read as UTC) is kept in the JSON output as a check.

Faults, each its own row (the active node is the lease holder):

* scheduler killed: SIGKILL to the scheduler's main process (the guard's child).
* controller killed: SIGKILL to the active controller only; its guard stops the scheduler
  (SIGTERM, up to stop_timeout) and gives the lease back; once the new scheduler's row is
  seen the controller is started again.
* controller frozen: SIGSTOP to the active controller only (its guard runs on and fences
  the scheduler at the lease deadline); SIGCONT once the new scheduler's row is seen.
* node cut off: the active node's proxy drops every byte both ways (no FIN, no RST) and
  closes each new connection at once: its controller, guard, helpers and scheduler all
  lose the database, which is the lease metastore too; nothing else is affected. Healed
  (the stranded connections closed) once the new scheduler's row is seen.
* switchover: the metastore flag that `airflow-sentinel switchover` sets, to the other
  node; the fault is the moment the flag is written.
* floor: Airflow's own start, no controller: exec of `airflow scheduler --skip-serve-logs`
  (a plain subprocess, same database, same proxy, same settings) until its first row, then
  SIGKILL. One unmeasured start first warms the caches (the cluster's first start is
  unmeasured too). Measured before any controller runs (they would kill it as a stray).

Each trial waits first for one scheduler (its row seen) and the other node registered as
a standby (so the node a fault hit must stand by again first). A trial whose row does not
come within 300 s is reported as failed, and so is a profile without a steady cluster
within 300 s (the rest of it is given up). Noted under the tables: an undo that failed,
and a switchover whose new scheduler did not run on its target.

Reported: min / median / p95 (nearest rank) of the downtime per fault, and the median
minus the floor's median: what the controller adds to Airflow's own start. A second
table splits the medians: fault -> the new active node acts (its became_active, or
for a killed scheduler its scheduler_exited event), -> the fence raise begins (pre-start
checks), the raise, -> the guard is forked, -> the scheduler is forked (the guard's own
start), -> the first row (Airflow's start, to compare with the floor). Process start times
come from /proc (10 ms ticks), event times from the JSON log lines (1 ms).

Run it under the heavy-work lock:

    flock /tmp/sentinel-heavy.lock .venv/bin/python -m benchmarks.real_downtime --trials 3
    flock /tmp/sentinel-heavy.lock .venv/bin/python -m benchmarks.real_downtime \\
        --trials 1 --backends mariadb --profile fast --faults "scheduler killed,switchover"

Ctrl-C or SIGTERM stops it cleanly (every process, group and database removed) and still
prints the tables of what was measured. `--logs DIR` keeps the controllers' and the
schedulers' logs (DIR/BACKEND/*.log); `--json FILE` the raw figures of every trial.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Any

import psutil
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from airflow_sentinel.airflow_env import ensure_airflow_venv
from airflow_sentinel.config.profiles import PROFILES as SHIPPED
from airflow_sentinel.config.settings import KEYS
from airflow_sentinel.metastore.base import switchover_flag
from airflow_sentinel.metastore.sql import create_sql_engine
from airflow_sentinel.soak.probe import boottime, process_start
from benchmarks.fence import machine, summary
from tests.support.cluster import Cluster, running_cluster, wait_until
from tests.support.fenced_airflow import (
    EXTRAS,
    NodeGroup,
    SchedulerJob,
    Site,
    airflow_site,
    scheduler_jobs,
    start_node,
)
from tests.support.proxy import Proxy
from tests.support.real_airflow import guarded_schedulers

CONFIGS = {"postgresql": "3.3.2", "mariadb": "2.10.5"}
PORTS = {"postgresql": 5432, "mariadb": 3306}
FAULTS = (
    "scheduler killed",
    "controller killed",
    "controller frozen",
    "node cut off",
    "switchover",
)
FLOOR = "floor (airflow scheduler alone)"
PROFILES: dict[str, dict[str, str]] = {"default": {}, "fast": dict(SHIPPED["fast"])}
# Not timing: the gate as shipped (the test cluster turns it off for its stand-in), and
# log lines this benchmark can read.
FIXED = {"schema_gate": "on", "log_format": "json"}
NODES = ("a", "b")
POLL = 0.05  # seconds between reads of the job table
SLOW = 300.0  # deadline of any one wait: two cores, a real Airflow starting
NAN = float("nan")


TIMING_KEYS = ("lease_ttl", "renew_interval", "standby_poll", "stop_timeout", "start_timeout")


def timing(profile: str) -> dict[str, str]:
    """The timing keys of a profile: its own values over the shipped defaults."""
    shipped = {k.name: k.default for k in KEYS if k.name in TIMING_KEYS}
    return {**shipped, **{k: v for k, v in PROFILES[profile].items() if k in TIMING_KEYS}}


# -- one trial -------------------------------------------------------------------------------
@dataclass
class Trial:
    airflow: str
    database: str
    profile: str  # "-": the floor
    fault: str
    number: int
    downtime_s: float = NAN  # fault -> first sight of the new job row
    row_s: float = NAN  # fault -> that row's start_date (the scheduler's own clock)
    node: str = ""  # where the new scheduler runs
    job_id: int = 0
    acted_s: float = NAN  # fault -> became_active / scheduler_exited on that node
    raise_began_s: float = NAN  # fault -> the fence raise began (its event minus its ms)
    raise_ms: float = NAN  # the raise, as the controller logged it
    guard_s: float = NAN  # fault -> the guard forked
    exec_s: float = NAN  # fault -> the scheduler forked (0 for the floor)
    error: str = ""  # no downtime measured: why
    note: str = ""  # measured, but the recovery afterwards went wrong: what


def wall(moment: datetime) -> float:
    """A time from Airflow's tables (UTC; naive on MariaDB) as seconds since the epoch."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def boot_to_wall(boot: float) -> float:
    return boot + (time.time() - boottime())


class JobWatch:
    """Reads Airflow's job table on a direct connection (UTC sessions on MariaDB)."""

    def __init__(self, url: str) -> None:
        self.engine = create_sql_engine(url, 5.0, airflow_tables=True)

    def newest(self) -> int:
        return max((j.id for j in scheduler_jobs(self.engine)), default=0)

    def first_new(
        self, after: int, t0: float, check: Callable[[], None] | None = None
    ) -> tuple[float, SchedulerJob]:
        """(when first seen, the job): a running SchedulerJob newer than ``after`` whose
        heartbeat is later than ``t0``. ``check`` raises when waiting is pointless."""

        def found() -> tuple[float, SchedulerJob] | None:
            if check is not None:
                check()
            began = time.time()
            for job in scheduler_jobs(self.engine):
                beat = job.latest_heartbeat
                if job.id > after and job.state == "running" and beat and wall(beat) > t0:
                    return began, job
            return None

        return wait_until(found, SLOW, "a new scheduler's first heartbeat row", every=POLL)

    def close(self) -> None:
        self.engine.dispose()


# -- the controllers' log lines ----------------------------------------------------------------
@dataclass(frozen=True)
class LogEvent:
    at: float
    kind: str
    detail: str


def log_events(path: Path) -> list[LogEvent]:
    """The events of a controller's JSON log (other lines skipped)."""
    found: list[LogEvent] = []
    if not path.exists():
        return found
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
            at = datetime.fromisoformat(record["time"]).timestamp()
        except (ValueError, KeyError, TypeError):
            continue
        if record.get("event"):
            found.append(LogEvent(at, str(record["event"]), str(record.get("detail") or "")))
    return found


RAISED = re.compile(r"fence at epoch \d+ in (\d+) ms")


# -- the world -------------------------------------------------------------------------------
@dataclass
class World:
    site: Site
    cluster: Cluster
    watch: JobWatch
    proxies: dict[str, Proxy]
    groups: dict[str, NodeGroup] = field(default_factory=dict)
    every_group: list[NodeGroup] = field(default_factory=list)
    profile: str = "default"

    @property
    def label(self) -> str:
        return f"Airflow {self.site.version} on {self.site.backend}"

    def proxied_url(self, node: str) -> str:
        port = int(self.proxies[node].address.rsplit(":", 1)[1])
        url = make_url(self.site.url).set(host="127.0.0.1", port=port)
        return url.render_as_string(hide_password=False)

    def renew_interval(self) -> float:
        return float(timing(self.profile)["renew_interval"])

    def start(self, node: str) -> None:
        """The controller of ``node``, in a fresh group, all its traffic through its proxy."""
        group = NodeGroup(node)
        self.groups[node] = group
        self.every_group.append(group)
        url = self.proxied_url(node)
        self.cluster.extra_env = {
            **self.site.airflow_env(),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url,
        }
        start_node(self.cluster, node, self.site, group, metastore=url, **FIXED)

    def remove_groups(self) -> None:
        for group in self.every_group:
            group.remove()
        self.every_group.clear()
        self.groups.clear()

    def other(self, node: str) -> str:
        return next(n for n in NODES if n != node)

    def steady(self) -> str:
        """Wait for one scheduler, on the lease holder, and the other node a standby; the
        holder."""
        fresh = self.renew_interval() + 2

        def check() -> str | None:
            holder = self.cluster.active()
            if holder is None or holder not in self.groups:
                return None
            running = {n: self.groups[n].schedulers() for n in NODES if n in self.groups}
            if len(running[holder]) != 1 or any(running[n] for n in running if n != holder):
                return None
            if len(guarded_schedulers(self.site.home)) != 1:
                return None
            other = self.cluster.nodes().get(self.other(holder))
            if other is None or other.role != "standby" or other.last_heartbeat_age_s > fresh:
                return None
            return holder

        return wait_until(check, SLOW, "one scheduler and a standby", every=0.2)

    def new_scheduler(self) -> tuple[str, psutil.Process]:
        def one() -> tuple[str, psutil.Process] | None:
            found = [(n, p) for n, g in self.groups.items() for p in g.schedulers()]
            return found[0] if len(found) == 1 else None

        return wait_until(one, 30, "the new scheduler's process", every=0.02)

    # -- faults: each returns the fault's time and what undoes it once the row is seen (the
    # -- next trial waits for the old holder to stand by again, as part of a steady cluster)
    def fault(self, name: str, holder: str) -> tuple[float, Callable[[], None]]:
        if name == "scheduler killed":
            [proc] = self.groups[holder].schedulers()
            t0 = time.time()
            proc.kill()
            return t0, lambda: None
        pid = self.cluster.pid_of(holder)
        if name == "controller killed":
            t0 = time.time()
            os.kill(pid, signal.SIGKILL)

            def restart() -> None:
                self.cluster.processes[holder].wait(timeout=30)
                self.start(holder)

            return t0, restart
        if name == "controller frozen":
            t0 = time.time()
            os.kill(pid, signal.SIGSTOP)
            return t0, lambda: os.kill(pid, signal.SIGCONT)
        if name == "node cut off":
            proxy = self.proxies[holder]
            t0 = time.time()
            proxy.sever()
            return t0, proxy.heal
        if name == "switchover":
            lease = self.cluster.lease()
            assert lease is not None
            value = f"{lease.epoch} {self.other(holder)}"
            t0 = time.time()
            self.cluster.store.set_flag(switchover_flag("scheduler"), value)
            return t0, lambda: None
        raise ValueError(name)

    def trial(self, name: str, number: int) -> Trial:
        result = Trial(self.site.version, self.site.backend, self.profile, name, number)
        holder = self.steady()
        after = self.watch.newest()
        t0, undo = self.fault(name, holder)
        try:
            seen, job = self.watch.first_new(after, t0)
            result.downtime_s = seen - t0
            result.job_id = job.id
            result.row_s = wall(job.start_date) - t0
            node, proc = self.new_scheduler()
            result.node = node
            if name == "switchover" and node == holder:
                result.note = f"the new scheduler runs on {holder} again, not on the target"
            result.exec_s = boot_to_wall(process_start(proc.pid)) - t0
            result.guard_s = boot_to_wall(process_start(proc.ppid())) - t0
        except (AssertionError, psutil.Error, OSError) as exc:
            result.error = str(exc)[:300]
        finally:
            try:
                undo()
            except (AssertionError, psutil.Error, OSError, subprocess.TimeoutExpired) as exc:
                # The next trial waits for a steady cluster again (or gives up the profile).
                result.note = f"after the fault: {exc}"[:300]
        if result.node:
            self._breakdown(result, t0)
        return result

    def _breakdown(self, result: Trial, t0: float) -> None:
        """From the new node's log: when it acted, when its fence raise began and took."""
        events = [e for e in log_events(self.cluster.root / f"{result.node}.log") if e.at >= t0]
        starts = t0 + result.guard_s
        kind = "scheduler_exited" if result.fault == "scheduler killed" else "became_active"
        acted = next((e for e in events if e.kind == kind), None)
        if acted is not None:
            result.acted_s = acted.at - t0
        raised = [e for e in events if e.kind == "db_fence_raised" and e.at <= starts + 0.01]
        if raised and (found := RAISED.search(raised[-1].detail)):
            result.raise_ms = float(found.group(1))
            result.raise_began_s = raised[-1].at - result.raise_ms / 1000 - t0

    # -- a profile: both controllers, every fault, then stopped ----------------------------
    def run_profile(
        self, profile: str, faults: tuple[str, ...], trials: int, results: list[Trial]
    ) -> None:
        self.profile = profile
        self.cluster.settings = dict(PROFILES[profile])
        after = self.watch.newest()
        t0 = time.time()
        for node in NODES:
            self.start(node)
        self.watch.first_new(after, t0)  # the first start: not measured
        print(f"{self.label}, {profile}: controllers up", flush=True)
        try:
            for number in range(1, trials + 1):
                for name in faults:
                    try:
                        result = self.trial(name, number)
                    except AssertionError as exc:  # no steady cluster to fault: give up
                        result = Trial(self.site.version, self.site.backend, profile, name, number)
                        result.error = f"profile given up: {exc}"[:300]
                        results.append(result)
                        print(line(result), flush=True)
                        return
                    results.append(result)
                    print(line(result), flush=True)
        finally:
            self.stop_cluster()

    def stop_cluster(self) -> None:
        for process in self.cluster.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)
        for proxy in self.proxies.values():
            proxy.heal()
        self.cluster.stop_all()
        self.remove_groups()
        wait_until(
            lambda: not guarded_schedulers(self.site.home), 60, "every scheduler to be gone", 0.2
        )

    # -- the floor ---------------------------------------------------------------------------
    def floor(self, trials: int, warmup: int, results: list[Trial]) -> None:
        proxy = self.proxies["floor"]
        env = self.site.env()
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = self.proxied_url("floor")
        log = self.cluster.root / "floor-scheduler.log"
        for number in range(1 - warmup, trials + 1):
            result = Trial(self.site.version, self.site.backend, "-", FLOOR, number)
            after = self.watch.newest()
            with log.open("ab") as out:
                t0 = time.time()
                proc = subprocess.Popen(
                    self.site.scheduler_command.split(),
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )

            def alive(proc: subprocess.Popen[bytes] = proc) -> None:
                if proc.poll() is not None:
                    raise AssertionError(f"the scheduler exited ({proc.returncode}): see {log}")

            try:
                seen, job = self.watch.first_new(after, t0, alive)
                result.downtime_s = seen - t0
                result.row_s = wall(job.start_date) - t0
                result.job_id, result.exec_s, result.guard_s = job.id, 0.0, 0.0
                if number < 1:
                    # The warm-up also waits for the DAG to be parsed (Airflow 2 parses in
                    # its scheduler): every measured start then finds it there.
                    wait_until(self.dag_parsed, SLOW, "the DAG to be parsed", 0.5)
            finally:
                kill_session(proc.pid)
                proc.wait()
            if number >= 1:
                results.append(result)
                print(line(result), flush=True)
        proxy.heal()

    def dag_parsed(self) -> bool:
        with self.watch.engine.connect() as conn:
            count = conn.execute(sa.text("SELECT COUNT(*) FROM serialized_dag")).scalar_one()
        return bool(count)

    def wait_for_services(self) -> None:
        """Airflow 3: its api-server answers and its dag-processor parsed the DAG, so that
        their start-up does not load the machine during the floor."""
        if self.site.major < 3:
            return
        url = f"http://127.0.0.1:{self.site.api_port}/api/v2/monitor/health"

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    return bool(answer.status == 200)
            except OSError:
                return False

        wait_until(healthy, SLOW, "the api-server", every=1)
        wait_until(self.dag_parsed, SLOW, "the dag-processor to parse the DAG", every=0.5)


def kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid`` until none is left: a scheduler killed
    while it forks its executor's workers leaves workers that its tree no longer shows."""

    def members() -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
        return found

    def gone() -> bool:
        alive = members()
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        return not alive

    wait_until(gone, 30, f"every process of session {sid} to be gone", every=0.1)


@contextlib.contextmanager
def world_of(backend: str, root: Path) -> Iterator[World]:
    """An installation, its proxies and a cluster object (no controller running yet);
    every process, group and the database gone afterwards, however it ends."""
    version = CONFIGS[backend]
    venv = ensure_airflow_venv(version, extras=EXTRAS)
    with contextlib.ExitStack() as stack:
        print(f"Airflow {version} on {backend}: migrating a fresh database", flush=True)
        site = stack.enter_context(airflow_site(root, version, venv, backend, dags=1, tasks=1))
        proxies = {n: Proxy(("127.0.0.1", PORTS[backend])) for n in (*NODES, "floor")}
        for proxy in proxies.values():
            stack.callback(proxy.close)
        watch = JobWatch(site.url)
        stack.callback(watch.close)
        cluster = stack.enter_context(running_cluster(root, site.url))
        world = World(site, cluster, watch, proxies)
        stack.callback(world.remove_groups)  # first: a stopped controller cannot be killed
        stack.callback(thaw_all, cluster)
        yield world


def thaw_all(cluster: Cluster) -> None:
    """SIGCONT to every controller still running (one may be stopped by a fault)."""
    for process in cluster.processes.values():
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)


def run_backend(
    backend: str,
    profiles: list[str],
    faults: tuple[str, ...],
    trials: int,
    warmup: int,
    logs: Path | None,
    results: list[Trial],
) -> None:
    """One installation: the floor, then each profile; every trial appended to ``results``
    as it ends (an interrupted run keeps what it measured)."""
    with tempfile.TemporaryDirectory(prefix="sentinel-real-downtime-") as tmp:
        try:
            with world_of(backend, Path(tmp)) as world:
                world.wait_for_services()
                world.floor(trials, warmup, results)
                for profile in profiles:
                    world.run_profile(profile, faults, trials, results)
        finally:
            if logs is not None:
                keep_logs(Path(tmp), logs / backend)


def keep_logs(root: Path, target: Path) -> None:
    """The controllers' and the schedulers' logs, copied before the folder goes."""
    target.mkdir(parents=True, exist_ok=True)
    for log in root.glob("*.log"):
        shutil.copy(log, target / log.name)


# -- tables ----------------------------------------------------------------------------------
def line(r: Trial) -> str:
    where = f" on {r.node}" if r.node else ""
    took = f"{r.downtime_s:6.2f}s" if not math.isnan(r.downtime_s) else f"FAILED: {r.error}"
    note = f" (NOTE {r.note})" if r.note else ""
    return f"{r.airflow}/{r.database} {r.profile:7} #{r.number:<2} {r.fault:32} {took}{where}{note}"


def notes(results: list[Trial]) -> str:
    """Every trial that failed, or whose recovery did."""
    found = [line(r) for r in results if r.error or r.note]
    return "\n".join(["Failures and notes:", *found]) if found else "No failures."


def seconds(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f} s"


def groups_of(results: list[Trial]) -> dict[tuple[str, str, str, str], list[Trial]]:
    found: dict[tuple[str, str, str, str], list[Trial]] = {}
    for r in results:
        found.setdefault((r.airflow, r.database, r.profile, r.fault), []).append(r)
    return found


def floor_median(results: list[Trial], airflow: str, database: str) -> float:
    values = [
        r.downtime_s
        for r in results
        if (r.airflow, r.database, r.fault) == (airflow, database, FLOOR)
        and not math.isnan(r.downtime_s)
    ]
    return statistics.median(values) if values else NAN


def downtime_table(results: list[Trial]) -> str:
    rows = [
        "| Airflow | database | profile | fault | trials | min | median | p95 "
        "| median - floor median |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (airflow, database, profile, fault), mine in groups_of(results).items():
        ok = [r.downtime_s for r in mine if not math.isnan(r.downtime_s)]
        s = summary(ok)
        floor = floor_median(results, airflow, database)
        added = "" if fault == FLOOR else seconds(s["median"] - floor)
        rows.append(
            f"| {airflow} | {database} | {profile} | {fault} | {len(ok)}/{len(mine)} "
            f"| {seconds(s['min'])} | {seconds(s['median'])} | {seconds(s['p95'])} | {added} |"
        )
    return "\n".join(rows)


def median_of(values: list[float]) -> float:
    ok = [v for v in values if not math.isnan(v)]
    return statistics.median(ok) if ok else NAN


def breakdown_table(results: list[Trial]) -> str:
    rows = [
        "| Airflow | database | profile | fault | fault → node acts | acts → raise begins "
        "| raise | raise ends → guard forked | guard → scheduler forked "
        "| scheduler forked → first row | floor |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (airflow, database, profile, fault), mine in groups_of(results).items():
        if fault == FLOOR:
            continue
        acted = median_of([r.acted_s for r in mine])
        checks = median_of([r.raise_began_s - r.acted_s for r in mine])
        raise_ms = median_of([r.raise_ms for r in mine])
        to_guard = median_of([r.guard_s - r.raise_began_s - r.raise_ms / 1000 for r in mine])
        guard = median_of([r.exec_s - r.guard_s for r in mine])
        airflow_start = median_of([r.downtime_s - r.exec_s for r in mine])
        raise_text = "-" if math.isnan(raise_ms) else f"{raise_ms:.0f} ms"
        rows.append(
            f"| {airflow} | {database} | {profile} | {fault} | {seconds(acted)} "
            f"| {seconds(checks)} | {raise_text} | {seconds(to_guard)} | {seconds(guard)} "
            f"| {seconds(airflow_start)} | {seconds(floor_median(results, airflow, database))} |"
        )
    return "\n".join(rows)


# -- main ------------------------------------------------------------------------------------
def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def choices(text: str, known: tuple[str, ...], what: str) -> list[str]:
    chosen = [c.strip() for c in text.split(",") if c.strip()]
    unknown = sorted(set(chosen) - set(known))
    if unknown or not chosen:
        raise ValueError(f"{what}: unknown {unknown or 'none given'}; known: {', '.join(known)}")
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=3, help="trials per fault and the floor")
    parser.add_argument(
        "--backends",
        default=",".join(CONFIGS),
        help="postgresql (Airflow 3.3.2), mariadb (Airflow 2.10.5); comma-separated",
    )
    parser.add_argument("--profile", default="default,fast", help="default, fast or both")
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated")
    parser.add_argument(
        "--warmup", type=int, default=1, help="unmeasured floor starts before the measured ones"
    )
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument(
        "--logs", type=Path, help="copy the controllers' and schedulers' logs here (DIR/BACKEND)"
    )
    args = parser.parse_args()
    try:
        backends = choices(args.backends, tuple(CONFIGS), "--backends")
        profiles = choices(args.profile, tuple(PROFILES), "--profile")
        faults = tuple(choices(args.faults, FAULTS, "--faults"))
    except ValueError as exc:
        parser.error(str(exc))
    signal.signal(signal.SIGTERM, _terminate)
    print(machine(), flush=True)
    for profile in profiles:
        print(f"profile {profile}: " + ", ".join(f"{k} {v}" for k, v in timing(profile).items()))
    began = time.monotonic()
    results: list[Trial] = []
    interrupted = False
    try:
        for backend in backends:
            run_backend(backend, profiles, faults, args.trials, args.warmup, args.logs, results)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: everything is cleaned up by now
        interrupted = True
        print(f"\nINTERRUPTED ({exc or 'Ctrl-C'}): the tables hold what was measured until then")
    print()
    print(downtime_table(results))
    print()
    print(breakdown_table(results))
    print()
    print(notes(results))
    print()
    print(f"{machine()}; took {time.monotonic() - began:.0f} s")
    if args.json:
        raw: dict[str, Any] = {"trials": [asdict(r) for r in results]}
        args.json.write_text(json.dumps(raw, indent=2))
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
