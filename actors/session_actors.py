"""The actors runtime: one Trio nursery of actors over bounded channels, and the recorder's
unbounded inbox (`EventSink`: recording never blocks a step; see actors/session.py).

```
feed --(arrival, MarketEvent)--> broker --ask: AccountUpdate | MarketView--> risk gate --ask--> strategies
                                   ^                                              |
                                   +------- orders, risk commands (drained) ------+
broker --StopSession--> watchdog (owns the session scope)       every actor --Event--> recorder
```
"""

from __future__ import annotations

import contextlib
import math
import sys
import traceback
from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

import attrs
import trio
from loguru import logger

from actors.broker.actor import run_broker
from actors.broker.paper import EPS
from actors.broker.portfolio import Portfolio
from actors.clock import SessionClock
from actors.console import ConsoleSink
from actors.feeds.candles import run_timed_feed
from actors.feeds.history import DataError
from actors.feeds.mock import FeedHealth
from actors.feeds.stamp import Stamped, Stamper
from actors.kernel import Coverage
from actors.lock import SessionLock
from actors.mailbox import Answerer, Asker, open_mailbox
from actors.progress import Progress
from actors.recording.actor import EventSink, run_recorder
from actors.recording.recorder import Recorder
from actors.recording.storage import noted_fault
from actors.risk.actor import StrategyLink, orders_capacity, run_risk
from actors.strategies.actor import run_strategy
from actors.watchdog import SessionSignals, Stopper, run_watchdog
from protocols.messages import (
    AccountSnapshot,
    AccountUpdate,
    BrokerInput,
    Candle,
    Event,
    MarketEvent,
    MarketView,
    OrderIntent,
    StopSession,
)
from protocols.records import iso

if TYPE_CHECKING:
    from actors.config import Config
    from actors.plan import Plan
    from actors.recording.webhook import Webhook
    from actors.session import Parts, Session, SessionResult, Timeline


# A backtest's or replay's start time and timed inputs (None: a live session), read once.
Inputs = tuple[float, Iterator[tuple[float, MarketEvent]]] | None


@attrs.define
class _Latest:
    """The account the broker published after its last step (the watchdog's progress display)."""

    account: AccountSnapshot | None = None
    step_ts: float = -math.inf
    console: ConsoleSink | None = None  # the recorder's figures (stop, target, trades) for the panel
    # a session resumed past its planned end, holding a position: set once every symbol it holds
    # has a quote newer than the resume (`fresh_check`), so that it closes at the market's price
    fresh: trio.Event | None = None
    fresh_check: Callable[[], bool] | None = None

    def update(self, account: AccountSnapshot) -> None:
        self.account = account
        self.step_ts = account.ts
        fresh, check = self.fresh, self.fresh_check
        if fresh is not None and check is not None and not fresh.is_set() and check():
            fresh.set()


async def run_actors(session: Session) -> SessionResult:
    """The session on the actors runtime. Its signals are listened to for its whole life, from
    before its run folder is opened until its report is written (actors/watchdog.py
    `SessionSignals`)."""
    found = session.inputs()
    clock = SessionClock(wall_start=found[0] if found is not None else None)
    stopper = Stopper(session.config.session.flatten_timeout_s)
    with SessionSignals(stopper, clock.now) if session.handle_signals else contextlib.nullcontext():
        return await _session(session, clock, stopper, found)


