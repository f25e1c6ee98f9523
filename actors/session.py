"""A session, built from the plan: its components, its runtime, its wiring and its ending.

The components (actors/broker, actors/risk, actors/strategies) are the same in every kind of
session; what differs is the runtime that moves messages between them:

- **actors** (live sessions, new or resumed): one Trio nursery of actors over bounded channels (and
  the recorder's unbounded inbox, `EventSink`).

  ```
  SIGINT/SIGTERM -> the Stopper, for the session's whole life (SessionSignals)
  root nursery
    recorder                          (outlives the rest: it writes the final report)
    actors nursery: strategies, risk gate, broker   (end when their input channel closes; at
                                       most session.flatten_timeout_s after the stop)
      session scope (the watchdog cancels it, with the first reason)
        watchdog, feed               (the feed's channel closes when the scope ends)
  flatten-on-exit on the broker component (synchronous: it cannot hang)
  session.stopped -> recorder closes -> final_report.json
  ```

- **kernel** (backtests and replays): actors/kernel.py, a plain loop over the data;
  SIGINT/SIGTERM noted (KernelSignals) and looked for between two chunks of the data.

`Session` owns the choices (clock, run folder, heartbeat period, which feed); tests and the
benchmark pass stand-ins as arguments (`feed=...`, `runtime=...`). `run_session` is the entry
point the CLI and the tests use.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import itertools
import math
import os
import random
import re
import traceback
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import attrs
from loguru import logger

from actors import __version__
from actors.broker.paper import PaperBroker
from actors.broker.portfolio import Portfolio
from actors.config import Config, to_dict
from actors.console import ConsoleSink, fmt_held
from actors.feeds.funding import FundingRates, feed_source, per_symbol_source
from actors.feeds.history import (
    CSV_HEADER,
    SKIP_REASONS,
    DataError,
    candle_steps,
    read_candles_csv,
    read_market_log,
)
from actors.feeds.intervals import Intervals
from actors.kernel import Coverage, Kernel, Stopped
from actors.lock import SessionLock
from actors.plan import RUN_ID_PREFIXES, Plan
from actors.progress import BacktestProgress, count_candles
from actors.recording import checkpoint
from actors.recording.recorder import MARKET_KIND, Recorder, create_run_folder
from actors.recording.storage import StorageFault
from actors.risk.gate import RiskGate
from actors.signals import KernelSignals
from actors.strategies.base import Strategy, build_strategy
from protocols.instruments import table_instrument
from protocols.messages import Candle, Event, MarketEvent
from protocols.records import iso

if TYPE_CHECKING:
    from actors.feeds.mock import MarketWalk

# Stop reasons that come from the data (and so must come out the same in a replay).
DATA_DRIVEN_STOPS = frozenset({"max_loss", "max_trades", "max_losses", "breaker", "data_end"})

Runtime = Literal["actors", "kernel"]

# Backtests on the kernel: the progress is shown after each chunk of this many candles (a multiple
# of STORAGE_CHECK_EVERY).
PROGRESS_CHUNK = 4096
# Backtests and replays on the kernel: the recorder's storage stop is looked for every this many
# inputs (one-symbol backtests: candles, between two chunks of `run_candles`).
STORAGE_CHECK_EVERY = 64

T = TypeVar("T")


@attrs.frozen
class SessionResult:
    run_path: Path
    report: dict[str, Any]
    console: ConsoleSink = attrs.field(factory=ConsoleSink)  # the figures the end summary shows
    # the final record (events, metrics.json, final_report.json) is on disk; False: a storage fault
    # left the run folder as its last checkpoint (the next start resumes it), `report` is in memory
    written: bool = True
    storage: StorageFault | None = None  # the storage fault or low-space stop, if any

    @property
    def exit_code(self) -> int:
        """1: the session ended in an error (a storage stop included) or its record could not be
        written; else 0."""
        return 1 if self.report["status"] == "error" or self.storage is not None or not self.written else 0


def new_run_id(now: float, seed: int, run_dir: Path, prefix: str = "") -> str:
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
    run_id = f"{prefix}{stamp}-s{seed}"
    n = 1
    while (run_dir / run_id).exists():
        n += 1
        run_id = f"{prefix}{stamp}-s{seed}-{n}"
    return run_id


@attrs.define
class Timeline:
    """When the session started and must end, on the session clock, and what it reports."""

    started_ts: float
    duration_s: float
    data_source: str
    resumed_seq: int = 0  # the checkpoint's event seq when resumed
    # where the broker's funding rates come from (the report's `funding_source`): "feed",
    # "file:NAME", "constant" or "none"; None: not known (a checkpoint of an older version)
    funding_source: str | None = None
    # backtests: each data file, {symbol, path (absolute), bytes, mtime_ns}: the validator checks
    # the fills against the file the run read, and knows it when it has changed since
    data_files: list[dict[str, Any]] = attrs.field(factory=list)
    # backtests: each --funding file, as data_files: the validator checks the rates charged
    funding_files: list[dict[str, Any]] = attrs.field(factory=list)

    @property
    def end_ts(self) -> float:
        return self.started_ts + self.duration_s


# the flatten-on-exit's order id (`closing_events`; `-<SYMBOL>` with several symbols)
_FLATTEN_ID = re.compile(r"flatten-(\d+)(?:-[A-Z0-9]+)?")


@attrs.define
class Parts:
    """Every stateful part of a session: what a checkpoint holds and a resume restores."""

    broker: PaperBroker | Portfolio
    gate: RiskGate
    strategies: list[Strategy]
    walk: MarketWalk | None  # the mock source's price paths, one per symbol (live sessions)
    rngs: dict[str, random.Random]
    # the longer candles some strategies take, built from the session's; each strategy's interval
    intervals: Intervals = attrs.field(factory=lambda: Intervals(60.0, ()))
    strategy_intervals: dict[str, float] = attrs.field(factory=dict)
    # the flatten-on-exit's order id (with several symbols, `<it>-<SYMBOL>`): another after a resume
    # that discarded one (`skip_ids`)
    flatten_id: str = "flatten-1"

    def state(self) -> dict[str, Any]:
        return {
            "account": self.broker.state(),
            "risk": self.gate.state(),
            "strategy": self.strategies[0].state() if len(self.strategies) == 1 else None,
            "strategies": {s.id: s.state() for s in self.strategies},
            "feed": self.walk.snapshot() if self.walk is not None else None,
            "rngs": {name: _rng_state(rng) for name, rng in self.rngs.items()},
            "intervals": self.intervals.state(),
        }

    def skip_ids(self, ids: set[str]) -> None:
        """After a resume: the order, fill, protective-order and flatten ids the discarded events
        gave (written after the checkpoint) are never given again, to other orders and fills (found
        by an audit: a fill seen on the console before the crash, discarded, and its id then given
        to another fill). Each part knows its own ids."""
        self.gate.skip_ids(ids)
        self.broker.skip_ids(ids)
        flattens = [int(found[1]) for found in filter(None, map(_FLATTEN_ID.fullmatch, ids))]
        if flattens:
            self.flatten_id = f"flatten-{max(flattens) + 1}"

    def restore(self, state: dict[str, Any], now: float) -> None:
        self.broker.restore(state["account"])
        self.gate.restore(state["risk"], self.broker.snapshot(now))
        by_id = state.get("strategies") or {}
        for strategy in self.strategies:
            saved = by_id.get(strategy.id, state.get("strategy") if len(self.strategies) == 1 else None)
            if saved is not None:
                strategy.restore(saved)
        self.intervals.restore(state.get("intervals") or {})
        if self.walk is not None and state.get("feed") is not None:
            self.walk.restore(state["feed"])
        for name, rng_state in state["rngs"].items():
            self.rngs[name].setstate((rng_state[0], tuple(rng_state[1]), rng_state[2]))


def _rng_state(rng: random.Random) -> list[Any]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _walk(config: Config, rng: random.Random) -> MarketWalk:
    from actors.feeds.mock import build_walk  # the live feeds' module imports trio: live only

    # history enough for every strategy's warm-up (longer intervals want more)
    return build_walk(config.feed, rng, config.symbols, min_history=config.strategy_history)


def build_parts(
    config: Config,
    timeline: Timeline,
    *,
    heartbeat_s: float,
    defer_to_next_quote: bool,
    live: bool = True,
    bars: bool = False,
    funding: Mapping[str, FundingRates] | None = None,
    funding_modelled: bool = True,
) -> Parts:
    """The session's one seeded generator hands each part its own stream, in a fixed order, so
    no part's draws depend on how the others are scheduled. `funding`: by symbol, the rates the
    broker charges at each funding instant (backtests, mock sessions); a symbol not there: the
    feed's `Funding` events (`funding_modelled`), or no funding at all."""
    funding = funding or {}
    root = random.Random(config.session.seed)
    rngs = {name: random.Random(root.getrandbits(64)) for name in ("feed", "broker")}
    symbols = config.symbols
    instruments = {symbol: table_instrument(symbol) for symbol in symbols}
    broker: PaperBroker | Portfolio
    if len(symbols) == 1:
        broker = PaperBroker(
            config.broker,
            rngs["broker"],
            symbol=symbols[0],
            heartbeat_s=heartbeat_s,
            started_ts=timeline.started_ts,
            end_ts=timeline.end_ts,
            defer_to_next_quote=defer_to_next_quote,
            bars=bars,
            instrument=instruments[symbols[0]],
            funding=funding.get(symbols[0]),
            funding_modelled=funding_modelled or symbols[0] in funding,
        )
    else:  # one account over several symbols
        broker = Portfolio(
            config.broker,
            rngs["broker"],
            symbols=symbols,
            heartbeat_s=heartbeat_s,
            started_ts=timeline.started_ts,
            end_ts=timeline.end_ts,
            defer_to_next_quote=defer_to_next_quote,
            bars=bars,
            instruments={s: i for s, i in instruments.items() if i is not None},
            funding=funding,
            funding_modelled=funding_modelled,
        )
    known = {s: i for s, i in instruments.items() if i is not None}
    intervals = {spec.id: float(config.strategy_interval_s(spec)) for spec in config.strategy_specs}
    wanted = [(config.strategy_symbol(spec), intervals[spec.id]) for spec in config.strategy_specs]
    return Parts(
        broker=broker,
        gate=RiskGate(
            config.risk,
            config.broker.starting_equity,
            backtest=bars,
            instrument=instruments[symbols[0]],
            instruments=known,
        ),
        # one per [[strategies]] table (or the one [strategy]), in the configured order
        strategies=[
            build_strategy(spec.config, spec.id, config.strategy_symbol(spec), spec.params)
            for spec in config.strategy_specs
        ],
        walk=_walk(config, rngs["feed"]) if live else None,
        rngs=rngs,
        intervals=Intervals(config.interval_s, wanted),
        strategy_intervals=intervals,
    )


