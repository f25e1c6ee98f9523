"""The session: one root nursery, the actors wired by bounded channels, stopping and flattening.

```
root nursery
  recorder                           (outlives the session scope: it writes the final report)
  session scope (watchdog cancels it with a reason)
    actors nursery: watchdog, broker, risk, strategy, feed
  flatten-on-exit, shielded with a timeout, through the broker's normal fill path
  session.stopped -> recorder closes -> final_report.json
```
"""

from __future__ import annotations

import random
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import trio
from loguru import logger

from actors import __version__
from actors.broker import PaperAccount, run_broker
from actors.clock import SessionClock
from actors.config import Config, to_dict
from actors.feed import run_mock_feed
from actors.progress import Progress
from actors.recorder import EventSink, Recorder, create_run_folder, run_recorder
from actors.risk import RiskGate, run_risk
from actors.strategy import run_strategy
from actors.watchdog import Stopper, heartbeat_fields, run_watchdog
from protocols.messages import Event, EventSender, MarketEvent, Order, OrderIntent


@attrs.frozen
class SessionResult:
    run_path: Path
    report: dict[str, Any]

    @property
    def exit_code(self) -> int:
        return 1 if self.report["status"] == "error" else 0


def new_run_id(now: float, seed: int, run_dir: Path) -> str:
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
    run_id = f"{stamp}-s{seed}"
    n = 1
    while (run_dir / run_id).exists():
        n += 1
        run_id = f"{stamp}-s{seed}-{n}"
    return run_id


async def run_session(
    config: Config, *, handle_signals: bool = True, progress_mode: str | None = None
) -> SessionResult:
    """Run one session to its end; always returns with the report written (status ok or error)."""
    clock = SessionClock()
    started_ts = clock.now()
    rng = random.Random(config.session.seed)
    run_dir = Path(config.session.run_dir)
    run_id = new_run_id(started_ts, config.session.seed, run_dir)
    run_path = create_run_folder(run_dir, run_id)
    recorder = Recorder(run_path)
    account = PaperAccount(
        config.broker.starting_equity, config.broker.taker_fee_bps, config.broker.maker_fee_bps
    )
    stopper = Stopper()
    duration_s = config.session.duration_min * 60
    data_source = config.feed.source
    logger.info(
        "session {} starting: {} for {:g} min, run folder {}",
        run_id,
        config.session.symbol,
        config.session.duration_min,
        run_path,
    )

    events_tx = EventSink()
    async with trio.open_nursery() as root:
        await root.start(run_recorder, recorder, events_tx)
        with events_tx:
            await events_tx.send(
                Event(
                    started_ts,
                    "session.started",
                    {
                        "run_id": run_id,
                        "symbol": config.session.symbol,
                        "interval": config.session.interval,
                        "data_source": data_source,
                        "seed": config.session.seed,
                        "planned_duration_s": duration_s,
                        "starting_equity": config.broker.starting_equity,
                        "config": to_dict(config),
                        "version": __version__,
                    },
                )
            )
            status = "ok"
            with Progress(progress_mode or config.observability.progress) as progress:
                try:
                    with stopper.scope:
                        await _run_actors(
                            config,
                            clock,
                            rng,
                            started_ts,
                            duration_s,
                            account,
                            stopper,
                            events_tx,
                            progress,
                            handle_signals,
                        )
                except* Exception as group:
                    status = "error"
                    stopper.stop("error", "; ".join(repr(e) for e in group.exceptions))
                    logger.error("session failed:\n{}", "".join(traceback.format_exception(group)))
                    await events_tx.send(
                        Event(clock.now(), "error", {"where": "session", "message": stopper.detail})
                    )
            if stopper.reason is None:
                stopper.reason = "feed_ended"
            await _flatten_and_stop(
                config, clock, account, events_tx, started_ts, status, stopper, data_source
            )
    assert recorder.report is not None
    return SessionResult(run_path, recorder.report)


async def _run_actors(
    config: Config,
    clock: SessionClock,
    rng: random.Random,
    started_ts: float,
    duration_s: float,
    account: PaperAccount,
    stopper: Stopper,
    events_tx: EventSender,
    progress: Progress,
    handle_signals: bool,
) -> None:
    now = clock.now
    strategy_market_tx, strategy_market_rx = trio.open_memory_channel[MarketEvent](0)
    broker_market_tx, broker_market_rx = trio.open_memory_channel[MarketEvent](0)
    intents_tx, intents_rx = trio.open_memory_channel[OrderIntent](0)
    orders_tx, orders_rx = trio.open_memory_channel[Order](0)
    gate = RiskGate(config.risk, account)
    async with trio.open_nursery() as actors:
        await actors.start(
            lambda task_status: run_watchdog(
                clock=clock,
                started_ts=started_ts,
                duration_s=duration_s,
                kill_switch=config.session.kill_switch,
                heartbeat_s=config.observability.heartbeat_s,
                stopper=stopper,
                view=account,
                events_tx=events_tx.clone(),
                progress=progress,
                handle_signals=handle_signals,
                task_status=task_status,
            )
        )
        await actors.start(run_broker, account, broker_market_rx, orders_rx, events_tx.clone(), now)
        await actors.start(run_risk, gate, intents_rx, orders_tx, events_tx.clone(), now)
        await actors.start(
            run_strategy, config.strategy, account, strategy_market_rx, intents_tx, events_tx.clone(), now
        )
        await actors.start(
            run_mock_feed, config.feed, config.interval_s, clock, rng, [broker_market_tx, strategy_market_tx]
        )


async def _flatten_and_stop(
    config: Config,
    clock: SessionClock,
    account: PaperAccount,
    events_tx: EventSender,
    started_ts: float,
    status: str,
    stopper: Stopper,
    data_source: str,
) -> None:
    """Close the position through the broker's normal fill path, then record the stop."""
    with trio.move_on_after(config.session.flatten_timeout_s, shield=True) as scope:
        ts = clock.now()
        order = account.flatten_order(ts, "flatten-1")
        if order is not None:
            await events_tx.send(
                Event(
                    ts,
                    "order.submitted",
                    {
                        "order_id": order.id,
                        "side": order.side,
                        "qty": order.qty,
                        "type": "market",
                        "requested_price": order.decision_price,
                        "reduce_only": True,
                        "reason": order.reason,
                    },
                )
            )
            for event in account.execute_market(order, ts):
                await events_tx.send(event)
        ended = clock.now()
        # a last metrics row with the flat, final account
        await events_tx.send(Event(ended, "heartbeat", heartbeat_fields(account, ended - started_ts)))
        await events_tx.send(
            Event(
                ended,
                "session.stopped",
                {
                    "status": status,
                    "stop_reason": stopper.reason,
                    "detail": stopper.detail,
                    "elapsed_s": round(ended - started_ts, 3),
                    "data_source": data_source,
                    "ending_equity": round(account.equity, 6),
                    "unrealized_pnl": round(account.unrealized_pnl, 6),
                    "max_drawdown_pct": round(account.max_drawdown_pct, 4),
                    "open_positions": account.open_positions(),
                },
            )
        )
    if scope.cancelled_caught:
        logger.error("flatten-on-exit timed out after {} s", config.session.flatten_timeout_s)
