"""Benchmark measurements in fresh processes; each prints one JSON line (the driver is tools/bench.py).

    python -m tools.bench_child spawn [--cwd DIR] [--timeout S] -- COMMAND ...
    python -m tools.bench_child count DATA [--interval-s 60]
    python -m tools.bench_child profile DATA RUN_DIR [--set KEY=VALUE ...] [--out OUT.pstats]
    python -m tools.bench_child mock10 RUN_DIR [--trades-often]
    python -m tools.bench_child latency RUN_DIR [--seconds 60]

- `spawn`: the launcher. Runs COMMAND (for us the whole CLI, `python -m actors.main --mode backtest
  ...`; for the peers their own scripts) as a child process and measures it from outside: the wall
  time from spawn to exit, its CPU time and its peak RSS from `wait4`'s rusage, for that child
  alone. Its stdout's last line starting with `{` is passed on as `result`. See `spawn` for why the
  launcher's own memory cannot leak into the child's figure.
- `count`: the candles the CLI's reader takes from a file (and the rows it skips), read as candles
  `--interval-s` apart; not timed.
- `profile`: cProfile of the kernel on a backtest, in-process (`Session(config,
  Plan(mode="backtest", data=DATA)).run_kernel()`: the CSV parse, every component, the run folder),
  own time grouped by where it is spent.
- `mock10`: a 10-minute mock session on config/live.toml (`--trades-often`: with 2-second candles
  and fast EMAs, so that it trades), on trio's MockClock (the same work as in real time, without
  the waiting): its peak RSS (VmHWM).
- `latency`: a real-time mock session on the live (actors) runtime, with a stand-in feed written
  here; nothing in actors/ changes. See `cmd_latency` for what is measured.

This module is also the launcher, so it imports nothing heavy at the top (its RSS is the floor under
which a child's peak RSS could not be told apart from it; see `spawn`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from actors.secrets import child_env

REPO = Path(__file__).resolve().parents[1]


def vm_hwm_kib() -> int:
    """This process's peak RSS since its exec (VmHWM), in KiB; ru_maxrss when /proc is absent."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def rss_fields(kib: float) -> dict[str, float]:
    return {"peak_rss_mib": round(kib / 1024, 1), "peak_rss_mb": round(kib * 1024 / 1e6, 1)}


def emit(**fields: Any) -> None:
    fields = {**rss_fields(vm_hwm_kib()), **fields}
    fields["pid"] = os.getpid()
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def last_json_line(text: str) -> dict[str, Any] | None:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                result: dict[str, Any] = json.loads(line)
            except ValueError:
                return None
            return result
    return None


# --- spawn: one child process, measured from outside --------------------------------------------------


def spawn(command: list[str], cwd: str | None, timeout: float) -> dict[str, Any]:
    """Run `command` to its end; wall time from spawn to exit, and the child's own rusage.

    Peak RSS: `wait4`'s `ru_maxrss` for the child alone. On Linux it is the larger of the child's
    own high-water mark after its exec and the high-water mark of the address space it had *before*
    the exec, which is its parent's: a copy of the parent's pages after a fork (its RSS at the
    fork), or the parent's very own address space after a vfork or `posix_spawn` (the parent's
    peak RSS so far). The kernel keeps the larger of the two at the exec. So this launcher is the
    parent: a small process that reads its own VmHWM right before the spawn and allocates nothing
    until the child has exited. When the child's `ru_maxrss` is above that, it can only be the
    child's own peak (`rss_own`); otherwise it is reported but flagged. (The peers' own
    `peak_rss_mib`, `ru_maxrss` of RUSAGE_SELF, has the same floor: spawned from here it is theirs.)
    CPU time: user + system time of the child alone (`wait4`).
    """
    env = {k: v for k, v in child_env(os.environ).items() if not k.startswith("LAPTOP_AGENTS__")}
    with (
        tempfile.TemporaryFile(prefix="bench-out-") as out,
        tempfile.TemporaryFile(prefix="bench-err-") as err,
    ):
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, out.fileno(), 1),
            (os.POSIX_SPAWN_DUP2, err.fileno(), 2),
        ]
        old_cwd = os.getcwd()
        if cwd:
            os.chdir(cwd)  # posix_spawn has no cwd action before Python 3.13: the child inherits ours
        try:
            launcher_kib = vm_hwm_kib()
            pid: int | None = None

            def kill(*_: object) -> None:
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)

            signal.signal(signal.SIGALRM, kill)
            signal.alarm(max(1, math.ceil(timeout)))
            t0 = time.perf_counter()
            pid = os.posix_spawnp(command[0], command, env, file_actions=actions)
            _, status, usage = os.wait4(pid, 0)
            wall_s = time.perf_counter() - t0
            timed_out = (
                signal.alarm(0) == 0 and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            )
        finally:
            os.chdir(old_cwd)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
    code = os.waitstatus_to_exitcode(status)
    cpu_s = usage.ru_utime + usage.ru_stime
    fields: dict[str, Any] = {
        "wall_s": round(wall_s, 4),
        "cpu_s": round(cpu_s, 4),
        "user_s": round(usage.ru_utime, 4),
        "sys_s": round(usage.ru_stime, 4),
        "maxrss_kib": usage.ru_maxrss,
        **rss_fields(usage.ru_maxrss),
        "launcher_hwm_kib": launcher_kib,
        "rss_own": usage.ru_maxrss > launcher_kib,
        "returncode": code,
        "result": last_json_line(stdout),
    }
    if code != 0:
        tail = (stderr or stdout).strip().splitlines()
        reason = f"timed out after {timeout:g} s" if timed_out else f"exit code {code}"
        fields["error"] = f"{reason}: " + " / ".join(tail[-3:])[-400:]
    return fields