# --- the events that open and close a session -------------------------------------------------------


def _data_file_records(paths: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """A backtest's data files as its session.started records them (a file that cannot be looked
    at is left out: the start has read it, or refused it, already)."""
    files = []
    for symbol, name in paths:
        try:
            path = Path(name).resolve()
            st = path.stat()
        except OSError:
            continue
        files.append({"symbol": symbol, "path": str(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns})
    return files


def started_event(config: Config, run_id: str, timeline: Timeline) -> Event:
    return Event(
        timeline.started_ts,
        "session.started",
        {
            "run_id": run_id,
            "symbol": config.symbols[0],
            "symbols": list(config.symbols),
            "strategies": [spec.id for spec in config.strategy_specs],
            "started_ts": timeline.started_ts,  # full precision (`ts` is cut to the ms): a replay starts here
            "interval": config.session.interval,
            "data_source": timeline.data_source,
            "funding_source": timeline.funding_source,
            **({"data_files": timeline.data_files} if timeline.data_files else {}),
            **({"funding_files": timeline.funding_files} if timeline.funding_files else {}),
            "seed": config.session.seed,
            "planned_duration_s": config.session.duration_min * 60
            if math.isfinite(timeline.duration_s)
            else None,
            "starting_equity": config.broker.starting_equity,
            "config": to_dict(config),
            "version": __version__,
            "pid": os.getpid(),
        },
    )


def resumed_event(
    now: float, recorder: Recorder, broker: PaperBroker | Portfolio, generation: str, problems: list[str]
) -> Event:
    """Records the downtime and the restored account, so a reader can check it continues the log."""
    return Event(
        now,
        "session.resumed",
        {
            "downtime_s": round(now - recorder.last_event_ts, 3) if recorder.last_event_ts else None,
            "checkpoint": generation,
            "checkpoint_problems": problems,
            "discarded_events": recorder.discarded_events,
            # fills a reader may have seen (the console, the webhook) that the resumed record has
            # not: written after the checkpoint the session resumed from (at most the first 100)
            "discarded_fills": recorder.discarded_fills[:100],
            "discarded_crosses": recorder.discarded_crosses[:100],
            "position_qty": round(broker.position_qty, 8),
            "realized_pnl": broker.realized_pnl,
            "fees_paid": broker.fees_paid,
            "pid": os.getpid(),
        },
    )


def closing_events(
    broker: PaperBroker | Portfolio,
    timeline: Timeline,
    ended: float,
    status: str,
    reason: str,
    detail: str,
    feed_down_s: float,
    data_gaps: dict[str, dict[str, Any]] | None = None,
    data_skipped: dict[str, dict[str, int]] | None = None,
    flatten_id: str = "flatten-1",
) -> list[Event]:
    """Orders still on their way are refused (`session_stopping`: the session ends before they
    reach the market), flatten-on-exit through the broker's normal fill path, a last metrics row
    with the flat, final account, and `session.stopped` (with where funding came from: a live
    session whose feed fell back to the mock source had no funding rates; a backtest's, with the
    gaps in its data it ran through, `Session.data_gaps`)."""
    funding: dict[str, str] = {}
    if timeline.funding_source is not None:
        fell_back = timeline.funding_source == "feed" and timeline.data_source.startswith("mock (fallback")
        funding["funding_source"] = "none" if fell_back else timeline.funding_source
        if funding["funding_source"] == "feed":  # and said so when no rate came
            legs = broker.legs if isinstance(broker, Portfolio) else {broker.symbol: broker}
            funding["funding_source"] = feed_source({s: leg.funding_rates_came for s, leg in legs.items()})
    events = broker.settle_funding(ended)  # instants passed whose rate never came: the last one known
    events += broker.abandon_in_flight(ended, "session_stopping")
    events += broker.flatten(ended, "flatten_on_exit", flatten_id)
    events.append(Event(ended, "heartbeat", broker.heartbeat_fields(ended)))
    for symbol, counts in (data_skipped or {}).items():  # a backtest's --data rows that were not candles
        events.append(
            Event(
                ended, "feed.malformed", {"counts": counts, "total": sum(counts.values()), "symbol": symbol}
            )
        )
    events.append(
        Event(
            ended,
            "session.stopped",
            {
                "status": status,
                "stop_reason": reason,
                "detail": detail,
                "elapsed_s": round(ended - timeline.started_ts, 3),
                "ended_ts": ended,  # full precision (`ts` is cut to the ms): a replay ends here
                "data_source": timeline.data_source,
                "feed_down_s": round(feed_down_s, 3),
                "ending_equity": round(broker.equity, 6),
                "unrealized_pnl": round(broker.unrealized_pnl, 6),
                "max_drawdown_pct": round(broker.max_drawdown_pct, 4),
                "open_positions": broker.open_positions(),
                **funding,
                **({} if data_gaps is None else {"data_gaps": data_gaps}),
            },
        )
    )
    return events


def end_reason(plan: Plan) -> str:
    """A replay ends when its original did, for the original's reason unless the data caused it
    (then the replay reaches that reason itself)."""
    if plan.recording is not None and plan.recording.stop_reason not in DATA_DRIVEN_STOPS:
        return plan.recording.stop_reason
    return "duration"


# --- the session ----------------------------------------------------------------------------------------

# A feed for the actors runtime: given the broker's market channel and the watchdog's stop channel.
FeedStarter = Callable[..., Awaitable[None]]
# (the --data file, its symbol) -> the candles it holds, in order
CandleSource = Callable[[str, str], Iterable[Candle]]


# A backtest warns at its end about a gap in its data this long or longer (`Session.data_gaps`).
GAP_WARN_S = 3600.0


# The candles a backtest looks at before it starts to learn its data's spacing (`check_spacing`).
SPACING_PEEK = 100


def interval_label(seconds: float) -> str:
    """`60` -> `"1m"`, `3600` -> `"1h"`, `5` -> `"5s"` (as session.interval writes it)."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _listing_gaps(
    candles: Iterator[Candle], interval_s: float, gaps: list[tuple[float, float]]
) -> Iterator[Candle]:
    """The candles, their gaps appended to `gaps` as `read_candles_csv` lists them."""
    last = -math.inf
    gap_after = interval_s + 1e-6
    for candle in candles:
        if candle.open_ts - last > gap_after and last > -math.inf:
            gaps.append((last, candle.open_ts))
        last = candle.open_ts
        yield candle


def check_spacing(head: list[Candle], interval_s: float, path: str, skipped: int = 0) -> None:
    """A backtest's data must be candles of session.interval: each row is stamped with it (its
    close time, when strategies decide and orders meet it), so data of another spacing would be
    mislabelled from the first candle. The closest two consecutive candles of the first ones read
    must be exactly session.interval apart (gaps in the data, larger, are allowed); DataError
    naming both otherwise. Found by an audit, its advice misled: rows skipped among the first
    (`skipped`) make the rows kept look wider apart, and open times in seconds look like candles
    a thousandth of the interval apart; each is said instead."""
    gaps = [b.open_ts - a.open_ts for a, b in itertools.pairwise(head)]
    if not gaps:
        return
    spacing = min(gaps)
    if abs(spacing - interval_s) > 1e-6:
        if abs(spacing * 1000 - interval_s) <= 1e-6:
            raise DataError(
                f"--data {path}: its open times are {interval_label(interval_s)} apart if read as seconds: "
                "the first column must be the open time in milliseconds (open_time_ms)"
            )
        if skipped:
            raise DataError(
                f"--data {path}: {skipped} of its first rows were not candles (malformed, out of order "
                f"or repeated: skipped), and the candles kept are {interval_label(spacing)} apart where "
                f"session.interval is {interval_label(interval_s)}: mend the file"
            )
        raise DataError(
            f"--data {path}: its candles are {interval_label(spacing)} apart but session.interval is "
            f'{interval_label(interval_s)}: set session.interval = "{interval_label(spacing)}" '
            f"(--set session.interval={interval_label(spacing)}) or give data of {interval_label(interval_s)} candles"
        )


def check_order(backwards: int, kept: int, path: str) -> None:
    """DataError when more of the first rows read went back in time (`backwards`, skipped) than
    were kept (`kept` candles): the file is not in ascending time order (found by an audit: a file
    newest first ran as a backtest of its first candle, ok, exit 0, no trade)."""
    if backwards > kept:
        raise DataError(
            f"--data {path}: {backwards} of its first rows open before the row before them, "
            f"{kept} candle{'s' if kept > 1 else ''} kept: its rows are not in ascending "
            "time order (newest first?); sort them by open_time_ms"
        )


def no_candles(
    path: str, read: dict[str, int], skipped: dict[str, int], first: list[tuple[int, str]], windowed: bool
) -> str:
    """Why a `--data` file gave a backtest no candle: none in its rows at all (`read`: the
    reader's counts once it read the whole file), every row malformed (found by an audit: it
    said only "no candles"), or none in the --from/--until window (`windowed`: the backtest has
    one)."""
    if read.get("candles") == 0:
        if not skipped:
            return f"--data {path}: no candles: no rows after its header"
        rows = sum(skipped.values())
        counts = ", ".join(f"{reason} {n}" for reason, n in sorted(skipped.items()))
        line, reason = first[0]
        return (
            f"--data {path}: {rows} row{'s' if rows > 1 else ''} read, {'all ' if rows > 1 else ''}"
            f"malformed: no candle ({counts}); the first, line {line}: {SKIP_REASONS[reason]} "
            f"({reason}); expected rows of six plain numbers {','.join(CSV_HEADER)} (the open time in ms)"
        )
    return f"--data {path}: no candles{' in the --from/--until window' if windowed else ''}"


class Session:
    """One session from its plan. `runtime`: "kernel" (default for backtests and replays) or
    "actors" (live sessions; for backtests too, to check the kernel against them). `feed`: a
    stand-in feed for the actors runtime (tests), called as `feed(market_tx, stops_tx,
    task_status=...)`."""

    def __init__(
        self,
        config: Config,
        plan: Plan | None = None,
        *,
        runtime: Runtime | None = None,
        feed: FeedStarter | None = None,
        handle_signals: bool = True,
        progress_mode: str | None = None,
        console: bool = False,
        candle_source: CandleSource | None = None,
        candle_skipped: dict[str, dict[str, int]] | None = None,
    ) -> None:
        """`console`: print each fill and closed trade on stderr (the CLI). `candle_source`: a
        backtest's candles of a `--data` file and symbol, from elsewhere than the file (a sweep's
        trials: the data read once per node, tools/sweep/); the same candles the file holds.
        `candle_skipped`: by symbol, the rows of its file that were not candles, by reason, which
        the candle source counts as it hands its candles out, as the file's reader would (the
        report's `malformed_dropped`)."""
        self.config = config
        self.candle_source = candle_source
        self.candle_skipped = candle_skipped if candle_skipped is not None else {}
        self.plan = plan or Plan()
        self.runtime: Runtime = runtime or ("actors" if self.plan.mode == "live" else self.plan.runtime)
        self.feed = feed
        self.handle_signals = handle_signals
        self.progress_mode = progress_mode
        self.console = console
        if self.runtime == "kernel" and self.plan.mode == "live":
            raise ValueError("a live session runs on the actors runtime")
        self.funding, self.funding_source = self._funding()
        self._gaps: dict[str, list[tuple[float, float]]] = {}  # a backtest's data gaps read, by symbol
        self._skipped: dict[str, dict[str, int]] = {}  # its rows that were not candles, by symbol and reason
        if self.plan.mode == "backtest":
            unmodelled = [s for s in self.config.symbols if s not in self.funding]
            if len(unmodelled) == len(self.config.symbols):
                logger.warning(
                    "this backtest does not model funding (no --funding FILE, broker.funding = 'none'): "
                    "funding_paid will be 0"
                )
            elif unmodelled:
                logger.warning(
                    f"this backtest does not model funding for {', '.join(unmodelled)} (no --funding "
                    "SYMBOL=FILE for it, broker.funding = 'none'): nothing is charged on its positions"
                )

    def _funding(self) -> tuple[dict[str, FundingRates], str]:
        """The rates the broker charges funding at, by symbol (a symbol not there: the feed's
        `Funding` events, or none at all), and what the report calls them: a backtest's
        `--funding [SYMBOL=]FILE` (or `Plan.funding`, one schedule for every symbol); live Bitunix data's own rates (`Funding` events, re-delivered by
        a replay); otherwise `broker.funding = "constant"`'s rate, or none at all. A backtest of
        several symbols with a file for some: `per_symbol_source`."""
        plan, broker = self.plan, self.config.broker
        symbols = self.config.symbols
        if plan.funding is not None:
            return {symbol: plan.funding for symbol in symbols}, plan.funding.source
        constant = FundingRates.constant(broker.funding_rate_pct) if broker.funding == "constant" else None
        everywhere = {symbol: constant for symbol in symbols} if constant is not None else {}
        if plan.funding_by_symbol:
            rates = everywhere | dict(plan.funding_by_symbol)
            if len(symbols) == 1:
                return rates, rates[symbols[0]].source
            return rates, per_symbol_source(
                {symbol: rates[symbol].source if symbol in rates else "none" for symbol in symbols}
            )
        if plan.mode == "backtest":
            return everywhere, "constant" if constant is not None else "none"
        if self.config.feed.source == "bitunix":
            rates, source = {}, "feed"
        else:
            rates, source = everywhere, "constant" if constant is not None else "none"
        if plan.recording is not None and plan.recording.funding_source is not None:
            source = plan.recording.funding_source  # a replay: the original's (it fell back, say)
        return rates, source

    # --- what every runtime shares --------------------------------------------------------------------

    def candles(self, path: str | None = None, symbol: str | None = None) -> tuple[float, Iterator[Candle]]:
        """A backtest's start time (its first candle's open) and its candles, read lazily (one
        symbol's: by default the session's, from --data)."""
        path = path or self.plan.data
        assert path is not None
        symbol = symbol or self.symbol
        gaps = self._gaps.setdefault(symbol, [])
        read: dict[str, int] = {}  # what the reader read, once it has read the whole file
        first_skipped: list[tuple[int, str]] = []
        if self.candle_source is not None:  # (a sweep's trials: their gaps listed as the reader does)
            self._skipped[symbol] = self.candle_skipped.setdefault(symbol, {})
            candles = _listing_gaps(iter(self.candle_source(path, symbol)), self.config.interval_s, gaps)
        else:
            skipped = self._skipped.setdefault(symbol, {})
            candles = read_candles_csv(
                Path(path),
                self.config.interval_s,
                read,
                symbol=symbol,
                gaps=gaps,
                skipped_by=skipped,
                first_skipped=first_skipped,
            )
        start, end = self.plan.window
        if math.isfinite(start):
            candles = itertools.dropwhile(lambda candle: candle.open_ts < start, candles)
        if math.isfinite(end):
            candles = itertools.takewhile(lambda candle: candle.open_ts < end, candles)
        head = list(itertools.islice(candles, SPACING_PEEK))
        skipped = self._skipped.get(symbol, {})
        if not head:
            raise DataError(self._no_candles(path, read, skipped, first_skipped))
        overlapping = skipped.get("csv_overlapping", 0)
        if overlapping:
            # rows among the first opened less than an interval after the candle before them (the
            # reader skipped them): the file's own spacing says whether its candles are of another
            # interval (said as such), else they are rows off its grid
            rows = list(itertools.islice(read_candles_csv(Path(path), 0.0, symbol=symbol), SPACING_PEEK))
            apart = [b.open_ts - a.open_ts for a, b in itertools.pairwise(rows)]
            if sum(abs(d - self.config.interval_s) <= 1e-6 for d in apart) * 2 < len(apart):
                check_spacing(rows, self.config.interval_s, path)  # most of them another interval apart
            raise DataError(
                f"--data {path}: {overlapping} of its first rows open less than session.interval "
                f"({interval_label(self.config.interval_s)}) after the candle before them, off its grid: "
                "mend the file"
            )
        check_order(skipped.get("csv_time_backwards", 0), len(head), path)
        check_spacing(head, self.config.interval_s, path, sum(skipped.values()))
        return head[0].open_ts, itertools.chain(head, candles)

    def _no_candles(
        self, path: str, read: dict[str, int], skipped: dict[str, int], first: list[tuple[int, str]]
    ) -> str:
        """Why a `--data` file gave a backtest no candle (`no_candles`)."""
        return no_candles(path, read, skipped, first, self.plan.window != (-math.inf, math.inf))

    def data_skipped(self) -> dict[str, dict[str, int]]:
        """A backtest's rows of --data that were not candles (malformed, out of order, repeated),
        by symbol and reason: the report counts them in `malformed_dropped` (found by an audit: a
        file of every row twice, or unsorted, ran with `malformed_dropped: {}`), and the end of
        the run warns about them."""
        out = {symbol: dict(sorted(counts.items())) for symbol, counts in self._skipped.items() if counts}
        for symbol, counts in out.items():
            logger.warning(
                "the {} data had {} row(s) that could not be used, skipped: {}",
                symbol,
                sum(counts.values()),
                ", ".join(f"{reason} {n}" for reason, n in counts.items()),
            )
        return out

    def data_gaps(self, ended: float) -> dict[str, dict[str, Any]] | None:
        """A backtest's gaps in its data, by symbol (None: not a backtest; {} none): those it ran
        through (in its --from window, before its stop), how many, the time missing in all and the
        longest. Positions, working orders and funding (at the last mark) went on through them as
        they were; the end of the run warns about them."""
        if self.plan.mode != "backtest":
            return None
        start = self.plan.window[0]
        interval = self.config.interval_s
        out: dict[str, dict[str, Any]] = {}
        for symbol, gaps in self._gaps.items():
            within = [(a + interval, b) for a, b in gaps if a >= start and b <= ended]
            if not within:
                continue
            longest = max(within, key=lambda g: g[1] - g[0])
            out[symbol] = {
                "count": len(within),
                "missing_s": round(sum(b - a for a, b in within), 3),
                "longest_s": round(longest[1] - longest[0], 3),
                "longest_from": iso(longest[0]),
                "longest_to": iso(longest[1]),
            }
        for symbol, gap in out.items():
            if gap["longest_s"] >= GAP_WARN_S:
                logger.warning(
                    "the {} data has {} gap(s), {} missing in all; the longest {} from {} to {}: positions, "
                    "working orders and funding (at the last price) went on through them as they were "
                    "(no metrics row within them)",
                    symbol,
                    gap["count"],
                    fmt_held(gap["missing_s"]),
                    fmt_held(gap["longest_s"]),
                    gap["longest_from"],
                    gap["longest_to"],
                )
        return out

    def backtest_steps(self) -> tuple[float, Iterator[tuple[float, MarketEvent]]]:
        """A backtest's timed inputs: each candle's open quote and then the candle (`candle_steps`);
        several symbols' merged in time order (at one instant, in the order of config.symbols).
        Starts at the earliest first candle."""
        if not self.plan.data_by_symbol:
            started, candles = self.candles()
            return started, candle_steps(candles)
        starts, streams = [], []
        for symbol, path in self.plan.data_by_symbol:
            started, candles = self.candles(path, symbol)
            starts.append(started)
            streams.append(candle_steps(candles))
        return min(starts), heapq.merge(*streams, key=lambda step: step[0])

    def inputs(self) -> tuple[float, Iterator[tuple[float, MarketEvent]]] | None:
        """Backtests and replays: the session's start time and its timed inputs (None: live)."""
        plan = self.plan
        if plan.mode == "backtest":
            return self.backtest_steps()
        if plan.mode == "replay":
            assert plan.recording is not None
            skipped = self._skipped.setdefault(self.symbol, {})
            return plan.recording.started_ts, read_market_log(plan.recording.market_path, skipped)
        return None

    @property
    def symbol(self) -> str:
        """The session's symbol (the first its strategies trade)."""
        return self.config.symbols[0]

    def heartbeat_s(self) -> float:
        """Live sessions and replays: `observability.heartbeat_s`; backtests: one row per
        `observability.backtest_heartbeat_candles` candles (an equity curve, not a pulse)."""
        if self.plan.mode == "backtest":
            return self.config.interval_s * self.config.observability.backtest_heartbeat_candles
        return self.config.observability.heartbeat_s

    def timeline(self, started: float) -> Timeline:
        plan = self.plan
        funding = self.funding_source
        if plan.mode == "backtest":
            files = (
                ", ".join(f"{s}={p}" for s, p in plan.data_by_symbol) if plan.data_by_symbol else plan.data
            )
            paths = plan.data_by_symbol or (((self.symbol, plan.data),) if plan.data else ())
            return Timeline(
                started,
                math.inf,
                f"backtest: {files}",
                funding_source=funding,
                data_files=_data_file_records(paths),
                funding_files=_data_file_records(
                    (symbol, str(rates.path))
                    for symbol, rates in self.funding.items()
                    if rates.path is not None
                ),
            )
        if plan.mode == "replay":
            assert plan.recording is not None
            r = plan.recording
            return Timeline(
                started, r.ended_ts - r.started_ts, f"replay of {r.run_id}", funding_source=funding
            )
        return Timeline(
            started, self.config.session.duration_min * 60, self.config.feed.source, funding_source=funding
        )

    def parts(self, timeline: Timeline, *, live: bool = True) -> Parts:
        """`live`: the actors' runtime (its mock market built, and trio imported with it); the
        kernel's (backtests, replays) passes False: its market is its data."""
        return build_parts(
            self.config,
            timeline,
            live=live,
            heartbeat_s=self.heartbeat_s(),
            defer_to_next_quote=self.plan.mode == "backtest"
            and self.config.broker.backtest_fill == "next_open",
            bars=self.plan.mode == "backtest",
            funding=self.funding,
            # the symbols without rates charge what the feed delivers (a replay: what its recording
            # does, if the original charged any: found by the determinism audit, a replay of a mock
            # session holding a position at 08:00 UTC recorded a funding event at rate 0 that the
            # original never had); with no feed either, nothing: no funding events
            funding_modelled=self.funding_source == "feed"
            or (self.plan.recording is not None and self.plan.recording.funding_modelled),
        )

    def new_run_folder(self, now: float) -> Path:
        """`<run_dir>/<run_id>/`, `latest` pointing at it; a live session's made durable in the run
        dir (found by the crash audit: its checkpoints synced only the folder's own entries, so a
        power loss could lose the folder or `latest`'s move to it, and the next start would not
        resume it). Backtests and replays are run again instead (a sweep makes thousands)."""
        run_dir = Path(self.config.session.run_dir)
        prefix = RUN_ID_PREFIXES[self.plan.mode]
        path = create_run_folder(run_dir, new_run_id(now, self.config.session.seed, run_dir, prefix))
        if self.plan.mode == "live":
            checkpoint.fsync_dir(run_dir)
        return path

    # --- the kernel -------------------------------------------------------------------------------------

    def run_kernel(self) -> SessionResult:
        """A backtest or replay on the kernel, synchronously (no trio). SIGINT and SIGTERM
        (`handle_signals`) stop it between two chunks of its inputs, flat, with its report
        (actors/signals.py)."""
        with KernelSignals() if self.handle_signals else contextlib.nullcontext() as signals:
            return self._run_kernel(signals)

    def _run_kernel(self, signals: KernelSignals | None) -> SessionResult:
        one_stream = self.plan.mode == "backtest" and not self.plan.data_by_symbol
        if one_stream:
            started, candles = self.candles()
        else:
            found = self.inputs()
            assert found is not None, "the kernel runs backtests and replays"
            started, inputs = found
        timeline = self.timeline(started)
        parts = self.parts(timeline, live=False)
        run_path = self.new_run_folder(started)
        with SessionLock(run_path):
            recorder = Recorder(  # no webhook: live sessions only
                run_path, alerts=self.config.alerts, reserve_mb=self.config.session.disk_reserve_mb
            )
            recorder.console.echo = self.console
            recorder.console.batched = True
            recorder.write(started_event(self.config, run_path.name, timeline))
            kernel = Kernel(
                parts.broker,
                parts.gate,
                parts.strategies,
                recorder.write,
                intervals=parts.intervals,
                strategy_intervals=parts.strategy_intervals,
            )
            status = "ok"
            storage: list[StorageFault] = []  # a storage stop ends the inputs (checked between steps)
            # the run allocates millions of short-lived objects: the cyclic collector looks at the
            # young ones less often (most are gone by then), the session's long-lived ones sit out
            # its full passes (as they were after the run, for the next run in this process)
            thresholds = gc.get_threshold()
            gc.set_threshold(max(thresholds[0], 50_000), *thresholds[1:])
            gc.freeze()
            try:
                if one_stream:
                    stopped = self._run_candles(kernel, iter(candles), recorder, storage, signals)
                else:
                    stopped = kernel.run(
                        self._reporting(
                            _until_stop(inputs, recorder, storage, signals, kernel, started), kernel
                        ),
                        end_ts=timeline.end_ts,
                        end_reason="data_end" if self.plan.mode == "backtest" else end_reason(self.plan),
                        end_detail="all data delivered"
                        if self.plan.mode == "backtest"
                        else f"{timeline.duration_s:g} s reached",
                        # a replay of a session its data stopped: the timers of its last instant
                        # too (found by an audit: a fill after its latency at that instant, which
                        # stopped the original on max_trades, was refused session_stopping)
                        end_inclusive=self.plan.recording is not None
                        and self.plan.recording.stop_reason in DATA_DRIVEN_STOPS,
                        # a replay's market.jsonl: what it acted on, as a live session's (its
                        # fills are checked against it, and a replay can be replayed)
                        record_market=(
                            (lambda event, now: recorder.write(Event(now, MARKET_KIND, {"event": event})))
                            if self.plan.mode == "replay"
                            else None
                        ),
                        # a backtest's heartbeats: only at times its data covers (none in a gap)
                        coverage=Coverage(self.config.interval_s, started)
                        if self.plan.mode == "backtest"
                        else None,
                    )
            except Exception as exc:
                if isinstance(exc, DataError):  # its message says it all (a data file that ends early)
                    logger.error("session failed: {}", exc)
                else:
                    logger.bind(lines=True).error(
                        "session failed:\n{}", "".join(traceback.format_exception(exc))
                    )
                status = "error"
                ts = kernel.now if math.isfinite(kernel.now) else started
                recorder.write(Event(ts, "error", {"where": "session", "message": repr(exc)}))
                stopped = Stopped("error", repr(exc), ts)
            finally:
                gc.unfreeze()
                gc.set_threshold(*thresholds)
            recorder.take_stop()  # one after the last input: recorded (exit 1), the stop's reason stays
            if storage and status == "ok":
                logger.info("stopping: storage {}", storage[0].detail())
                status = "error"
                stopped = Stopped(
                    "storage", storage[0].detail(), kernel.now if math.isfinite(kernel.now) else started
                )
            for event in closing_events(
                parts.broker,
                timeline,
                stopped.ts,
                status,
                stopped.reason,
                stopped.detail,
                0.0,
                self.data_gaps(stopped.ts),
                self.data_skipped(),
            ):
                recorder.write(event)
            report = recorder.finish()
        return SessionResult(run_path, report, recorder.console, recorder.written, recorder.storage)

    def _backtest_progress(self) -> BacktestProgress:
        mode = self.progress_mode or self.config.observability.progress
        data = self.plan.data if self.plan.mode == "backtest" and not self.plan.data_by_symbol else None
        return BacktestProgress(mode, total=lambda: count_candles(data) if data else None)

    def _run_candles(
        self,
        kernel: Kernel,
        candles: Iterator[Candle],
        recorder: Recorder,
        storage: list[StorageFault],
        signals: KernelSignals | None,
    ) -> Stopped:
        """`kernel.run_candles` over the candles, in chunks of `STORAGE_CHECK_EVERY`: between two
        chunks a signal (the session stops there) and the recorder's storage stop are looked for
        (its `error` event is recorded then and the stop kept in `storage`), and every
        `PROGRESS_CHUNK` candles the progress is shown (the same steps: `finish=False` leaves the
        run open; nothing is added to the loop over the candles)."""
        with self._backtest_progress() as progress:
            done = 0
            for first in candles:
                stopped = kernel.run_candles(
                    itertools.chain((first,), itertools.islice(candles, STORAGE_CHECK_EVERY - 1)),
                    finish=False,
                )
                if stopped is not None:
                    return stopped
                if signals is not None and (name := signals.stop_requested()) is not None:
                    return _signalled(kernel, name, kernel.now)
                if (stop := recorder.take_stop()) is not None:
                    storage.append(stop)
                    break
                done += STORAGE_CHECK_EVERY  # the last chunk may be shorter: the display caps it
                if progress.on and not done % PROGRESS_CHUNK:
                    recorder.console.flush()
                    progress.update(done, kernel.now)
            else:
                if (stop := recorder.take_stop()) is not None:
                    storage.append(stop)
            stopped = kernel.run_candles((), finish=True)
            assert stopped is not None
            return stopped

    def _reporting(
        self, inputs: Iterator[tuple[float, MarketEvent]], kernel: Kernel
    ) -> Iterator[tuple[float, MarketEvent]]:
        """The inputs, with the progress shown every `PROGRESS_CHUNK` candles (multi-symbol
        backtests and replays: `kernel.run` takes the steps one by one)."""
        with self._backtest_progress() as progress:
            if not progress.on:
                yield from inputs
                return
            done = 0
            for step in inputs:
                yield step
                if type(step[1]) is Candle:
                    done += 1
                    if done % PROGRESS_CHUNK == 0:
                        progress.update(done, kernel.now)

    # --- the actors ---------------------------------------------------------------------------------------

    async def run_actors(self) -> SessionResult:
        from actors.session_actors import run_actors  # trio is imported only by this runtime

        return await run_actors(self)


