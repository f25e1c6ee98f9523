"""`python -m tools.sweep SPEC.toml`: a parameter sweep with walk-forward windows on Ray
(docs/sweeps.md). Exit 0 when the sweep is complete (some trials may have failed: the table says
which and why), 1 when every trial failed (one line naming the first) or no window was judged out
of sample (every out-of-sample run failed, or no window had an eligible train trial: one line
saying why), 2 for a spec or flag that cannot be used (one line each, naming the key; a
walk-forward window with no candle of the data in its train or test days too), 4 when the Ray
cluster at --address cannot be reached, 130 when a Ctrl-C stops it (the trials finished are kept)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tools.sweep.spec import SpecError, load_spec


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.sweep",
        description="Parameter sweep and walk-forward of backtests on Ray; results in --out.",
    )
    p.add_argument("spec", metavar="SPEC", help="the sweep's TOML spec (e.g. config/sweeps/example.toml)")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="the sweep's folder: trials.csv, trials.parquet, sweep.json, sweep.html, the trials' run "
        "folders (default: sweeps/<the spec's name>); run again on the same folder to finish it",
    )
    p.add_argument(
        "--address",
        metavar="ADDR",
        help="a Ray cluster to run on (e.g. auto on a Ray head, or ray://host:10001); default: RAY_ADDRESS "
        "when set, else a local Ray on this machine's cores",
    )
    p.add_argument(
        "--workers", type=int, metavar="N", help="local Ray: CPUs to use, one trial each (default: all)"
    )
    p.add_argument(
        "--data",
        metavar="[SYMBOL=]FILE",
        action="append",
        default=[],
        help="candle files in place of the spec's sweep.data (repeatable, SYMBOL=FILE per symbol)",
    )
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="run again the trials the sweep's log holds as failed (default: kept as they are)",
    )
    p.add_argument(
        "--progress",
        choices=["auto", "rich", "plain", "off"],
        default="auto",
        help="the console's progress: rich (a live line), plain (a line per trial), off; auto: rich on a terminal",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    overrides = {}
    for value in args.data:
        symbol, sep, path = value.partition("=")
        overrides[symbol.strip().upper() if sep else ""] = path if sep else value
    if args.workers is not None and args.workers < 1:
        print("error: --workers: expected an integer >= 1", file=sys.stderr)
        return 2
    if args.workers is not None and args.address:
        print("error: --workers is for a local Ray; a cluster has its own", file=sys.stderr)
        return 2
    # Ray's own variable, which ray.init reads (found by an audit: without --address the sweep
    # went to its cluster unsaid, hung when nothing answered there, and a traceback with --workers)
    env_address = None if args.address else os.environ.get("RAY_ADDRESS") or None
    if args.workers is not None and env_address:
        print(
            f"error: --workers is for a local Ray; RAY_ADDRESS={env_address} names a cluster (unset it "
            "for a local Ray)",
            file=sys.stderr,
        )
        return 2
    try:
        spec = load_spec(Path(args.spec), overrides)
    except SpecError as exc:
        for problem in exc.problems:
            print(f"spec error: {problem}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("sweeps") / spec.name
    if out.exists() and not out.is_dir():  # found by a CLI audit: a traceback once Ray had started
        print(f"error: --out {out} is a file; expected the sweep's folder", file=sys.stderr)
        return 2

    from actors.feeds.history import DataError
    from tools.sweep.progress import console_progress
    from tools.sweep.runner import ClusterError, run_sweep

    try:
        with console_progress(args.progress) as progress:
            result = run_sweep(
                spec,
                out,
                address=args.address or env_address,
                address_said=f"RAY_ADDRESS={env_address}" if env_address else None,
                workers=args.workers,
                retry_failed=args.retry_failed,
                progress=progress,
            )
    except SpecError as exc:  # a window the data holds no candle of (known once the data is read)
        for problem in exc.problems:
            print(f"spec error: {problem}", file=sys.stderr)
        return 2
    except DataError as exc:  # a data file the CLI's reader refuses (its header, say)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ClusterError as exc:  # --address: nothing answers there (4), or a value Ray refuses (2)
        print(f"error: {exc}", file=sys.stderr)
        return 4 if exc.unreachable else 2
    except KeyboardInterrupt:
        print(
            f"interrupted: the finished trials are kept in {out / 'trials.jsonl'}; run the same command "
            "again to finish the sweep",
            file=sys.stderr,
        )
        return 130
    records = result.records
    failed = [record for record in records if record.get("status") != "ok"]
    # the trials ok and failed, then those found in the log (found by an audit: `5 trials (0 from
    # the log, 1 failed)` put the failed ones beside the log's, and said nothing of why)
    print(
        f"sweep {spec.name}: {len(records)} trials, {len(records) - len(failed)} ok, {len(failed)} failed "
        f"({result.counts.skipped} from the log) -> {out / 'trials.csv'}, {out / 'sweep.html'}",
        file=sys.stderr,
    )
    if failed and len(failed) < len(records):
        print(
            f"  {len(failed)} of {len(records)} trials failed (trials.csv's error column says why); "
            f"the first: {failure_line(failed[0])}",
            file=sys.stderr,
        )
    windows = len(result.summary["windows"])
    for name, verdict in result.summary["verdict"].items():
        print(f"  {name}: {verdict_line(verdict, windows)}", file=sys.stderr)
    if failed and len(failed) == len(records):
        # found by an audit: a sweep whose every trial failed (it measured nothing) exited 0, and a
        # script or CI job running it took it for a result
        print(
            f"error: every trial failed ({len(failed)} of {len(failed)}): the sweep measured nothing; "
            f"the first: {failure_line(failed[0])}",
            file=sys.stderr,
        )
        return 1
    said = nothing_judged(result.summary, records)
    if said is not None:
        print(said, file=sys.stderr)
        return 1
    return 0


def nothing_judged(summary: dict[str, Any], records: Sequence[dict[str, Any]]) -> str | None:
    """The error line of a sweep that judged no window out of sample for any strategy (every
    out-of-sample run failed, or no window had an eligible train trial): it measured nothing that
    matters, whatever its train trials (found by an audit: `over 0 of 3 windows`, exit 0, a
    script or CI job took it for a result). None when at least one window was judged."""
    verdict = summary["verdict"]
    if not verdict or any(v.get("windows") for v in verdict.values()):
        return None
    reasons = []
    for name, v in verdict.items():
        left = []
        if v.get("failed_windows"):
            left.append(f"{v['failed_windows']} whose out-of-sample run failed")
        if v.get("no_best_windows"):
            left.append(
                f"{v['no_best_windows']} without an in-sample trial eligible to choose (at least "
                f"sweep.min_trades = {summary['min_trades']} trades and a defined {summary['objective']})"
            )
        reasons.append(f"{name}: {', '.join(left)}")
    line = (
        f"error: no window judged out of sample (0 of {len(summary['windows'])}): the sweep measured "
        f"nothing; {'; '.join(reasons)}"
    )
    failed = [r for r in records if r.get("phase") == "test" and r.get("status") != "ok"]
    if failed:
        line += f"; the first: {failure_line(failed[0])}"
    return line


def failure_line(record: dict[str, Any]) -> str:
    """A failed trial in words: its strategy, parameters, window and phase, and its error."""
    params = json.dumps(record["params"], sort_keys=True)
    return (
        f"{record['strategy']} {params} (window {record['window']}, {record['phase']}): "
        f"{record.get('error') or 'no error recorded'}"
    )


def verdict_line(verdict: dict[str, Any], windows: int) -> str:
    """A strategy's verdict in words: the out-of-sample figures, over how many of the windows (and
    why the others are not counted), beside the in-sample ones and how many trials they are the
    best of."""
    left = [
        f"{verdict[key]} {what}"
        for key, what in (
            ("failed_windows", "whose out-of-sample run failed"),
            ("no_best_windows", "without an in-sample trial eligible to choose"),
        )
        if verdict.get(key)
    ]
    counted = f"over {verdict['windows']} of {windows} windows"
    if left:
        counted += f" ({', '.join(left)}: not counted)"
    oos_days, is_days = verdict.get("out_of_sample_days", 0.0), verdict.get("in_sample_days", 0.0)
    return (
        f"out-of-sample net PnL {verdict['out_of_sample_net_pnl']:+.2f} USDT {counted}, {oos_days:g} days, "
        f"{verdict['out_of_sample_trades']} trades; in-sample {verdict['in_sample_net_pnl']:+.2f} over "
        f"{is_days:g} days (the windows' best of {verdict.get('in_sample_trials', 0)} trials tried: "
        "optimistic by construction)"
    )


if __name__ == "__main__":
    sys.exit(main())
