"""Command line: `python -m actors.main --config config/live.toml [flags]`.

Exit codes: 0 normal end (duration, kill switch, signal, stop condition); 1 the session ended in an
error (the report is still written); 2 invalid configuration or flags (nothing is started and no
run folder is created).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import trio
from loguru import logger

from actors import __version__
from actors.config import ConfigError, load, to_toml

# flag dest -> config key: every named flag is a shortcut for one key
FLAG_KEYS = {
    "duration": "session.duration_min",
    "source": "feed.source",
    "symbol": "session.symbol",
    "seed": "session.seed",
    "run_dir": "session.run_dir",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2, no traceback
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m actors.main",
        description="Run one autonomous paper-trading session on BTC perpetual futures.",
        epilog="Environment: LAPTOP_AGENTS__SECTION__KEY=VALUE sets any config key "
        "(e.g. LAPTOP_AGENTS__RISK__MAX_POSITION_SIZE=0.02). Precedence: defaults < --config < env < flags.",
    )
    p.add_argument("--config", metavar="FILE", help="TOML config file (e.g. config/live.toml)")
    p.add_argument(
        "--duration", type=float, metavar="MIN", help="session length in minutes (session.duration_min)"
    )
    p.add_argument("--source", metavar="NAME", help="market data source (feed.source)")
    p.add_argument("--symbol", metavar="SYMBOL", help="contract to trade (session.symbol)")
    p.add_argument("--seed", type=int, metavar="N", help="random seed (session.seed)")
    p.add_argument("--run-dir", metavar="DIR", help="folder for run folders (session.run_dir)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="set any config key, typed by the schema; repeatable",
    )
    p.add_argument(
        "--check-config", action="store_true", help="validate, print the effective config as TOML, exit 0"
    )
    p.add_argument("--version", action="version", version=f"btc-laptop-agents {__version__}")
    return p


def _setup_logging(level: str) -> None:
    logger.remove()
    logger.add(sys.stderr, level=level, diagnose=False, format="{time:HH:mm:ss} | {level:<7} | {message}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    flags = {
        key: (getattr(args, dest), "--" + dest.replace("_", "-"))
        for dest, key in FLAG_KEYS.items()
        if getattr(args, dest) is not None
    }
    try:
        config = load(args.config, os.environ, args.set, flags)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config error: {problem}", file=sys.stderr)
        return 2
    if args.check_config:
        sys.stdout.write(to_toml(config))
        return 0
    _setup_logging(config.observability.log_level)

    from actors.session import run_session

    try:
        result = trio.run(run_session, config)
    except OSError as exc:
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return 1
    report = result.report
    print(
        f"session {report['run_id']} {report['status']}: stop_reason={report['stop_reason']} "
        f"net_pnl={report['net_pnl']:+.2f} USDT trades={report['trade_count']} "
        f"report={result.run_path / 'final_report.json'}",
        file=sys.stderr,
    )
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
