"""The session: one root nursery, the actors wired by bounded channels, stopping and flattening.

```
root nursery
  recorder                           (outlives the session scope: it writes the final report)
  session scope (watchdog cancels it with a reason)
    actors nursery: watchdog, broker, risk, strategy, feed
  flatten-on-exit, shielded with a timeout, through the broker's normal fill path
  session.stopped -> recorder closes -> final_report.json
```

A session is live (new or resumed from its checkpoint), a replay of a recorded run, or a backtest
over a candle file; the last two run on the data's clock (see actors/feed_history.py).
"""

from __future__ import annotations

import math
import os
import random
import traceback
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import trio
from loguru import logger

from actors import __version__
from actors.broker.paper import PaperAccount, run_broker
from actors.clock import SessionClock
from actors.config import Config, to_dict
from actors.feeds.history import read_candles_csv, read_market_log, run_candle_feed, run_replay_feed
from actors.feeds.mock import FeedHealth, RandomWalk
from actors.lock import SessionLock
from actors.plan import Plan
from actors.progress import Progress
from actors.recording import checkpoint
from actors.recording.recorder import MARKET_KIND, EventSink, Recorder, create_run_folder, run_recorder
from actors.risk.gate import RiskGate, run_risk
from actors.strategies.ema_cross import EmaCross, run_strategy
from actors.watchdog import Stopper, heartbeat_fields, run_watchdog
from protocols.messages import (
    Cancel,
    Candle,
    Event,
    EventSender,
    FeedMessage,
    Order,
    OrderIntent,
)

# Stop reasons that come from the data (and so must come out the same in a replay).
DATA_DRIVEN_STOPS = frozenset({"max_loss", "max_trades", "max_losses", "breaker", "data_end"})
# Backtest market channels hold one candle's events (open quote, close quote, candle).
BACKTEST_MARKET_BUFFER = 3
# Under virtual time (replay, backtest) the recorder is woken once this many events wait.
VIRTUAL_TIME_RECORDER_BATCH = 256
# Backtests write one metrics row (a point of the equity curve) per this many candles.
BACKTEST_HEARTBEAT_CANDLES = 60


@attrs.frozen
class SessionResult:
    run_path: Path
    report: dict[str, Any]

    @property
    def exit_code(self) -> int:
        return 1 if self.report["status"] == "error" else 0


def new_run_id(now: float, seed: int, run_dir: Path, prefix: str = "") -> str:
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
    run_id = f"{prefix}{stamp}-s{seed}"
    n = 1
    while (run_dir / run_id).exists():
        n += 1
        run_id = f"{prefix}{stamp}-s{seed}-{n}"
    return run_id