async def _session(session: Session, clock: SessionClock, stopper: Stopper, found: Inputs) -> SessionResult:
    from actors.session import (
        SessionResult,
        Timeline,
        closing_events,
        end_reason,
        load_resume,
        resumed_event,
        started_event,
    )

    config, plan = session.config, session.plan
    resume_state: dict[str, Any] | None = None
    if plan.resume is not None:
        run_path = plan.resume
        loaded = load_resume(run_path)
        resume_state = loaded.state
        timeline = Timeline(**{**resume_state["session"], "resumed_seq": resume_state["seq"]})
        asked_s = config.session.duration_min * 60
        if plan.mode == "live" and abs(asked_s - timeline.duration_s) > 1e-6:
            # (found by an audit: a restart with a longer --duration stopped at the old end, no word)
            logger.warning(
                "the resumed session keeps its planned duration, {:g} min (its end {}): "
                "session.duration_min = {:g} is not used (start a new session with --fresh for another)",
                timeline.duration_s / 60,
                iso(timeline.end_ts),
                config.session.duration_min,
            )
        parts = session.parts(timeline)
        parts.restore(resume_state["parts"], clock.now())
        parts.broker.schedule_heartbeats(clock.now())
    else:
        timeline = session.timeline(clock.now())
        parts = session.parts(timeline)
        run_path = session.new_run_folder(clock.now())

    resumed_at: float | None = None
    # a resumed session goes on with the data source it traded on (a fallback to the mock source
    # included: `_feed`)
    health = FeedHealth(data_source=timeline.data_source if resume_state else config.feed.source)
    # stop commands to the watchdog: the broker's (the gate's StopSession), the feed's, the recorder's
    stops_tx, stops_rx = trio.open_memory_channel[StopSession](16)
    with SessionLock(run_path):
        webhook = _webhook(session)
        recorder = Recorder(
            run_path,
            resume_seq=timeline.resumed_seq if resume_state else None,
            alerts=config.alerts,
            notify=webhook.notify if webhook is not None else None,
            reserve_mb=config.session.disk_reserve_mb,
        )
        recorder.console.echo = session.console
        if resume_state is not None:
            # said once its checkpoint and the events it follows are read (found by a docs audit:
            # said before them, a start refused for either printed it, then the error's "Nothing
            # was started")
            logger.warning("resuming unfinished session {} (start a new one with --fresh)", run_path.name)
        if resume_state is not None and recorder.fallback_source is not None:
            # its events say it fell back (a checkpoint from before the data source was kept in it)
            health.data_source = recorder.fallback_source
        sink = EventSink()
        async with trio.open_nursery() as root:
            if webhook is not None:
                await root.start(webhook.run)
            await root.start(
                _record, recorder, sink, webhook, config.observability.webhook_timeout_s, stops_tx.clone()
            )
            with sink:
                if resume_state is None:
                    sink.send_nowait(started_event(config, run_path.name, timeline))
                else:
                    now = resumed_at = clock.now()
                    parts.skip_ids(recorder.discarded_ids)
                    sink.send_nowait(
                        resumed_event(now, recorder, parts.broker, loaded.path.name, loaded.problems)
                    )
                    if recorder.previous_fault is not None:  # the previous process stopped on it
                        sink.send_nowait(
                            Event(now, "error", noted_fault(recorder.previous_fault, "the resume"))
                        )
                    for event in parts.broker.abandon_in_flight(now):
                        sink.send_nowait(event)
                latest = _Latest(console=recorder.console)
                stop_again: StopSession | None = None
                # the stop a resumed session was given before this process (its risk gate's, or its
                # planned end passed while it was down): the session's reason whatever comes while
                # it waits for the market's next quote (`decided`)
                decided: tuple[str, str] | None = None
                # a risk stop the process died in keeps its reason, even restarted after the planned
                # end (found by an audit: a max_trades stop was then reported as `duration`)
                if plan.mode == "live" and resumed_at is not None and parts.gate.stop_reason is not None:
                    stop_again = _stop_again(parts, latest, resumed_at, sink)
                    decided = (stop_again.reason, stop_again.detail)
                elif (
                    plan.mode == "live"
                    and resumed_at is not None
                    and _limits_given_now(parts, resumed_at, sink)
                ):
                    # a limit lowered for the resume, reached already: it stops at once the same way
                    stop_again = _stop_again(parts, latest, resumed_at, sink, again=False)
                    decided = (stop_again.reason, stop_again.detail)
                elif plan.mode == "live" and resumed_at is not None and resumed_at >= timeline.end_ts:
                    _close_at_the_next_quote(parts, latest, resumed_at, config.feed.connect_timeout_s, sink)
                    decided = ("duration", f"{timeline.duration_s:g} s reached")
                if plan.mode == "live":  # at once: a crash from here on resumes this session
                    timeline.data_source = health.data_source
                    sink.checkpoint({"session": attrs.asdict(timeline), "parts": parts.state()})
                status = await _supervise(
                    session,
                    clock,
                    parts,
                    timeline,
                    stopper,
                    sink,
                    health,
                    latest,
                    found,
                    stops_tx,
                    stops_rx,
                    stop_again,
                )
                if plan.mode == "live":
                    timeline.data_source = health.data_source
                # the stop's time; never before this process resumed (restarted after the planned
                # end, the duration stop is at that end, and its closing events would precede
                # `session.resumed`)
                ended = max(
                    t for t in (stopper.ts, latest.step_ts, timeline.started_ts, resumed_at) if t is not None
                )
                if status == "error" or stopper.ts is None:
                    ended = max(ended, clock.now())
                reason, detail = stopper.reason or "feed_ended", stopper.detail
                if decided is not None and reason in ("signal", "kill_switch") and reason != decided[0]:
                    # found by an audit: a SIGTERM (or the kill switch) while the resumed session
                    # waited for a quote to close at (or taken as it started) ended the wait, and
                    # the report said `signal` for a session stopped on max_loss before its crash
                    logger.info(
                        "{} ({}) ended the wait for the market's next quote: the session stops for {}",
                        reason,
                        detail,
                        decided[0],
                    )
                    reason, detail = decided
                if plan.mode == "replay" and reason == "duration":
                    reason = end_reason(plan)
                if reason == "storage":
                    status = "error"
                # flatten-on-exit: synchronous on the broker component (it cannot hang or be
                # cancelled half-way), through its normal fill path
                for event in closing_events(
                    parts.broker,
                    timeline,
                    ended,
                    status,
                    reason,
                    detail,
                    health.down_s(ended),
                    session.data_gaps(ended),
                    session.data_skipped(),
                    parts.flatten_id,
                ):
                    sink.send_nowait(event)
    assert recorder.report is not None
    return SessionResult(run_path, recorder.report, recorder.console, recorder.written, recorder.storage)


