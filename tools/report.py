"""Rebuild a run's report.html, or compare runs on one page.

    python -m tools.report RUN                      # rebuilds RUN/report.html
    python -m tools.report RUN_A RUN_B [-o OUT]     # compare.html (or OUT): side by side

RUN is a run folder (or `runs/latest`). The page is self-contained and works offline; what it
shows is in actors/recording/html_report.py. Exit 0 when written, 2 when a path is not a run folder
(or `-o` names a directory, or a file in a folder that is not there).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from actors.recording.html_report import REPORT_NAME, build_comparison, build_report
from tools.runfolder import NotARunFolder, resolve_run

COMPARE_NAME = "compare.html"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.report",
        description=f"Rebuild a run folder's {REPORT_NAME}, or compare several runs on one page.",
    )
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run folder(s), e.g. runs/latest")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help=f"where to write the page (default: RUN/{REPORT_NAME} for one run, ./{COMPARE_NAME} for several)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.umask(0o077)  # state at rest, as the CLI's: the page 0600, as the session writes it
    try:
        runs = [resolve_run(path) for path in args.runs]
    except NotARunFolder as e:
        print(f"tools.report: {e}", file=sys.stderr)
        return 2
    # found by a CLI audit: -o DIR, or -o in a folder that is not there, ended in a traceback
    if args.output is not None and (args.output.is_dir() or not args.output.parent.is_dir()):
        what = "is a directory" if args.output.is_dir() else f"its folder {args.output.parent} does not exist"
        print(
            f"tools.report: -o {args.output}: {what}; expected the path of the page to write", file=sys.stderr
        )
        return 2
    if len(runs) == 1:
        out = build_report(runs[0], args.output)
    else:
        out = build_comparison(runs, args.output or Path(COMPARE_NAME))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
