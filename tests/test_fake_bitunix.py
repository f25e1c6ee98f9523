"""The fake Bitunix exchange (tools/fake_bitunix.py): real sockets on 127.0.0.1, real clock."""

from __future__ import annotations

import email.utils
import gzip
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import trio
import trio_websocket

from protocols.bitunix import BookTop, FrameValidator, Rejected
from tools.fake_bitunix import MALFORMED_KINDS, FakeBitunix, Faults
from tools.fake_bitunix.server import BOOK15_MIN, BOOK_TOUCH_MAX, book_size_bounds

REPO = Path(__file__).resolve().parents[1]
KLINE = "/api/v1/futures/market/kline"
ALL_CHANNELS = ["market_kline_1min", "depth_book5", "trade", "ticker", "tickers", "price"]


@asynccontextmanager
async def serving(fake: FakeBitunix) -> AsyncIterator[FakeBitunix]:
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.run)
        try:
            yield fake
        finally:
            nursery.cancel_scope.cancel()
    assert fake.stats.internal_errors == 0


def offset_to(second_of_minute: float) -> float:
    """A time_offset_s that puts the exchange clock at this second of a minute now."""
    return (second_of_minute - time.time() % 60) % 60


def subscribe(*channels: str, symbol: str = "BTCUSDT") -> str:
    return json.dumps({"op": "subscribe", "args": [{"symbol": symbol, "ch": ch} for ch in channels]})


async def frames_for(ws: trio_websocket.WebSocketConnection, seconds: float) -> list[tuple[float, str]]:
    """Every frame received in the next `seconds`, with its arrival time."""
    got = []
    with trio.move_on_after(seconds):
        while True:
            message = await ws.get_message()
            assert isinstance(message, str), "the exchange sends text frames only"
            got.append((trio.current_time(), message))
    return got


async def assert_closed_abruptly(ws: trio_websocket.WebSocketConnection, within: float) -> None:
    with trio.fail_after(within), pytest.raises(trio_websocket.ConnectionClosed) as closed:
        while True:
            await ws.get_message()
    assert closed.value.reason is not None and closed.value.reason.code == 1006


async def test_connect_frame_and_ping_pong() -> None:
    with trio.fail_after(5):
        async with serving(FakeBitunix(seed=1)) as fake, trio_websocket.open_websocket_url(fake.ws_url) as ws:
            assert json.loads(await ws.get_message()) == {"op": "connect", "data": {"result": True}}
            await ws.send_message('{"op":"ping","ping":1700000000}')
            pong = json.loads(await ws.get_message())
            assert pong["op"] == "ping" and pong["pong"] == 1700000000
            assert abs(pong["ping"] - fake.now_ms() / 1000) < 2
            assert fake.stats.pings_received == fake.stats.pongs_sent == 1


async def test_the_ping_replys_server_second_is_the_second_the_socket_opened() -> None:
    # observed on the public socket (bitunix-private-api.md §3.3, NEMA §5): the reply's `ping` is
    # the second the socket opened, not the server's time now; a client must not take it for a
    # clock. Asked again in a later second, the reply still says the opening one.
    with trio.fail_after(5):
        async with serving(FakeBitunix(seed=1)) as fake:
            before = fake.now_ms() // 1000
            async with trio_websocket.open_websocket_url(fake.ws_url) as ws:
                await ws.get_message()  # connect
                opened = fake.now_ms() // 1000
                await trio.sleep(((opened + 1) * 1000 - fake.now_ms()) / 1000 + 0.005)  # into the next second
                await ws.send_message('{"op":"ping","ping":1}')
                pong = json.loads(await ws.get_message())
                assert fake.now_ms() // 1000 > opened
                assert before <= pong["ping"] <= opened and pong["pong"] == 1


async def test_the_uncertain_readings_on_request_an_ack_per_channel_and_http_429() -> None:
    faults = Faults(subscribe_ack=True, rest_rate_limited_first=1, rest_rate_limit_status=429)
    with trio.fail_after(5):
        async with serving(FakeBitunix(seed=2, faults=faults)) as fake:
            async with trio_websocket.open_websocket_url(fake.ws_url) as ws:
                await ws.get_message()  # connect
                await ws.send_message(subscribe("market_kline_1min", "depth_book5"))
                acks = [json.loads(await ws.get_message()) for _ in range(2)]
            assert acks == [
                {"op": "subscribe", "ch": ch, "data": {"result": True}}
                for ch in ("market_kline_1min", "depth_book5")
            ]
            async with httpx.AsyncClient(base_url=fake.rest_url) as http:
                limited, served = [await http.get(KLINE, params={"symbol": "BTCUSDT"}) for _ in range(2)]
    assert limited.status_code == 429 and limited.json()["code"] == 10005
    assert served.status_code == 200 and served.json()["code"] == 0


