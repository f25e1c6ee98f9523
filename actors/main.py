"""Command line: `python -m actors.main --config config/live.toml [flags]`.

Exit codes: 0 normal end (duration, kill switch, signal, stop condition, end of backtest data);
any number of SIGINT/SIGTERM give one stop, its flatten and its report, and exit 0 (the reason
that came first decides the code: only SIGKILL ends a session before its report is written);
1 the session ended in an error (the report is still written), or stopped on a storage fault
(`stop_reason = "storage"`: a write of the run folder failed, or its disk had less free space than
`session.disk_reserve_mb`; one line names the path, the error and the free space; when the disk
had no room for the final record, the summary is on stderr only and the next start resumes the
session); 2 invalid configuration or flags, or a session that cannot be started or resumed
(nothing is started and no run folder is created), a run dir's disk with less free space than
`session.disk_reserve_mb` included (a checkpoint that fails its HMAC under
`LAPTOP_AGENTS_STATE_KEY` too). `--preflight` has its own: 0 the exchange accepts the key, 2 the
keys are not set, 3 the exchange refused them (its reason on the one line), 4 it cannot be reached
(actors/preflight.py).

One start decision at a time per run dir. A start (live, backtest or replay) takes the run dir's
start lock (`<run_dir>/.start.lock`, actors/lock.py) once its flags are valid, and holds it while it
decides (resume `latest`, refuse, or a new session: `find_resumable`) and until its session holds
its own `session.lock` (its new run folder made and locked, or the resumed one locked); a second
start waits for it (at most 60 s) and decides on what the first made. So starts at the same
instant in one run dir give the outcome of starts one after the other:

- two plain starts (no `--fresh`, no `--resume`): the first starts (or resumes `latest`); the
  second finds `latest` owned by a live process and refuses: exit 2, `error: session RUN_ID is
  running in another process; use --fresh to start a second session`, nothing started;
- two `--fresh` starts: both run, each in its own run folder (run ids are chosen under the lock: a
  second start in the same second with the same seed gets `RUN_ID-2`); `latest` points at the
  second;
- a plain start and `--resume RUN_ID` of the unfinished `latest`: one resumes it, the other
  refuses with exit 2 (`... is running in another process`);
- a plain start and a `--fresh` one are served in the order they take the lock: plain first, both
  run; `--fresh` first, the plain start finds its session running and refuses (exit 2).
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import signal
import sys
import tomllib
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any, Literal

from loguru import logger

from actors import __version__, logs, secrets
from actors.config import (
    ENV_PREFIX,
    LIVE_INTERVALS,
    Config,
    ConfigError,
    FeedConfig,
    StrategyConfig,
    build,
    dict_layer,
    flags_layer,
    load,
    seed_problems,
    to_dict,
    to_toml,
    without_unread_keys,
)
from actors.console import fmt_money, print_summary
from actors.feeds.funding import FundingRates, describe
from actors.feeds.history import DataError
from actors.lock import SessionLocked, StartBusy, StartLock
from actors.plan import (
    Plan,
    PlanError,
    check_resume_config,
    find_resumable,
    is_file,
    is_run_id,
    load_recording,
    parse_when,
    settle_latest,
    short_path,
    what_is,
)
from actors.recording import checkpoint
from actors.recording.checkpoint import CheckpointError
from actors.recording.storage import StorageFault, check_room
from actors.secrets import SecretError
from actors.signals import exit_on_signal

# flag dest -> config key: every named flag is a shortcut for one key
FLAG_KEYS = {
    "duration": "session.duration_min",
    "source": "feed.source",
    "symbol": "session.symbol",
    "seed": "session.seed",
    "run_dir": "session.run_dir",
}


# SIGINT and SIGTERM before the session listens: exit at once (130, 143), but never in the middle
# of taking or handing over the run dir's start lock (actors/signals.py `shielded`)
_terminate = exit_on_signal


def _safe(message: str) -> str:
    """`message` without any secret of the environment, and every control character given in a
    flag, key or value escaped (`\\x1b`): one line that cannot drive the terminal."""
    return logs.escape(secrets.scrub(message))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2, no traceback
        self.exit(2, _safe(f"{self.prog}: error: {message} (see --help)") + "\n")


def _err(message: str) -> None:
    """One line on stderr (see `_safe`)."""
    print(_safe(message), file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m actors.main",
        allow_abbrev=False,  # `--dur 5` was --duration: a flag is spelled out (found by an audit)
        description="Run one autonomous paper-trading session on BTC perpetual futures.",
        epilog="Environment: LAPTOP_AGENTS__SECTION__KEY=VALUE sets any config key "
        "(e.g. LAPTOP_AGENTS__RISK__MAX_POSITION_SIZE=0.02), LAPTOP_AGENTS__STRATEGIES__ID__KEY=VALUE a key "
        "of the [[strategies]] table with that id. Precedence: defaults < --config < env < flags.",
    )
    p.add_argument("--config", metavar="FILE", help="TOML config file (e.g. config/live.toml)")
    p.add_argument(
        "--duration", type=float, metavar="MIN", help="session length in minutes (session.duration_min)"
    )
    p.add_argument("--source", metavar="NAME", help="market data source (feed.source)")
    p.add_argument("--symbol", metavar="SYMBOL", help="contract to trade (session.symbol)")
    # typed by the config, as --set session.seed is: one message with the allowed range (found by
    # an audit: argparse's int() refused a seed of thousands of digits, echoing them all)
    p.add_argument("--seed", metavar="N", help="random seed (session.seed), 0 to 2**63 - 1")
    p.add_argument("--run-dir", metavar="DIR", help="folder for run folders (session.run_dir)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="set any config key, typed by the schema; repeatable; strategies.ID.KEY=VALUE sets a key of "
        "the --config file's [[strategies]] table with that id",
    )
    p.add_argument(
        "--check-config", action="store_true", help="validate, print the effective config as TOML, exit 0"
    )
    p.add_argument(
        "--mode",
        choices=["live", "backtest"],
        default="live",
        help="live: trade on market data as it comes (default); backtest: run over --data on its clock",
    )
    p.add_argument(
        "--data",
        metavar="[SYMBOL=]FILE",
        action="append",
        default=[],
        help="backtest data: a candle CSV (optionally .gz) with header open_time_ms,open,high,low,close,volume; "
        "several symbols: SYMBOL=FILE once per symbol the strategies trade (repeatable)",
    )
    p.add_argument(
        "--funding",
        metavar="[SYMBOL=]FILE",
        action="append",
        default=[],
        help="backtests: funding rates, a CSV (optionally .gz) with header ts_ms,rate (rate a fraction "
        "per 8 h, 0.0001 = 0.01 %%; or ts_ms,rate,interval_h: a contract's own settlements, each rate "
        "per its interval_h); several symbols: SYMBOL=FILE for each symbol it is for "
        "(repeatable); a symbol without one: broker.funding applies",
    )
    p.add_argument(
        "--from",
        dest="from_",
        metavar="WHEN",
        help="backtests: only the candles opening at or after WHEN (ISO-8601 date or date and time, "
        "UTC unless it says otherwise, e.g. 2024-01-31 or 2024-01-31T12:00Z)",
    )
    p.add_argument(
        "--until",
        metavar="WHEN",
        help="backtests: only the candles opening before WHEN (ISO-8601, as --from)",
    )
    p.add_argument(
        "--replay", metavar="RUN", help="re-run a recorded session (run folder or its events.jsonl)"
    )
    p.add_argument(
        "--runtime",
        choices=["kernel", "actors"],
        default=None,  # None: not given (kernel): an explicit one is judged where it does not apply
        help="backtests and replays: kernel (default: a plain loop over the data) or actors (the "
        "live Trio actors on the data's clock, the same events)",
    )
    p.add_argument(
        "--fresh", action="store_true", help="start a new session even if runs/latest is unfinished"
    )
    p.add_argument("--resume", metavar="RUN_ID", help="resume this unfinished session of the run dir")
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no console line per fill, per closed trade, per entry working or cancelled, per cross of "
        "the strategies' positions (CROSSED), or per fill or cross undone at a resume (events.jsonl and "
        "the report have them all; the progress, warnings, "
        "the resume alert naming undone fills, and the summary stay)",
    )
    p.add_argument(
        "--preflight",
        action="store_true",
        help="check the exchange API key pair (BITUNIX_API_KEY, BITUNIX_API_SECRET from the environment) "
        "with one signed GET /api/v1/futures/account on feed.rest_url; prints one line, exits 0 when "
        "the exchange accepts it",
    )
    p.add_argument("--version", action="version", version=f"btc-laptop-agents {__version__}")
    return p


def _check_live(config: Config) -> None:
    """What only a live session needs of the config: the exchange's feed subscribes to its kline
    channel of session.interval, which must be one the exchange serves (a backtest's interval is
    its data's; the mock source builds candles of any); the history seeded at start holds every
    strategy's warm-up (`seed_problems`)."""
    if problems := seed_problems(config):
        raise ConfigError(problems)
    interval = config.session.interval
    if config.feed.source == "bitunix" and interval not in LIVE_INTERVALS:
        raise ConfigError(
            [
                f"session.interval: {interval!r} is not allowed with feed.source = 'bitunix' (a live "
                f"session subscribes to the exchange's klines of its interval and takes its history "
                f"over REST: an interval both serve, and REST serves no 3m); expected one of "
                f"{', '.join(LIVE_INTERVALS)} "
                "(the mock source, feed.source = 'mock', also takes others and seconds, e.g. '5s')"
            ]
        )


def _check_kill_switch(config: Config) -> None:
    """A live session's kill switch must name a file: one at a directory (found by an audit:
    `session.kill_switch = "runs"`) stopped every session at once, status ok."""
    path = config.session.kill_switch
    try:
        is_dir = Path(path).is_dir()
    except (OSError, ValueError):
        is_dir = False  # a path that cannot be looked at is never a file either: the session runs
    if is_dir:
        raise PlanError(
            f"session.kill_switch: {short_path(path)} is a directory; expected the path of a file "
            "(a file there stops the session), e.g. kill.txt"
        )


def _start_lock(held: ExitStack, config: Config) -> StartLock:
    """The run dir's start lock (actors/lock.py), taken once the flags are known to be valid and
    armed by `_plan` once the plan is made; `held` releases it when the session never takes it."""
    run_dir = Path(config.session.run_dir)
    lock = StartLock(run_dir)
    # released however the start ends from here, a signal as acquire returns included (found by
    # the stop audit: registered after it, such a signal left the lock file)
    held.callback(lock.release)
    try:
        lock.acquire()
        return lock
    except StartBusy as exc:
        raise PlanError(str(exc)) from None
    except (OSError, ValueError) as exc:
        # found by an audit: "File exists" said of a file where the folder of runs should be
        _check_run_dir(run_dir)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PlanError(f"session.run_dir: cannot use {short_path(run_dir)}: {reason}") from None


# Flags a replay does not take: it re-runs the recorded session on its recorded config, into a
# new run folder (found by an audit: they were accepted and silently ignored, invalid values too).
# --config is not among them: the container's ENTRYPOINT always passes one (`podman run IMAGE
# --replay RUN`); it is ignored with a warning, as the environment's variables are.
NOT_FOR_REPLAY = ("set", "duration", "source", "symbol", "seed", "fresh")
# Flags a backtest does not take, and what it uses instead (found by an audit: silently ignored)
NOT_FOR_BACKTEST = {
    "duration": "a backtest runs over its whole --data; --from and --until choose a window of it",
    "source": "a backtest's market data is its --data file (one per symbol)",
    "resume": "a backtest always runs from its data's start into a new run folder (nothing resumes it)",
    "fresh": "a backtest always runs into a new run folder",
}


# Session flags --preflight does not take (it checks the key pair on feed.rest_url, and starts nothing)
NOT_FOR_PREFLIGHT = (
    "replay",
    "data",
    "funding",
    "from_",
    "until",
    "resume",
    "fresh",
    "duration",
    "source",
    "symbol",
    "seed",
    "run_dir",
    "quiet",
)


def _check_backtest_keys(args: argparse.Namespace, env: Mapping[str, str]) -> None:
    """The keys of the flags a backtest refuses (`NOT_FOR_BACKTEST`), given with --set: refused
    the same (found by an audit: `--set feed.source=bitunix` passed where `--source bitunix` did
    not, and was ignored); given in the environment (a container's, for its live sessions):
    a warning that the backtest does not read them. A --config file's are the file's (live.toml
    backtests as it is)."""
    if args.mode != "backtest" or args.replay:
        return
    for dest in ("duration", "source"):
        key = FLAG_KEYS[dest]
        for item in args.set:
            if item.partition("=")[0].strip() == key:
                raise PlanError(f"--set {key} is not for --mode backtest: {NOT_FOR_BACKTEST[dest]}")
        var = ENV_PREFIX + key.replace(".", "__").upper()
        if var in env:
            logger.warning("{} is not read by a backtest: {}", var, NOT_FOR_BACKTEST[dest])


def _given(args: argparse.Namespace, dest: str) -> bool:
    value = getattr(args, dest)
    return value not in (None, False, [])


def _flag(dest: str) -> str:
    return "--" + dest.rstrip("_").replace("_", "-")  # from_ is --from


def _check_flags(args: argparse.Namespace) -> None:
    """PlanError when the flags contradict each other or one is not for this kind of run; before
    the config is read (a flag a replay ignores must not be judged by its value) and alike for
    `--check-config` and a start."""
    if args.preflight:
        # found by an audit: a session's flags beside it were taken and ignored (--replay's
        # recording even chose the URL it checked)
        given = [_flag(dest) for dest in NOT_FOR_PREFLIGHT if _given(args, dest)]
        given += ["--mode backtest"] if args.mode == "backtest" else []
        given += [f"--runtime {args.runtime}"] if args.runtime is not None else []
        if given:
            raise PlanError(
                f"{', '.join(given)}: not for --preflight, which checks the API key pair and starts no "
                "session; with it only --config, --set and the environment apply (feed.rest_url)"
            )
    if args.replay and (args.mode == "backtest" or args.data or args.resume):
        raise PlanError("--replay cannot be combined with --mode backtest, --data or --resume")
    if args.replay:
        given = [_flag(dest) for dest in NOT_FOR_REPLAY if _given(args, dest)]
        if given:
            raise PlanError(
                f"{', '.join(given)}: not for --replay, which re-runs the session on its recorded "
                "config into a new run folder; with --replay only --run-dir, --runtime and --quiet apply"
            )
    if args.funding and args.mode != "backtest":
        raise PlanError(
            "--funding is only for --mode backtest (a replay re-delivers its recorded funding; "
            "live sessions take the exchange's rate, mock ones broker.funding)"
        )
    if (args.from_ is not None or args.until is not None) and args.mode != "backtest":
        raise PlanError("--from and --until are only for --mode backtest")
    if args.runtime is not None and not (args.replay or args.mode == "backtest"):
        raise PlanError("--runtime is only for --mode backtest and --replay")
    if args.mode == "backtest":
        for dest, instead in NOT_FOR_BACKTEST.items():
            if _given(args, dest):
                raise PlanError(f"{_flag(dest)} is not for --mode backtest: {instead}")
        if not args.data:
            raise PlanError("--mode backtest needs --data FILE")
    elif args.data and not args.replay:
        raise PlanError("--data is only for --mode backtest")
    if args.fresh and args.resume:
        raise PlanError("--fresh and --resume contradict each other")
    if args.resume is not None and args.resume != "latest" and not is_run_id(args.resume):
        # found by an audit: `--resume ../..` and `--resume /tmp` were looked up as paths (an
        # absolute one resumed a session of another run dir)
        raise PlanError(
            f"--resume {short_path(args.resume, 60)}: expected a live session's run id, the name of "
            "its folder in the run dir (e.g. 20240131T120000Z-s42), or latest"
        )


def _plan(args: argparse.Namespace, config: Config, held: ExitStack | None) -> Plan:
    """The kind of session the flags ask for (`_check_flags` passed); PlanError when it cannot be
    run (a file missing, a session to resume that cannot be).

    The decision (a new session, a resume, or a refusal) is made under the run dir's start lock,
    which the session's own lock then takes over (see the module docstring). `held` None
    (`--check-config`): the same checks, without the lock and without changing the run dir (no
    abandoned session closed, no `latest` settled)."""
    runtime: Literal["kernel", "actors"] = args.runtime or "kernel"  # backtests', replays' (None: not given)
    run_dir = Path(config.session.run_dir)
    if args.replay:
        recording = load_recording(Path(args.replay))
        if recording.resumes:
            # (found by an audit: 24 fills where the resumed original had 12, and no word)
            logger.warning(
                "{} was killed and resumed {} time(s): its replay runs it as one uninterrupted session "
                "over the market it recorded (what it saw between each crash and its last checkpoint "
                "included), so the fills and the report differ from the original's from its first "
                "crash on",
                recording.run_id,
                recording.resumes,
            )
        if held is not None:
            _start_lock(held, config).arm()
            settle_latest(run_dir)
        return Plan(mode="replay", recording=recording, runtime=runtime)
    if args.mode == "backtest":
        files = _data_files(args.data, config)
        window = _window(args.from_, args.until)
        funding = _funding(args.funding, config)
        if held is not None:
            _start_lock(held, config).arm()
            settle_latest(run_dir)
        return Plan(
            mode="backtest",
            data=files[0][1],
            data_by_symbol=files if len(files) > 1 else (),
            runtime=runtime,
            funding_by_symbol=funding,
            window=window,
        )
    if held is None:  # only what a look at the run dir can tell, changing nothing there
        # the session a start would resume, --resume's or the unfinished latest (found by an
        # audit: the latter went unchecked, and --check-config passed what the start refused)
        plan = Plan(resume=None if args.fresh else find_resumable(run_dir, args.resume, look_only=True))
        if plan.resume is not None:
            check_resume_config(plan.resume, to_dict(config))
            loaded = checkpoint.load(plan.resume)  # its integrity under the key the start would use
            from actors.recording.recorder import split_events

            split_events(plan.resume, loaded.state["seq"])  # and the events it follows, whole
        return plan
    start = _start_lock(held, config)
    if args.fresh:
        settle_latest(run_dir, live=True)
        plan = Plan()
    else:
        plan = Plan(resume=find_resumable(run_dir, args.resume))
        if plan.resume is not None:
            check_resume_config(plan.resume, to_dict(config))
    start.arm()  # from here on the next session lock taken is the session's own
    return plan


def _check_run_dir(run_dir: Path) -> None:
    """The run dir a start would make or use, looked at only: it, or the nearest folder above it
    that exists, must be a directory this user can write (`--check-config`, found by an audit: a
    file there passed, and the start refused it; and the start's own refusal names it so)."""
    there = run_dir
    while not there.exists() and there != there.parent:
        there = there.parent
    if there.exists() and not there.is_dir():
        what = "it is a file" if there == run_dir else f"{short_path(there)} is a file"
        raise PlanError(
            f"session.run_dir: cannot use {short_path(run_dir)}: {what}; expected a directory (the folder "
            "of runs, made when missing)"
        )
    if there.is_dir() and not os.access(there, os.W_OK | os.X_OK):
        # found by a docs audit: --check-config passed a run dir on a read-only disk (or one this
        # user may not write), which the start refused, exit 2 (troubleshooting.md's row)
        read_only = bool(os.statvfs(there).f_flag & os.ST_RDONLY)
        reason = os.strerror(errno.EROFS if read_only else errno.EACCES)
        raise PlanError(f"session.run_dir: cannot use {short_path(run_dir)}: {reason}")


def _check_data(config: Config, plan: Plan) -> None:
    """`--check-config` of a backtest: what its start reads of each `--data` file before the first
    candle (the header, candles in the window, their spacing against session.interval), and the
    start's warnings (funding not modelled): DataError as the start would raise it (found by an
    audit: --check-config passed data the start refused)."""
    from actors.session import Session

    session = Session(config, plan)
    for symbol, path in plan.data_by_symbol or ((config.symbols[0], plan.data),):
        session.candles(path, symbol)


def _symbol_files(flag: str, values: list[str], config: Config, expected: str, plain: str) -> dict[str, str]:
    """`flag`'s values as files by symbol: one plain FILE for a one-symbol session (its symbol's),
    else SYMBOL=FILE, each symbol once and one the strategies trade; each file must exist.
    `expected`: what the file is; `plain`: what is expected instead of a plain FILE (messages; `{symbols}`
    the symbols traded)."""
    symbols = config.symbols
    pairs: dict[str, str] = {}
    for value in values:
        symbol, sep, path = value.partition("=")
        if not sep:
            if len(values) > 1 or len(symbols) > 1:
                traded = ", ".join(symbols)
                raise PlanError(f"{flag} {value}: expected SYMBOL=FILE {plain.format(symbols=traded)}")
            symbol, path = symbols[0], value
        elif not symbol.strip():
            raise PlanError(
                f"{flag} {value}: no symbol before '='; expected SYMBOL=FILE, e.g. {symbols[0]}={path or 'FILE'}"
            )
        if not path.strip():  # Path("") is ".", the current folder
            raise PlanError(f"{flag} {value!r}: no file named; expected {expected}")
        symbol = symbol.strip().upper()
        if symbol in pairs:
            raise PlanError(f"{flag} {value}: {symbol} is given twice")
        if symbol not in symbols:
            raise PlanError(
                f"{flag} {value}: no strategy trades {symbol}; expected one of {', '.join(symbols)}"
            )
        if not is_file(path, flag):
            what = what_is(path)  # a directory, a FIFO, a device: said (not "not found")
            if what is None:
                raise PlanError(f"{flag}: file not found: {short_path(path)}")
            raise PlanError(f"{flag}: {short_path(path)} is {what}; expected {expected}")
        pairs[symbol] = path
    return pairs


def _data_files(values: list[str], config: Config) -> tuple[tuple[str, str], ...]:
    """`--data` values as (symbol, file) pairs, in the order of `config.symbols`: one plain FILE
    for a one-symbol session, else SYMBOL=FILE for each symbol the strategies trade."""
    pairs = _symbol_files(
        "--data", values, config, "a candle file", "once for each symbol the strategies trade ({symbols})"
    )
    missing = [symbol for symbol in config.symbols if symbol not in pairs]
    if missing:
        raise PlanError(f"--data: no data for {', '.join(missing)}; expected SYMBOL=FILE for each of them")
    return tuple((symbol, pairs[symbol]) for symbol in config.symbols)


def _window(start: str | None, end: str | None) -> tuple[float, float]:
    """`--from` and `--until` as the backtest's window of candle open times."""
    window = (
        -math.inf if start is None else parse_when(start, "--from"),
        math.inf if end is None else parse_when(end, "--until"),
    )
    if window[0] >= window[1]:
        raise PlanError(f"--from {start} is not before --until {end}")
    return window


def _funding(values: list[str], config: Config) -> tuple[tuple[str, FundingRates], ...]:
    """The rates of `--funding [SYMBOL=]FILE`, by symbol in the order of `config.symbols` (a
    symbol may have none), each file read whole before anything starts (a bad file: PlanError)."""
    pairs = _symbol_files(
        "--funding",
        values,
        config,
        "a file of funding rates",
        "for each symbol it has the rates of (the strategies trade {symbols}): a contract's funding is its own",
    )
    rates = []
    for symbol in config.symbols:
        if symbol in pairs:
            try:
                rates.append((symbol, FundingRates.from_csv(pairs[symbol])))
            except DataError as exc:
                raise PlanError(f"--funding: {exc}") from None
    return tuple(rates)


def _unread_order_qty(config: Config) -> list[str]:
    """The strategies' `order_qty` keys, set off their default, that no entry reads: with
    `risk.sizing = "risk"` an entry with a stop is sized from `risk.risk_per_trade_pct` (found by an
    audit: the risk-profile templates' sizes were never what they traded); every entry has one
    then (the config refuses `ema_cross`'s `stop_loss_pct = 0` with risk sizing)."""
    if config.risk.sizing != "risk":
        return []
    default = StrategyConfig().order_qty
    return [
        f"strategies[{spec.id}].order_qty = {spec.config.order_qty:g}"
        if config.strategies
        else f"strategy.order_qty = {spec.config.order_qty:g}"
        for spec in config.strategy_specs
        if spec.config.order_qty != default
    ]


def _has_strategy_tables(path: str) -> bool:
    """Whether the config file has [[strategies]] tables (it was read and checked already)."""
    try:
        with open(path, "rb") as f:
            return isinstance(tomllib.load(f).get("strategies"), list)
    except (OSError, ValueError):
        return False


def _config(args: argparse.Namespace, flags: dict[str, tuple[Any, str]], env: Mapping[str, str]) -> Config:
    """The effective config; a replay uses its recording's, with only --run-dir applied (its
    environment's LAPTOP_AGENTS__ variables are ignored, with a warning: a container may set
    them for its live sessions)."""
    if not args.replay:
        return load(args.config, env, args.set, flags)
    if args.config:
        logger.warning(
            "--replay re-runs the recorded config: --config {} is not read", short_path(args.config)
        )
    ignored = sorted(var for var in env if var.startswith(ENV_PREFIX))
    if ignored:
        logger.warning(
            "--replay re-runs the recorded config: the environment's {} ignored ({})",
            "variable is" if len(ignored) == 1 else "variables are",
            ", ".join(ignored),
        )
    recording = load_recording(Path(args.replay))
    keep = {k: v for k, v in flags.items() if k == "session.run_dir"}
    problems: list[str] = []  # the recorded config as to_dict wrote it ([[strategies]] included)
    recorded = without_unread_keys(recording.config)  # as an older version recorded it, too
    layer = dict_layer(recorded, f"{args.replay} (recorded config)", problems)
    return build([layer, flags_layer(keep)], problems)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """The CLI; `env`: the environment (None: the process's)."""
    if argv is None:  # the process's own CLI (not a test calling main)
        logs.guard_console()  # a console gone (hung up, a closed pipe) never stops the session
        # SIGTERM before the session listens for it (trio's signal receiver, actors/watchdog.py):
        # exit at once. As PID 1 in a container the default action of SIGTERM is none at all, so
        # without this handler a `podman stop` during start-up would wait out its timeout.
        signal.signal(signal.SIGTERM, _terminate)
        # Ctrl-C alike, exit 130 (found by an audit: a KeyboardInterrupt traceback, e.g. while the
        # start waited for another start's lock); left alone when the shell had it ignored (a
        # background job's): Python keeps that
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _terminate)
    env = os.environ if env is None else env
    secrets.install(env)  # before anything can print: every secret of env is scrubbed from output
    os.umask(0o077)  # state at rest: run folders 0700, files 0600
    args = build_parser().parse_args(argv)
    with ExitStack() as held:  # the run dir's start lock, from the decision until the session's lock
        return _main(args, env, held)


