"""The live Bitunix feed with several symbols on one WebSocket, against the fake exchange serving
them (real sockets on 127.0.0.1, real clock), and the wire format pieces it takes.

The feed runs alone (no session), with one subscriber, as in tests/test_feed_bitunix.py. Its
symbols come from the strategies (`Config.symbols`): BTCUSDT (session.symbol) and ETHUSDT. The one
fault here is scheduled by count (a stall of one symbol's pushes from the N-th data frame on), so
it hits the same frames whatever the timing.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from actors.clock import SessionClock
from actors.config import Config, load
from actors.feeds.bitunix import BitunixFeed, UnknownSymbol
from actors.feeds.mock import FeedHealth
from actors.session import run_session
from protocols import bitunix
from protocols.instruments import TABLE, Instrument
from protocols.messages import Book, Candle, Event, FeedStatus, Funding, MarketEvent, Tick
from tests.conftest import read_events
from tests.test_feed_bitunix import offset_for_close_in
from tools.fake_bitunix import FakeBitunix, Faults
from tools.fake_bitunix.server import SYMBOL_SPECS
from tools.validate_session import validate

TWO = ("BTCUSDT", "ETHUSDT")
CHANNELS = ("market_kline_1min", "depth_book15", "price")


def strategies_toml(symbols: tuple[str, ...]) -> str:
    """One small ema_cross strategy per symbol (the first trades session.symbol, BTCUSDT)."""
    tables = []
    for i, symbol in enumerate(symbols):
        line = "" if i == 0 else f'symbol = "{symbol}"\n'
        tables.append(
            f'[[strategies]]\nid = "s{i}"\nkind = "ema_cross"\n{line}history = 5\nfast_period = 2\nslow_period = 3\n'
        )
    return "\n".join(tables)


def feed_config(tmp_path: Path, fake: FakeBitunix, symbols: tuple[str, ...], *sets: str) -> Config:
    path = tmp_path / "strategies.toml"
    path.write_text(strategies_toml(symbols))
    return load(
        path,
        {},
        [
            f"session.run_dir={tmp_path / 'runs'}",
            f"session.kill_switch={tmp_path / 'kill.txt'}",
            "feed.source=bitunix",
            f"feed.ws_url={fake.ws_url}",
            f"feed.rest_url={fake.rest_url}",
            *sets,
        ],
    )


@attrs.define
class FeedRun:
    feed: BitunixFeed
    received: list[MarketEvent]
    events: list[Event]
    error: BaseException | None = None

    def of(self, symbol: str) -> list[MarketEvent]:
        return [e for e in self.received if e.symbol == symbol]

    def statuses(self, symbol: str) -> list[tuple[bool, str]]:
        return [(e.stale, e.reason) for e in self.of(symbol) if isinstance(e, FeedStatus)]

    def kinds(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]


async def run_feed(
    tmp_path: Path,
    fake: FakeBitunix,
    symbols: tuple[str, ...],
    *sets: str,
    seconds: float,
    setup: Callable[[BitunixFeed], None] | None = None,
    until: Callable[[list[MarketEvent]], bool] | None = None,
) -> FeedRun:
    """A BitunixFeed for `symbols` for `seconds` against the fake (its clock agrees with the
    fake's: see tests/test_feed_bitunix.py `run_feed`); an error that ends the feed is returned.
    `until`: the run ends as soon as the events received so far satisfy it (`seconds` is then
    the most it waits)."""
    received: list[MarketEvent] = []
    events_tx, events_rx = trio.open_memory_channel[Event](math.inf)
    error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.run)
        config = feed_config(tmp_path, fake, symbols, *sets)
        market_tx, market_rx = trio.open_memory_channel[MarketEvent](0)
        clock = SessionClock(wall_start=time.time() + fake.time_offset_s)
        feed = BitunixFeed(config, clock, FeedHealth(data_source="bitunix"), [market_tx], events_tx)
        if setup is not None:
            setup(feed)

        window = trio.move_on_after(seconds)

        async def subscriber() -> None:
            async for event in market_rx:
                received.append(event)
                if until is not None and until(received):
                    window.cancel()

        nursery.start_soon(subscriber)
        with window:
            try:
                await feed.run()
            except* UnknownSymbol as group:
                error = group.exceptions[0]
        nursery.cancel_scope.cancel()
    events_tx.close()
    return FeedRun(feed, received, [e async for e in events_rx], error)


WINDOW_STEPS = 20  # of the fake's 250 ms book steps


def window(fake: FakeBitunix, symbol: str, ts: float) -> set[tuple[Any, Any]]:
    """The fake's 15-level windows of `symbol` at exchange time `ts` (the feed's arrival time) and
    up to 5 s before it, as (bids, asks) tuples of floats: a push may reach the feed late on a
    loaded machine (found in CI: more than the 500 ms once allowed)."""
    out = set()
    for back in range(WINDOW_STEPS):
        data = fake.depth_data(int(ts * 1000) - back * 250, 15, symbol)
        out.add(tuple(tuple((float(p), float(q)) for p, q in data[side]) for side in "ba"))
    return out


def on_grid(price: float, decimals: int) -> bool:
    return abs(price * 10**decimals - round(price * 10**decimals)) < 1e-6


# --- the wire format ---------------------------------------------------------------------------------


def test_one_subscribe_frame_carries_every_symbols_channels() -> None:
    pairs = [(s, ch) for s in ("btcusdt", "ETHUSDT") for ch in ("market_kline_1min", "price")]
    assert json.loads(bitunix.subscribe_pairs_frame(pairs)) == {
        "op": "subscribe",
        "args": [
            {"symbol": "BTCUSDT", "ch": "market_kline_1min"},
            {"symbol": "BTCUSDT", "ch": "price"},
            {"symbol": "ETHUSDT", "ch": "market_kline_1min"},
            {"symbol": "ETHUSDT", "ch": "price"},
        ],
    }
    assert json.loads(bitunix.unsubscribe_pairs_frame(pairs[:1]))["op"] == "unsubscribe"
    hundred = [(f"S{i}USDT", ch) for i in range(100) for ch in CHANNELS]  # the config's most
    assert len(json.loads(bitunix.subscribe_pairs_frame(hundred))["args"]) == bitunix.MAX_SUBSCRIPTIONS
    with pytest.raises(ValueError, match="at most 300"):
        bitunix.subscribe_pairs_frame([*hundred, ("XRPUSDT", "price")])
    with pytest.raises(ValueError):
        bitunix.subscribe_pairs_frame([])
    assert bitunix.trading_pairs_params(["btcusdt", "ETHUSDT"]) == {"symbols": "BTCUSDT,ETHUSDT"}


def test_the_validator_keeps_each_symbols_state_apart() -> None:
    v = bitunix.FrameValidator("BTCUSDT", "market_kline_1min", 5.0, symbols=("BTCUSDT", "ethusdt"))

    def kline(symbol: str, ts: int, close: str) -> str:
        data = {"o": close, "c": close, "h": close, "l": close, "b": "1"}
        return json.dumps({"ch": "market_kline_1min", "symbol": symbol, "ts": ts, "data": data})

    btc = v.parse(kline("BTCUSDT", 2000, "60000"))
    eth = v.parse(kline("ethusdt", 1500, "3000"))  # older ts, 95 % below BTC, within 1 s: its own
    assert isinstance(btc, bitunix.KlinePush) and btc.symbol == "BTCUSDT"
    assert isinstance(eth, bitunix.KlinePush) and (eth.symbol, eth.close) == ("ETHUSDT", 3000.0)
    assert isinstance(v.parse(kline("ETHUSDT", 1400, "3000")), bitunix.Rejected), "ts backwards in ETH"
    jump = v.parse(kline("ETHUSDT", 1600, "4000"))
    assert isinstance(jump, bitunix.Rejected) and jump.reason == "price_jump"
    other = v.parse(kline("SOLUSDT", 2100, "150"))
    assert isinstance(other, bitunix.Rejected) and other.reason == "wrong_symbol"
    depth = {"b": [["2999.9", "1"]], "a": [["3000.1", "2"]]}
    book = v.parse(json.dumps({"ch": "depth_book15", "symbol": "ETHUSDT", "ts": 1700, "data": depth}))
    assert isinstance(book, bitunix.BookTop) and book.symbol == "ETHUSDT"
    rows = [{"s": "SOLUSDT", "bd": "150", "ak": "150.1", "bv": "1", "av": "1"}]
    rows.append({"s": "ETHUSDT", "bd": "2999.9", "ak": "3000.1", "bv": "1", "av": "1"})
    top = v.parse(json.dumps({"ch": "tickers", "ts": 1800, "data": rows}))
    assert isinstance(top, bitunix.BookTop) and (top.symbol, top.bid) == ("ETHUSDT", 2999.9)


# --- the fake exchange serves several symbols ---------------------------------------------------------


async def test_the_fake_serves_each_symbol_on_its_grid_over_rest() -> None:
    fake = FakeBitunix(
        seed=61,
        symbols=("BTCUSDT", "ETHUSDT", "SOLUSDT"),
        history_candles=20,
        faults=Faults(rest_rate_limit_per_s=1000),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.run)
        async with httpx.AsyncClient(base_url=fake.rest_url) as http:

            async def get(path: str, **params: str) -> Any:
                reply = await http.get(path, params=params)
                return bitunix.rest_data(reply.status_code, reply.content)

            pairs = await get(bitunix.TRADING_PAIRS_PATH, symbols="ETHUSDT,DOGEUSDT,SOLUSDT,BTCUSDT")
            assert [r["symbol"] for r in pairs] == ["ETHUSDT", "SOLUSDT", "BTCUSDT"], "unknown left out"
            levels = {"BTCUSDT": 60000.0, "ETHUSDT": 3000.0, "SOLUSDT": 150.0}
            for row in pairs:
                symbol, table = row["symbol"], TABLE[row["symbol"]]
                assert (row["quotePrecision"], row["basePrecision"]) == (
                    table.price_decimals,
                    table.qty_decimals,
                )
                assert float(row["minTradeVolume"]) == table.min_qty
                candles = bitunix.parse_rest_klines(
                    await get(bitunix.KLINE_PATH, **bitunix.kline_params(symbol, "1m", limit=20)), 60
                )
                truth = {t[0]: t[1:] for t in fake.truth_candles(symbol)}
                closed = [c for c in candles if round(c.open_ts * 1000) in truth]
                assert len(candles) == 20 and len(closed) >= 19, "the newest row may be the open candle"
                for c in closed:
                    assert (c.open, c.high, c.low, c.close) == pytest.approx(
                        truth[round(c.open_ts * 1000)][:4]
                    )
                assert all(0.5 < c.close / levels[symbol] < 2 for c in candles), "a plausible level"
                assert all(on_grid(p, table.price_decimals) for c in candles for p in (c.open, c.close))
                book = await get(bitunix.DEPTH_PATH, **bitunix.depth_params(symbol, 15))
                prices = [float(p) for p, _ in book["bids"] + book["asks"]]
                assert all(on_grid(p, table.price_decimals) for p in prices)
                sizes = [float(q) for _, q in book["bids"] + book["asks"]]
                assert all(on_grid(q, table.qty_decimals) for q in sizes)
                funding = await get("/api/v1/futures/market/funding_rate", symbol=symbol)
                assert funding["symbol"] == symbol
            tickers = await get("/api/v1/futures/market/tickers", symbols="SOLUSDT,BTCUSDT")
            assert [t["symbol"] for t in tickers] == ["SOLUSDT", "BTCUSDT"]
            reply = await http.get(bitunix.DEPTH_PATH, params={"symbol": "DOGEUSDT", "limit": "15"})
            with pytest.raises(bitunix.RestError) as unknown:
                bitunix.rest_data(reply.status_code, reply.content)
            assert unknown.value.code == bitunix.UNKNOWN_SYMBOL_CODE
        nursery.cancel_scope.cancel()
    # the first symbol's path is the one it has when served alone
    alone = FakeBitunix(seed=61, history_candles=20)
    assert fake.truth_candles()[:20] == alone.truth_candles()[:20]
    assert SYMBOL_SPECS.keys() == TABLE.keys()


# --- the feed with two symbols --------------------------------------------------------------------


@pytest.mark.slow
async def test_two_symbols_on_one_connection_each_event_with_its_symbol(tmp_path: Path) -> None:
    """One connection, one subscribe message with 6 subscriptions; each symbol's instrument first,
    then its books (the fake's own, at its level), ticks, funding, seeded history and a candle
    closed live, all carrying its symbol; each symbol fresh once its data comes."""
    fake = FakeBitunix(seed=62, symbols=TWO, time_offset_s=offset_for_close_in(2.5))
    run = await run_feed(tmp_path, fake, TWO, seconds=5.5)
    assert (fake.stats.handshakes, fake.stats.connections, fake.stats.subscribe_msgs) == (1, 1, 1)
    subscribed = [(a["symbol"], a["ch"]) for a in fake.stats.subscriptions]
    assert sorted(subscribed) == sorted(itertools.product(TWO, CHANNELS)) and len(subscribed) == 6
    assert {e.symbol for e in run.received} == set(TWO)
    instruments = [e for e in run.received if isinstance(e, Instrument)]
    assert [i.symbol for i in instruments] == list(TWO)
    first_data = next(i for i, e in enumerate(run.received) if isinstance(e, Tick | Book | Candle | Funding))
    assert all(run.received.index(i) < first_data for i in instruments), "the instruments before any quote"
    assert [(i.source, i.tick_size, i.lot_size) for i in instruments] == [
        ("exchange", 0.1, 0.0001),
        ("exchange", 0.01, 0.001),
    ]
    assert len(run.kinds("feed.instrument")) == 2
    for symbol, level in zip(TWO, (60000.0, 3000.0), strict=True):
        got = run.of(symbol)
        assert run.statuses(symbol) == [(True, "no data yet"), (False, "websocket data")]
        books = [e for e in got if isinstance(e, Book)]
        ticks = [e for e in got if isinstance(e, Tick) and e.last_qty == 0]  # not the trade quotes
        assert [e for e in got if isinstance(e, Tick) and e.last_qty > 0], symbol
        # each book's best bid/ask follows it as a Tick; the run's end may fall between the two
        assert len(books) >= 5 and len(books) - len(ticks) in (0, 1), symbol
        assert [(t.ts, t.bid, t.ask) for t in ticks] == [
            (b.ts, b.bids[0][0], b.asks[0][0]) for b in books[: len(ticks)]
        ], symbol
        for book in books:
            assert (book.bids, book.asks) in window(fake, symbol, book.ts), f"the fake's {symbol} book"
        assert all(0.5 < t.bid / level < 2 for t in ticks), symbol
        assert [e for e in got if isinstance(e, Funding)], symbol
        candles = [e for e in got if isinstance(e, Candle)]
        opens = [round(c.open_ts * 1000) for c in candles]
        assert all(b - a == 60_000 for a, b in itertools.pairwise(opens)), symbol
        assert [c.backfill for c in candles] == [True] * 5 + [False], "the seed, then a close"
        truth = {t[0]: t[1:] for t in fake.truth_candles(symbol)}
        for c in candles:
            assert (c.open, c.high, c.low, c.close, c.volume) == pytest.approx(truth[round(c.open_ts * 1000)])
    assert [e.fields["symbol"] for e in run.kinds("feed.seeded")] == list(TWO)
    assert not run.feed.health.stale and run.feed.health.reconnects == 0


@pytest.mark.slow
async def test_one_symbols_stall_makes_that_symbol_alone_stale(tmp_path: Path) -> None:
    """ETHUSDT's pushes stop for 4 s from the 30th data frame on while BTCUSDT's go on: ETHUSDT
    goes stale (no data for 1.5 s) and fresh again when its data returns; BTCUSDT stays fresh and
    keeps quoting meanwhile; the connection is not dropped."""
    faults = Faults(stall_symbol="ETHUSDT", stall_once_after_frames=30, stall_for_s=4)
    fake = FakeBitunix(seed=63, symbols=TWO, faults=faults)
    run = await run_feed(
        tmp_path, fake, TWO, "feed.stale_after_s=1.5", "feed.failover_after_s=600", seconds=9
    )
    assert fake.stats.faults_log == [("stall", 30, "ETHUSDT")]
    assert run.statuses("BTCUSDT") == [(True, "no data yet"), (False, "websocket data")]
    assert run.statuses("ETHUSDT") == [
        (True, "no data yet"),
        (False, "websocket data"),
        (True, "no data for 1.5 s"),
        (False, "websocket data"),
    ]
    (stale,) = run.kinds("feed.stale")
    assert stale.fields == {"reason": "no data for 1.5 s", "symbols": ["ETHUSDT"]}
    (fresh,) = run.kinds("feed.fresh")  # the end of the stale period, recorded too
    assert fresh.fields == {"reason": "websocket data", "symbols": ["ETHUSDT"]}
    assert fake.stats.connections == 1 and run.feed.health.reconnects == 0
    assert not run.kinds("feed.disconnected") and not run.kinds("feed.failover")
    went, back = [e.ts for e in run.of("ETHUSDT") if isinstance(e, FeedStatus)][2:]
    assert back - went > 1.5
    btc_ticks = [e.ts for e in run.of("BTCUSDT") if isinstance(e, Tick) and went < e.ts < back]
    assert len(btc_ticks) >= 3, "BTCUSDT quoted on while ETHUSDT was stale"
    assert not [e for e in run.of("ETHUSDT") if isinstance(e, Tick) and went < e.ts < back]
    assert not run.feed.health.stale


@pytest.mark.slow
async def test_one_symbol_stale_alone_is_polled_over_rest_until_its_pushes_return(tmp_path: Path) -> None:
    """ETHUSDT's pushes stop for 6 s: stale after 1 s of silence, then (no data for 2 s) its REST
    polling makes it fresh and quotes it, until its pushes return; BTCUSDT is never polled."""
    faults = Faults(stall_symbol="ETHUSDT", stall_once_after_frames=30, stall_for_s=6)
    fake = FakeBitunix(seed=68, symbols=TWO, faults=faults)
    run = await run_feed(tmp_path, fake, TWO, "feed.stale_after_s=1", "feed.failover_after_s=2", seconds=11)
    assert fake.stats.faults_log == [("stall", 30, "ETHUSDT")]
    assert run.statuses("BTCUSDT") == [(True, "no data yet"), (False, "websocket data")]
    assert run.statuses("ETHUSDT") == [
        (True, "no data yet"),
        (False, "websocket data"),
        (True, "no data for 1 s"),
        (False, "REST polling"),
    ]
    failover = [(e.fields["active"], e.fields["symbols"]) for e in run.kinds("feed.failover")]
    assert failover == [(True, ["ETHUSDT"]), (False, ["ETHUSDT"])]
    assert [e.fields for e in run.kinds("feed.fresh")] == [{"reason": "REST polling", "symbols": ["ETHUSDT"]}]
    start, end = (e.ts for e in run.kinds("feed.failover"))
    polled = [e for e in run.of("ETHUSDT") if isinstance(e, Book) and start <= e.ts <= end]
    assert len(polled) >= 2 and all(e.bids[0][0] < e.asks[0][0] for e in polled)
    assert fake.stats.connections == 1 and run.feed.health.reconnects == 0


async def test_an_unknown_symbol_among_several_is_a_start_up_error(tmp_path: Path) -> None:
    """trading_pairs has no row for DOGEUSDT (the fake serves BTCUSDT and ETHUSDT): the feed ends
    at once with UnknownSymbol naming it, before any market data."""
    fake = FakeBitunix(seed=64, symbols=TWO)
    started = trio.current_time()
    run = await run_feed(tmp_path, fake, ("BTCUSDT", "DOGEUSDT", "ETHUSDT"), seconds=10)
    assert trio.current_time() - started < 5
    assert isinstance(run.error, UnknownSymbol)
    assert str(run.error) == "Bitunix does not trade DOGEUSDT: trading_pairs has no row for it"
    assert not [e for e in run.received if isinstance(e, Instrument | Tick | Book | Candle)]


async def test_code_20015_for_several_symbols_names_the_unknown_one(tmp_path: Path) -> None:
    """An exchange that refuses the whole trading_pairs call (code 20015) for one unknown symbol
    (the fake's `rest_unknown_symbol_refused`, not a patched feed): the feed asks for each symbol
    alone to name it."""
    fake = FakeBitunix(seed=65, symbols=TWO, faults=Faults(rest_unknown_symbol_refused=True))
    run = await run_feed(tmp_path, fake, ("BTCUSDT", "SOLUSDT", "ETHUSDT"), seconds=10)
    assert isinstance(run.error, UnknownSymbol)
    assert str(run.error).startswith("Bitunix does not trade SOLUSDT: this Futures is not allowed")
    asked = [q.get("symbols") for path, q in fake.stats.rest_log if path.endswith("/trading_pairs")]
    assert asked == ["BTCUSDT,SOLUSDT,ETHUSDT", "BTCUSDT", "SOLUSDT"]


@pytest.mark.slow
async def test_the_feed_falls_back_to_each_symbols_table_instrument(tmp_path: Path) -> None:
    """trading_pairs fails: each symbol gets the shipped table's instrument, with the reason."""
    fake = FakeBitunix(seed=66, symbols=TWO, faults=Faults(rest_error_fraction=1))

    def both_instruments_and_books(got: list[MarketEvent]) -> bool:
        """Found flaky on a loaded machine with a fixed 2.5 s: the retries of trading_pairs
        outlasted it. Waited for instead (at most 30 s)."""
        instruments = sum(isinstance(e, Instrument) for e in got)
        return instruments == len(TWO) and {e.symbol for e in got if isinstance(e, Book)} == set(TWO)

    run = await run_feed(tmp_path, fake, TWO, seconds=30, until=both_instruments_and_books)
    instruments = [e for e in run.received if isinstance(e, Instrument)]
    assert instruments == [TABLE["BTCUSDT"], TABLE["ETHUSDT"]]
    events = run.kinds("feed.instrument")
    assert [(e.fields["symbol"], e.fields["source"]) for e in events] == [
        ("BTCUSDT", "table"),
        ("ETHUSDT", "table"),
    ]
    assert all(e.fields["reason"].startswith("trading_pairs failed") for e in events)
    assert {e.symbol for e in run.received if isinstance(e, Book)} == set(TWO), "both go on"


@pytest.mark.slow
async def test_a_live_session_trades_two_symbols_from_one_connection(tmp_path: Path) -> None:
    """A whole session against the fake serving both symbols (each on the zigzag path, a candle
    close 3 s in): it ends clean and valid, each symbol's candles are the fake's, and each symbol's
    strategy traded its own symbol."""
    fake = FakeBitunix(seed=67, symbols=TWO, zigzag_pct=0.2, time_offset_s=offset_for_close_in(3))
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.run)
        config = feed_config(
            tmp_path,
            fake,
            TWO,
            "session.duration_min=0.15",
            "risk.max_loss_pct=50",
            "risk.max_daily_drawdown_pct=50",
            "risk.max_consecutive_losses=0",
        )
        with trio.fail_after(60):
            result = await run_session(config, handle_signals=False, progress_mode="off")
        nursery.cancel_scope.cancel()
    report = result.report
    assert (report["status"], report["stop_reason"], report["errors"]) == ("ok", "duration", 0)
    assert report["data_source"] == "bitunix" and validate(result.run_path) == []
    assert fake.stats.connections == 1 and fake.stats.subscribe_msgs == 1
    records = [json.loads(line) for line in (result.run_path / "market.jsonl").open()]
    for symbol in TWO:
        candles = [r for r in records if r["type"] == "candle" and r["symbol"] == symbol]
        truth = {t[0]: t[1:] for t in fake.truth_candles(symbol)}
        # the seed (history 5) and one live close; when the minute turns while the seed is fetched,
        # the seed ends a candle earlier and the feed backfills the one between (7): either way one
        # contiguous series, no candle twice
        opens = sorted(c["open_ts"] for c in candles)
        assert len(candles) in (6, 7), (symbol, opens)
        assert opens == [opens[0] + 60 * k for k in range(len(opens))], opens  # contiguous, none twice
        for c in candles:
            got = (c["open"], c["high"], c["low"], c["close"], c["volume"])
            assert got == pytest.approx(truth[round(c["open_ts"] * 1000)])
        statuses = [
            (r["stale"], r["reason"]) for r in records if r["type"] == "feed_status" and r["symbol"] == symbol
        ]
        assert statuses == [(True, "no data yet"), (False, "websocket data")]
    fills = [e for e in read_events(result.run_path) if e["kind"] == "order.filled"]
    own = {(e["strategy_id"], e["symbol"]) for e in fills if e["strategy_id"]}  # not the flatten at exit
    assert own == {("s0", "BTCUSDT"), ("s1", "ETHUSDT")}


@pytest.mark.slow
async def test_a_symbols_dead_kline_stream_is_polled_over_rest_while_its_book_flows(tmp_path: Path) -> None:
    """ETHUSDT's kline pushes never come while its book does (found by an audit: no candle for
    the whole session, not stale, nothing said, its strategy blind). After stale_after_s without
    a kline its closed candles are polled over REST, loudly; BTCUSDT's come from the socket."""
    fake = FakeBitunix(
        seed=64,
        symbols=TWO,
        time_offset_s=offset_for_close_in(4),
        faults=Faults(klines_silent_symbol="ETHUSDT"),
    )
    run = await run_feed(tmp_path, fake, TWO, "feed.stale_after_s=2", "feed.failover_after_s=600", seconds=8)
    (silent,) = run.kinds("feed.klines")
    assert silent.fields["symbol"] == "ETHUSDT" and silent.fields["silent"] is True
    assert run.statuses("ETHUSDT") == [(True, "no data yet"), (False, "websocket data")]  # never stale
    for symbol in TWO:
        live = [e for e in run.of(symbol) if isinstance(e, Candle) and not e.backfill]
        assert live, f"{symbol}: no live candle"
        truth = {t[0]: t[1:] for t in fake.truth_candles(symbol)}
        for c in live:
            assert (c.open, c.high, c.low, c.close, c.volume) == pytest.approx(truth[round(c.open_ts * 1000)])
    assert fake.stats.connections == 1 and not run.kinds("feed.failover")


@pytest.mark.slow
async def test_a_symbols_dead_book_stream_is_polled_over_rest_while_its_other_data_flows(
    tmp_path: Path,
) -> None:
    """ETHUSDT's book pushes stop while its klines and marks flow (found by an audit of the stale
    watchdog: any data frame kept the symbol fresh, so it was never stale nor polled, and with no
    fresh book no quote went out for it: its stops and resting limits could not fill, nothing
    said). After stale_after_s without a book push its book is polled over REST, loudly, until
    its pushes come back; BTCUSDT's books come from the socket all along. The fault is switched
    off at the first polled quote, the run ends at ETHUSDT's first pushed quote after it."""
    fake = FakeBitunix(seed=66, symbols=TWO, faults=Faults(book_silent_symbol="ETHUSDT"))

    def eth_ticks(received: list[MarketEvent]) -> list[Tick]:
        return [e for e in received if isinstance(e, Tick) and e.symbol == "ETHUSDT" and not e.last_qty]

    def until(received: list[MarketEvent]) -> bool:
        ticks = eth_ticks(received)
        if ticks and ticks[-1].source == "rest":
            fake.faults.book_silent_symbol = ""  # its pushes come back from now on
        return bool(ticks) and ticks[-1].source == "ws"

    run = await run_feed(
        tmp_path, fake, TWO, "feed.stale_after_s=1", "feed.failover_after_s=600", seconds=10, until=until
    )
    book_events = [(e.fields["symbol"], e.fields["silent"]) for e in run.kinds("feed.book")]
    assert book_events == [("ETHUSDT", True), ("ETHUSDT", False)]
    assert run.kinds("feed.book")[0].fields["silent_s"] >= 1
    sources = [t.source for t in eth_ticks(run.received)]
    assert sources[-1] == "ws" and "rest" in sources and "ws" not in sources[:-1]
    records = run.of("ETHUSDT")
    for i, tick in enumerate(records):
        if isinstance(tick, Tick) and tick.source == "rest":
            book = records[i - 1]  # the polled book, then its quote
            assert isinstance(book, Book) and book.ts == tick.ts
            assert (book.bids, book.asks) in window(fake, "ETHUSDT", book.ts)
            assert (tick.bid, tick.ask) == (book.bids[0][0], book.asks[0][0])
    assert run.statuses("ETHUSDT") == [(True, "no data yet"), (False, "websocket data")]  # never stale
    btc = [e.source for e in run.of("BTCUSDT") if isinstance(e, Tick)]
    assert btc and set(btc) == {"ws"}
    assert fake.stats.connections == 1 and not run.kinds("feed.failover")


@pytest.mark.slow
async def test_every_reconnect_resubscribes_every_symbols_channels_and_loses_no_candle(
    tmp_path: Path,
) -> None:
    """The first two connections are dropped after 15 data frames each (by count, around a candle
    close 2 s in): each of the three connections subscribes every symbol's three channels in one
    message, both symbols come back fresh on each, and each symbol's candles are the fake's, none
    missing or twice across the drops (audit coverage of reconnects with several symbols)."""
    faults = Faults(drop_after_frames=15, drop_connections=2)
    fake = FakeBitunix(seed=67, symbols=TWO, time_offset_s=offset_for_close_in(2.0), faults=faults)

    def live_both(received: list[MarketEvent]) -> bool:  # a live candle of each, then a book of each
        done = fake.stats.connections >= 3 and all(
            any(isinstance(e, Candle) and not e.backfill and e.symbol == s for e in received) for s in TWO
        )
        return done and {e.symbol for e in received[-4:] if isinstance(e, Book)} == set(TWO)

    run = await run_feed(
        tmp_path,
        fake,
        TWO,
        "feed.backoff_initial_s=0.1",
        "feed.backoff_max_s=0.2",
        seconds=30,
        until=live_both,
    )
    assert [e[0] for e in fake.stats.faults_log] == ["drop", "drop"]
    assert fake.stats.connections == fake.stats.subscribe_msgs == 3
    pairs = sorted(itertools.product(TWO, CHANNELS))
    subscribed = [(a["symbol"], a["ch"]) for a in fake.stats.subscriptions]
    assert [sorted(subscribed[k : k + 6]) for k in (0, 6, 12)] == [pairs] * 3 and len(subscribed) == 18
    assert run.feed.health.reconnects == 2
    for symbol in TWO:
        statuses = run.statuses(symbol)
        assert [stale for stale, _ in statuses] == [True, False] * 3, (symbol, statuses)
        candles = [e for e in run.of(symbol) if isinstance(e, Candle)]
        opens = [round(c.open_ts * 1000) for c in candles]
        assert opens == [opens[0] + 60_000 * k for k in range(len(opens))], (symbol, opens)
        truth = {t[0]: t[1:] for t in fake.truth_candles(symbol)}
        for c in candles:
            assert (c.open, c.high, c.low, c.close, c.volume) == pytest.approx(truth[round(c.open_ts * 1000)])
