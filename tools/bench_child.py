"""One benchmark measurement in a fresh process; prints one JSON line (the driver is tools/bench.py).

    python -m tools.bench_child backtest DATA RUN_DIR [--set KEY=VALUE ...] [--profile OUT.pstats]
    python -m tools.bench_child mock10 RUN_DIR [--trades-often]
    python -m tools.bench_child latency RUN_DIR [--seconds 60]
    python -m tools.bench_child floor DATA [--set KEY=VALUE ...]

- `backtest`: the CLI's own `main()` (`--mode backtest --data DATA`), in-process; `run_s` is the
  whole call: reading and parsing the CSV (streamed), every actor, the recorder writing the run
  folder and the final report. Candles are counted afterwards (not timed).
- `mock10`: a 10-minute mock session on config/live.toml (`--trades-often`: with 2-second candles
  and fast EMAs, so that it trades), on trio's MockClock (the same work as in real time, without
  the waiting): peak RSS.
- `latency`: a real-time mock session that trades often. The strategy's market channel and the
  broker's order channel are wrapped here (nothing in actors/ changes): for each order the gate
  approves, the time from the strategy receiving the tick that closed the candle it decided on, to
  the broker actor receiving the order (before the broker's simulated exchange latency).
- `floor`: not the pipeline. The same pure parts (EmaCross, RiskGate, PaperAccount, the recorder's
  line format) driven synchronously, one loop, no channels or tasks: what a batch backtest driver
  over the same classes could reach. Reports fills and equity so it can be checked too.

Peak RSS is the whole process's (interpreter, imports, data, run): VmHWM from /proc/self/status, since
`ru_maxrss` (what the peers report) also counts the parent's RSS at the fork.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import math
import os
import pstats
import resource
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parents[1]


def peak_rss() -> dict[str, float]:
    """This process's peak RSS: VmHWM (the high-water mark of its own address space). Not
    `ru_maxrss`, which on Linux keeps the parent's RSS at the fork that started this process."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        pass
    return {"peak_rss_mib": round(kib / 1024, 1), "peak_rss_mb": round(kib * 1024 / 1e6, 1)}


def emit(**fields: Any) -> None:
    fields.update(peak_rss())
    fields["pid"] = os.getpid()
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def _events(run_path: Path) -> Iterator[dict[str, Any]]:
    with (run_path / "events.jsonl").open(encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def count_candles(data: Path, interval_s: float = 60) -> dict[str, int]:
    from actors.feeds.history import read_candles_csv

    stats: dict[str, int] = {}
    for _ in read_candles_csv(data, interval_s, stats):
        pass
    return stats


# --- backtest: the CLI, in-process ------------------------------------------------------------------


def profile_summary(stats_path: Path, top: int = 20) -> dict[str, Any]:
    """Top functions by own time, and own time by where it is spent: time in a function that is
    not the project's or trio's (builtins, stdlib, attrs, json, sortedcontainers, ...) is charged to
    its callers, in proportion to the time each caller spent in it (cProfile's per-caller figures)."""
    st = pstats.Stats(str(stats_path))
    raw: dict[Any, Any] = st.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values())
    groups: dict[str, float] = {}

    def charge(key: Any, share: float, depth: int) -> None:
        group = _group(key[0])
        callers = raw[key][4] if key in raw else {}
        spent = sum(c[2] for c in callers.values())
        if group is None and depth < 8 and spent > 0 and share > 1e-7:
            for caller, c in callers.items():
                charge(caller, share * c[2] / spent, depth + 1)
            return
        name = group or "other"
        groups[name] = groups.get(name, 0.0) + share

    for key, v in raw.items():
        charge(key, v[2], 0)
    rows = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)
    return {
        "profiled_s": round(total, 3),
        "top": [
            {
                "function": f"{_short(file)}:{line}({func})",
                "ncalls": v[1],
                "tottime_s": round(v[2], 3),
                "cumtime_s": round(v[3], 3),
                "pct": round(v[2] / total * 100, 1),
            }
            for (file, line, func), v in rows[:top]
        ],
        "groups": {
            k: {"tottime_s": round(t, 3), "pct": round(t / total * 100, 1)}
            for k, t in sorted(groups.items(), key=lambda kv: kv[1], reverse=True)
        },
        "scheduler_batches": sum(v[1] for (_, _, fn), v in raw.items() if fn == "unrolled_run"),
        "task_switches": sum(
            v[1] for (f, _, fn), v in raw.items() if fn == "wait_task_rescheduled" and "trio" in f
        ),
    }


