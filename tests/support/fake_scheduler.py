"""A stand-in for `airflow scheduler` that detects two of itself running at once.

Every instance takes an exclusive flock on a shared file before it does anything. The
kernel drops the lock only when every process holding the file (the instance and its
child, which inherits the descriptor) is dead, so an instance that finds the lock taken
has proof that another one, or an orphaned child of one, is still alive: it writes
OVERLAP to the shared log. Optionally it heartbeats into an Airflow-like `job` table.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import signal
import sqlite3
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

NODE = os.environ.get("AIRFLOW_SENTINEL_NODE_ID", "?")


def log(path: Path, message: str) -> None:
    line = f"{time.time():.6f} {NODE} {os.getpid()} {message}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def utcnow() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


def heartbeat(db: Path, job_id: int | None) -> int:
    with contextlib.closing(sqlite3.connect(db, timeout=5)) as conn, conn:
        conn.execute(
            "create table if not exists job (id integer primary key, job_type text, state text,"
            " hostname text, start_date text, latest_heartbeat text)"
        )
        if job_id is None:
            cur = conn.execute(
                "insert into job (job_type, state, hostname, start_date, latest_heartbeat)"
                " values ('SchedulerJob', 'running', ?, ?, ?)",
                (NODE, utcnow(), utcnow()),
            )
            return int(cur.lastrowid or 0)
        conn.execute("update job set latest_heartbeat = ? where id = ?", (utcnow(), job_id))
        return job_id


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lock", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--fail", action="store_true", help="exit 1 at once (cannot start)")
    parser.add_argument("--child", action="store_true", help="spawn a child like the real one")
    parser.add_argument("--job-db", type=Path, help="heartbeat into this SQLite job table")
    parser.add_argument("--term-delay", type=float, default=0.2)
    parser.add_argument("--stray", action="store_true", help="started by hand: no lock")
    args = parser.parse_args()

    if args.fail:
        log(args.log, "fail")
        return 1
    if args.stray:
        log(args.log, "stray-start")
        while True:
            time.sleep(0.5)
    lock = os.open(args.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log(args.log, "OVERLAP")
        return 3
    log(args.log, "start")
    if args.child and os.fork() == 0:
        # The child keeps the lock descriptor: if it outlives its parent, the lock stays.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        while True:
            time.sleep(1)

    def on_term(*_: object) -> None:
        time.sleep(args.term_delay)
        log(args.log, "stop")
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    job_id: int | None = None
    while True:
        if args.job_db is not None:
            job_id = heartbeat(args.job_db, job_id)
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
