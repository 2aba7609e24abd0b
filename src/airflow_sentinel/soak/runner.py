"""One soak: build the hosts and the metastore, start the controllers, inject faults,
record, tear everything down however the run ends, and judge the history."""

from __future__ import annotations

import json
import logging
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from airflow_sentinel.config.profiles import PROFILES, lease_ttl
from airflow_sentinel.errors import SentinelError
from airflow_sentinel.soak import hosts, servers
from airflow_sentinel.soak.checker import Fault, Verdict, check, writes_of
from airflow_sentinel.soak.freezer import NodeFreezer
from airflow_sentinel.soak.nemesis import KINDS, Injected, Nemesis, kinds_for
from airflow_sentinel.soak.nodes import Node, probe_command
from airflow_sentinel.soak.probe import AIRFLOW_DB_ENV, boottime
from airflow_sentinel.soak.recorder import Recorder
from airflow_sentinel.soak.servers import SERVERS, AirflowDatabase, Server

log = logging.getLogger(__name__)


@dataclass
class Plan:
    backend: str
    nodes: int = 3
    faults: int = 20
    duration: float | None = None  # seconds; stop early when it is reached
    seed: int = 0
    profile: str = "lab"  # the probe exits in milliseconds: see config/profiles.py
    overlap: float = 0.0  # chance that a second fault joins the first
    kinds: tuple[str, ...] = KINDS
    each: int = 0  # > 0: exactly this many faults of each kind, shuffled (the short form)
    out: Path = field(default_factory=lambda: Path("soak-out"))
    # "postgresql": Airflow's database, which the stand-in schedulers write to; None: none.
    airflow_db: str | None = None
    db_fence: str = "on"  # the controllers' db_fence with that database (off: a control)

    def schedule(self, available: tuple[str, ...]) -> list[str]:
        """The fault kinds in the order they will come (seeded)."""
        rng = random.Random(self.seed)
        kinds = [k for k in self.kinds if k in available]
        if self.each:
            order = [k for k in kinds for _ in range(self.each)]
            rng.shuffle(order)
            return order
        return [rng.choice(kinds) for _ in range(self.faults)]


@dataclass
class Outcome:
    verdict: Verdict
    faults: list[Fault]
    lives: list[dict[str, object]]
    started: float
    interrupted: str | None = None
    writes: list[dict[str, object]] | None = None  # the rows in Airflow's database
    # Seconds to add to a write's server time to place it on the CLOCK_BOOTTIME timeline.
    writes_offset: float = 0.0
    fence_epoch: int | None = None  # the fence's epoch at the end


class Interrupted(Exception):
    """SIGINT or SIGTERM reached the soak: stop injecting, clean up, still report."""


