"""The live Bitunix feed against the project's fake exchange: real sockets on 127.0.0.1, real clock.

Each session test runs the whole session in-process (`run_session`) beside a `FakeBitunix` in the
same trio run, and compares what the session recorded with what the fake says it sent.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from actors.feeds.bitunix import SendLimiter, TokenBucket
from actors.session import SessionResult, run_session
from tests.conftest import cli_env, make_config, read_events, read_report
from tests.test_replay_backtest import NOT_COMPARED
from tools.fake_bitunix import FakeBitunix, Faults
from tools.validate_session import validate

# A strategy that trades at every candle close of the fake's zigzag path.
ZIGZAG_TRADER = [
    "strategy.fast_period=2",
    "strategy.slow_period=3",
    "strategy.history=30",
    "risk.max_loss_pct=50",
    "risk.max_daily_drawdown_pct=50",
    "risk.max_consecutive_losses=0",
]

# What the live feed says about its own health: a replay has no network to report on.
FEED_HEALTH = {"reconnects", "feed_downtime_s", "malformed_dropped", "rest_retries"}

# Which reason the session must give for each kind of malformed frame the fake sends.
REASON_OF_KIND = {
    "not_json": "not_json",
    "truncated": "truncated",
    "missing_field": "missing_field",
    "wrong_type": "wrong_type",
    "nan": "not_finite",
    "inf": "not_finite",
    "zero_price": "non_positive",
    "negative_size": "non_positive",
    "crossed_book": "crossed_book",
    "ts_backwards": "ts_backwards",
    "price_jump": "price_jump",
    "unknown_channel": "unknown_channel",
    "wrong_symbol": "wrong_symbol",
}


def offset_for_close_in(seconds: float) -> float:
    """A `time_offset_s` that puts the fake's next minute boundary `seconds` from now."""
    target = time.time() + seconds
    return (math.ceil(target / 60) * 60 - target) % 60


async def live_session(
    tmp_path: Path, fake: FakeBitunix, *sets: str, duration_s: float
) -> tuple[SessionResult, list[dict[str, Any]]]:
    """Start the fake exchange, run a live session against it, stop the exchange."""
    async with trio.open_nursery() as nursery:  # the exchange runs beside the session
        await nursery.start(fake.run)  # its URLs are known once it listens
        config = make_config(
            tmp_path,
            "feed.source=bitunix",
            f"feed.ws_url={fake.ws_url}",
            f"feed.rest_url={fake.rest_url}",
            *sets,
            duration_min=duration_s / 60,
        )
        with trio.fail_after(duration_s + 60):
            result = await run_session(config, handle_signals=False, progress_mode="off")
        nursery.cancel_scope.cancel()
    return result, read_events(result.run_path)


def market_candles(run_path: Path) -> list[dict[str, Any]]:
    with (run_path / "market.jsonl").open() as f:
        return [r for r in map(json.loads, f) if r["type"] == "candle"]


def assert_candles_match_truth(run_path: Path, fake: FakeBitunix) -> list[dict[str, Any]]:
    """Every candle the session got is the fake's candle for that minute; no gap, no duplicate."""
    candles = market_candles(run_path)
    assert candles, "no candles recorded"
    opens = [round(c["open_ts"] * 1000) for c in candles]
    assert opens == sorted(set(opens)), "duplicate or out-of-order candles"
    assert all(b - a == 60_000 for a, b in itertools.pairwise(opens)), "gap in the candle series"
    truth = {t[0]: t[1:] for t in fake.truth_candles()}
    for c in candles:
        o, h, lo, cl, v = truth[round(c["open_ts"] * 1000)]
        assert (c["open"], c["high"], c["low"], c["close"], c["volume"]) == pytest.approx(
            (o, h, lo, cl, v)
        ), c
    return candles


def kinds(events: list[dict[str, Any]]) -> Counter[str]:
    return Counter(e["kind"] for e in events)


def assert_clean_finish(result: SessionResult, events: list[dict[str, Any]]) -> None:
    report = result.report
    assert (report["status"], report["stop_reason"], report["errors"]) == ("ok", "duration", 0)
    assert report["open_positions"] == []
    assert validate(result.run_path) == []


# --- the send-side limiters (virtual time) -------------------------------------------------------


async def test_ws_send_limiter_never_exceeds_5_messages_in_any_second(autojump_clock: trio.abc.Clock) -> None:
    limiter = SendLimiter()
    sent: list[float] = []

    async def sender(n: int) -> None:
        for _ in range(n):
            await limiter.acquire()
            sent.append(trio.current_time())

    async with trio.open_nursery() as nursery:  # pings and subscriptions share one socket
        nursery.start_soon(sender, 60)
        nursery.start_soon(sender, 40)
    assert len(sent) == 100
    for i, t in enumerate(sent):
        in_window = [u for u in sent[i:] if u < t + 1.0]
        assert len(in_window) <= 5
    assert sent[-1] - sent[0] < 100 / 5 * 1.1 + 1  # and it does not hold messages back needlessly