@attrs.define
class Parts:
    """Every stateful part of a session: what a checkpoint holds and a resume restores."""

    account: PaperAccount
    gate: RiskGate
    strategy: EmaCross
    walk: RandomWalk
    rngs: dict[str, random.Random]

    def snapshot(self) -> dict[str, Any]:
        return {
            "account": self.account.snapshot(),
            "risk": self.gate.snapshot(),
            "strategy": self.strategy.snapshot(),
            "feed": self.walk.snapshot(),
            "rngs": {name: _rng_state(rng) for name, rng in self.rngs.items()},
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.account.restore(state["account"])
        self.gate.restore(state["risk"])
        self.strategy.restore(state["strategy"])
        self.walk.restore(state["feed"])
        for name, rng_state in state["rngs"].items():
            self.rngs[name].setstate((rng_state[0], tuple(rng_state[1]), rng_state[2]))


def _rng_state(rng: random.Random) -> list[Any]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def build_parts(config: Config) -> Parts:
    """The session's one seeded generator hands each part its own stream, in a fixed order, so
    no part's draws depend on how the scheduler interleaves the others."""
    root = random.Random(config.session.seed)
    rngs = {name: random.Random(root.getrandbits(64)) for name in ("feed", "broker")}
    account = PaperAccount(config.broker, rngs["broker"])
    s = config.strategy
    return Parts(
        account=account,
        gate=RiskGate(config.risk, account),
        strategy=EmaCross(s.fast_period, s.slow_period, s.history),
        walk=RandomWalk(config.feed, rngs["feed"]),
        rngs=rngs,
    )


@attrs.define
class Timeline:
    """When the session started and must end, on the session clock, and what it reports."""

    started_ts: float
    duration_s: float
    data_source: str
    resumed_seq: int = 0  # the checkpoint's event seq when resumed

    @property
    def end_ts(self) -> float:
        return self.started_ts + self.duration_s


async def run_session(
    config: Config,
    *,
    plan: Plan | None = None,
    handle_signals: bool = True,
    progress_mode: str | None = None,
) -> SessionResult:
    """Run one session to its end; always returns with the report written (status ok or error)."""
    plan = plan or Plan()
    parts = build_parts(config)
    stopper = Stopper()
    health = FeedHealth(data_source=config.feed.source)
    parts.gate.stop = stopper.stop
    parts.gate.health = health
    parts.account.defer_to_next_quote = plan.mode == "backtest" and config.broker.backtest_fill == "next_open"
    sink = EventSink(wake_after=VIRTUAL_TIME_RECORDER_BATCH if plan.virtual_time else 1)
    candles: Iterator[Candle] | None = None
    first_candle: Candle | None = None
    if plan.mode == "backtest":
        assert plan.data is not None
        candles = read_candles_csv(Path(plan.data), config.interval_s)
        first_candle = next(candles, None)
        if first_candle is None:
            raise ValueError(f"--data {plan.data}: no candles")
    if plan.mode == "replay":
        assert plan.recording is not None
        clock = SessionClock(wall_start=plan.recording.started_ts)
    elif first_candle is not None:
        clock = SessionClock(wall_start=first_candle.open_ts)
    else:
        clock = SessionClock()

    run_dir = Path(config.session.run_dir)
    resume_state: dict[str, Any] | None = None
    if plan.resume is not None:
        run_path = plan.resume
        loaded = checkpoint.load(run_path)
        for problem in loaded.problems:
            logger.error("checkpoint alert: {} - resuming from {}", problem, loaded.path.name)
        resume_state = loaded.state
        timeline = Timeline(**{**resume_state["session"], "resumed_seq": resume_state["seq"]})
        parts.restore(resume_state["parts"])
    else:
        prefix = {"live": "", "replay": "replay-", "backtest": "backtest-"}[plan.mode]
        run_path = create_run_folder(run_dir, new_run_id(clock.now(), config.session.seed, run_dir, prefix))
        timeline = Timeline(clock.now(), *_duration_and_source(config, plan))

    with SessionLock(run_path):
        recorder = Recorder(run_path, resume_seq=timeline.resumed_seq if resume_state else None)
        if not plan.virtual_time:
            recorder.checkpoint_state = lambda: {"session": attrs.asdict(timeline), "parts": parts.snapshot()}
            recorder.checkpoint_interval_s = config.state.checkpoint_interval_s
        async with trio.open_nursery() as root:
            await root.start(run_recorder, recorder, sink)
            with sink:
                if resume_state is None:
                    await sink.send(_started_event(config, run_path.name, timeline))
                else:
                    await sink.send(
                        _resumed_event(clock, recorder, parts.account, loaded.path.name, loaded.problems)
                    )
                status = await _supervise(
                    config,
                    plan,
                    clock,
                    parts,
                    timeline,
                    stopper,
                    sink,
                    candles,
                    first_candle,
                    handle_signals,
                    progress_mode,
                    health,
                )
                if plan.mode == "live":
                    timeline.data_source = health.data_source
                await _flatten_and_stop(config, clock, parts.account, sink, timeline, status, stopper, health)
    assert recorder.report is not None
    return SessionResult(run_path, recorder.report)


def _duration_and_source(config: Config, plan: Plan) -> tuple[float, str]:
    if plan.mode == "backtest":
        return math.inf, f"backtest: {plan.data}"
    if plan.mode == "replay":
        assert plan.recording is not None
        r = plan.recording
        return r.ended_ts - r.started_ts, f"replay of {r.run_id}"
    return config.session.duration_min * 60, config.feed.source


def _started_event(config: Config, run_id: str, timeline: Timeline) -> Event:
    return Event(
        timeline.started_ts,
        "session.started",
        {
            "run_id": run_id,
            "symbol": config.session.symbol,
            "interval": config.session.interval,
            "data_source": timeline.data_source,
            "seed": config.session.seed,
            "planned_duration_s": config.session.duration_min * 60
            if math.isfinite(timeline.duration_s)
            else None,
            "starting_equity": config.broker.starting_equity,
            "config": to_dict(config),
            "version": __version__,
            "pid": _pid(),
        },
    )


def _resumed_event(
    clock: SessionClock, recorder: Recorder, account: PaperAccount, generation: str, problems: list[str]
) -> Event:
    """Records the downtime and the restored account, so a reader can check it continues the log."""
    now = clock.now()
    return Event(
        now,
        "session.resumed",
        {
            "downtime_s": round(now - recorder.last_event_ts, 3) if recorder.last_event_ts else None,
            "checkpoint": generation,
            "checkpoint_problems": problems,
            "discarded_events": recorder.discarded_events,
            "position_qty": round(account.position_qty, 8),
            "realized_pnl": account.realized_pnl,
            "fees_paid": account.fees_paid,
            "pid": _pid(),
        },
    )


def _pid() -> int:
    return os.getpid()


async def _supervise(
    config: Config,
    plan: Plan,
    clock: SessionClock,
    parts: Parts,
    timeline: Timeline,
    stopper: Stopper,
    sink: EventSink,
    candles: Iterator[Candle] | None,
    first_candle: Candle | None,
    handle_signals: bool,
    progress_mode: str | None,
    health: FeedHealth,
) -> str:
    """Run the actors until the session is stopped; returns the status ("ok" or "error")."""
    mode = "off" if plan.virtual_time else (progress_mode or config.observability.progress)
    status = "ok"
    with Progress(mode) as progress:
        try:
            with stopper.scope:
                feed = _feed_starter(config, plan, clock, parts, stopper, sink, candles, first_candle, health)
                await _run_actors(
                    config, plan, clock, parts, timeline, stopper, sink, progress, handle_signals, feed
                )
        except* Exception as group:
            stopper.stop("error", "; ".join(repr(e) for e in group.exceptions))
            logger.error("session failed:\n{}", "".join(traceback.format_exception(group)))
            await sink.send(Event(clock.now(), "error", {"where": "session", "message": stopper.detail}))
            status = "error"
    if stopper.reason is None:
        stopper.reason = "feed_ended"
    return status


FeedStarter = Callable[
    [Sequence[trio.MemorySendChannel[FeedMessage]], trio.TaskStatus[None]], Awaitable[None]
]


def _feed_starter(
    config: Config,
    plan: Plan,
    clock: SessionClock,
    parts: Parts,
    stopper: Stopper,
    sink: EventSink,
    candles: Iterator[Candle] | None,
    first_candle: Candle | None,
    health: FeedHealth,
) -> FeedStarter:
    """The feed actor for this kind of session, as a function of its subscribers."""

    async def backtest(
        subscribers: Sequence[trio.MemorySendChannel[FeedMessage]], task_status: trio.TaskStatus[None]
    ) -> None:
        assert candles is not None and first_candle is not None
        await run_candle_feed(
            _chain(first_candle, candles),
            clock,
            subscribers,
            lookahead=parts.strategy.lookahead,
            task_status=task_status,
        )
        stopper.stop("data_end", "all candles delivered")

    async def replay(
        subscribers: Sequence[trio.MemorySendChannel[FeedMessage]], task_status: trio.TaskStatus[None]
    ) -> None:
        assert plan.recording is not None
        await run_replay_feed(
            read_market_log(plan.recording.market_path), clock, subscribers, task_status=task_status
        )

    async def live(
        subscribers: Sequence[trio.MemorySendChannel[FeedMessage]], task_status: trio.TaskStatus[None]
    ) -> None:
        # imported here: the live feed's HTTP and WebSocket clients cost a backtest 0.1 s to load
        from actors.feeds.bitunix import run_live_feed

        await run_live_feed(
            config, clock, health, parts.walk, subscribers, sink.clone(), task_status=task_status
        )

    return {"backtest": backtest, "replay": replay, "live": live}[plan.mode]


def _end_reason(plan: Plan) -> str:
    """A replay ends when its original did, for the original's reason unless the data caused it
    (then the replay reaches that reason itself)."""
    if plan.recording is not None and plan.recording.stop_reason not in DATA_DRIVEN_STOPS:
        return plan.recording.stop_reason
    return "duration"


def _chain(first: Candle, rest: Iterator[Candle]) -> Iterator[Candle]:
    yield first
    yield from rest


async def _tap(
    market_rx: trio.MemoryReceiveChannel[FeedMessage],
    sink: EventSender,
    now: Callable[[], float],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Records every market event the actors get, with its arrival time (market.jsonl, for replay)."""
    with market_rx, sink:
        task_status.started()
        async for event in market_rx:
            await sink.send(Event(now(), MARKET_KIND, {"event": event}))


async def _run_actors(
    config: Config,
    plan: Plan,
    clock: SessionClock,
    parts: Parts,
    timeline: Timeline,
    stopper: Stopper,
    sink: EventSink,
    progress: Progress,
    handle_signals: bool,
    feed: FeedStarter,
) -> None:
    now = clock.now
    # a backtest feed hands over a candle's events without a task switch each (measured: +40 %)
    market_buffer = BACKTEST_MARKET_BUFFER if plan.mode == "backtest" else 0
    strategy_market_tx, strategy_market_rx = trio.open_memory_channel[FeedMessage](market_buffer)
    broker_market_tx, broker_market_rx = trio.open_memory_channel[FeedMessage](market_buffer)
    intents_tx, intents_rx = trio.open_memory_channel[OrderIntent](0)
    orders_tx, orders_rx = trio.open_memory_channel[Order | Cancel](0)
    # the broker first: a backtest feed gives it the quotes and each candle, and the strategy the
    # candle only once the broker has finished with it (actors/feed_history.py)
    subscribers = [broker_market_tx, strategy_market_tx]
    heartbeat_s = config.observability.heartbeat_s
    if plan.mode == "backtest":  # an equity curve of hourly points for 1-minute data
        heartbeat_s = max(heartbeat_s, config.interval_s * BACKTEST_HEARTBEAT_CANDLES)
    async with trio.open_nursery() as actors:
        await actors.start(
            lambda task_status: run_watchdog(
                clock=clock,
                started_ts=timeline.started_ts,
                duration_s=timeline.duration_s,
                kill_switch=config.session.kill_switch,
                heartbeat_s=heartbeat_s,
                stopper=stopper,
                view=parts.account,
                events_tx=sink.clone(),
                progress=progress,
                handle_signals=handle_signals,
                virtual_time=plan.virtual_time,
                end_reason=_end_reason(plan),
                task_status=task_status,
            )
        )
        await actors.start(run_broker, parts.account, broker_market_rx, orders_rx, sink.clone(), clock)
        await actors.start(run_risk, parts.gate, intents_rx, orders_tx, sink.clone(), now)
        await actors.start(
            run_strategy,
            config.strategy,
            parts.account,
            strategy_market_rx,
            intents_tx,
            sink.clone(),
            now,
            parts.strategy,
        )
        if plan.mode == "live":
            tap_tx, tap_rx = trio.open_memory_channel[FeedMessage](0)
            await actors.start(_tap, tap_rx, sink.clone(), now)
            subscribers.append(tap_tx)
        await actors.start(feed, subscribers)


async def _flatten_and_stop(
    config: Config,
    clock: SessionClock,
    account: PaperAccount,
    sink: EventSender,
    timeline: Timeline,
    status: str,
    stopper: Stopper,
    health: FeedHealth,
) -> None:
    """Close the position through the broker's normal fill path, then record the stop."""
    with trio.move_on_after(config.session.flatten_timeout_s, shield=True) as scope:
        for event in account.flatten(clock.now(), "flatten_on_exit", "flatten-1"):
            await sink.send(event)
        ended = clock.now()
        # a last metrics row with the flat, final account
        await sink.send(Event(ended, "heartbeat", heartbeat_fields(account, ended - timeline.started_ts)))
        await sink.send(
            Event(
                ended,
                "session.stopped",
                {
                    "status": status,
                    "stop_reason": stopper.reason,
                    "detail": stopper.detail,
                    "elapsed_s": round(ended - timeline.started_ts, 3),
                    "data_source": timeline.data_source,
                    "feed_down_s": round(health.down_s(ended), 3),
                    "ending_equity": round(account.equity, 6),
                    "unrealized_pnl": round(account.unrealized_pnl, 6),
                    "max_drawdown_pct": round(account.max_drawdown_pct, 4),
                    "open_positions": account.open_positions(),
                },
            )
        )
    if scope.cancelled_caught:
        logger.error("flatten-on-exit timed out after {} s", config.session.flatten_timeout_s)