class StopFlag:
    """Set by SIGINT or SIGTERM and looked at where stopping is safe. A handler that
    raised could land inside a log call or a heal, which would swallow the exception and
    let the soak go on."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def check(self) -> None:
        if self.signal_name is not None:
            raise Interrupted(self.signal_name)

    def sleep(self, seconds: float) -> None:
        """Like time.sleep, but raises Interrupted within 0.1 s of a signal."""
        give_up = time.monotonic() + seconds
        while True:
            self.check()
            left = give_up - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.1))


@contextmanager
def interruptible(flag: StopFlag) -> Iterator[None]:
    def on_signal(signum: int, _frame: FrameType | None) -> None:
        flag.signal_name = flag.signal_name or signal.Signals(signum).name

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@dataclass
class Soak:
    plan: Plan
    network: hosts.Network | None = None
    server: Server | None = None
    recorder: Recorder | None = None
    nodes: list[Node] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    stop: StopFlag = field(default_factory=StopFlag)
    nemesis: Nemesis | None = None
    settings: dict[str, str] = field(default_factory=dict)
    airflow_db: AirflowDatabase | None = None
    airflow_env: dict[str, str] = field(default_factory=dict)

    @property
    def ttl(self) -> float:
        return lease_ttl(self.plan.profile)

    def run(self) -> Outcome:
        hosts.preflight()
        servers.remove_leftover_data(hosts.remove_leftovers())
        self.plan.out.mkdir(parents=True, exist_ok=True)
        self.plan.out.chmod(0o755)  # a private database server runs as its own user
        interrupted = None
        with interruptible(self.stop), ExitStack() as cleanup:
            cleanup.callback(self._teardown)
            started = boottime()
            try:
                self._build_or_explain()
                self._wait_stable(timeout=60 + 6 * self.ttl)
                self._inject_all()
                # Watch a while longer: a fault's consequences may come late.
                self._wait_stable(timeout=60 + 6 * self.ttl, settle=2 * self.ttl)
            except Interrupted as signal_name:
                interrupted = str(signal_name)
                log.warning("interrupted by %s: cleaning up", interrupted)
            end = boottime()
            lives = self.recorder.history() if self.recorder is not None else []
            rows, offset, fence_epoch = self._writes()
        writes = None if rows is None else writes_of(rows)
        verdict = check(lives, self.faults, (self._first_start(lives, started), end), writes)
        return Outcome(verdict, self.faults, lives, started, interrupted, rows, offset, fence_epoch)

    def _writes(self) -> tuple[list[dict[str, object]] | None, float, int | None]:
        """The rows the stand-ins committed, the offset from the server's clock to the
        timeline's, and the fence's epoch; None rows without an Airflow database."""
        if self.airflow_db is None or not self.airflow_db.running:
            return None, 0.0, None
        try:
            offset = boottime() - time.time()  # the server runs on this host, on its clock
            return self.airflow_db.writes(), offset, self.airflow_db.fence_epoch()
        except Exception:
            log.exception("reading the writes in Airflow's database")
            return None, 0.0, None

    # -- setup and teardown -------------------------------------------------------------
    def _build_or_explain(self) -> None:
        try:
            self._build()
        except subprocess.CalledProcessError as exc:
            said = (exc.stderr or b"").decode(errors="replace").strip().splitlines()[-1:]
            raise SentinelError(f"soak setup failed: {exc.cmd[0]}: {' '.join(said)}") from exc
        except (OSError, RuntimeError) as exc:
            raise SentinelError(f"soak setup failed: {exc}") from exc

    def _build(self) -> None:
        out = self.plan.out
        self.network = hosts.Network(self.plan.nodes).create()
        server_dir = out / "metastore"
        server_dir.mkdir(exist_ok=True)
        self.server = SERVERS[self.plan.backend](server_dir, self.network.gateway)
        self.server.prepare()
        self.stop.check()
        self.server.start()
        self.recorder = Recorder(out / "recorder.sock").start()
        settings = dict(PROFILES[self.plan.profile])
        settings["metastore"] = self.server.url
        settings["scheduler_command"] = probe_command(
            self.recorder.path, writes=self.plan.airflow_db is not None
        )
        settings["schema_gate"] = "off"  # the probe is not Airflow
        if self.plan.airflow_db is not None:
            self._build_airflow_db(settings)
        self.settings = settings
        for host in self.network.hosts:
            node = Node(host, out / "nodes" / host.name, settings, airflow_env=self.airflow_env)
            if self.airflow_db is not None:  # a whole-node freeze is drawn only with it
                node.freezer = NodeFreezer.create(self.network.owner, host.name)
            self.stop.check()
            node.start()
            self.nodes.append(node)
        log.info(
            "%d hosts on %s, metastore %s", len(self.nodes), self.network.subnet, self.server.url
        )

    def _build_airflow_db(self, settings: dict[str, str]) -> None:
        """Airflow's database on a private server of its own, given to the controllers as
        Airflow's sql_alchemy_conn (so the scheduler's environment carries it too)."""
        assert self.network is not None
        if self.plan.airflow_db != "postgresql":
            raise SentinelError(f"no Airflow database of kind {self.plan.airflow_db}")
        root = self.plan.out / "airflow-db"
        root.mkdir(exist_ok=True)
        self.airflow_db = AirflowDatabase(root, self.network.gateway)
        self.airflow_db.prepare()
        self.stop.check()
        self.airflow_db.start()
        epoch = self.airflow_db.create(fence=self.plan.db_fence != "off")
        self.airflow_env = {AIRFLOW_DB_ENV: self.airflow_db.url}
        settings["db_fence"] = self.plan.db_fence
        # A scheduler frozen inside a transaction blocks the raise: end it soon (lab timing).
        settings["db_fence_wait"] = "2"
        log.info(
            "Airflow's database %s, fence %s", self.airflow_db.url,
            "off" if epoch is None else f"installed at epoch {epoch}",
        )  # fmt: skip

    def _clone_of(self, node: Node) -> Node:
        """A controller on the spare host under ``node``'s host name (its node_id)."""
        assert self.network is not None and self.network.spare is not None
        spare = self.network.spare
        host = hosts.Host(node.name, spare.netns, spare.address)
        home = self.plan.out / "nodes" / f"clone-of-{node.name}-{len(self.faults)}"
        return Node(host, home, self.settings, airflow_env=self.airflow_env)

    def _teardown(self) -> None:
        clones = self.nemesis.clones if self.nemesis is not None else []
        for node in [*clones, *self.nodes]:
            try:
                node.stop(timeout=30)
            except Exception:
                log.exception("stopping %s", node.name)
        if self.network is not None:
            self.network.destroy()
        if self.server is not None:
            self.server.close()
        if self.airflow_db is not None:
            self.airflow_db.close()
        if self.recorder is not None:
            self.recorder.close()

    # -- the run ------------------------------------------------------------------------
    def _inject_all(self) -> None:
        assert self.server is not None and self.recorder is not None
        rng = random.Random(self.plan.seed + 1)
        nemesis = Nemesis(
            self.nodes, self.server, self.recorder, self.ttl, rng, clone_of=self._clone_of
        )
        self.nemesis = nemesis
        schedule = self.plan.schedule(kinds_for(self.server, self.airflow_db is not None))
        deadline = None if self.plan.duration is None else time.monotonic() + self.plan.duration
        while schedule:
            if deadline is not None and time.monotonic() >= deadline:
                log.info("duration reached with %d faults left", len(schedule))
                break
            self._wait_stable(timeout=60 + 6 * self.ttl)
            self.stop.sleep(rng.uniform(0.5, 1.5))
            batch = [schedule.pop(0)]
            if schedule and rng.random() < self.plan.overlap:
                batch.append(schedule.pop(0))
            self._apply(nemesis, batch)

    def _apply(self, nemesis: Nemesis, batch: list[str]) -> None:
        busy: set[str] = set()
        injected: list[Injected] = []
        for kind in batch:
            node = nemesis.pick(kind, busy)
            busy.add(node.name)
            injected.append(nemesis.inject(kind, node))
            log.info(
                "fault %d: %s on %s", len(self.faults) + len(injected), kind, injected[-1].node
            )
        for fault in sorted(injected, key=lambda f: f.heal_at):
            self.stop.sleep(fault.heal_at - boottime())
            try:
                fault.heal()
            except Exception as exc:
                fault.ok, fault.detail = False, f"healing failed: {exc}"
            self.faults.append(
                Fault(fault.kind, fault.node, fault.at, boottime(), fault.ok, fault.detail)
            )

    def _wait_stable(self, timeout: float, settle: float = 1.0) -> bool:
        """Until every controller runs and a scheduler does, without a break for ``settle``
        seconds (so a scheduler in its last moments does not count); False on timeout."""
        assert self.recorder is not None
        give_up = time.monotonic() + timeout
        since = None
        while time.monotonic() < give_up:
            for node in self.nodes:
                if not node.running:
                    log.warning("controller %s exited; starting it again", node.name)
                    node.start()
            if all(n.running for n in self.nodes) and self.recorder.alive():
                since = since or time.monotonic()
                if time.monotonic() - since >= settle:
                    return True
            else:
                since = None
            self.stop.sleep(0.05)
        log.error("no steady scheduler within %gs", timeout)
        return False

    @staticmethod
    def _first_start(lives: list[dict[str, object]], started: float) -> float:
        starts = [float(str(life["start"])) for life in lives if life["role"] == "scheduler"]
        return min(starts, default=started)


def save(outcome: Outcome, plan: Plan) -> Path:
    """history.json: everything the checker saw, so a run can be judged again later."""
    path = plan.out / "history.json"
    data = {
        "plan": {
            "backend": plan.backend, "nodes": plan.nodes, "faults": plan.faults,
            "duration": plan.duration, "seed": plan.seed, "profile": plan.profile,
            "overlap": plan.overlap, "kinds": list(plan.kinds), "each": plan.each,
            "airflow_db": plan.airflow_db,
            "db_fence": plan.db_fence if plan.airflow_db is not None else None,
        },
        "span": list(outcome.verdict.span),
        "lives": outcome.lives,
        "faults": [vars(f) for f in outcome.faults],
        "interrupted": outcome.interrupted,
        "writes": outcome.writes,
        "writes_offset": outcome.writes_offset,
        "fence_epoch": outcome.fence_epoch,
    }  # fmt: skip
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path
