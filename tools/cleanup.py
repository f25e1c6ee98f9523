"""Delete old finished run folders: `python -m tools.cleanup --keep N --older-than DAYS [--dry-run]`.

The rule, for the run folders directly in `--run-dir` (default `runs`):

1. Only *finished* run folders are considered: a directory (not a symbolic link) holding
   `events.jsonl` and `final_report.json`. Anything else (files, other folders, unfinished run
   folders: a live session's, or a killed one that the next start will resume) is never touched.
2. A finished run's *age* is the time since its `final_report.json` was written (the file's
   modification time: when the session, backtest or replay ended on the wall clock).
3. The finished runs are ranked newest first by that time; the `N` newest are kept whatever their
   age.
4. Of the rest, those older than `DAYS` days are deleted (`--older-than 0`: all of them), except the
   one `<run-dir>/latest` points to, and one whose `session.lock` a live process holds.

So a run is deleted only when both hold: it is not among the `N` newest finished runs, and it is
older than `DAYS`. Each deletion (or, with `--dry-run`, each that would be made) is printed with
its size, then the space freed. Exit 0 when done, 1 when a folder could not be deleted, 2 for bad
arguments or a `--run-dir` that is not a folder.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import attrs

from tools.runfolder import REPORT, folder_size, human_size, is_finished, is_run_folder, lock_held

DAY_S = 86400.0


@attrs.frozen
class FinishedRun:
    path: Path
    finished_ts: float  # final_report.json's modification time


@attrs.frozen
class Decision:
    run: FinishedRun
    delete: bool
    why: str


def finished_runs(run_dir: Path) -> list[FinishedRun]:
    """The finished run folders directly in run_dir, newest first (ties: by name, last first)."""
    runs = []
    for entry in run_dir.iterdir():
        if entry.is_symlink() or not is_run_folder(entry) or not is_finished(entry):
            continue
        try:
            runs.append(FinishedRun(entry, (entry / REPORT).stat().st_mtime))
        except FileNotFoundError:  # deleted meanwhile
            continue
    return sorted(runs, key=lambda r: (r.finished_ts, r.path.name), reverse=True)


def decide(run_dir: Path, keep: int, older_than_days: float, now: float) -> list[Decision]:
    """What the rule (module docstring) says of each finished run beyond the `keep` newest."""
    latest = run_dir / "latest"
    latest_target = latest.resolve() if latest.exists() else None
    cutoff = now - older_than_days * DAY_S
    decisions = []
    for run in finished_runs(run_dir)[keep:]:
        if run.finished_ts >= cutoff:
            continue
        if latest_target is not None and run.path.resolve() == latest_target:
            decisions.append(Decision(run, False, "latest points to it"))
        elif lock_held(run.path):
            decisions.append(Decision(run, False, "a live process holds its session.lock"))
        else:
            decisions.append(Decision(run, True, ""))
    return decisions


def _age(run: FinishedRun, now: float) -> str:
    finished = datetime.fromtimestamp(run.finished_ts, UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"finished {finished}, {(now - run.finished_ts) / DAY_S:.1f} days ago"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.cleanup",
        description="Delete finished run folders beyond the newest N that are older than DAYS days.",
    )
    parser.add_argument(
        "--keep", type=int, required=True, metavar="N", help="keep the N newest finished runs"
    )
    parser.add_argument(
        "--older-than",
        type=float,
        required=True,
        metavar="DAYS",
        help="delete only runs finished more than DAYS days ago (a float; 0: any age)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print what would be deleted, delete nothing")
    parser.add_argument(
        "--run-dir", type=Path, default=Path("runs"), help="folder of the run folders (default: runs)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.keep < 0:
        parser.error(f"--keep must be 0 or more, not {args.keep}")
    if not (args.older_than >= 0 and math.isfinite(args.older_than)):
        parser.error(f"--older-than must be 0 or more days, not {args.older_than}")
    if not args.run_dir.is_dir():
        print(f"error: --run-dir {args.run_dir} is not a folder", file=sys.stderr)
        return 2
    now = time.time()
    verb = "would delete" if args.dry_run else "deleted"
    freed = deleted = failed = 0
    for decision in decide(args.run_dir, args.keep, args.older_than, now):
        run = decision.run
        if not decision.delete:
            print(f"kept {run.path} ({_age(run, now)}): {decision.why}")
            continue
        size = folder_size(run.path)
        if not args.dry_run:
            try:
                shutil.rmtree(run.path)
            except OSError as exc:
                print(f"error: could not delete {run.path}: {exc}", file=sys.stderr)
                failed += 1
                continue
        print(f"{verb} {run.path} ({human_size(size)}, {_age(run, now)})")
        freed += size
        deleted += 1
    freed_verb = "would free" if args.dry_run else "freed"
    print(f"{verb} {deleted} run folder(s), {freed_verb} {human_size(freed)} in {args.run_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