def _main(args: argparse.Namespace, env: Mapping[str, str], held: ExitStack) -> int:
    flags = {
        key: (getattr(args, dest), "--" + dest.replace("_", "-"))
        for dest, key in FLAG_KEYS.items()
        if getattr(args, dest) is not None
    }
    try:
        _check_flags(args)
        if not args.preflight:  # --check-config says what a start would (a replay's ignored variables)
            logs.configure()
        _check_backtest_keys(args, env)
        config = _config(args, flags, env)
        # the credentials the configured URLs carry (a webhook's path, a query's token): scrubbed
        # from everything written from here on, as the environment's secrets are
        secrets.install(
            env,
            secrets.url_secrets(config.observability.webhook_url, [config.feed.ws_url, config.feed.rest_url]),
        )
        if not args.preflight:  # before planning: it may warn (an abandoned run folder closed)
            obs = config.observability
            logs.configure(obs.log_level, logs.RunLog(obs.log_rotation_mb, obs.log_retention_files))
            if (
                args.config
                and not args.replay
                and not config.strategies
                and _has_strategy_tables(args.config)
            ):
                # found by an audit: one LAPTOP_AGENTS__STRATEGY__ variable silently turned the
                # image's two setups into one strategy
                logger.warning(
                    "[strategy] keys from the environment or --set replace {}'s [[strategies]] "
                    "tables: this session runs one {} strategy",
                    args.config,
                    config.strategy_specs[0].kind,
                )
            broker_cfg = config.broker
            if (
                args.mode == "backtest"
                and broker_cfg.backtest_fill == "close"
                and (broker_cfg.latency_ms > 0 or broker_cfg.latency_jitter_ms > 0)
            ):
                # found by an audit: "close" filled at the next open, as "next_open", at any latency
                logger.warning(
                    "broker.backtest_fill = 'close' fills a market order at its signal candle's close "
                    "only with broker.latency_ms = 0 and broker.latency_jitter_ms = 0: with latency "
                    "({:g} ms + up to {:g} ms) it reaches the market after the close, at the next "
                    "candle's open",
                    broker_cfg.latency_ms,
                    broker_cfg.latency_jitter_ms,
                )
            if not args.replay and (unread_qty := _unread_order_qty(config)):
                logger.warning(
                    "{} not used: risk.sizing is 'risk', which sizes each entry from "
                    "risk.risk_per_trade_pct of equity over its stop distance (cut to the risk limits); "
                    "risk.sizing = 'fixed' trades order_qty",
                    " and ".join(unread_qty),
                )
            if args.mode == "live" and not args.replay and config.feed.source == "mock":
                # found by an audit: the fake exchange's URLs set on the default source were
                # ignored without a word, and the session traded on the mock
                unread = [
                    f"feed.{name}"
                    for name in ("ws_url", "rest_url")
                    if getattr(config.feed, name) != getattr(FeedConfig(), name)
                ]
                if unread:
                    logger.warning(
                        "{} {} not used: feed.source is 'mock', which reads no exchange (--source bitunix "
                        "reads {})",
                        " and ".join(unread),
                        "is" if len(unread) == 1 else "are",
                        "it" if len(unread) == 1 else "them",
                    )
        if args.preflight and args.check_config:
            raise PlanError("--preflight and --check-config are separate checks; give one of them")
        if args.mode == "live" and not args.replay and not args.preflight:
            _check_live(config)
            _check_kill_switch(config)
        if not args.preflight:
            # --check-config makes a start's checks too (found by an audit: it passed what a start
            # refuses), without changing anything
            checkpoint.use_key(secrets.state_key(env))  # before a resume reads a checkpoint
            # room for a session's final record (session.disk_reserve_mb), before any decision writes
            check_room(Path(config.session.run_dir), config.session.disk_reserve_mb)
        plan = (
            Plan()
            if args.preflight
            else _plan(args, config, None)
            if args.check_config
            else _plan(args, config, held)
        )
        if args.check_config:
            _check_run_dir(Path(config.session.run_dir))
            if plan.mode == "backtest":
                _check_data(config, plan)
    except ConfigError as exc:
        for problem in exc.problems:
            _err(f"config error: {problem}")
        return 2
    except (PlanError, SecretError, CheckpointError, StorageFault, DataError) as exc:
        _err(f"error: {exc}")
        return 2
    except OSError as exc:  # a path a flag names cannot be looked at (too long, no permission, ...)
        _err(f"error: {_os_error(exc)}")
        return 2
    if args.check_config:
        sys.stdout.write(secrets.scrub(to_toml(config)))
        return 0
    if args.preflight:
        from actors.preflight import run_preflight

        return run_preflight(config, env)
    from actors.session import Session, run_session
    from actors.signals import hold_signals, late_signals

    if signal.getsignal(signal.SIGTERM) is _terminate:  # the process's own CLI (not a test)
        hold_signals()  # the session's from now until the process exits: never a 143 mid-flatten
    try:
        if plan.virtual_time and plan.runtime == "kernel":
            result = Session(config, plan, console=not args.quiet).run_kernel()  # no trio: a plain loop
        else:
            import trio

            from actors.clock import VirtualClock

            if plan.mode == "live":
                # the live feed's clients, imported before the session's loop runs: an import on
                # it holds every actor (the watchdog's stop of a session resumed after its
                # planned end waited for it, seconds on a loaded machine)
                import actors.feeds.bitunix  # noqa: F401

            clock = VirtualClock() if plan.virtual_time else None
            result = trio.run(partial(run_session, config, plan=plan, console=not args.quiet), clock=clock)
    except (SessionLocked, CheckpointError, DataError, StorageFault) as exc:
        _err(f"error: {exc}")
        return 2
    except OSError as exc:
        _err(f"error: {_os_error(exc)}")
        return 1
    report = result.report
    print_summary(report, result.console, result.run_path)
    written = (
        result.run_path / "final_report.json"
        if result.written
        else f"not written (a storage fault: {result.run_path} is left as its last checkpoint; "
        "the next start resumes it)"
    )
    _err(
        f"session {report['run_id']} {report['status']}: stop_reason={report['stop_reason']}{_detail(report)} "
        f"net_pnl={fmt_money(report['net_pnl'])} USDT trades={report['trade_count']} "
        f"funding_paid={fmt_money(report['funding_paid'])} USDT ({describe(report['funding_source'])}) "
        f"report={written}"
    )
    late_signals()  # the signals held since the report: repeats
    return result.exit_code


def _detail(report: dict[str, object]) -> str:
    """The stop's detail for the summary line, in brackets after its reason ("" without one)."""
    detail = report.get("stop_detail")
    return f" ({detail})" if detail else ""


def _os_error(exc: OSError) -> str:
    """An OSError in one line: its reason, and the file when it names one."""
    reason = exc.strerror or str(exc)
    return f"{reason}: {exc.filename}" if exc.filename else reason


if __name__ == "__main__":
    sys.exit(main())