def cmd_spawn(args: argparse.Namespace) -> None:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        sys.exit("spawn: no command")
    sys.stdout.write(json.dumps(spawn(command, args.cwd, args.timeout)) + "\n")


# --- count ---------------------------------------------------------------------------------------------


def cmd_count(args: argparse.Namespace) -> None:
    from actors.feeds.history import read_candles_csv

    stats: dict[str, int] = {}
    for _ in read_candles_csv(Path(args.data), args.interval_s, stats):
        pass
    emit(candles=stats.get("candles", 0), skipped_rows=stats.get("skipped", 0))


# --- profile: the kernel under cProfile, in-process --------------------------------------------------

# own time by where it is spent (the first match wins); time in a file that is none of these
# (builtins, the stdlib, attrs, json, ...) is charged to its callers
GROUPS = [
    ("actors/kernel.py", "kernel: the steps (actors/kernel.py)"),
    ("actors/broker/", "broker (actors/broker/)"),
    ("actors/risk/", "risk gate (actors/risk/)"),
    ("actors/strategies/", "strategy (actors/strategies/)"),
    ("actors/feeds/history.py", "CSV read and parse (actors/feeds/history.py)"),
    ("actors/recording/", "recorder: events.jsonl, metrics, report (actors/recording/)"),
    ("protocols/", "messages and records (protocols/)"),
    ("actors/", "session, config, the rest of actors/"),
]


def _group(file: str) -> str | None:
    f = file.replace("\\", "/")
    for part, name in GROUPS:
        if f"/{part}" in f or f.startswith(part):
            return name
    if "loguru" in f:
        return "logging (loguru)"
    return None


def _short(file: str) -> str:
    for marker in (str(REPO) + "/", "site-packages/", "/lib/python3.11/", "/lib/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def profile_summary(stats_path: Path, top: int = 20) -> dict[str, Any]:
    """Top functions by own time, and own time by group: time in a function outside every group is
    charged to its callers, in proportion to the time each caller spent in it (cProfile's
    per-caller figures)."""
    import pstats

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
    }


def cmd_profile(args: argparse.Namespace) -> None:
    import cProfile

    from actors.config import load
    from actors.plan import Plan
    from actors.session import Session

    run_dir = Path(args.run_dir)
    config = load(
        None,
        {},
        [
            "session.interval=1m",
            f"session.run_dir={run_dir}",
            f"session.kill_switch={run_dir / 'kill.txt'}",
            *args.set,
        ],
    )
    session = Session(config, Plan(mode="backtest", data=args.data))
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    result = profiler.runcall(session.run_kernel)
    run_s = time.perf_counter() - t0
    out = Path(args.out) if args.out else run_dir / "profile.pstats"
    profiler.dump_stats(out)
    emit(
        mode="profile",
        run_s_profiled=round(run_s, 3),
        fills=result.report["fills"],
        stop_reason=result.report["stop_reason"],
        run_path=str(result.run_path),
        pstats=str(out),
        profile=profile_summary(out),
    )


# --- mock10: a 10-minute mock session on a virtual clock ---------------------------------------------


def _session_config(run_dir: Path, sets: list[str], duration_min: float, config_file: str | None) -> Any:
    from actors.config import load

    return load(
        config_file,
        {},
        [f"session.run_dir={run_dir}", f"session.kill_switch={run_dir / 'kill.txt'}", *sets],
        {"session.duration_min": (duration_min, "--duration"), "feed.source": ("mock", "--source")},
    )


def _events(run_path: Path) -> Iterator[dict[str, Any]]:
    with (run_path / "events.jsonl").open(encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


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
    rss = rss_fields(vm_hwm_kib())  # before reading the events back
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
        **rss,
    )