def _short(file: str) -> str:
    for marker in ("site-packages/", str(REPO) + "/", "/lib/python3.11/", "/lib/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def _group(file: str) -> str | None:
    """The part of the system a file belongs to; None: charge its time to its callers."""
    f = file.replace("\\", "/")
    if "/trio/_core/" in f:
        return "trio: scheduler, clock, cancel scopes (trio/_core)"
    if "/trio/" in f:
        return "trio: memory channels and the rest of trio"
    project = {
        "actors/broker/paper.py": "broker (actors/broker/)",
        "actors/risk/gate.py": "risk gate (actors/risk/)",
        "actors/strategies/ema_cross.py": "strategy (actors/strategies/)",
        "actors/recording/recorder.py": "recorder: events.jsonl, metrics, report",
        "protocols/records.py": "recorder: events.jsonl, metrics, report",
        "actors/feeds/history.py": "candle feed and CSV parse (actors/feeds/history.py)",
        "actors/watchdog.py": "watchdog, session",
        "actors/session.py": "watchdog, session",
        "actors/main.py": "start-up: CLI, config, imports",
        "actors/config.py": "start-up: CLI, config, imports",
    }
    for suffix, group in project.items():
        if f.endswith(suffix):
            return group
    if "loguru" in f:
        return "logging (loguru)"
    if "<frozen importlib" in f:
        return "start-up: CLI, config, imports"
    return None


def cmd_backtest(args: argparse.Namespace) -> None:
    from actors.main import main as cli_main

    run_dir = Path(args.run_dir)
    argv = [
        "--mode",
        "backtest",
        "--data",
        args.data,
        "--run-dir",
        str(run_dir),
        "--set",
        "session.interval=1m",
        "--set",
        f"session.kill_switch={run_dir / 'kill.txt'}",
    ]
    for s in args.set:
        argv += ["--set", s]
    cpu0, t0 = time.process_time(), time.perf_counter()
    if args.profile:
        profiler = cProfile.Profile()
        code = profiler.runcall(cli_main, argv)
        profiler.dump_stats(args.profile)
    else:
        code = cli_main(argv)
    run_s, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    rss = peak_rss()  # before the (untimed) counting below can add to it
    run_path = (run_dir / "latest").resolve()
    if code != 0 or not (run_path / "final_report.json").exists():
        sys.exit(f"backtest failed: exit code {code}")
    report = json.loads((run_path / "final_report.json").read_text())
    stats = count_candles(Path(args.data))
    candles = stats.get("candles", 0)
    flatten_fee = 0.0
    flatten_fill = False
    stopped: dict[str, Any] = {}
    for e in _events(run_path):
        if e["kind"] == "order.filled" and e.get("reason") == "flatten_on_exit":
            flatten_fee += e["fee"]
            flatten_fill = True
        elif e["kind"] == "session.stopped":
            stopped = e
    result: dict[str, Any] = {
        "mode": "backtest",
        "data": args.data,
        "candles": candles,
        "skipped_rows": stats.get("skipped", 0),
        "run_s": round(run_s, 3),
        "cpu_s": round(cpu_s, 3),
        "candles_per_s": round(candles / run_s, 1),
        "fills": report["fills"],
        "flatten_fill": flatten_fill,
        # the peers' final equity: cash + position marked at the last close, before flatten-on-exit's fee
        "final_equity": round(stopped["ending_equity"] + flatten_fee, 6),
        "ending_equity": report["ending_equity"],
        "net_pnl": report["net_pnl"],
        "trade_count": report["trade_count"],
        "stop_reason": report["stop_reason"],
        "status": report["status"],
        "run_path": str(run_path),
        "profiled": bool(args.profile),
    }
    if args.profile:
        result["profile"] = profile_summary(Path(args.profile))
    sys.stdout.write(json.dumps({**result, **rss, "pid": os.getpid()}) + "\n")


# --- mock10: a 10-minute mock session on a virtual clock ---------------------------------------------


def _session_config(run_dir: Path, sets: list[str], duration_min: float, config_file: str | None) -> Any:
    from actors.config import load

    return load(
        config_file,
        {},
        [f"session.run_dir={run_dir}", f"session.kill_switch={run_dir / 'kill.txt'}", *sets],
        {"session.duration_min": (duration_min, "--duration"), "feed.source": ("mock", "--source")},
    )


# tests/conftest.py's TRADES_OFTEN: 2-second candles, fast EMAs, limits that never stop the session.
MOCK_TRADES_OFTEN = [
    "session.interval=2s",
    "strategy.fast_period=2",
    "strategy.slow_period=5",
    "risk.max_orders_per_minute=100",
    "risk.max_loss_pct=50",
    "risk.max_daily_drawdown_pct=50",
    "risk.max_consecutive_losses=0",
    "feed.mock_volatility_pct=150",
]


def cmd_mock10(args: argparse.Namespace) -> None:
    import trio
    import trio.testing

    from actors.plan import Plan
    from actors.session import run_session

    sets = MOCK_TRADES_OFTEN if args.trades_often else []
    config = _session_config(Path(args.run_dir), sets, 10.0, str(REPO / "config" / "live.toml"))
    t0 = time.perf_counter()
    result = trio.run(
        partial(run_session, config, plan=Plan(), handle_signals=False, progress_mode="off"),
        clock=trio.testing.MockClock(autojump_threshold=0),
    )
    wall_s = time.perf_counter() - t0
    report = result.report
    n_events = sum(1 for _ in _events(result.run_path))
    emit(
        mode="mock10",
        trades_often=args.trades_often,
        session_s=report["elapsed_s"],
        wall_s=round(wall_s, 3),
        stop_reason=report["stop_reason"],
        fills=report["fills"],
        events=n_events,
        run_path=str(result.run_path),
    )


# --- latency: a real-time mock session, channels wrapped here ---------------------------------------

# Trades often: 1-second candles of 10 ticks, fast EMAs, limits that never stop the session.
LATENCY_SETS = [
    "session.interval=1s",
    "feed.tick_interval_s=0.1",
    "feed.mock_volatility_pct=150",
    "strategy.fast_period=1",
    "strategy.slow_period=2",
    "risk.max_orders_per_minute=600",
    "risk.max_loss_pct=50",
    "risk.max_daily_drawdown_pct=50",
    "risk.max_consecutive_losses=0",
]


class _Tap:
    """A receive channel that calls `seen(item)` as each item comes out (`async for` and `with`)."""

    def __init__(self, inner: Any, seen: Callable[[Any], None]) -> None:
        self._inner = inner
        self._seen = seen

    def __enter__(self) -> _Tap:
        self._inner.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._inner.__exit__(*exc)

    def __aiter__(self) -> _Tap:
        return self

    async def __anext__(self) -> Any:
        import trio

        try:
            item = await self._inner.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        self._seen(item)
        return item

    async def receive(self) -> Any:
        item = await self._inner.receive()
        self._seen(item)
        return item


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest rank."""
    if not sorted_values:
        return math.nan
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def cmd_latency(args: argparse.Namespace) -> None:
    import trio

    import actors.session as session_module
    from protocols.messages import Candle, Order, Tick

    original_strategy = session_module.run_strategy
    original_broker = session_module.run_broker
    # strategy side: (tick.ts, tick received, candle received) of the last closed candle
    last: dict[str, float] = {}
    decided: list[tuple[float, float, float] | None] = [None]
    samples: list[dict[str, float]] = []

    async def run_strategy(*a: Any, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        config, view, market_rx, intents_tx, events_tx, now, *rest = a

        def seen(item: Any) -> None:
            if isinstance(item, Tick):
                last["tick_ts"], last["tick_rx"] = item.ts, now()
            elif isinstance(item, Candle) and "tick_rx" in last:
                decided[0] = (last["tick_ts"], last["tick_rx"], now())

        await original_strategy(
            config,
            view,
            cast(Any, _Tap(market_rx, seen)),
            intents_tx,
            events_tx,
            now,
            *rest,
            task_status=task_status,
        )

    async def run_broker(*a: Any, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        account, market_rx, orders_rx, events_tx, clock = a

        def seen(item: Any) -> None:
            if isinstance(item, Order) and decided[0] is not None:
                tick_ts, tick_rx, candle_rx = decided[0]
                t = clock.now()
                samples.append(
                    {
                        "tick_to_order_ms": (t - tick_rx) * 1000,
                        "candle_to_order_ms": (t - candle_rx) * 1000,
                        "due_to_order_ms": (t - tick_ts) * 1000,
                    }
                )

        await original_broker(
            account, market_rx, cast(Any, _Tap(orders_rx, seen)), events_tx, clock, task_status=task_status
        )

    session_module.run_strategy = run_strategy  # type: ignore[assignment]
    session_module.run_broker = run_broker  # type: ignore[assignment]
    config = _session_config(Path(args.run_dir), LATENCY_SETS, args.seconds / 60, None)
    t0 = time.perf_counter()
    result = trio.run(partial(run_session_live, config))
    wall_s = time.perf_counter() - t0
    out: dict[str, Any] = {
        "mode": "latency",
        "session_s": round(wall_s, 1),
        "n": len(samples),
        "fills": result.report["fills"],
        "orders_submitted": result.report["orders_submitted"],
        "stop_reason": result.report["stop_reason"],
        "run_path": str(result.run_path),
        "method": "strategy receives the tick that closed the candle -> broker actor receives the "
        "approved order (before the simulated exchange latency); session clock = trio's perf_counter",
    }
    for key, name in (
        ("tick_to_order_ms", ""),
        ("candle_to_order_ms", "candle_"),
        ("due_to_order_ms", "due_"),
    ):
        values = sorted(s[key] for s in samples)
        out[f"{name}p50_ms"] = round(percentile(values, 0.50), 4)
        out[f"{name}p99_ms"] = round(percentile(values, 0.99), 4)
        out[f"{name}max_ms"] = round(values[-1], 4) if values else math.nan
    emit(**out)


async def run_session_live(config: Any) -> Any:
    from actors.plan import Plan
    from actors.session import run_session

    return await run_session(config, plan=Plan(), handle_signals=False, progress_mode="off")


# --- floor: the same pure parts, driven synchronously -------------------------------------------------


def cmd_floor(args: argparse.Namespace) -> None:
    from actors.broker.paper import PaperAccount
    from actors.config import load
    from actors.feeds.history import candle_ticks, read_candles_csv
    from actors.risk.gate import Rejection, RiskGate
    from actors.strategies.ema_cross import EmaCross, intents_for
    from protocols.messages import Event
    from protocols.records import dumps_line, event_record

    config = load(None, {}, ["session.interval=1m", *args.set])
    account = PaperAccount(config.broker)
    gate = RiskGate(config.risk, account)
    s = config.strategy
    ema = EmaCross(s.fast_period, s.slow_period, s.history)
    out_path = Path(args.out) if args.out else None
    t0 = time.perf_counter()
    seq = 0
    n = 0
    fills = 0
    with open(out_path or os.devnull, "w", encoding="utf-8") as out:

        def record(events: list[Event]) -> None:
            nonlocal seq, fills
            for e in events:
                seq += 1
                fills += e.kind == "order.filled"
                out.write(dumps_line(event_record(seq, e)) + "\n")

        for candle in read_candles_csv(Path(args.data), config.interval_s):
            n += 1
            open_tick, close_tick = candle_ticks(candle)
            ts = candle.close_ts
            record(account.on_market(open_tick, open_tick.ts))
            record(account.on_market(close_tick, ts))
            record(account.on_market(candle, ts))
            cross = ema.update(candle.close)
            if cross is None:
                continue
            for intent in intents_for(cross, account.position_qty, s, candle.close, ts):
                decision = gate.check(intent, ts)
                if isinstance(decision, Rejection):
                    continue
                record(account.on_arrival(decision, ts))
        equity = account.equity  # marked at the last close, before any flatten
    run_s = time.perf_counter() - t0
    emit(
        mode="floor",
        candles=n,
        run_s=round(run_s, 3),
        candles_per_s=round(n / run_s, 1),
        fills=fills,
        final_equity=round(equity, 6),
        events=seq,
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tools.bench_child", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    b = sub.add_parser("backtest")
    b.add_argument("data")
    b.add_argument("run_dir")
    b.add_argument("--set", action="append", default=[])
    b.add_argument("--profile", metavar="OUT.pstats")
    m = sub.add_parser("mock10")
    m.add_argument("run_dir")
    m.add_argument("--trades-often", action="store_true", help="tests/conftest.py's TRADES_OFTEN config")
    lat = sub.add_parser("latency")
    lat.add_argument("run_dir")
    lat.add_argument("--seconds", type=float, default=60.0)
    f = sub.add_parser("floor")
    f.add_argument("data")
    f.add_argument("--set", action="append", default=[])
    f.add_argument("--out", help="write the events here (default: /dev/null)")
    args = p.parse_args(argv)
    {"backtest": cmd_backtest, "mock10": cmd_mock10, "latency": cmd_latency, "floor": cmd_floor}[args.mode](
        args
    )


if __name__ == "__main__":
    main()
