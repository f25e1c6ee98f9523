"""Benchmark of the live Bitunix feed: `python -m tools.bench_feed [--frames N] [--rate 200] [--seconds 35]`.

1. **Micro** (one trio run, no network): `--frames` realistic frames in the mix the exchange sends
   (per second: 2 `market_kline_1min`, 3 `depth_book15` with 15 levels a side, as the feed
   subscribes, 1 `price`; increasing `ts`, small price moves, so none is rejected) are (a) parsed by
   `FrameValidator.parse` alone, then (b) parsed and dispatched by a real `BitunixFeed` (`_on_data`,
   plus the per-frame bookkeeping of its socket loop) to three unbuffered subscriber channels, each
   drained by a consumer task, as in a session (broker, strategy, recorder tap): a `Book` and its
   `Tick` per depth frame, a trade `Tick` per kline frame whose volume grew, a `Funding` per price
   frame, a `Candle` per closed minute. Figures:
   microseconds per frame (best of `--repeat`) and the frames per second one core sustains
   (1e6 / microseconds).
2. **Session** (real sockets on 127.0.0.1, real clock): a `FakeBitunix` in its own process (so the
   session's CPU is its own) pushes the subscribed channels at `--rate` frames per second in total,
   in the same 2:3:1 mix; a whole session runs in-process for `--seconds` (at least 31 s, so that one
   `feed.stats` event, every 30 s, comes). Read from the run folder: `feed.stats` (frames/s, lag
   p50/p99/max), the books, ticks and funding recorded; from the fake: every data frame it sent,
   with the time. The session keeps up (no backlog) when the fake did offer the rate (within 2 %),
   the frames received in the `feed.stats` window are within 2 % of those sent by then, and so are
   the books, ticks and funding recorded of what the frames sent by the stop make (a `Book` and a
   `Tick` per `depth_book15` frame, a `Funding` per `price` frame), lag p99 < 100 ms, and the feed
   had no disconnect, stale data or drop.

Prints a table and, last, one JSON line with every figure (`keeps_up` true/false). Exit status 0
either way: a benchmark prints figures. `--no-session` runs the micro part only.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import trio
import trio.testing
from loguru import logger

from actors.clock import SessionClock
from actors.config import Config, load
from actors.feeds.bitunix import BitunixFeed
from actors.feeds.mock import FeedHealth
from actors.secrets import child_env
from protocols import bitunix
from protocols.messages import Event, MarketEvent

REPO = Path(__file__).resolve().parents[1]
SYMBOL = "BTCUSDT"
START_MS = 1_700_000_040_000  # a minute boundary (Nov 2023)
MINUTE_MS = 60_000
# One second of the exchange's pushes: (offset ms, kind); 2 kline, 3 depth (bitunix.BOOK_CHANNEL), 1 price.
CYCLE = ((0, "kline"), (167, "depth"), (333, "price"), (500, "kline"), (667, "depth"), (833, "depth"))
SHARE = {"kline": 2 / 6, "depth": 3 / 6, "price": 1 / 6}
SUBSCRIBERS = ("broker", "strategy", "recorder tap")
BOOK_LEVELS = bitunix.BOOK_LEVELS  # levels a side of a depth frame: the feed's depth_book15 window
BOOK_MEDIAN_UNITS = 10_000  # a level's median size in units (1 BTC at the touch, +25 % a level deeper)
LAG_P99_LIMIT_MS = 100.0
COUNT_TOLERANCE = 0.02
STATS_PERIOD_S = 30.0
CPU_SAMPLE_S = 0.5
STEADY_AFTER_S = 3.0  # steady state: from this long after the first frame to the stop
PROBLEM_KINDS = (
    "feed.disconnected",
    "feed.stale",
    "feed.malformed",
    "feed.reconnecting",
    "feed.gap",
    "feed.fallback",
    "feed.failover",
    "error",
)


# --- frames ------------------------------------------------------------------------------------------


@attrs.frozen
class Frames:
    """Raw WebSocket frames and what a feed must make of them."""

    raw: list[str]
    kinds: Counter[str]  # frames by kind: kline, depth, price
    candles: int  # candles closed by the kline pushes (the first push of each next minute)
    # trade quotes: kline pushes whose volume grew since the last (each here), once a book came
    trades: int = 0


def _px(ticks: int) -> str:
    """A price in ticks of 0.1 as the exchange writes it (no trailing zero)."""
    whole, frac = divmod(ticks, 10)
    return f"{whole}.{frac}" if frac else str(whole)


def _qty(units: int) -> str:
    """A size in units of 0.0001."""
    whole, frac = divmod(units, 10_000)
    digits = f"{frac:04d}".rstrip("0")
    return f"{whole}.{digits}" if digits else str(whole)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _book_side(rng: random.Random, touch: int, direction: int) -> list[list[str]]:
    """BOOK_LEVELS levels from `touch` (ticks) away from the spread (`direction` -1: bids, +1: asks),
    strictly ordered: the first 5 one tick apart, then 1-3 ticks; sizes from a fifth to three times
    a median that grows with depth (as the fake exchange's books)."""
    side = []
    price = touch
    for level in range(BOOK_LEVELS):
        if level:
            price += direction * (1 if level < 5 else rng.choice((1, 1, 2, 3)))
        median = BOOK_MEDIAN_UNITS * (4 + level) // 4
        side.append([_px(price), _qty(rng.randint(median // 5, median * 3))])
    return side


def make_frames(n: int, *, seed: int = 1, symbol: str = SYMBOL, start_ms: int = START_MS) -> Frames:
    """`n` frames of the exchange's mix, in order, over n/6 seconds of exchange time; the depth
    frames are `depth_book15` pushes, 15 levels a side."""
    rng = random.Random(seed)
    dumps = partial(json.dumps, separators=(",", ":"))
    price = 600_000  # ticks: 60,000.0 USDT
    bucket = o = h = lo = vol = -1
    candles = trades = 0
    kinds: Counter[str] = Counter()
    raw: list[str] = []
    for i in range(n):
        sec, j = divmod(i, len(CYCLE))
        offset, kind = CYCLE[j]
        ts = start_ms + sec * 1000 + offset
        price = max(10, price + rng.randint(-3, 3))
        kinds[kind] += 1
        if kind == "kline":
            trades += kinds["kline"] > 1 and kinds["depth"] > 0  # after a push and a book
            b = ts // MINUTE_MS
            if b != bucket:
                candles += bucket >= 0
                bucket, o, h, lo, vol = b, price, price, price, 0
            h, lo, vol = max(h, price), min(lo, price), vol + rng.randint(1, 500)
            data: dict[str, Any] = {
                "o": _px(o),
                "c": _px(price),
                "h": _px(h),
                "l": _px(lo),
                "b": _qty(vol),
                "q": _qty(vol * price // 10),
            }
            ch = "market_kline_1min"
        elif kind == "depth":
            data = {"b": _book_side(rng, price, -1), "a": _book_side(rng, price + 1, 1)}
            ch = bitunix.BOOK_CHANNEL
        else:
            mark = price + rng.randint(-3, 3)
            funding = ts // (8 * 3600_000) * (8 * 3600_000)
            data = {
                "ip": _px(mark + rng.randint(-5, 5)),
                "mp": _px(mark),
                "fr": "0.0001",
                "ft": _iso(funding),
                "nft": _iso(funding + 8 * 3600_000),
            }
            ch = "price"
        raw.append(dumps({"ch": ch, "symbol": symbol, "ts": ts, "data": data}))
    return Frames(raw, kinds, candles, trades)


# --- micro -------------------------------------------------------------------------------------------


def feed_config(*sets: str) -> Config:
    return load(None, {}, ["feed.source=bitunix", f"session.symbol={SYMBOL}", *sets])


def _validator(config: Config) -> bitunix.FrameValidator:
    return bitunix.FrameValidator(
        symbol=config.session.symbol,
        kline_channel=bitunix.kline_channel(config.session.interval),
        max_jump_pct=config.feed.max_jump_pct,
    )


def check_frames(frames: Frames, config: Config) -> None:
    """Every frame must parse to a data message (a rejected one would not measure dispatch)."""
    validator = _validator(config)
    for i, raw in enumerate(frames.raw):
        parsed = validator.parse(raw)
        if isinstance(parsed, bitunix.Rejected | bitunix.Control):
            raise ValueError(f"frame {i} not accepted: {parsed!r}: {raw}")


def time_parse(frames: Frames, config: Config) -> int:
    """Nanoseconds to parse every frame with a fresh validator."""
    parse = _validator(config).parse
    t0 = time.perf_counter_ns()
    for raw in frames.raw:
        parse(raw)
    return time.perf_counter_ns() - t0


@attrs.frozen
class Dispatched:
    ns: int
    received: list[Counter[str]]  # message types each subscriber got, in SUBSCRIBERS order
    events: int  # events the feed sent (none expected: no first-data, no backfill)
    not_data: int  # frames that did not parse to a data message (none expected)


async def time_dispatch(frames: Frames, config: Config) -> Dispatched:
    """Parse and dispatch every frame through a fresh BitunixFeed to three unbuffered subscribers.

    Per frame this is what the feed's socket loop does after `get_message`: count it, parse it, note
    its lag, `_on_data` (which fans books, ticks, funding and closed candles out to every subscriber). The
    feed's first-data work is done beforehand (`first_data` set, nothing to seed) and the frames have
    no gap, so no REST call happens."""
    clock = SessionClock()
    health = FeedHealth(data_source="bitunix")
    first_data = trio.Event()
    first_data.set()
    events_tx, events_rx = trio.open_memory_channel[Event](math.inf)
    channels = [trio.open_memory_channel[MarketEvent](0) for _ in SUBSCRIBERS]
    feed = BitunixFeed(config, clock, health, [tx for tx, _ in channels], events_tx, first_data=first_data)
    feed.seed_done.set()  # no history to hand out first
    received: list[Counter[str]] = [Counter() for _ in SUBSCRIBERS]

    async def consume(rx: trio.MemoryReceiveChannel[MarketEvent], got: Counter[str]) -> None:
        async with rx:
            async for msg in rx:
                got[type(msg).__name__] += 1

    not_data = 0
    try:
        async with trio.open_nursery() as nursery:
            for (_, rx), got in zip(channels, received, strict=True):
                nursery.start_soon(consume, rx, got)
            await trio.testing.wait_all_tasks_blocked()
            parse, on_data, lags, now = feed.validator.parse, feed._on_data, feed.lags_ms, clock.now
            t0 = time.perf_counter_ns()
            for raw in frames.raw:
                feed.frames += 1
                parsed = parse(raw)
                if isinstance(parsed, bitunix.Rejected | bitunix.Control):
                    not_data += 1
                    continue
                lags.append(now() * 1000 - parsed.ts_ms)
                await on_data(parsed)
            for tx, _ in channels:
                await tx.aclose()
        ns = time.perf_counter_ns() - t0  # the consumers have taken everything
    finally:
        await feed.http.aclose()
    events_tx.close()
    events = 0
    async with events_rx:
        async for _ in events_rx:
            events += 1
    return Dispatched(ns, received, events, not_data)


async def run_micro(frames: Frames, *, repeat: int = 3, config: Config | None = None) -> dict[str, Any]:
    """Both micro measurements, best of `repeat`; raises ValueError if a frame would be rejected."""
    config = config or feed_config()
    check_frames(frames, config)
    n = len(frames.raw)
    parse_ns = min(time_parse(frames, config) for _ in range(repeat))
    runs = [await time_dispatch(frames, config) for _ in range(repeat)]
    best = min(runs, key=lambda r: r.ns)
    parse_us = parse_ns / n / 1000
    dispatch_us = best.ns / n / 1000
    depth = frames.kinds["depth"]  # a Book, then its Tick, per depth frame; a trade's Tick
    expected = {
        "Book": depth,
        "Tick": depth + frames.trades,
        "Funding": frames.kinds["price"],
        "Candle": frames.candles,
    }
    return {
        "frames": n,
        "mix": dict(sorted(frames.kinds.items())),
        "repeat": repeat,
        "parse_us": round(parse_us, 3),
        "parse_frames_per_s": round(1e6 / parse_us),
        "dispatch_us": round(dispatch_us, 3),
        "dispatch_frames_per_s": round(1e6 / dispatch_us),
        "subscribers": len(SUBSCRIBERS),
        "expected": expected,
        "received": [dict(sorted(got.items())) for got in best.received],
        "all_dispatched": all(r.received == [Counter(expected)] * len(SUBSCRIBERS) for r in runs)
        and all(r.not_data == 0 for r in runs),
        "feed_events": best.events,
    }


# --- the fake exchange, in its own process -----------------------------------------------------------


def push_intervals(rate: float) -> tuple[int, float, float]:
    """(kline push ms, depth interval s, price interval s) for `rate` frames/s in the 2:3:1 mix.
    The fake pushes klines on a whole-millisecond grid: depth makes up the rounding."""
    kline_ms = max(1, round(1000 / (rate * SHARE["kline"])))
    price_rate = rate * SHARE["price"]
    depth_rate = max(1e-3, rate - 1000 / kline_ms - price_rate)
    return kline_ms, 1 / depth_rate, 1 / price_rate


class _TimedCounter(Counter[str]):
    """`FakeStats.frames_sent` that also notes when each frame was sent (wall ms, by channel)."""

    def __init__(self) -> None:
        self.sent_ms: dict[str, list[int]] = {}
        super().__init__()

    def __setitem__(self, key: str, value: int) -> None:
        self.sent_ms.setdefault(key, []).append(int(time.time() * 1000))
        super().__setitem__(key, value)


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def _serve_fake(kline_ms: int, depth_s: float, price_s: float, seed: int) -> None:
    """The child: serve, print the URLs, wait for a line (or EOF) on stdin, print what was sent."""
    from tools.fake_bitunix import FakeBitunix

    fake = FakeBitunix(
        seed=seed, push_interval_s=kline_ms / 1000, depth_interval_s=depth_s, price_interval_s=price_s
    )
    sent = _TimedCounter()
    fake.stats.frames_sent = sent
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.run)
        print(json.dumps({"ws_url": fake.ws_url, "rest_url": fake.rest_url}), flush=True)
        cpu0, wall0 = _cpu_s(), time.perf_counter()
        async with trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())) as stdin:
            await stdin.receive_some()
        cpu_pct = (_cpu_s() - cpu0) / (time.perf_counter() - wall0) * 100
        nursery.cancel_scope.cancel()
    out = {
        "frames_sent": dict(sent),
        "sent_ms": sent.sent_ms,
        "connections": fake.stats.connections,
        "pongs_sent": fake.stats.pongs_sent,
        "cpu_pct": round(cpu_pct, 1),
    }
    print(json.dumps(out), flush=True)


class _Lines:
    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buf = b""

    async def next(self) -> str:
        while b"\n" not in self.buf:
            chunk = await self.stream.receive_some()
            if not chunk:
                raise EOFError("the fake exchange's process ended")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()


# --- session ----------------------------------------------------------------------------------------


@attrs.frozen
class SessionRun:
    run_path: Path
    report: dict[str, Any]
    fake: dict[str, Any]
    cpu_s: float
    wall_s: float
    intervals: tuple[int, float, float]
    cpu_samples: list[tuple[int, float]]  # (wall ms, process CPU s), every CPU_SAMPLE_S


async def run_session_bench(rate: float, seconds: float, work: Path, *, seed: int = 1) -> SessionRun:
    """A session against a fake pushing `rate` frames/s; returns the run folder and the fake's log."""
    from actors.session import run_session  # only here: the micro benchmark needs no session

    intervals = kline_ms, depth_s, price_s = push_intervals(rate)
    cmd = [sys.executable, "-m", "tools.bench_feed", "--serve-fake", str(kline_ms), str(depth_s)]
    cmd += [str(price_s), str(seed)]
    env = {k: v for k, v in child_env(os.environ).items() if not k.startswith("LAPTOP_AGENTS__")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    async with trio.open_nursery() as nursery:
        proc: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                check=False,
                cwd=REPO,
                env=env,
            )
        )
        assert proc.stdin is not None and proc.stdout is not None
        lines = _Lines(proc.stdout)
        with trio.fail_after(60):
            urls = json.loads(await lines.next())
        config = load(
            None,
            {},
            [
                "feed.source=bitunix",
                "feed.fallback=none",
                f"feed.ws_url={urls['ws_url']}",
                f"feed.rest_url={urls['rest_url']}",
                f"session.symbol={SYMBOL}",
                f"session.run_dir={work / 'runs'}",
                f"session.kill_switch={work / 'kill.txt'}",
                f"session.seed={seed}",
            ],
            {"session.duration_min": (seconds / 60, "--seconds")},
        )
        samples: list[tuple[int, float]] = []

        async def sample_cpu() -> None:
            while True:
                samples.append((int(time.time() * 1000), _cpu_s()))
                await trio.sleep(CPU_SAMPLE_S)

        cpu0, wall0 = _cpu_s(), time.perf_counter()
        async with trio.open_nursery() as sampling:
            sampling.start_soon(sample_cpu)
            with trio.fail_after(seconds + 120):
                result = await run_session(config, handle_signals=False, progress_mode="off")
            sampling.cancel_scope.cancel()
        cpu_s, wall_s = _cpu_s() - cpu0, time.perf_counter() - wall0
        await proc.stdin.send_all(b"stop\n")
        with trio.fail_after(60):
            fake = json.loads(await lines.next())
        await proc.stdin.aclose()
    return SessionRun(result.run_path, result.report, fake, cpu_s, wall_s, intervals, samples)


def _ms(iso_ts: str) -> int:
    return round(datetime.fromisoformat(iso_ts.replace("Z", "+00:00")).timestamp() * 1000)


def _within(got: int, want: int) -> bool:
    return want > 0 and abs(got - want) <= COUNT_TOLERANCE * want


def analyse_session(run: SessionRun, rate: float, seconds: float) -> dict[str, Any]:
    """The session's figures and the verdict, from its run folder and the fake's log."""
    with (run.run_path / "events.jsonl").open() as f:
        events = [json.loads(line) for line in f]
    with (run.run_path / "market.jsonl").open() as f:
        records = [json.loads(line) for line in f]
    recorded = Counter(r["type"] for r in records)
    # a book's quote (the trade quotes, `last_qty` > 0, come of kline pushes)
    recorded["tick"] = sum(r["type"] == "tick" and not r.get("last_qty") for r in records)
    sent_by_ch: dict[str, list[int]] = {ch: sorted(ts) for ch, ts in run.fake["sent_ms"].items()}
    sent_all = sorted(t for ts in sent_by_ch.values() for t in ts)
    kinds = Counter(e["kind"] for e in events)
    stats = [e for e in events if e["kind"] == "feed.stats"]
    stopped = next((e for e in events if e["kind"] == "session.stopped"), None)
    stop_ms = _ms(stopped["ts"]) if stopped else (sent_all[-1] if sent_all else 0)

    def sent_in(times: list[int], after_ms: float, upto_ms: float) -> int:
        return bisect.bisect_right(times, upto_ms) - bisect.bisect_right(times, after_ms)

    # the offered load: data frames the fake sent while the session was connected
    span_s = (sent_all[-1] - sent_all[0]) / 1000 if len(sent_all) > 1 else 0.0
    offered = (len(sent_all) - 1) / span_s if span_s else 0.0
    # frames the feed counted in each feed.stats window against what the fake sent in it
    windows = []
    prev_ms: float = -math.inf
    for e in stats:
        end_ms = _ms(e["ts"])
        sent = sent_in(sent_all, prev_ms, end_ms)
        start_ms = max(prev_ms, sent_all[0] if sent_all else end_ms)
        windows.append(
            {
                "frames": e["frames"],
                "sent": sent,
                "frames_per_s": e["frames_per_s"],
                "received_per_s": round(e["frames"] / max(1e-9, (end_ms - start_ms) / 1000), 1),
                "lag_ms_p50": e["lag_ms_p50"],
                "lag_ms_p99": e["lag_ms_p99"],
                "lag_ms_max": e["lag_ms_max"],
            }
        )
        prev_ms = end_ms
    got_frames = sum(w["frames"] for w in windows)
    sent_frames = sum(w["sent"] for w in windows)
    # books, ticks and funding recorded against what the frames sent by the stop make: a Book and
    # its Tick per depth frame (the feed's bitunix.BOOK_CHANNEL), a Funding per price frame
    sent_depth, sent_price = (
        sent_in(sent_by_ch.get(ch, []), -math.inf, stop_ms) for ch in (bitunix.BOOK_CHANNEL, "price")
    )
    sent_quotes = 2 * sent_depth + sent_price
    got_quotes = recorded["book"] + recorded["tick"] + recorded["funding"]
    # steady state: CPU between samples from STEADY_AFTER_S after the first frame to the stop
    steady_pct = steady_us = None
    if sent_all:
        inside = [(t, c) for t, c in run.cpu_samples if sent_all[0] + STEADY_AFTER_S * 1000 <= t <= stop_ms]
        if len(inside) >= 2 and inside[-1][0] > inside[0][0]:
            (t0, c0), (t1, c1) = inside[0], inside[-1]
            steady_pct = round((c1 - c0) / ((t1 - t0) / 1000) * 100, 1)
            frames_in = sent_in(sent_all, t0, t1)
            steady_us = round((c1 - c0) * 1e6 / frames_in, 1) if frames_in else None
    problems = {k: kinds[k] for k in PROBLEM_KINDS if kinds[k]}
    lag_p99 = max((w["lag_ms_p99"] for w in windows if w["lag_ms_p99"] is not None), default=None)
    lag_max = max((w["lag_ms_max"] for w in windows if w["lag_ms_max"] is not None), default=None)
    total_sent = len(sent_all)
    checks = {
        "feed_stats_seen": bool(windows),
        "offered_rate_reached": offered >= (1 - COUNT_TOLERANCE) * rate,
        "stats_frames_match_sent": _within(got_frames, sent_frames),
        "quotes_recorded_match_sent": _within(got_quotes, sent_quotes),
        "lag_p99_under_limit": lag_p99 is not None and lag_p99 < LAG_P99_LIMIT_MS,
        "no_feed_problems": not problems and run.report.get("status") == "ok",
    }
    return {
        "rate_target": rate,
        "seconds": seconds,
        "push_intervals": {
            "kline_ms": run.intervals[0],
            "depth_s": round(run.intervals[1], 6),
            "price_s": round(run.intervals[2], 6),
        },
        "fake_frames_sent": dict(sorted(run.fake["frames_sent"].items())),
        "fake_rate_per_s": round(offered, 1),
        "fake_cpu_pct": run.fake["cpu_pct"],
        "feed_stats": windows,
        "frames_per_s": windows[0]["frames_per_s"] if windows else None,
        "received_per_s": windows[0]["received_per_s"] if windows else None,
        "lag_ms_p50": windows[0]["lag_ms_p50"] if windows else None,
        "lag_ms_p99": lag_p99,
        "lag_ms_max": lag_max,
        "stats_frames": got_frames,
        "stats_frames_sent": sent_frames,
        "quotes_recorded": got_quotes,
        "quotes_sent": sent_quotes,
        "candles_recorded": recorded["candle"],
        "session_cpu_pct": round(run.cpu_s / run.wall_s * 100, 1),
        "session_cpu_us_per_frame": round(run.cpu_s * 1e6 / total_sent, 1) if total_sent else None,
        "steady_cpu_pct": steady_pct,
        "steady_cpu_us_per_frame": steady_us,
        "session_wall_s": round(run.wall_s, 1),
        "report_status": run.report.get("status"),
        "reconnects": run.report.get("reconnects"),
        "feed_problems": problems,
        "checks": checks,
        "keeps_up": all(checks.values()),
        "run_path": str(run.run_path),
    }


# --- output -------------------------------------------------------------------------------------------


def _table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for k, r in enumerate(rows):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
        if k == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def print_micro(m: dict[str, Any]) -> None:
    mix = ", ".join(f"{k} {v:,}" for k, v in m["mix"].items())
    print(f"\nMicro: {m['frames']:,} frames ({mix}), best of {m['repeat']}")
    print(
        _table(
            [
                ("measure", "us/frame", "frames/s (one core)"),
                ("parse only (FrameValidator.parse)", f"{m['parse_us']:.2f}", f"{m['parse_frames_per_s']:,}"),
                (
                    f"parse + dispatch (BitunixFeed, {m['subscribers']} subscribers)",
                    f"{m['dispatch_us']:.2f}",
                    f"{m['dispatch_frames_per_s']:,}",
                ),
            ]
        )
    )
    print(f"every frame dispatched to every subscriber: {'yes' if m['all_dispatched'] else 'NO'}")


def print_session(s: dict[str, Any]) -> None:
    p = s["push_intervals"]
    print(
        f"\nSession: {s['seconds']:g} s against the fake at {s['rate_target']:g} frames/s "
        f"(kline every {p['kline_ms']} ms, depth every {p['depth_s'] * 1000:.2f} ms, "
        f"price every {p['price_s'] * 1000:.1f} ms; fake in its own process)"
    )

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:g}"

    rows = [
        ("figure", "value"),
        ("fake sent, data frames/s", fmt(s["fake_rate_per_s"])),
        ("feed.stats frames_per_s (30 s period)", fmt(s["frames_per_s"])),
        ("received frames/s over the window", fmt(s["received_per_s"])),
        (
            "lag p50 / p99 / max, ms",
            " / ".join(fmt(s[k]) for k in ("lag_ms_p50", "lag_ms_p99", "lag_ms_max")),
        ),
        ("frames in feed.stats windows vs sent", f"{s['stats_frames']:,} / {s['stats_frames_sent']:,}"),
        ("books + ticks + funding recorded vs sent", f"{s['quotes_recorded']:,} / {s['quotes_sent']:,}"),
        ("candles recorded", fmt(s["candles_recorded"])),
        ("session CPU %, whole run", fmt(s["session_cpu_pct"])),
        ("session CPU us per frame, whole run", fmt(s["session_cpu_us_per_frame"])),
        ("session CPU %, steady state", fmt(s["steady_cpu_pct"])),
        ("session CPU us per frame, steady state", fmt(s["steady_cpu_us_per_frame"])),
        ("fake CPU % (its process)", fmt(s["fake_cpu_pct"])),
        ("feed problems", ", ".join(f"{k} {v}" for k, v in s["feed_problems"].items()) or "none"),
    ]
    print(_table(rows))
    failed = [k for k, ok in s["checks"].items() if not ok]
    verdict = "PASS" if s["keeps_up"] else f"FAIL ({', '.join(failed)})"
    print(f"keeps up with {s['rate_target']:g} frames/s, no backlog: {verdict}")


# --- command line -------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.bench_feed", description=(__doc__ or "").split("\n\n")[0]
    )
    p.add_argument("--frames", type=int, default=60_000, help="frames in the micro benchmark")
    p.add_argument("--repeat", type=int, default=3, help="micro: best of this many runs")
    p.add_argument("--rate", type=float, default=200.0, help="session: frames/s the fake pushes in total")
    p.add_argument("--seconds", type=float, default=35.0, help="session length (>= 31 for a feed.stats)")
    p.add_argument("--no-session", action="store_true", help="the micro benchmark only")
    p.add_argument("--work", type=Path, help="keep the session's run folder here (default: a temp dir)")
    p.add_argument("--serve-fake", nargs=4, metavar="X", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    if a.serve_fake:
        kline_ms, depth_s, price_s, seed = a.serve_fake
        trio.run(_serve_fake, int(kline_ms), float(depth_s), float(price_s), int(seed))
        return 0
    # (found by a CLI audit: nan passed `<= 0`, and a --work that is a file ended in a traceback)
    fine = a.frames >= len(CYCLE) and a.repeat >= 1 and 0 < a.rate < math.inf and 0 < a.seconds < math.inf
    if not fine:
        _parser().error("--frames >= 6, --repeat >= 1, --rate > 0 and --seconds > 0")
    if a.work is not None and a.work.exists() and not a.work.is_dir():
        _parser().error(f"--work {a.work}: is a file; expected a folder (made when missing)")
    logger.remove()
    logger.add(sys.stderr, level="WARNING", format="{time:HH:mm:ss} | {level:<7} | {message}")
    print(f"Feed benchmark: python {sys.version.split()[0]}, trio {trio.__version__}, {os.cpu_count()} CPUs")
    out: dict[str, Any] = {"micro": trio.run(partial(run_micro, make_frames(a.frames), repeat=a.repeat))}
    print_micro(out["micro"])
    if not a.no_session:
        if a.seconds <= STATS_PERIOD_S:
            print(f"note: --seconds {a.seconds:g} <= 30: no feed.stats event will come", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="bench_feed-") as tmp:
            work = a.work or Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            run = trio.run(run_session_bench, a.rate, a.seconds, work)
            out["session"] = analyse_session(run, a.rate, a.seconds)
        print_session(out["session"])
        out["keeps_up"] = out["session"]["keeps_up"]
    print(json.dumps(out, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
