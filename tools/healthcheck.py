"""Is the session alive? `python -m tools.healthcheck [RUN] [--max-age SECONDS]` (the image's HEALTHCHECK).

Exit 0 when the run folder RUN has a heartbeat newer than `--max-age` seconds (default 60), else
exit 1; either way one line on standard output (exit 2: a flag it cannot use, argparse's). RUN defaults to `<run dir>/latest` (or, when a
backtest or replay has moved it to its own folder, the newest live session's; a RUN given as
`<run dir>/latest` the same), the run dir
being `LAPTOP_AGENTS__SESSION__RUN_DIR` when set (relative to the working directory, as the
session resolves it) and `/data/runs` otherwise, the image's (its WORKDIR /data, run_dir "runs").

The heartbeat is the modification time of the run folder's `metrics.csv`: the recorder writes a row
at every heartbeat (`observability.heartbeat_s`, 1 s by default) and flushes it within a second
(actors/recording/recorder.py), so the file's mtime is the last heartbeat that reached the disk,
one stat() away. A run folder with `final_report.json` is a finished session: not healthy, whatever
its age. No import of the project's packages: this runs every 30 s beside the session.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from pathlib import Path

DEFAULT_RUN_DIR = "/data/runs"
DEFAULT_MAX_AGE_S = 60.0
RUN_DIR_ENV = "LAPTOP_AGENTS__SESSION__RUN_DIR"
HEARTBEAT_FILE = "metrics.csv"


# a live session's run id (`actors.plan._LIVE_RUN_ID`, written out: no import of the project here)
_LIVE_RUN_ID = re.compile(r"^\d{8}T\d{6}Z-s\d+(-\d+)?$")


def default_run() -> Path:
    """`<run dir>/latest` (`live_latest`), the run dir the environment's or the image's."""
    return live_latest(Path(os.environ.get(RUN_DIR_ENV) or DEFAULT_RUN_DIR))


def live_latest(run_dir: Path) -> Path:
    """`<run_dir>/latest`; when a backtest or replay in the same run dir has moved it to its own
    folder, the newest live session's folder instead (found by an audit: the session's health
    followed `latest` to a finished replay and said unhealthy)."""
    latest = run_dir / "latest"
    try:
        name = latest.resolve().name
        if _LIVE_RUN_ID.match(name) or not latest.exists():
            return latest
        live = [
            p for p in run_dir.iterdir() if _LIVE_RUN_ID.match(p.name) and p.is_dir() and not p.is_symlink()
        ]
    except OSError:
        return latest
    return max(live, key=lambda p: p.name, default=latest)


def check(run: Path, max_age_s: float, now: float | None = None) -> tuple[bool, str]:
    """(healthy, the line that says why)."""
    now = time.time() if now is None else now
    if not run.is_dir():
        return False, f"unhealthy: no run folder at {run} (session not started yet?)"
    if (run / "final_report.json").exists():
        return False, f"unhealthy: the session of {run} has finished (final_report.json)"
    try:
        mtime = (run / HEARTBEAT_FILE).stat().st_mtime
    except OSError as e:
        return False, f"unhealthy: no heartbeat in {run} ({HEARTBEAT_FILE}: {e.strerror or e})"
    age = now - mtime
    if age > max_age_s:
        return False, f"unhealthy: last heartbeat {age:.0f} s ago in {run} (limit {max_age_s:g} s)"
    return True, f"healthy: last heartbeat {max(age, 0.0):.1f} s ago in {run}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.healthcheck",
        description="Exit 0 when the session's run folder has a fresh heartbeat, else 1.",
    )
    p.add_argument(
        "run",
        nargs="?",
        type=Path,
        help=f"run folder (default: {DEFAULT_RUN_DIR}/latest); RUN_DIR/latest: the newest live session's",
    )
    p.add_argument(
        "--max-age",
        type=float,
        default=DEFAULT_MAX_AGE_S,
        metavar="SECONDS",
        help=f"oldest heartbeat still healthy (default {DEFAULT_MAX_AGE_S:g})",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if not (args.max_age > 0 and math.isfinite(args.max_age)):  # (found by an audit: nan was healthy)
        p.error(f"--max-age must be a positive number of seconds, not {args.max_age}")
    run = default_run() if args.run is None else args.run
    if run.name == "latest":  # `runs/latest` given: the live session's, as by default (found by an audit)
        run = live_latest(run.parent)
    healthy, line = check(run, args.max_age)
    print(line, flush=True)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