async def test_rest_token_bucket_holds_the_rate(autojump_clock: trio.abc.Clock) -> None:
    bucket = TokenBucket(8.0)
    times = []
    for _ in range(80):
        await bucket.acquire()
        times.append(trio.current_time())
    for i, t in enumerate(times):
        assert len([u for u in times[i:] if u < t + 1.0]) <= 9  # under the exchange's 10/s
    assert times[-1] - times[0] == pytest.approx(79 / 8, rel=0.01)


# --- sessions against the fake exchange (real time) ------------------------------------------------


async def test_session_subscribes_pings_and_trades_through_drops_every_15s(tmp_path: Path) -> None:
    fake = FakeBitunix(
        seed=3, zigzag_pct=0.2, time_offset_s=offset_for_close_in(4), faults=Faults(drop_every_s=15)
    )
    result, events = await live_session(
        tmp_path, fake, *ZIGZAG_TRADER, "feed.ping_interval_s=4", duration_s=70
    )
    assert_clean_finish(result, events)
    report = result.report
    assert report["data_source"] == "bitunix"
    channels = {a["ch"] for a in fake.stats.subscriptions}
    assert {"market_kline_1min", "depth_book1", "price"} <= channels
    assert fake.stats.pings_received >= 3 and fake.stats.pongs_sent >= 3
    assert fake.stats.client_msgs_max_per_s <= 5
    assert fake.stats.drops >= 3
    assert report["reconnects"] >= 3 and kinds(events)["feed.connected"] == report["reconnects"] + 1
    assert report["feed_downtime_s"] > 0
    candles = assert_candles_match_truth(result.run_path, fake)
    assert sum(not c["backfill"] for c in candles) >= 1  # assembled from the WebSocket pushes
    assert len(candles) >= 30
    assert report["fills"] >= 2 and report["trade_count"] >= 1  # trading went on through the drops

    # and replaying the recorded live session reproduces its trading exactly (issue 5)
    replay_dir = tmp_path / "replays"
    proc = await trio.run_process(
        [
            sys.executable,
            "-m",
            "actors.main",
            "--replay",
            str(result.run_path),
            "--run-dir",
            str(replay_dir),
            "--set",
            f"session.kill_switch={tmp_path / 'kill.txt'}",
        ],
        cwd=tmp_path,
        env=cli_env(),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    (replayed,) = [p for p in replay_dir.iterdir() if p.is_dir() and not p.is_symlink()]
    second = read_report(replayed)
    for key in report.keys() - NOT_COMPARED - FEED_HEALTH:
        assert report[key] == second[key], key
    fills = [
        (e["order_id"], e["qty"], e["fill_price"], e["fee"]) for e in events if e["kind"] == "order.filled"
    ]
    assert fills == [
        (e["order_id"], e["qty"], e["fill_price"], e["fee"])
        for e in read_events(replayed)
        if e["kind"] == "order.filled"
    ]
    assert all("closed" in e["reason"] for e in events if e["kind"] == "feed.disconnected")


async def test_session_survives_10pct_malformed_frames_and_counts_them_by_reason(tmp_path: Path) -> None:
    fake = FakeBitunix(seed=5, time_offset_s=offset_for_close_in(4), faults=Faults(malformed_fraction=0.10))
    result, events = await live_session(
        tmp_path, fake, "strategy.history=30", "feed.max_jump_pct=5", duration_s=40
    )
    assert_clean_finish(result, events)
    sent = fake.stats.malformed_sent
    expected = Counter()
    for kind, n in sent.items():
        expected[REASON_OF_KIND[kind]] += n
    dropped = result.report["malformed_dropped"]
    assert set(dropped) == set(expected), (dropped, sent)
    for reason, n in expected.items():  # the last second's frames may still be in flight at the stop
        assert expected[reason] - 3 <= dropped[reason] <= n, (reason, dropped, expected)
    assert sum(dropped.values()) >= 15
    assert kinds(events)["feed.malformed"] >= 1
    assert result.report["reconnects"] == 0
    assert_candles_match_truth(result.run_path, fake)


async def test_a_30s_stall_trips_the_stale_gate_reconnects_and_backfills(tmp_path: Path) -> None:
    # the stall covers a candle close (at +15 s): after it, that candle comes from REST
    fake = FakeBitunix(
        seed=7, time_offset_s=offset_for_close_in(15), faults=Faults(stall_once_after_s=6, stall_for_s=30)
    )
    result, events = await live_session(
        tmp_path,
        fake,
        "strategy.history=30",
        "feed.stale_after_s=10",
        "feed.failover_after_s=600",  # no REST polling here: the gap must be backfilled
        duration_s=55,
    )
    assert_clean_finish(result, events)
    k = kinds(events)
    assert k["feed.stale"] >= 1
    stale = next(e for e in events if e["kind"] == "feed.stale")
    assert "no data for 10 s" in stale["reason"]
    assert result.report["reconnects"] >= 1
    backfills = [e for e in events if e["kind"] == "feed.backfill" and e["seq"] > stale["seq"]]
    assert backfills and backfills[0]["candles"] >= 1 and backfills[0]["missing"] == 0
    assert_candles_match_truth(result.run_path, fake)
    # nothing was submitted while the data was stale
    reconnected = next(e for e in events if e["kind"] == "feed.connected" and e["seq"] > stale["seq"])
    assert not [
        e for e in events if e["kind"] == "order.submitted" and stale["seq"] < e["seq"] < reconnected["seq"]
    ]


async def test_failover_polls_rest_while_the_websocket_is_down(tmp_path: Path) -> None:
    # the stall covers a candle close: REST polling delivers it (and quotes) while the socket is silent
    fake = FakeBitunix(
        seed=8, time_offset_s=offset_for_close_in(16), faults=Faults(stall_once_after_s=5, stall_for_s=25)
    )
    result, events = await live_session(
        tmp_path,
        fake,
        "strategy.history=30",
        "feed.stale_after_s=4",
        "feed.failover_after_s=3",
        duration_s=45,
    )
    assert_clean_finish(result, events)
    failover = [e for e in events if e["kind"] == "feed.failover"]
    assert [e["active"] for e in failover][:2] == [True, False]
    start, end = failover[0], failover[1]
    candles = assert_candles_match_truth(result.run_path, fake)
    assert any(not c["backfill"] and start["ts"] <= _iso(c["arrival_ts"]) <= end["ts"] for c in candles)


def _iso(ts: float) -> str:
    from protocols.records import iso

    return iso(ts)


async def test_rest_rate_limit_replies_slow_the_seed_down_without_failure(tmp_path: Path) -> None:
    fake = FakeBitunix(seed=9, history_candles=1000, faults=Faults(rest_rate_limit_per_s=1))
    result, events = await live_session(tmp_path, fake, "strategy.history=600", duration_s=25)
    assert_clean_finish(result, events)
    assert fake.stats.rest_rate_limited >= 1
    assert result.report["rest_retries"] >= 1
    retries = [e for e in events if e["kind"] == "feed.rest_retry"]
    assert retries and all(("10005" in r["reason"] or "10006" in r["reason"]) for r in retries)
    seeded = next(e for e in events if e["kind"] == "feed.seeded")
    assert seeded["candles"] == 600
    assert len(market_candles(result.run_path)) >= 600
    assert_candles_match_truth(result.run_path, fake)


async def test_refused_handshakes_at_start_fall_back_to_mock_loudly(tmp_path: Path) -> None:
    fake = FakeBitunix(seed=11, faults=Faults(refuse_handshakes_for_s=120))
    result, events = await live_session(
        tmp_path, fake, "feed.connect_timeout_s=3", "feed.fallback=mock", duration_s=12
    )
    assert_clean_finish(result, events)
    assert fake.stats.handshakes_refused >= 1
    (fallback,) = [e for e in events if e["kind"] == "feed.fallback"]
    assert "no live data within 3 s" in fallback["reason"]
    assert result.report["data_source"].startswith("mock (fallback: no live data within 3 s")
    ticks = [r for r in map(json.loads, (result.run_path / "market.jsonl").open()) if r["type"] == "tick"]
    assert len(ticks) >= 10  # the mock source took over and the session went on


async def test_refused_handshakes_with_fallback_none_keep_retrying(tmp_path: Path) -> None:
    fake = FakeBitunix(seed=12, faults=Faults(refuse_handshakes_for_s=6))
    result, events = await live_session(
        tmp_path,
        fake,
        "feed.connect_timeout_s=2",
        "feed.fallback=none",
        "feed.backoff_max_s=2",
        "strategy.history=30",
        duration_s=15,
    )
    assert_clean_finish(result, events)
    k = kinds(events)
    assert k["feed.fallback"] == 0
    assert k["feed.reconnecting"] >= 2
    assert k["feed.connected"] == 1
    assert result.report["data_source"] == "bitunix"
    connected = next(e for e in events if e["kind"] == "feed.connected")
    assert connected["downtime_s"] >= 5.0
    assert result.report["feed_downtime_s"] >= 5.0