# --- latency: a real-time mock session, with a stand-in feed ---------------------------------------

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


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest rank."""
    if not sorted_values:
        return math.nan
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def cmd_latency(args: argparse.Namespace) -> None:
    """Tick-to-order latency of the live runtime: a real-time mock session (`run_session` with the
    actors, wall clock), fed by a stand-in feed that is the mock source's own loop
    (`run_mock_feed`: ticks on a fixed schedule, a candle when the first tick of the next bucket
    comes) handing its `(arrival time, event)` pairs to the broker's market channel, as the live
    feed's `Stamper` does. The feed notes the moment it starts to hand over each candle (the event
    the strategy decides on; `perf_counter`, right before the channel send, so any wait for the
    broker to finish the closing tick's step counts), keyed by the candle's arrival stamp. Every
    `order.submitted` event the recorder's inbox receives (the risk gate approved the strategy's
    intent; the order goes to the broker next, where the simulated exchange latency starts) is
    timed too, and matched to its candle by the step time it carries, which is that candle's
    arrival stamp. Samples: from the candle's hand-over, and from the due time of the tick that
    closed it (on the session clock: adds the feed's timer wake-up and the tick's own step). An
    exit and entry pair are two samples, the second one later. The hook on the recorder's inbox
    (`EventSink.send_nowait`) is patched on the class in this process only.
    """
    import random

    import trio

    from actors.clock import SessionClock
    from actors.feeds.mock import RandomWalk, run_mock_feed
    from actors.feeds.stamp import Stamped, Stamper
    from actors.plan import Plan
    from actors.recording.actor import EventSink
    from actors.session import run_session
    from protocols.messages import Candle, Event, MarketEvent, StopSession, Tick

    config = _session_config(Path(args.run_dir), LATENCY_SETS, args.seconds / 60, None)
    handed: dict[float, tuple[float, float]] = {}  # candle's arrival stamp -> (perf_counter, tick due)
    samples: list[tuple[float, float]] = []  # (from hand-over, from the tick's due time), seconds
    clocks: list[SessionClock] = []

    class TimedStamper(Stamper):
        last_tick_ts = math.nan

        async def send(self, event: MarketEvent) -> None:
            stamp = self.clock.now()
            if isinstance(event, Tick):
                self.last_tick_ts = event.ts
            elif isinstance(event, Candle):
                handed[stamp] = (time.perf_counter(), self.last_tick_ts)
            await self.tx.send((stamp, event))

    original_send_nowait = EventSink.send_nowait

    def send_nowait(self: EventSink, event: Event) -> None:
        if event.kind == "order.submitted" and event.ts in handed:
            t = time.perf_counter()
            pc, tick_due = handed[event.ts]
            samples.append((t - pc, clocks[0].now() - tick_due))
        original_send_nowait(self, event)

    EventSink.send_nowait = send_nowait  # type: ignore[method-assign]

    async def feed(
        market_tx: trio.MemorySendChannel[Stamped],
        stops_tx: trio.MemorySendChannel[StopSession],
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        # the feed's own session clock: set from the wall clock, like the session's, microseconds
        # apart; its stamps are the step times the broker acts on
        clock = SessionClock()
        clocks.append(clock)
        # the price path of any mock session with this seed (actors.session.build_parts's streams)
        feed_rng = random.Random(random.Random(config.session.seed).getrandbits(64))
        walk = RandomWalk(config.feed, feed_rng, config.session.symbol)
        with stops_tx:
            await run_mock_feed(
                config.feed,
                config.interval_s,
                clock,
                walk,
                [TimedStamper(market_tx, clock)],  # type: ignore[list-item]
                task_status=task_status,
            )

    t0 = time.perf_counter()
    result = trio.run(
        partial(run_session, config, plan=Plan(), feed=feed, handle_signals=False, progress_mode="off")
    )
    wall_s = time.perf_counter() - t0
    out: dict[str, Any] = {
        "mode": "latency",
        "session_s": round(wall_s, 1),
        "n": len(samples),
        "candles": len(handed),
        "fills": result.report["fills"],
        "orders_submitted": result.report["orders_submitted"],
        "stop_reason": result.report["stop_reason"],
        "run_path": str(result.run_path),
        "method": "the feed starts to hand over the candle -> order.submitted reaches the recorder's "
        "inbox (the gate approved the order; before the simulated exchange latency)",
    }
    for i, name in ((0, ""), (1, "due_")):
        values = sorted(s[i] * 1000 for s in samples)
        out[f"{name}p50_ms"] = round(percentile(values, 0.50), 4)
        out[f"{name}p99_ms"] = round(percentile(values, 0.99), 4)
        out[f"{name}max_ms"] = round(values[-1], 4) if values else math.nan
    emit(**out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.bench_child", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("spawn")
    s.add_argument("--cwd")
    s.add_argument("--timeout", type=float, default=3600.0)
    s.add_argument("command", nargs=argparse.REMAINDER)
    c = sub.add_parser("count")
    c.add_argument("data")
    c.add_argument("--interval-s", type=float, default=60.0)
    pr = sub.add_parser("profile")
    pr.add_argument("data")
    pr.add_argument("run_dir")
    pr.add_argument("--set", action="append", default=[])
    pr.add_argument("--out", metavar="OUT.pstats")
    m = sub.add_parser("mock10")
    m.add_argument("run_dir")
    m.add_argument("--trades-often", action="store_true", help="tests/conftest.py's TRADES_OFTEN config")
    lat = sub.add_parser("latency")
    lat.add_argument("run_dir")
    lat.add_argument("--seconds", type=float, default=60.0)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    commands = {
        "spawn": cmd_spawn,
        "count": cmd_count,
        "profile": cmd_profile,
        "mock10": cmd_mock10,
        "latency": cmd_latency,
    }
    commands[args.mode](args)


if __name__ == "__main__":
    main()