def _limits_given_now(parts: Parts, resumed_at: float, sink: EventSink) -> bool:
    """The risk limits given for the resume, on the restored counts and account
    (`RiskGate.limits_reached`): its events recorded (a breaker's trip), its commands to the broker
    (a halt, the watch under the limits given now); whether the gate stopped the session."""
    for output in parts.gate.limits_reached(resumed_at, parts.broker.equity):
        if isinstance(output, Event):
            sink.send_nowait(output)
        elif not isinstance(output, StopSession):  # (a stop: `_stop_again` gives it to the broker)
            for event in parts.broker.handle(output, resumed_at):
                sink.send_nowait(event)
    if parts.gate.stop_reason is None and parts.gate.flatten_due is not None:
        logger.warning(
            "the session has reached a risk limit given for its resume: the breaker tripped, entries "
            "are halted and its position is closed at the market's next quote"
        )
    return parts.gate.stop_reason is not None


def _stop_again(
    parts: Parts, latest: _Latest, resumed_at: float, sink: EventSink, *, again: bool = True
) -> StopSession:
    """A session whose risk gate had stopped it (max_loss, max_trades, a breaker's stop, ...)
    before the process died, before its flatten: it stops again at once, for that reason (found
    by a review: it resumed trading to its planned end, its loss limit no longer checked, and
    said `duration`); with a position it first waits for the market's next quote of each symbol
    it holds (at most `feed.connect_timeout_s`), as a session restarted after its planned end
    does. The broker stops at once: no entry reaches the market, none working fills. `again`
    False: the gate stopped at the resume itself, on a limit given now that the session had
    reached already (`RiskGate.limits_reached`)."""
    gate = parts.gate
    assert gate.stop_reason is not None
    reason, detail = gate.stop_reason, gate.stop_detail
    for event in parts.broker.handle(StopSession(resumed_at, reason, detail), resumed_at):
        sink.send_nowait(event)
    closing = ", closing its position at the market's next quote" if parts.broker.open_positions() else ""
    if again:
        logger.warning(
            "the session had stopped ({}: {}) when its process died: stopping again at once{}",
            reason,
            detail,
            closing,
        )
    else:
        logger.warning(
            "the session has reached a risk limit given for its resume ({}: {}): stopping at once{}",
            reason,
            detail,
            closing,
        )
    if parts.broker.open_positions():
        _wait_for_fresh_quotes(parts, latest, resumed_at)
    said = "stopped again at the resume" if again else "a limit given at the resume"
    return StopSession(resumed_at, reason, f"{detail} ({said})")


