"""A stand-in scheduler that does nothing; with ``--deaf`` only SIGKILL ends it."""

from __future__ import annotations

import argparse
import signal
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True, help="tells the schedulers of one test apart")
    parser.add_argument("--deaf", action="store_true", help="ignore SIGTERM")
    if parser.parse_args().deaf:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
