"""`airflow-sentinel soak run|report`: the command line of the fault-injection soak."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from airflow_sentinel.config.profiles import PROFILES
from airflow_sentinel.errors import UserError
from airflow_sentinel.soak.nemesis import KINDS, NEED_AIRFLOW_DB
from airflow_sentinel.soak.servers import SERVERS

EXIT_FAILED, EXIT_INTERRUPTED = 1, 130


def parse_kinds(value: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in value.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise UserError(
            f"--kinds: unknown fault {', '.join(unknown) or '(none)'}; accepted: {', '.join(KINDS)}"
        )
    return kinds


@click.group()
def soak() -> None:
    """Fault-injection soak: prove that two schedulers never run at once, and time recovery."""


@soak.command()
@click.option(
    "--backend",
    type=click.Choice(sorted(SERVERS)),
    required=True,
    help="Metastore to run against (a private server the soak starts).",
)
@click.option(
    "--nodes",
    type=click.IntRange(2, 9),
    default=3,
    show_default=True,
    help="Test hosts, each in its own network namespace.",
)
@click.option(
    "--faults",
    type=click.IntRange(1),
    default=20,
    show_default=True,
    help="Faults to inject (randomly chosen kinds).",
)
@click.option(
    "--each",
    type=click.IntRange(1),
    default=None,
    help="Instead of --faults: exactly this many of every kind, shuffled.",
)
@click.option("--short", is_flag=True, help="The short form CI runs: --each 2.")
@click.option(
    "--duration",
    type=click.FloatRange(1),
    default=None,
    help="Stop injecting after this many seconds, even with faults left.",
)
@click.option(
    "--seed",
    type=int,
    default=1,
    show_default=True,
    help="Seed for fault kinds, targets and holds: the same seed, the same run.",
)
@click.option(
    "--profile",
    type=click.Choice(sorted(PROFILES)),
    default="lab",
    show_default=True,
    help="Controller timing: lab (TTL 4 s, for the probe, which stops at once), fast "
    "(TTL 7 s, the fastest a real scheduler stops gracefully with) or default (TTL 15 s).",
)
@click.option(
    "--overlap",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Chance that a second fault, on another node, joins each fault.",
)
@click.option(
    "--kinds",
    default=",".join(KINDS),
    show_default=True,
    help="Comma-separated fault kinds to draw from.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for history.json, summary.json, timeline.svg and logs. "
    "Default: ./soak-BACKEND-SEED.",
)
@click.option(
    "--airflow-db",
    type=click.Choice(["postgresql"]),
    default=None,
    help="Give the controllers an Airflow database (a private server) that the stand-in "
    "schedulers write to all the time, and check those writes; needed by freeze-node.",
)
@click.option(
    "--db-fence",
    type=click.Choice(["on", "off"]),
    default="on",
    show_default=True,
    help="With --airflow-db: the controllers' db_fence (off: a control run, in which late "
    "writes are expected after a whole-node freeze).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log every fault as it happens.")
def run(
    backend: str, nodes: int, faults: int, each: int | None, short: bool,
    duration: float | None, seed: int, profile: str, overlap: float, kinds: str,
    out: Path | None, airflow_db: str | None, db_fence: str, verbose: bool,
) -> None:  # fmt: skip
    """Inject faults into real controllers on network-namespace hosts and check the history.

    Needs root. Exit 0: no overlap, no orphan, every fault recovered, and (with
    --airflow-db) no late write; 1: a failed check; 130: interrupted (after cleaning up and
    reporting what was seen)."""
    from airflow_sentinel.soak.runner import Plan, Soak, save

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    chosen = parse_kinds(kinds)
    if airflow_db is None and all(k in NEED_AIRFLOW_DB for k in chosen):
        raise UserError(f"--kinds {','.join(chosen)} needs --airflow-db postgresql")
    plan = Plan(
        backend=backend, nodes=nodes, faults=faults, duration=duration, seed=seed,
        profile=profile, overlap=overlap, kinds=chosen,
        each=2 if short else (each or 0),
        out=out or Path(f"soak-{backend}-{seed}"),
        airflow_db=airflow_db, db_fence=db_fence,
    )  # fmt: skip
    outcome = Soak(plan).run()
    save(outcome, plan)
    passed = _judge(plan.out)
    if outcome.interrupted:
        sys.exit(EXIT_INTERRUPTED)
    if not passed:
        sys.exit(EXIT_FAILED)


@soak.command()
@click.argument("out", type=click.Path(file_okay=False, exists=True, path_type=Path))
def report(out: Path) -> None:
    """Judge a soak's history.json again: rewrite summary.json and timeline.svg, print the table."""
    if not (out / "history.json").is_file():
        raise UserError(f"{out}: no history.json here; give the --out directory of a soak run")
    if not _judge(out):
        sys.exit(EXIT_FAILED)


def _judge(out: Path) -> bool:
    """Check history.json in ``out``; write summary.json and timeline.svg; print the table."""
    from airflow_sentinel.soak.checker import Fault, check, writes_of
    from airflow_sentinel.soak.report import print_table, summary, timeline_svg, write_json

    try:
        history = json.loads((out / "history.json").read_text())
        faults = [Fault(**f) for f in history["faults"]]
        span = (float(history["span"][0]), float(history["span"][1]))
        plan = history["plan"]
        rows = history.get("writes")
        writes = None if rows is None else writes_of(rows)
        offset = float(history.get("writes_offset") or 0.0)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{out}/history.json is not a soak history: {exc}") from exc
    verdict = check(history["lives"], faults, span, writes)
    data = summary(verdict, plan, history.get("interrupted"), history.get("fence_epoch"))
    write_json(data, out / "summary.json")
    title = (
        f"{plan['backend']}, {plan['nodes']} nodes, profile {plan['profile']}, seed {plan['seed']}"
    )
    svg = timeline_svg(verdict, history["faults"], title, writes_offset=offset)
    (out / "timeline.svg").write_text(svg)
    print_table(data)
    click.echo(f"written: {out}/summary.json and {out}/timeline.svg")
    return bool(data["passed"])