def _wait_for_fresh_quotes(parts: Parts, latest: _Latest, resumed_at: float) -> None:
    """Entries refused; `latest.fresh` is set once every symbol held has a quote after the resume."""
    broker = parts.broker
    legs = list(broker.legs.values()) if isinstance(broker, Portfolio) else [broker]

    def fresh() -> bool:
        return all(
            leg.last_tick is not None and leg.last_tick.ts > resumed_at
            for leg in legs
            if abs(leg.position_qty) > EPS
        )

    latest.fresh, latest.fresh_check = trio.Event(), fresh


def _close_at_the_next_quote(
    parts: Parts, latest: _Latest, resumed_at: float, wait_s: float, sink: EventSink
) -> None:
    """A session restarted after its planned end stops at once, but with a position it waits for
    the market's next quote of each symbol it holds (at most `wait_s`) and closes there, entries
    refused meanwhile (found by an audit: it closed at the quote of before the crash, a minute
    old and more). With no quote in time it closes at the last one it has (`stale_flatten`).
    The broker stops at once: a working entry is cancelled (found by an audit: a resting limit
    entry filled on the quote the session waited for)."""
    broker = parts.broker
    if not broker.open_positions():
        return
    stop = StopSession(resumed_at, "duration", "the planned end passed while it was down")
    for event in broker.handle(stop, resumed_at):
        sink.send_nowait(event)
    _wait_for_fresh_quotes(parts, latest, resumed_at)
    logger.info(
        "the planned end passed while the session was down: closing its position at the market's "
        "next quote (waiting at most {:g} s)",
        wait_s,
    )


def _leaves(group: BaseException) -> list[BaseException]:
    """The exceptions an (arbitrarily nested) exception group holds."""
    if isinstance(group, BaseExceptionGroup):
        return [leaf for e in group.exceptions for leaf in _leaves(e)]
    return [group]


def _said_plainly(exc: BaseException) -> bool:
    """An error whose message says it all (no traceback needed)."""
    if isinstance(exc, DataError):  # a backtest's data file that ends early (a gzip cut short)
        return True
    feed = sys.modules.get("actors.feeds.bitunix")  # loaded when a live feed could raise it
    return feed is not None and isinstance(exc, feed.UnknownSymbol)


def _webhook(session: Session) -> Webhook | None:
    """The alert webhook of a live session with `observability.webhook_url` set (else None)."""
    if session.plan.mode != "live" or not session.config.observability.webhook_url:
        return None
    from actors.recording.webhook import Webhook  # httpx: only when there is a webhook

    return Webhook.from_config(session.config.observability)