async def test_subscribed_channels_only_after_a_delay_then_unsubscribe() -> None:
    with trio.fail_after(8):
        async with serving(FakeBitunix(seed=2)) as fake, trio_websocket.open_websocket_url(fake.ws_url) as ws:
            await ws.get_message()
            sent = trio.current_time()
            await ws.send_message(subscribe("market_kline_1min", "depth_book5"))
            got = await frames_for(ws, 1.6)
            assert 0.09 <= got[0][0] - sent <= 0.9, "data starts 100-600 ms after a subscribe, with no ack"
            frames = [json.loads(text) for _, text in got]
            assert {f["ch"] for f in frames} == {"market_kline_1min", "depth_book5"}
            for f in frames:
                assert f["symbol"] == "BTCUSDT" and isinstance(f["ts"], int)
                if f["ch"] == "depth_book5":
                    bids = [float(p) for p, _ in f["data"]["b"]]
                    asks = [float(p) for p, _ in f["data"]["a"]]
                    assert len(bids) == len(asks) == 5 and bids == sorted(bids, reverse=True)
                    assert asks == sorted(asks) and bids[0] < asks[0]
                else:
                    d = f["data"]
                    assert all(isinstance(d[k], str) for k in "ohlcbq")
                    assert float(d["l"]) <= min(float(d["o"]), float(d["c"])) <= float(d["h"])

            await ws.send_message(
                json.dumps({"op": "unsubscribe", "args": [{"symbol": "BTCUSDT", "ch": "depth_book5"}]})
            )
            after = [json.loads(text) for _, text in await frames_for(ws, 1.2)]
            reply = next(i for i, f in enumerate(after) if f.get("op") == "unsubscribe")
            assert after[reply]["data"] == "success" and isinstance(after[reply]["ts"], int)
            assert {f.get("ch") for f in after[reply + 1 :]} == {"market_kline_1min"}


async def test_bad_client_input_gets_no_reply_and_unknown_symbol_one_empty_frame() -> None:
    with trio.fail_after(8):
        async with serving(FakeBitunix(seed=3)) as fake, trio_websocket.open_websocket_url(fake.ws_url) as ws:
            await ws.get_message()
            for bad in ("hello", '{"op":"dance"}', subscribe("market_kline_7min", "depths")):
                await ws.send_message(bad)
            assert await frames_for(ws, 1.1) == []
            await ws.send_message(subscribe("depth_book1", symbol="nosuchusdt"))
            got = [json.loads(text) for _, text in await frames_for(ws, 1.5)]
            assert got == [
                {
                    "ch": "depth_book1",
                    "symbol": "NOSUCHUSDT",
                    "ts": got[0]["ts"],
                    "data": {"b": [["", ""]], "a": [["", ""]]},
                }
            ]
            await ws.send_message('{"op":"ping","ping":5}')
            assert json.loads(await ws.get_message())["pong"] == 5
            assert fake.stats.ignored_client_msgs == 2 and fake.stats.connections == 1


async def test_rest_klines_newest_first_swapped_volumes_paging_equal_truth() -> None:
    fake = FakeBitunix(seed=4, history_candles=250, time_offset_s=offset_to(15))
    with trio.fail_after(10):
        async with serving(fake), httpx.AsyncClient(base_url=fake.rest_url) as http:
            page1 = (
                await http.get(KLINE, params={"symbol": "BTCUSDT", "interval": "1m", "limit": 200})
            ).json()
            assert page1["code"] == 0 and len(page1["data"]) == 200
            oldest = int(page1["data"][-1]["time"])
            page2 = (
                await http.get(
                    KLINE, params={"symbol": "BTCUSDT", "interval": "1m", "endTime": oldest - 1, "limit": 200}
                )
            ).json()
            rows = page1["data"] + page2["data"]
            times = [int(r["time"]) for r in rows]
            assert times == sorted(times, reverse=True) and len(rows) == 251
            assert times[0] == fake.now_ms() // 60_000 * 60_000, "the open candle is the newest row"
            closed = [
                (
                    int(r["time"]),
                    float(r["open"]),
                    float(r["high"]),
                    float(r["low"]),
                    float(r["close"]),
                    float(r["quoteVol"]),
                )
                for r in reversed(rows[1:])
            ]
            assert closed == fake.truth_candles()
            assert all(float(r["quoteVol"]) * 50_000 < float(r["baseVol"]) for r in rows), "names are swapped"

            default = (await http.get(KLINE, params={"symbol": "btcusdt"})).json()["data"]
            # the open candle (row 0) takes a new trade every 250 ms: compare it by its time only
            assert default[0]["time"] == page1["data"][0]["time"]
            assert default[1:] == page1["data"][1:100]
            window = (
                await http.get(
                    KLINE, params={"symbol": "BTCUSDT", "startTime": times[20], "endTime": times[10]}
                )
            ).json()
            assert [int(r["time"]) for r in window["data"]] == times[10:21]

            five = (await http.get(KLINE, params={"symbol": "BTCUSDT", "interval": "5m", "limit": 3})).json()[
                "data"
            ]
            bucket = int(five[1]["time"])
            parts = [c for c in fake.truth_candles() if bucket <= c[0] < bucket + 300_000]
            assert len(parts) == 5
            assert (float(five[1]["open"]), float(five[1]["close"])) == (parts[0][1], parts[-1][4])
            assert float(five[1]["high"]) == max(c[2] for c in parts) and float(five[1]["low"]) == min(
                c[3] for c in parts
            )

            bad = (await http.get(KLINE, params={"symbol": "BTCUSDT", "interval": "7m"})).json()
            assert bad["code"] == 10008