def _until_stop(
    inputs: Iterable[T],
    recorder: Recorder,
    stops: list[StorageFault],
    signals: KernelSignals | None,
    kernel: Kernel,
    started: float,
) -> Iterator[T]:
    """The kernel's inputs until a signal comes (the kernel stops there, `_signalled`) or the
    recorder has a storage stop (its `error` event is recorded then and the stop kept in
    `stops`): both looked for every `STORAGE_CHECK_EVERY` inputs, between two steps."""
    for i, item in enumerate(inputs):
        if not i % STORAGE_CHECK_EVERY:
            if signals is not None and (name := signals.stop_requested()) is not None:
                kernel.stopped = _signalled(kernel, name, started)
                return
            if (stop := recorder.take_stop()) is not None:
                stops.append(stop)
                return
        yield item
    if (stop := recorder.take_stop()) is not None:
        stops.append(stop)


def _signalled(kernel: Kernel, name: str, started: float) -> Stopped:
    """The stop a signal makes, at the kernel's time (no timer run past it: the session stops
    where it is, as a live one does); one before the first step, at the session's start."""
    return Stopped("signal", name, kernel.now if math.isfinite(kernel.now) else started)


async def run_session(
    config: Config,
    *,
    plan: Plan | None = None,
    runtime: Runtime | None = None,
    feed: FeedStarter | None = None,
    handle_signals: bool = True,
    progress_mode: str | None = None,
    console: bool = False,
) -> SessionResult:
    """Run one session to its end; always returns with the report written (status ok or error).
    `console`: print each fill and closed trade on stderr."""
    session = Session(
        config,
        plan,
        runtime=runtime,
        feed=feed,
        handle_signals=handle_signals,
        progress_mode=progress_mode,
        console=console,
    )
    if session.runtime == "kernel":
        return session.run_kernel()
    return await session.run_actors()


def load_resume(run_path: Path) -> checkpoint.Loaded:
    loaded = checkpoint.load(run_path)
    for problem in loaded.problems:
        logger.error("checkpoint alert: {} - resuming from {}", problem, loaded.path.name)
    return loaded


__all__ = ["Parts", "Session", "SessionResult", "Timeline", "run_session"]