async def _record(
    recorder: Recorder,
    sink: EventSink,
    webhook: Webhook | None,
    grace_s: float,
    stops: trio.MemorySendChannel[StopSession],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The recorder (its storage stops to the watchdog on `stops`); once it has finished (no more
    alerts), the webhook gets `grace_s` to send what is still queued."""
    try:
        await run_recorder(recorder, sink, stops=stops, task_status=task_status)
    finally:
        if webhook is not None:
            webhook.close(grace_s)


async def _supervise(
    session: Session,
    clock: SessionClock,
    parts: Parts,
    timeline: Timeline,
    stopper: Stopper,
    sink: EventSink,
    health: FeedHealth,
    latest: _Latest,
    found: Inputs,
    stops_tx: trio.MemorySendChannel[StopSession],
    stops_rx: trio.MemoryReceiveChannel[StopSession],
    stop_again: StopSession | None = None,
) -> str:
    """Run the actors until the session is stopped; returns the status ("ok" or "error"). The
    actors get `session.flatten_timeout_s` after the stop to finish (`Stopper.wind_down`).
    `stop_again`: a resumed session's stop, given at once (`_stop_again`)."""
    config, plan = session.config, session.plan
    mode = "off" if plan.mode != "live" else (session.progress_mode or config.observability.progress)
    status = "ok"
    with Progress(mode) as progress:
        try:
            with stopper.wind_down:
                await _run(
                    session,
                    clock,
                    parts,
                    timeline,
                    stopper,
                    sink,
                    health,
                    latest,
                    progress,
                    found,
                    stops_tx,
                    stops_rx,
                    stop_again,
                )
            if stopper.wind_down.cancelled_caught:
                logger.warning(
                    "the actors had not finished {:g} s after the stop (session.flatten_timeout_s): "
                    "flattening without them",
                    stopper.wind_down_s,
                )
        except* Exception as group:
            leaves = _leaves(group)
            if all(_said_plainly(e) for e in leaves):
                # an error the session ends with by design (the exchange does not trade a symbol):
                # one line naming it, no traceback (found by an audit: 45 lines of nested groups)
                stopper.stop("error", "; ".join(str(e) for e in leaves), clock.now())
                logger.error("session failed: {}", stopper.detail)
            else:
                stopper.stop("error", "; ".join(f"{type(e).__name__}: {e}" for e in leaves), clock.now())
                logger.bind(lines=True).error(
                    "session failed:\n{}", "".join(traceback.format_exception(group))
                )
            sink.send_nowait(Event(clock.now(), "error", {"where": "session", "message": stopper.detail}))
            status = "error"
    return status


async def _run(
    session: Session,
    clock: SessionClock,
    parts: Parts,
    timeline: Timeline,
    stopper: Stopper,
    sink: EventSink,
    health: FeedHealth,
    latest: _Latest,
    progress: Progress,
    found: Inputs,
    stops_tx: trio.MemorySendChannel[StopSession],
    stops_rx: trio.MemoryReceiveChannel[StopSession],
    stop_again: StopSession | None = None,
) -> None:
    config, plan = session.config, session.plan
    live = plan.mode == "live"
    market_tx, market_rx = trio.open_memory_channel[Stamped](0)
    to_broker_tx, to_broker_rx = trio.open_memory_channel[BrokerInput](
        orders_capacity(config.risk.max_orders_per_minute)
    )
    risk_asker: Asker[AccountUpdate | MarketView, None]
    risk_answerer: Answerer[AccountUpdate | MarketView, None]
    risk_asker, risk_answerer = open_mailbox()
    links: list[StrategyLink] = []
    strategy_inboxes = []
    for strategy in parts.strategies:
        asker: Asker[MarketView, list[OrderIntent]]
        answerer: Answerer[MarketView, list[OrderIntent]]
        asker, answerer = open_mailbox()
        links.append(
            StrategyLink(
                strategy.subscribes, asker, strategy.symbol, parts.strategy_intervals.get(strategy.id, 0.0)
            )
        )
        strategy_inboxes.append((strategy, answerer))
    published = tuple({kind for strategy in parts.strategies for kind in strategy.subscribes})
    if parts.intervals:  # the longer candles are built from the session's: the broker must see them
        published = tuple({*published, Candle})
    after_step = (
        _checkpointer(parts, timeline, sink, health, config.state.checkpoint_interval_s) if live else None
    )

    async with trio.open_nursery() as actors:
        for strategy, answerer in strategy_inboxes:
            await actors.start(run_strategy, strategy, answerer, sink)
        await actors.start(run_risk, parts.gate, risk_answerer, links, to_broker_tx, sink)
        await actors.start(
            partial(
                run_broker,
                parts.broker,
                market_rx,
                risk_asker,
                to_broker_rx,
                sink,
                clock,
                stops_tx.clone(),
                published=published,
                # live sessions and replays: what they acted on, to market.jsonl
                record_market=live or plan.mode == "replay",
                after_step=after_step,
                on_snapshot=latest.update,
                intervals=parts.intervals,
                # a backtest's inputs end it: the broker asks for the stop once it has worked them
                input_end="data_end" if plan.mode == "backtest" and session.feed is None else None,
                # and its heartbeats are only at times they cover (none in a gap in the data)
                coverage=Coverage(config.interval_s, timeline.started_ts)
                if plan.mode == "backtest" and session.feed is None
                else None,
            )
        )
        with market_tx, stops_tx, stopper.scope:
            async with trio.open_nursery() as front:
                await front.start(
                    partial(
                        run_watchdog,
                        clock=clock,
                        started_ts=timeline.started_ts,
                        duration_s=timeline.duration_s + _replay_grace(plan),
                        kill_switch=config.session.kill_switch if live else None,
                        stopper=stopper,
                        stops_rx=stops_rx,
                        hold_end=latest.fresh,
                        hold_s=session.config.feed.connect_timeout_s,
                        stop_at_once=stop_again,
                        latest=lambda: latest.account,
                        progress=progress,
                        console=latest.console,
                    )
                )
                await front.start(
                    _feed(session, clock, parts, sink, health, found), market_tx.clone(), stops_tx.clone()
                )
                market_tx.close()  # the feed's is the only one: its end is the broker's end of input


# A replay of a session that its data stopped (a risk stop in a broker step, at the instant it
# ended) reaches that stop itself; the watchdog's end, the fallback should it not, comes this much
# later, so that it never races the inputs and timers of that very instant (found by an audit:
# the replay ended on `duration`, or on an error, in 39 of 39 such sessions).
REPLAY_GRACE_S = 0.001


def _replay_grace(plan: Plan) -> float:
    from actors.session import DATA_DRIVEN_STOPS

    if plan.recording is not None and plan.recording.stop_reason in DATA_DRIVEN_STOPS:
        return REPLAY_GRACE_S
    return 0.0


def _feed(
    session: Session,
    clock: SessionClock,
    parts: Parts,
    sink: EventSink,
    health: FeedHealth,
    found: Inputs,
) -> Any:
    """The feed actor of this session: the stand-in a test gave, the timed inputs of a backtest or
    replay, or the live feed (Bitunix, or the mock source)."""
    if session.feed is not None:
        return session.feed
    if found is not None:
        _, inputs = found
        end = "data_end" if session.plan.mode == "backtest" else None
        return partial(run_timed_feed, inputs, clock, end_reason=end)
    config = _resumed_feed_config(session.config, health, parts) if session.plan.resume else session.config

    async def live(
        market_tx: trio.MemorySendChannel[Stamped],
        stops_tx: trio.MemorySendChannel[StopSession],
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        # imported here: the live feed's HTTP and WebSocket clients are not needed otherwise
        from actors.feeds.bitunix import run_live_feed

        assert parts.walk is not None  # live sessions have one
        broker = parts.broker
        legs = list(broker.legs.values()) if isinstance(broker, Portfolio) else [broker]
        with stops_tx:
            await run_live_feed(
                config,
                clock,
                health,
                parts.walk,
                [Stamper(market_tx, clock)],  # type: ignore[list-item]
                sink.clone(),
                # a resumed session's last candles (its checkpoint's; none at a start)
                handed_out={leg.symbol: leg.candle_open_ts for leg in legs if leg.candle_open_ts is not None},
                task_status=task_status,
            )

    return live


def _resumed_feed_config(config: Config, health: FeedHealth, parts: Parts) -> Config:
    """The feed of a resumed session goes on with the market the session traded on (found by an
    audit: a session that had fallen back to the mock source at 60,000 resumed on the exchange's
    market at 90,000, and its mock-made short was liquidated at once, -299 USDT, the report saying
    `bitunix`; the other way round, one that had traded the exchange's prices fell back to the
    mock's, another market under the same position). Fallen back: the mock source again (its walk
    restored), the exchange not asked. On the exchange with a price seen: the exchange only, no
    fallback (stale until its data comes: entries refused, exits on the last good prices)."""
    if config.feed.source != "bitunix":
        return config
    if health.data_source.startswith("mock"):
        logger.warning(
            "the session had fallen back to the mock source ({}): resuming it on the mock source",
            health.data_source,
        )
        return attrs.evolve(config, feed=attrs.evolve(config.feed, source="mock"))
    broker = parts.broker
    legs = list(broker.legs.values()) if isinstance(broker, Portfolio) else [broker]
    if config.feed.fallback != "none" and any(leg.last_tick is not None for leg in legs):
        return attrs.evolve(config, feed=attrs.evolve(config.feed, fallback="none"))
    return config


def _checkpointer(
    parts: Parts, timeline: Timeline, sink: EventSink, health: FeedHealth, interval_s: float
) -> Any:
    """After each step of a live session: a checkpoint when an order, fill or position changed
    since the last one, or at least every `interval_s`. The state is taken right there, between
    two steps, so it matches exactly the events sent before it; with it the data source the
    session trades on (`health`: the mock source after a fallback), which a resume keeps."""
    next_at = -math.inf

    def after_step(now: float) -> None:
        nonlocal next_at
        if sink.critical or now >= next_at:
            timeline.data_source = health.data_source
            sink.checkpoint({"session": attrs.asdict(timeline), "parts": parts.state()})
            next_at = now + interval_s

    return after_step
