"""The fake Bitunix exchange (tools/fake_bitunix.py): real sockets on 127.0.0.1, real clock."""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio_websocket

from tools.fake_bitunix import MALFORMED_KINDS, FakeBitunix, Faults

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
            assert default == page1["data"][:100]
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
    with trio.fail_after(6):
        async with serving(FakeBitunix(seed=7, idle_timeout_s=0.6)) as fake:
            async with trio_websocket.open_websocket_url(fake.ws_url) as quiet:
                start = trio.current_time()
                await assert_closed_abruptly(quiet, 2)
                assert trio.current_time() - start >= 0.5
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


async def test_drop_fault_closes_without_close_frame_and_can_be_switched_off() -> None:
    fake = FakeBitunix(seed=9, faults=Faults(drop_every_s=0.4))
    with trio.fail_after(6):
        async with serving(fake):
            async with trio_websocket.open_websocket_url(fake.ws_url) as ws:
                await assert_closed_abruptly(ws, 1.5)
            assert fake.stats.drops == 1
            fake.faults.drop_every_s = 0
            async with trio_websocket.open_websocket_url(fake.ws_url) as ws:
                await ws.send_message(subscribe("depth_book1"))
                got = await frames_for(ws, 1.2)
                assert len(got) >= 3
            assert fake.stats.drops == 1


async def test_stall_sends_nothing_then_resumes() -> None:
    fake = FakeBitunix(seed=10, faults=Faults(stall_once_after_s=0.9, stall_for_s=1.2))
    with trio.fail_after(8):
        async with serving(fake), trio_websocket.open_websocket_url(fake.ws_url) as ws:
            await ws.send_message(subscribe("depth_book1"))
            async with trio.open_nursery() as nursery:

                async def ping_in_the_stall() -> None:
                    await trio.sleep(1.3)
                    await ws.send_message('{"op":"ping","ping":1}')

                nursery.start_soon(ping_in_the_stall)
                got = await frames_for(ws, 3.0)
            times = [t for t, m in got if json.loads(m).get("ch") == "depth_book1"]
            gaps = [b - a for a, b in pairwise(times)]
            assert max(gaps) >= 1.0 and sorted(gaps)[-2] < 0.7, "one stall, steady pushes around it"
            assert any(json.loads(m).get("op") == "ping" for _, m in got), (
                "the ping is answered after the stall"
            )
            assert fake.stats.stalls == 1
            fake.faults.stall_every_s, fake.faults.stall_for_s = 0.3, 0.1
            await trio.sleep(0.8)
            assert fake.stats.stalls >= 3


async def test_malformed_frames_cover_every_kind() -> None:
    fake = FakeBitunix(seed=11, faults=Faults(malformed_fraction=1.0))
    with trio.fail_after(10):
        async with serving(fake), trio_websocket.open_websocket_url(fake.ws_url) as ws:
            await ws.get_message()
            await ws.send_message(subscribe(*ALL_CHANNELS))
            texts: list[str] = []
            while set(fake.stats.malformed_sent) != set(MALFORMED_KINDS):
                texts += [m for _, m in await frames_for(ws, 0.2)]
            texts += [m for _, m in await frames_for(ws, 0.3)]  # in flight when counted
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


async def test_latency_delays_ws_frames_and_rest_replies() -> None:
    fake = FakeBitunix(seed=17, faults=Faults(latency_ms=300))
    with trio.fail_after(5):
        async with serving(fake), trio_websocket.open_websocket_url(fake.ws_url) as ws:
            start = trio.current_time()
            await ws.get_message()
            await ws.send_message('{"op":"ping","ping":1}')
            await ws.get_message()
            assert trio.current_time() - start >= 0.59
            async with httpx.AsyncClient(base_url=fake.rest_url) as http:
                start = trio.current_time()
                assert (await http.get(KLINE, params={"symbol": "BTCUSDT", "limit": 1})).json()["code"] == 0
                assert trio.current_time() - start >= 0.29


async def test_refused_handshakes_then_accepted() -> None:
    fake = FakeBitunix(seed=12, faults=Faults(refuse_handshakes_for_s=0.8))
    with trio.fail_after(5):
        async with serving(fake):
            with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
                async with trio_websocket.open_websocket_url(fake.ws_url):
                    pass
            assert rejected.value.status_code == 503
            await trio.sleep(0.9)
            async with trio_websocket.open_websocket_url(fake.ws_url) as ws:
                assert json.loads(await ws.get_message())["op"] == "connect"
            assert fake.stats.handshakes_refused == 1 and fake.stats.connections == 1


async def test_rest_errors_cycle_through_http_and_code_errors() -> None:
    fake = FakeBitunix(seed=13, faults=Faults(rest_error_fraction=0.5, rest_rate_limit_per_s=1000))
    with trio.fail_after(6):
        async with serving(fake), httpx.AsyncClient(base_url=fake.rest_url) as http:
            replies = [await http.get(KLINE, params={"symbol": "BTCUSDT", "limit": 2}) for _ in range(12)]
    outcomes = [r.status_code if r.status_code != 200 else r.json()["code"] for r in replies]
    assert sorted(outcomes) == [0] * 6 + [1, 1, 500, 500, 503, 503]
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