async def test_last_push_of_a_bucket_is_the_truth_candle() -> None:
    fake = FakeBitunix(seed=5, history_candles=5, time_offset_s=offset_to(57.6))
    with trio.fail_after(10):
        async with serving(fake), trio_websocket.open_websocket_url(fake.ws_url) as ws:
            await ws.get_message()
            await ws.send_message(subscribe("market_kline_1min"))
            pushes: list[dict[str, Any]] = []
            while len({p["ts"] // 60_000 for p in pushes}) < 2:
                pushes.append(json.loads(await ws.get_message()))
            bucket = pushes[0]["ts"] // 60_000
            last = [p for p in pushes if p["ts"] // 60_000 == bucket][-1]
            assert len(pushes) >= 4 and (bucket + 1) * 60_000 - last["ts"] <= 500
            d = last["data"]
            truth = fake.truth_candles()[-1]
            assert truth[0] == bucket * 60_000
            assert (float(d["o"]), float(d["h"]), float(d["l"]), float(d["c"]), float(d["b"])) == truth[1:]

            async with httpx.AsyncClient(base_url=fake.rest_url) as http:
                reply = await http.get(
                    KLINE, params={"symbol": "BTCUSDT", "endTime": bucket * 60_000, "limit": 1}
                )
            row = reply.json()["data"][0]
            assert (row["open"], row["high"], row["low"], row["close"]) == (d["o"], d["h"], d["l"], d["c"])
            assert (row["quoteVol"], row["baseVol"]) == (d["b"], d["q"])


async def test_more_than_five_messages_a_second_disconnects() -> None:
    with trio.fail_after(5):
        async with serving(FakeBitunix(seed=6)) as fake, trio_websocket.open_websocket_url(fake.ws_url) as ws:
            await ws.get_message()
            for i in range(5):
                await ws.send_message(json.dumps({"op": "ping", "ping": i}))
            assert [json.loads(await ws.get_message())["pong"] for _ in range(5)] == list(range(5))
            await ws.send_message('{"op":"ping","ping":6}')
            await assert_closed_abruptly(ws, 2)
            assert fake.stats.rate_disconnects == 1 and fake.stats.client_msgs_max_per_s == 6


async def test_a_silent_socket_is_closed_a_pinging_one_is_not() -> None:
    with trio.fail_after(8):
        async with serving(FakeBitunix(seed=7, idle_timeout_s=1.0)) as fake:
            async with trio_websocket.open_websocket_url(fake.ws_url) as quiet:
                start = trio.current_time()
                await assert_closed_abruptly(quiet, 3)
                assert trio.current_time() - start >= 0.9
            async with trio_websocket.open_websocket_url(fake.ws_url) as chatty:
                for i in range(6):
                    await trio.sleep(0.3)
                    await chatty.send_message(json.dumps({"op": "ping", "ping": i}))
                assert [json.loads(m)["op"] for _, m in await frames_for(chatty, 0.2)] == ["connect"] + [
                    "ping"
                ] * 6
            assert fake.stats.idle_disconnects == 1


async def test_a_protocol_ping_as_first_frame_kills_the_socket() -> None:
    with trio.fail_after(5):
        async with serving(FakeBitunix(seed=8)) as fake, trio_websocket.open_websocket_url(fake.ws_url) as ws:
            await ws.get_message()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ws.ping)  # never answered
                await assert_closed_abruptly(ws, 2)
                nursery.cancel_scope.cancel()
            assert fake.stats.protocol_ping_kills == 1


async def data_frames_until_closed(ws: trio_websocket.WebSocketConnection, within: float) -> list[str]:
    """The data frames received until the socket closes abruptly (1006), which it must `within` s."""
    got = []
    with trio.fail_after(within), pytest.raises(trio_websocket.ConnectionClosed) as closed:
        while True:
            message = await ws.get_message()
            assert isinstance(message, str)
            if '"ch"' in message[:8] or not message.startswith('{"op"'):
                got.append(message)
    assert closed.value.reason is not None and closed.value.reason.code == 1006
    return got


async def test_drop_after_frames_closes_without_close_frame_after_exactly_n_data_frames() -> None:
    fake = FakeBitunix(
        seed=9,
        faults=Faults(drop_after_frames=7, drop_connections=2),
        push_interval_s=0.2,
        price_interval_s=0.2,
    )
    with trio.fail_after(10):
        async with serving(fake):
            for _ in range(2):
                async with trio_websocket.open_websocket_url(fake.ws_url) as ws:
                    await ws.send_message(subscribe("depth_book1", "market_kline_1min", "price"))
                    assert len(await data_frames_until_closed(ws, 4)) == 7
            async with trio_websocket.open_websocket_url(fake.ws_url) as ws:  # the third is spared
                await ws.send_message(subscribe("depth_book1", "market_kline_1min", "price"))
                got = await frames_for(ws, 1.5)
                assert len(got) > 7
    assert fake.stats.drops == 2
    assert [e for e in fake.stats.faults_log if e[0] == "drop"] == [("drop", 1, 7), ("drop", 2, 7)]


async def test_drop_after_s_closes_each_connection_at_its_age_and_the_log_says_when() -> None:
    """A flapping server: each connection is closed abruptly 1 s after it was accepted; the
    server's record of each (`ws_log`) has its times, data frames and the client's messages."""
    fake = FakeBitunix(seed=9, faults=Faults(drop_after_s=1.0))
    with trio.fail_after(10):
        async with serving(fake):
            for _ in range(2):
                async with trio_websocket.open_websocket_url(fake.ws_url) as ws:
                    opened = trio.current_time()
                    await ws.send_message(subscribe("depth_book1"))
                    await ws.send_message('{"op":"ping","ping":1700000000}')
                    got = await data_frames_until_closed(ws, 2)
                    assert trio.current_time() - opened == pytest.approx(1.0, abs=0.25)
                    assert got
    assert fake.stats.drops == 2
    assert [e for e in fake.stats.faults_log if e[0] == "drop_after_s"] == [
        ("drop_after_s", 1),
        ("drop_after_s", 2),
    ]
    assert [r.number for r in fake.stats.ws_log] == [1, 2]
    for record in fake.stats.ws_log:
        first, last, closed = record.first_data_at, record.last_data_at, record.closed_at
        assert first is not None and last is not None and closed is not None
        assert closed - record.opened_at == pytest.approx(1.0, abs=0.1)
        assert record.opened_at < first <= last < closed
        assert record.data_frames >= 1 and record.client_msgs == 2 and record.client_msgs_max_per_s == 2
        assert 0 < record.data_span() < 1.0


async def test_timed_drop_fault_closes_without_close_frame_and_can_be_switched_off() -> None:
    fake = FakeBitunix(seed=9, faults=Faults(drop_every_s=0.4))
    with trio.fail_after(6):
        async with serving(fake):
            async with trio_websocket.open_websocket_url(fake.ws_url) as ws:
                await assert_closed_abruptly(ws, 1.5)
            assert fake.stats.drops >= 1
            fake.faults.drop_every_s = 0
            drops = fake.stats.drops
            async with trio_websocket.open_websocket_url(fake.ws_url) as ws:
                await ws.send_message(subscribe("depth_book1"))
                got = await frames_for(ws, 1.2)
                assert len(got) >= 3
            assert fake.stats.drops == drops


async def test_stall_after_n_frames_sends_nothing_then_resumes() -> None:
    # the stall starts after the 3rd data frame, whenever that is: no race with the first data
    fake = FakeBitunix(seed=10, faults=Faults(stall_once_after_frames=3, stall_for_s=1.2))
    with trio.fail_after(8):
        async with serving(fake), trio_websocket.open_websocket_url(fake.ws_url) as ws:
            await ws.get_message()
            await ws.send_message(subscribe("depth_book1"))
            for _ in range(3):
                assert json.loads(await ws.get_message())["ch"] == "depth_book1"
            stalled_at = trio.current_time()
            await trio.sleep(0.4)
            await ws.send_message('{"op":"ping","ping":1}')  # sent during the stall
            got = await frames_for(ws, 2.0)
            assert got[0][0] - stalled_at >= 0.8, "nothing at all during the stall"
            assert any(json.loads(m).get("op") == "ping" for _, m in got), "the pong is held, then sent"
            depth = [t for t, m in got if json.loads(m).get("ch") == "depth_book1"]
            assert len(depth) >= 2, "pushes resume after the stall"
            assert fake.stats.stalls == 1 and fake.stats.faults_log == [("stall", 3)]


async def test_stall_every_n_frames_is_counted_not_timed() -> None:
    fake = FakeBitunix(
        seed=10,
        faults=Faults(stall_every_frames=4, stall_for_s=0.2),
        depth_interval_s=0.1,
        price_interval_s=0.1,
    )
    with trio.fail_after(8):
        async with serving(fake), trio_websocket.open_websocket_url(fake.ws_url) as ws:
            await ws.get_message()
            await ws.send_message(subscribe("depth_book1", "price"))
            for _ in range(13):
                await ws.get_message()
            assert fake.stats.stalls == fake.stats.data_frames_sent // 4 >= 3
            assert [e[1] for e in fake.stats.faults_log] == [4 * k for k in range(1, fake.stats.stalls + 1)]


async def test_timed_stalls_still_work() -> None:
    fake = FakeBitunix(seed=10, faults=Faults(stall_once_after_s=0.2, stall_for_s=0.3))
    with trio.fail_after(5):
        async with serving(fake):
            await trio.sleep(0.6)
            assert fake.stats.stalls == 1
            fake.faults.stall_every_s, fake.faults.stall_for_s = 0.2, 0.1
            await trio.sleep(1.0)
            assert fake.stats.stalls >= 3


def malformed_by_stream(fake: FakeBitunix) -> dict[tuple[int, str], list[tuple[int, str]]]:
    """(frame index, kind) of every malformed frame, by stream (connection no., channel)."""
    out: dict[tuple[int, str], list[tuple[int, str]]] = {}
    for entry in fake.stats.faults_log:
        if entry[0] == "malformed":
            _, conn, ch, index, kind = entry
            out.setdefault((conn, ch), []).append((index, kind))
    return out


async def test_malformed_frames_cover_every_kind_on_every_stream() -> None:
    fake = FakeBitunix(
        seed=11, faults=Faults(malformed_fraction=1.0), push_interval_s=0.2, price_interval_s=0.2
    )
    no_crossed = {"trade", "ticker", "price"}  # no bid/ask or high/low to cross

    def covered() -> bool:
        streams = malformed_by_stream(fake)
        return len(streams) == len(ALL_CHANNELS) and all(
            {kind for _, kind in got}
            == set(MALFORMED_KINDS) - ({"crossed_book"} if ch in no_crossed else set())
            for (_, ch), got in streams.items()
        )

    with trio.fail_after(15):
        async with serving(fake), trio_websocket.open_websocket_url(fake.ws_url) as ws:
            await ws.get_message()
            await ws.send_message(subscribe(*ALL_CHANNELS))
            texts: list[str] = []
            while not covered():
                texts += [m for _, m in await frames_for(ws, 0.2)]
            texts += [m for _, m in await frames_for(ws, 0.3)]  # in flight when counted
    for (_, ch), got in malformed_by_stream(fake).items():
        indexes = [i for i, _ in got]
        assert indexes == list(range(len(indexes))), f"{ch}: every frame is malformed at fraction 1"
    parsed, unparsable = [], []
    for text in texts:
        try:
            parsed.append(json.loads(text))
        except ValueError:
            unparsable.append(text)
    assert any(t.startswith("<html>") for t in unparsable) and any(t.startswith('{"ch":') for t in unparsable)
    assert any(f.get("ch") == "market_orderflow_1min" for f in parsed)
    assert any(
        f.get("symbol") == "ETHUSDT" or (f.get("ch") == "tickers" and f["data"][0]["s"] == "ETHUSDT")
        for f in parsed
    )
    assert any(
        f.get("ch") == "market_kline_1min" and f["data"].get("c") in ("NaN", "Infinity") for f in parsed
    )
    assert set(fake.stats.frames_sent) <= {"market_kline_1min"}, "only the last push of a bucket is spared"


async def test_malformed_fraction_is_exact_per_stream() -> None:
    fake = FakeBitunix(
        seed=12, faults=Faults(malformed_fraction=0.25), depth_interval_s=0.1, price_interval_s=0.1
    )
    with trio.fail_after(10):
        async with serving(fake), trio_websocket.open_websocket_url(fake.ws_url) as ws:
            await ws.send_message(subscribe("depth_book1", "price"))
            while fake.stats.data_frames_sent < 40:
                await ws.get_message()
    for (_, ch), got in malformed_by_stream(fake).items():
        indexes = [i for i, _ in got]
        assert all(b - a == 4 for a, b in pairwise(indexes)), (ch, indexes)  # one frame in 4, evenly
        assert indexes[0] < 4


async def test_depth_book15_has_15_levels_a_large_order_must_walk_and_malformed_ones_are_dropped() -> None:
    """Every depth_book15 frame has 15 distinct levels a side, sizes varying within their level's
    bounds (so that any order between BOOK_TOUCH_MAX and BOOK15_MIN walks two levels or more and
    fits); with a quarter of them malformed (by count), the validator drops exactly those."""
    assert (BOOK_TOUCH_MAX, BOOK15_MIN) == (3.0, 8.25)
    fake = FakeBitunix(seed=16, depth_interval_s=0.1, faults=Faults(malformed_fraction=0.25))
    with trio.fail_after(10):
        async with serving(fake), trio_websocket.open_websocket_url(fake.ws_url) as ws:
            await ws.get_message()
            await ws.send_message(subscribe("depth_book15"))
            texts: list[str | bytes] = []
            while len(texts) < 40:
                texts.append(await ws.get_message())
    ((_, bad),) = malformed_by_stream(fake).items()
    malformed = dict(bad)
    assert len(malformed) == 10
    validator = FrameValidator(symbol="BTCUSDT", kline_channel="market_kline_1min", max_jump_pct=5.0)
    sizes = set()
    for i, text in enumerate(texts):
        parsed = validator.parse(text)
        if i in malformed:
            assert isinstance(parsed, Rejected), (malformed[i], parsed)
            continue
        assert isinstance(parsed, BookTop) and len(parsed.bids) == len(parsed.asks) == 15, parsed
        for side in (parsed.bids, parsed.asks):
            assert len({p for p, _ in side}) == 15
            for level, (_, qty) in enumerate(side):
                least, most = book_size_bounds(level)
                assert least <= round(qty * 10_000) <= most
                sizes.add(qty)
            assert side[0][1] <= BOOK_TOUCH_MAX and sum(q for _, q in side) >= BOOK15_MIN
            walked, left = 0, 5.0  # a 5 BTC market order
            while left > 0:
                left -= side[walked][1]
                walked += 1
            assert 2 <= walked <= 15
    assert len(sizes) > 300, "sizes vary"


async def test_trading_pairs_row_can_be_replaced() -> None:
    fake = FakeBitunix(seed=17, trading_pair={"symbolStatus": "CANCEL_ONLY", "maxMarketOrderVolume": "7"})
    pairs = "/api/v1/futures/market/trading_pairs"
    with trio.fail_after(6):
        async with serving(fake), httpx.AsyncClient(base_url=fake.rest_url) as http:
            (row,) = (await http.get(pairs, params={"symbols": "btcusdt"})).json()["data"]
            unknown = (await http.get(pairs, params={"symbols": "DOGEUSDT"})).json()
    assert (row["symbol"], row["symbolStatus"], row["maxMarketOrderVolume"]) == (
        "BTCUSDT",
        "CANCEL_ONLY",
        "7",
    )
    assert (row["basePrecision"], row["quotePrecision"], row["minTradeVolume"]) == (4, 1, "0.0001")
    assert (unknown["code"], unknown["data"]) == (0, []), "no row for a symbol it does not trade"


async def run_faulty_client(fake: FakeBitunix, connections: int, frames_last: int) -> list[int]:
    """Connect again and again to `fake` (refused ones too) until `connections` were accepted;
    read each until it is dropped, the last one for `frames_last` data frames. Returns the data
    frames each accepted connection delivered."""
    delivered = []
    async with serving(fake):
        while len(delivered) < connections:
            try:
                async with trio_websocket.open_websocket_url(fake.ws_url) as ws:
                    await ws.send_message(subscribe("market_kline_1min", "depth_book1", "price", "trade"))
                    if len(delivered) < connections - 1:
                        delivered.append(len(await data_frames_until_closed(ws, 20)))
                    else:
                        got = 0
                        while got < frames_last:
                            if not (await ws.get_message()).startswith('{"op"'):
                                got += 1
                        delivered.append(got)
            except trio_websocket.ConnectionRejected as rejected:
                assert rejected.status_code == 503
    return delivered


async def test_count_based_fault_schedules_are_the_same_every_run_whatever_the_timing() -> None:
    """The same seed and count-based faults hit the same handshakes, connections, frames and
    requests in two runs whose timing differs (latency, clock phase, pacing)."""

    def faults(latency_ms: float) -> Faults:
        return Faults(
            refuse_handshakes=2,
            drop_after_frames=10,
            drop_connections=2,
            stall_every_frames=8,
            stall_for_s=0.1,
            malformed_fraction=0.2,
            rest_error_fraction=0.3,
            rest_rate_limit_per_s=1000,
            latency_ms=latency_ms,
        )

    runs = []
    for latency_ms, offset in ((0, 0.0), (40, 17.3)):
        fake = FakeBitunix(
            seed=31,
            faults=faults(latency_ms),
            time_offset_s=offset,
            push_interval_s=0.2,
            depth_interval_s=0.1,
            price_interval_s=0.2,
        )
        with trio.fail_after(30):
            delivered = await run_faulty_client(fake, connections=3, frames_last=12)
            async with serving(fake), httpx.AsyncClient(base_url=fake.rest_url) as http:
                for _ in range(10):
                    await http.get(KLINE, params={"symbol": "BTCUSDT", "limit": 2})
        assert delivered == [10, 10, 12]
        assert fake.stats.handshakes_refused == 2 and fake.stats.drops == 2 and fake.stats.stalls >= 4
        runs.append(fake.stats.faults_log)

    def by_schedule(log: list[tuple[Any, ...]]) -> dict[Any, list[tuple[Any, ...]]]:
        """The log split into its independent schedules: one per kind, one per malformed stream."""
        out: dict[Any, list[tuple[Any, ...]]] = {}
        for e in log:
            out.setdefault(e[:3] if e[0] == "malformed" else e[0], []).append(e)
        return out

    first, second = map(by_schedule, runs)
    assert first["refuse"] == second["refuse"] == [("refuse", 1), ("refuse", 2)]
    assert first["drop"] == second["drop"] == [("drop", 1, 10), ("drop", 2, 10)]
    assert first["rest_error"] == second["rest_error"] and len(first["rest_error"]) == 3
    assert Counter(e[0] for e in runs[0])["malformed"] >= 4
    # How the frames of a connection are shared among its channels depends on timing, so a stream
    # may run a few frames longer in one run: each schedule must agree entry for entry as far as
    # both runs go.
    common = (first.keys() & second.keys()) - {"refuse", "drop", "rest_error"}
    assert "stall" in common and len(common) >= 6
    for key in common:
        n = min(len(first[key]), len(second[key]))
        assert first[key][:n] == second[key][:n], key


async def test_latency_delays_ws_frames_and_rest_replies() -> None:
    fake = FakeBitunix(seed=17, faults=Faults(latency_ms=300))
    with trio.fail_after(5):
        async with serving(fake), trio_websocket.open_websocket_url(fake.ws_url) as ws:
            await ws.get_message()  # the connect frame (its delay began before the handshake ended here)
            start = trio.current_time()
            await ws.send_message('{"op":"ping","ping":1}')
            await ws.get_message()
            assert trio.current_time() - start >= 0.29  # the pong, sent 300 ms after the ping came
            async with httpx.AsyncClient(base_url=fake.rest_url) as http:
                start = trio.current_time()
                assert (await http.get(KLINE, params={"symbol": "BTCUSDT", "limit": 1})).json()["code"] == 0
                assert trio.current_time() - start >= 0.29


async def test_first_n_handshakes_refused_then_accepted() -> None:
    fake = FakeBitunix(seed=12, faults=Faults(refuse_handshakes=2))
    with trio.fail_after(5):
        async with serving(fake):
            for _ in range(2):
                with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
                    async with trio_websocket.open_websocket_url(fake.ws_url):
                        pass
                assert rejected.value.status_code == 503
            async with trio_websocket.open_websocket_url(fake.ws_url) as ws:
                assert json.loads(await ws.get_message())["op"] == "connect"
            assert fake.stats.handshakes_refused == 2 and fake.stats.connections == 1
            assert fake.stats.faults_log == [("refuse", 1), ("refuse", 2)]


async def test_refused_handshakes_for_a_time_then_accepted() -> None:
    fake = FakeBitunix(seed=12, faults=Faults(refuse_handshakes_for_s=1.5))
    with trio.fail_after(6):
        async with serving(fake):
            started = trio.current_time()
            with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
                async with trio_websocket.open_websocket_url(fake.ws_url):
                    pass
            assert rejected.value.status_code == 503
            await trio.sleep_until(started + 1.6)
            async with trio_websocket.open_websocket_url(fake.ws_url) as ws:
                assert json.loads(await ws.get_message())["op"] == "connect"
            assert fake.stats.handshakes_refused == 1 and fake.stats.connections == 1


async def test_rest_errors_cycle_through_http_and_code_errors() -> None:
    fake = FakeBitunix(seed=13, faults=Faults(rest_error_fraction=0.5, rest_rate_limit_per_s=1000))
    with trio.fail_after(6):
        async with serving(fake), httpx.AsyncClient(base_url=fake.rest_url) as http:
            replies = [await http.get(KLINE, params={"symbol": "BTCUSDT", "limit": 2}) for _ in range(12)]
    outcomes = [r.status_code if r.status_code != 200 else r.json()["code"] for r in replies]
    assert outcomes == [0, 500, 0, 503, 0, 10001] * 2, "every other request, cycling through the kinds"
    assert fake.stats.rest_errors == 6 and fake.stats.rest_requests == 12


async def test_rest_rate_limit_answers_10005_with_http_200() -> None:
    fake = FakeBitunix(seed=14)
    with trio.fail_after(6):
        async with serving(fake), httpx.AsyncClient(base_url=fake.rest_url) as http:
            replies = [await http.get("/api/v1/futures/market/tickers") for _ in range(16)]
            assert all(r.status_code == 200 for r in replies)
            codes = [r.json()["code"] for r in replies]
            assert codes[:10] == [0] * 10 and set(codes[10:]) <= {10005, 10006} and 10005 in codes
            assert fake.stats.rest_rate_limited == 6
            await trio.sleep(1.05)
            assert (await http.get("/api/v1/futures/market/tickers")).json()["code"] == 0


async def test_rest_endpoints_and_error_envelopes() -> None:
    fake = FakeBitunix(seed=15, faults=Faults(rest_rate_limit_per_s=1000))
    market = "/api/v1/futures/market/"
    with trio.fail_after(6):
        async with serving(fake), httpx.AsyncClient(base_url=fake.rest_url) as http:
            depth = await http.get(market + "depth", params={"symbol": "BTCUSDT", "limit": "15"})
            assert "date" in depth.headers
            book = depth.json()["data"]
            bids = [float(p) for p, _ in book["bids"]]
            asks = [float(p) for p, _ in book["asks"]]
            assert (
                len(bids) == 15
                and bids == sorted(bids, reverse=True)
                and asks == sorted(asks)
                and bids[0] < asks[0]
            )
            assert (
                len(
                    (await http.get(market + "depth", params={"symbol": "BTCUSDT", "limit": "max"})).json()[
                        "data"
                    ]["asks"]
                )
                == 200
            )
            assert (await http.get(market + "depth", params={"symbol": "BTCUSDT", "limit": "7"})).json()[
                "code"
            ] == 10008
            ticker = (await http.get(market + "tickers", params={"symbols": "BTCUSDT,ETHUSDT"})).json()[
                "data"
            ]
            assert [t["symbol"] for t in ticker] == ["BTCUSDT"] and float(ticker[0]["lastPrice"]) > 0
            funding = (await http.get(market + "funding_rate", params={"symbol": "BTCUSDT"})).json()["data"]
            assert funding["fundingInterval"] == 8 and int(funding["nextFundingTime"]) % (8 * 3600_000) == 0
            pairs = (await http.get(market + "trading_pairs")).json()["data"]
            assert pairs[0]["symbolStatus"] == "OPEN" and pairs[0]["basePrecision"] == 4
            errors = [
                (await http.get(market + "depth")).json(),
                (await http.get(market + "depth", params={"symbol": "DOGEUSDT"})).json(),
                (await http.get(market + "nothing")).json(),
            ]
            assert [(e["code"], e["data"]) for e in errors] == [(1, None), (20015, None), (404, None)]
            assert errors[1]["msg"] == "this Futures is not allowed to trade."


async def test_csv_replay_keeps_the_real_shapes(tmp_path: Path) -> None:
    rows = [(100.0, 101.0 + i % 4, 99.0 - i % 3, 100.0 + (i % 5 - 2) * 0.25, 1.5 + i) for i in range(30)]
    text = "open_time_ms,open,high,low,close,volume\n" + "".join(
        f"{i * 60_000},{o},{h},{lo},{c},{v}\n" for i, (o, h, lo, c, v) in enumerate(rows)
    )
    path = tmp_path / "candles.csv.gz"
    path.write_bytes(gzip.compress(text.encode()))
    fake = FakeBitunix(seed=16, candles_csv=path, history_candles=40, time_offset_s=offset_to(20))
    truth = fake.truth_candles()
    first = random.Random(16).randrange(len(rows))
    for k, (_, o, h, lo, c, v) in enumerate(truth):
        ro, rh, rl, rc, rv = rows[(first + k) % len(rows)]
        assert abs(h - o * rh / ro) <= 0.1 and abs(lo - o * rl / ro) <= 0.1 and abs(c - o * rc / ro) <= 0.1
        assert v == rv
    assert all(truth[k][1] == truth[k - 1][4] for k in range(1, len(truth))), (
        "opens chain from the last close"
    )
    with trio.fail_after(5):
        async with serving(fake), httpx.AsyncClient(base_url=fake.rest_url) as http:
            got = (await http.get(KLINE, params={"symbol": "BTCUSDT", "limit": 41})).json()["data"]
    assert [(int(r["time"]), float(r["close"])) for r in reversed(got[1:])] == [(t[0], t[4]) for t in truth]


def test_bad_csv_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("time,o,h,l,c\n1,2,3,4,5\n")
    with pytest.raises(ValueError, match="must start with the header"):
        FakeBitunix(candles_csv=path)


async def test_cli_prints_urls_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    port_file = tmp_path / "ports.json"
    cmd = [sys.executable, "-m", "tools.fake_bitunix", "--port", "0", "--rest-port", "0", "--seed", "3"]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            run = partial(
                trio.run_process,
                [*cmd, "--port-file", str(port_file)],
                stdout=subprocess.PIPE,
                check=False,
                cwd=REPO,
                env=env,
            )
            proc = await nursery.start(run)
            out = b""
            while not out.endswith(b"\n"):
                chunk = await proc.stdout.receive_some()
                assert chunk, "the CLI exited before printing its URLs"
                out += chunk
            urls = json.loads(out)
            assert json.loads(port_file.read_text()) == urls
            assert urls["ws_url"].startswith("ws://127.0.0.1:") and urls["ws_url"].endswith("/public/")
            async with trio_websocket.open_websocket_url(urls["ws_url"]) as ws:
                assert json.loads(await ws.get_message())["op"] == "connect"
            async with httpx.AsyncClient(base_url=urls["rest_url"]) as http:
                assert (await http.get(KLINE, params={"symbol": "BTCUSDT"})).json()["code"] == 0
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
            assert proc.returncode == 0


def test_the_cli_started_with_sigint_ignored_leaves_it_ignored(tmp_path: Path) -> None:
    """A fake exchange run as a background job of a script (`python -m tools.fake_bitunix ... &`)
    starts with SIGINT ignored: a Ctrl-C for the script's foreground must leave it serving, as
    Python leaves it (found by a CLI audit: trio's signal receiver took SIGINT over). Read from
    /proc once it serves (bit n - 1 of SigIgn is signal n); a SIGTERM still stops it."""
    port_file = tmp_path / "ports.json"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.fake_bitunix", "--port-file", str(port_file)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline()  # its URLs: it serves
        status = Path(f"/proc/{proc.pid}/status").read_text().splitlines()
        masks = {
            line.split(":")[0]: int(line.split()[1], 16)
            for line in status
            if line.startswith(("SigIgn", "SigCgt"))
        }
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert masks["SigIgn"] >> (signal.SIGINT - 1) & 1 and not masks["SigCgt"] >> (signal.SIGINT - 1) & 1
    assert masks["SigCgt"] >> (signal.SIGTERM - 1) & 1
    assert proc.returncode == 0


async def test_the_date_header_is_the_exchange_clock_that_stamps_its_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The exchange clock is the wall time when the fake was made, then the monotonic clock's time
    # since (as a session's clock); the `Date` header, which the feed reads as the exchange's time
    # (which candles have closed), must be that clock, not the system clock read anew: a system
    # clock stepped 120 s forward after the start (NTP, a laptop's resync) moved the header alone
    # (found by an audit against the protocol doc: "the HTTP Date header gives server time").
    import tools.fake_bitunix.server as server

    fake = FakeBitunix(seed=17, time_offset_s=30.0)
    real_time = time.time
    monkeypatch.setattr(
        server, "time", SimpleNamespace(time=lambda: real_time() + 120.0, monotonic=time.monotonic)
    )
    with trio.fail_after(6):
        async with serving(fake), httpx.AsyncClient(base_url=fake.rest_url) as http:
            before = fake.now_ms() / 1000
            reply = await http.get(KLINE, params={"symbol": "BTCUSDT", "limit": 1})
            after = fake.now_ms() / 1000
    seen = email.utils.parsedate_to_datetime(reply.headers["date"]).timestamp()
    # whole seconds, never ahead of the exchange's time
    assert int(before) <= seen <= after, (seen - before, seen - after)


async def test_a_symbol_on_4h_funding_says_so_in_its_price_pushes_and_rest() -> None:
    """`funding_hours`: ETHUSDT settles every 4 h beside BTCUSDT's 8 h. Its `price` pushes' `ft`
    is the last multiple of 4 h before the frame, `nft` 4 h after it, and REST's `funding_rate`
    says `fundingInterval` 4 and the same next instant; BTCUSDT's stay on 00/08/16 UTC."""
    hour = 3_600_000
    # the exchange's clock at 13:00 UTC of some day: after 12:00 (a 4 h instant, no 8 h one)
    wall = time.time()
    offset = (math.floor(wall * 1000 / (24 * hour)) * 24 * hour + 13 * hour) / 1000 - wall
    fake = FakeBitunix(
        seed=3,
        symbols=("BTCUSDT", "ETHUSDT"),
        funding_hours={"ethusdt": 4},
        time_offset_s=offset,
        faults=Faults(rest_rate_limit_per_s=1000),
    )
    day = math.floor(fake.now_ms() / (24 * hour)) * 24 * hour
    want = {"BTCUSDT": (day + 8 * hour, day + 16 * hour, 8), "ETHUSDT": (day + 12 * hour, day + 16 * hour, 4)}
    market = "/api/v1/futures/market/"
    with trio.fail_after(10):
        async with serving(fake), httpx.AsyncClient(base_url=fake.rest_url) as http:
            async with trio_websocket.open_websocket_url(fake.ws_url) as ws:
                await ws.get_message()  # connect
                for symbol in want:
                    await ws.send_message(subscribe("price", symbol=symbol))
                seen: dict[str, dict[str, str]] = {}
                while len(seen) < 2:
                    frame = json.loads(await ws.get_message())
                    if frame.get("ch") == "price":
                        seen[frame["symbol"]] = frame["data"]
            for symbol, (ft, nft, hours) in want.items():
                iso = [
                    datetime.fromtimestamp(t / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") for t in (ft, nft)
                ]
                assert [seen[symbol]["ft"], seen[symbol]["nft"]] == iso, symbol
                rest = (await http.get(market + "funding_rate", params={"symbol": symbol})).json()["data"]
                assert (rest["fundingInterval"], int(rest["nextFundingTime"])) == (hours, nft), symbol
    with pytest.raises(ValueError, match="funding hours for ETHUSDT: 3; expected one of 1, 2, 4, 8"):
        FakeBitunix(symbols=("BTCUSDT", "ETHUSDT"), funding_hours={"ETHUSDT": 3})
    with pytest.raises(ValueError, match="funding hours for SOLUSDT: not a symbol served"):
        FakeBitunix(funding_hours={"SOLUSDT": 4})
