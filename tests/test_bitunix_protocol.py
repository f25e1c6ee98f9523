"""Bitunix wire format: every channel's documented frame parses; every reject reason fires on a
realistic bad frame; REST envelopes, klines and depth; fuzzing shows nothing but RestError escapes."""

from __future__ import annotations

import calendar
import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.config import BITUNIX_INTERVALS, interval_seconds
from protocols.bitunix import (
    BOOK_CHANNEL,
    BOOK_LEVELS,
    DEPTH_PATH,
    KLINE_PATH,
    REJECT_REASONS,
    TRADING_PAIRS_PATH,
    BookTop,
    Control,
    FrameValidator,
    KlinePush,
    PricePush,
    Rejected,
    RestError,
    TickerPush,
    TradePush,
    kline_channel,
    kline_params,
    parse_rest_depth,
    parse_rest_klines,
    ping_frame,
    rest_data,
    rest_interval,
    subscribe_frame,
    trading_pair_row,
    trading_pairs_params,
)
from protocols.messages import Book, Candle

# Frames exactly as captured in the protocol doc.
CONNECT = '{"op":"connect","data":{"result":true}}'
UNSUB_REPLY = '{"op":"unsubscribe","ts":1790126500916,"data":"success"}'
SUB_ERROR = '{"op":"subscribe","data":{"msg":"subscribe channel > 300","nonce":"","result":false}}'
KLINE = (
    '{"ch":"market_kline_1min","symbol":"BTCUSDT","ts":1786650732204,"data":{"o":"63404.6",'
    '"c":"63404.7","h":"63404.8","l":"63404.5","b":"0.2413","q":"15299.54977"}}'
)
TICKER = (
    '{"ch":"ticker","symbol":"BTCUSDT","ts":1790126515684,"data":{"s":"BTCUSDT","o":"85567",'
    '"la":"86688.2","h":"86815.6","l":"85080","b":"27478.1701","q":"2362759522.50052","r":"1.3103182302"}}'
)
TICKERS = (
    '{"ch":"tickers","ts":1732178884994,"data":[{"s":"BTCUSDT","la":"68650.9","o":"69141.6",'
    '"h":"70319.9","l":"68241.9","b":"26295.3977","q":"1823374525.0193","r":"-0.7097029863",'
    '"bd":"68650.9","ak":"68651","bv":"0.9747","av":"2.3606"}]}'
)
TRADE = (
    '{"ch":"trade","symbol":"BTCUSDT","ts":1775540872598,"data":[{"t":"2026-04-07T05:47:52Z",'
    '"p":"68621.4","v":"0.7142","s":"buy"}]}'
)
DEPTH15 = (
    '{"ch":"depth_book15","symbol":"BTCUSDT","ts":1790126515693,"data":{"b":[["86699.6","2.274"],'
    '["86699.5","2.7407"]],"a":[["86699.7","0.7095"],["86699.8","2.1992"]]}}'
)
PRICE = (
    '{"ch":"price","symbol":"BTCUSDT","ts":1790126515695,"data":{"ip":"86720.6","mp":"86688.3",'
    '"fr":"-0.00077","ft":"2026-09-23T00:00:00Z","nft":"2026-09-23T08:00:00Z"}}'
)
DATA_FRAMES = [KLINE, TICKER, TICKERS, TRADE, DEPTH15, PRICE]
ALL_FRAMES = [CONNECT, UNSUB_REPLY, SUB_ERROR, *DATA_FRAMES]
KLINE_REST_DOC = (
    b'{"code":0,"data":[{"open":60000,"high":60001,"close":60000,"low":59989.2,"time":111111,'
    b'"quoteVol":"1","baseVol":"60000","type":"LAST_PRICE"}],"msg":"Success"}'
)
PARSED_TYPES = (KlinePush, BookTop, PricePush, TradePush, TickerPush, Control, Rejected)


def validator(max_jump_pct: float = 5.0) -> FrameValidator:
    return FrameValidator(symbol="BTCUSDT", kline_channel="market_kline_1min", max_jump_pct=max_jump_pct)


def frame(text: str, **changes: Any) -> str:
    """A doc frame with top-level members replaced (or removed, with value ...)."""
    obj = json.loads(text)
    for k, v in changes.items():
        if v is ...:
            del obj[k]
        else:
            obj[k] = v
    return json.dumps(obj)


def with_data(text: str, **changes: Any) -> str:
    """A doc frame with members of `data` (or of its last row) replaced or removed (value ...)."""
    obj = json.loads(text)
    data = obj["data"][-1] if isinstance(obj["data"], list) else obj["data"]
    for k, v in changes.items():
        if v is ...:
            del data[k]
        else:
            data[k] = v
    return json.dumps(obj)


def rejected(result: Any, reason: str) -> None:
    assert isinstance(result, Rejected), result
    assert result.reason == reason, result
    assert len(result.detail) < 120


def check_parsed(result: Any) -> None:
    """What every parse result must satisfy, whatever the input."""
    assert isinstance(result, PARSED_TYPES), result
    if isinstance(result, Rejected):
        assert result.reason in REJECT_REASONS, result
        assert isinstance(result.detail, str) and len(result.detail) < 120
        assert not result.detail.startswith("unexpected "), result  # parse's safety net: a bug
    elif isinstance(result, KlinePush):
        prices = (result.open, result.high, result.low, result.close)
        assert all(math.isfinite(p) and p > 0 for p in prices)
        assert result.high >= result.low and math.isfinite(result.base_volume) and result.base_volume >= 0
    elif isinstance(result, BookTop):
        assert 0 < result.bid < result.ask < math.inf and 0 < result.bid_qty < math.inf
        assert 0 < result.ask_qty < math.inf
        for p, q in result.bids + result.asks:
            assert 0 < p < math.inf and 0 < q < math.inf
    elif isinstance(result, TradePush):
        assert 0 < result.price < math.inf and 0 < result.qty < math.inf and result.side in ("buy", "sell")
    elif isinstance(result, TickerPush):
        assert 0 < result.last < math.inf
    elif isinstance(result, PricePush):
        assert 0 < result.mark < math.inf and 0 < result.index < math.inf
        assert math.isfinite(result.funding_rate_pct)
    elif isinstance(result, Control):
        assert isinstance(result.op, str)


# --- outgoing frames and intervals -----------------------------------------------------------------


def test_kline_channel_mapping() -> None:
    expected = {
        "1m": "market_kline_1min",
        "3m": "market_kline_3min",
        "5m": "market_kline_5min",
        "15m": "market_kline_15min",
        "30m": "market_kline_30min",
        "1h": "market_kline_60min",
        "2h": "market_kline_2h",
        "4h": "market_kline_4h",
        "6h": "market_kline_6h",
        "8h": "market_kline_8h",
        "12h": "market_kline_12h",
        "1d": "market_kline_1day",
    }
    assert {i: kline_channel(i) for i in BITUNIX_INTERVALS} == expected
    for bad in ("2m", "60m", "1s", "1w", "", "1M", "1H"):
        with pytest.raises(ValueError):
            kline_channel(bad)


def test_rest_interval_mapping() -> None:
    for interval in BITUNIX_INTERVALS:
        if interval == "3m":
            with pytest.raises(ValueError):
                rest_interval(interval)  # REST has no 3m
        else:
            assert rest_interval(interval) == interval
            interval_seconds(interval)
    for bad in ("3m", "2m", "1s", "60m", ""):
        with pytest.raises(ValueError):
            rest_interval(bad)


def test_subscribe_and_ping_frames() -> None:
    assert subscribe_frame("BTCUSDT", ["market_kline_1min", "depth_book1"]) == (
        '{"op":"subscribe","args":[{"symbol":"BTCUSDT","ch":"market_kline_1min"},'
        '{"symbol":"BTCUSDT","ch":"depth_book1"}]}'
    )
    assert json.loads(subscribe_frame("btcusdt", ("price",))) == {
        "op": "subscribe",
        "args": [{"symbol": "BTCUSDT", "ch": "price"}],
    }
    assert ping_frame(1790126515.9) == '{"op":"ping","ping":1790126515}'
    with pytest.raises(ValueError):
        subscribe_frame("BTCUSDT", [])


def test_kline_params() -> None:
    assert KLINE_PATH == "/api/v1/futures/market/kline" and DEPTH_PATH == "/api/v1/futures/market/depth"
    assert kline_params("BTCUSDT", "1m") == {
        "symbol": "BTCUSDT",
        "interval": "1m",
        "limit": "200",
        "type": "LAST_PRICE",
    }
    p = kline_params("BTCUSDT", "1h", limit=50, end_time_ms=1790126515000, start_time_ms=1790000000000)
    assert p["interval"] == "1h" and p["limit"] == "50"
    assert p["endTime"] == "1790126515000" and p["startTime"] == "1790000000000"
    for bad_limit in (0, 201):
        with pytest.raises(ValueError):
            kline_params("BTCUSDT", "1m", limit=bad_limit)
    with pytest.raises(ValueError):
        kline_params("BTCUSDT", "3m")


# --- happy paths, one per channel -------------------------------------------------------------------


def test_control_frames() -> None:
    v = validator()
    assert v.parse(CONNECT) == Control("connect", {"result": True})
    assert v.parse(UNSUB_REPLY) == Control("unsubscribe", "success")
    err = v.parse(SUB_ERROR)
    assert isinstance(err, Control) and err.op == "subscribe" and err.data["result"] is False
    pong = v.parse('{"op":"ping","pong":1790126515,"ping":1790126516}')
    assert pong == Control("ping", {"pong": 1790126515, "ping": 1790126516})
    # The uncertain subscribe ack carries a ch: still a control frame, not data.
    ack = v.parse('{"op":"subscribe","ch":"depth_book1","data":{"result":true}}')
    assert ack == Control("subscribe", {"result": True})
    assert v.parse('{"op":"something_new"}') == Control("something_new", {})
    rejected(v.parse('{"op":5}'), "wrong_type")


def test_kline_frame() -> None:
    assert validator().parse(KLINE) == KlinePush(
        1786650732204, 63404.6, 63404.8, 63404.5, 63404.7, 0.2413, "BTCUSDT"
    )
    assert validator().parse(KLINE.encode()) == validator().parse(KLINE)
    assert isinstance(validator().parse(with_data(KLINE, b="0")), KlinePush)  # no trades yet is fine


def test_ticker_frame() -> None:
    assert validator().parse(TICKER) == TickerPush(1790126515684, 86688.2, "BTCUSDT")


def test_tickers_frame_picks_our_row() -> None:
    assert validator().parse(TICKERS) == BookTop(
        1732178884994, 68650.9, 0.9747, 68651.0, 2.3606, symbol="BTCUSDT"
    )
    obj = json.loads(TICKERS)
    eth = dict(obj["data"][0], s="ETHUSDT", bd="3000", ak="2999")  # crossed, but not ours
    obj["data"] = [eth, obj["data"][0]]
    result = FrameValidator("btcusdt", "market_kline_1min", 5.0).parse(json.dumps(obj))
    assert isinstance(result, BookTop) and result.bid == 68650.9


def test_trade_frame() -> None:
    assert validator().parse(TRADE) == TradePush(1775540872598, 68621.4, 0.7142, "buy", "BTCUSDT")
    obj = json.loads(TRADE)
    obj["data"] = [
        {"t": "2026-04-07T05:47:52.123456789Z", "p": "68621.0", "v": "0.1", "s": "buy"},
        {"t": "2026-04-07T05:47:52.223456789Z", "p": "68620.5", "v": "0.2", "s": "sell"},
    ]
    assert validator().parse(json.dumps(obj)) == TradePush(1775540872598, 68620.5, 0.2, "sell", "BTCUSDT")


def test_depth_frames() -> None:
    assert validator().parse(DEPTH15) == BookTop(
        1790126515693,
        86699.6,
        2.274,
        86699.7,
        0.7095,
        ((86699.6, 2.274), (86699.5, 2.7407)),
        ((86699.7, 0.7095), (86699.8, 2.1992)),
        "BTCUSDT",
    )
    one = frame(DEPTH15, ch="depth_book1", data={"b": [["86699.6", "2.274"]], "a": [["86699.7", "0.7095"]]})
    five = frame(DEPTH15, ch="depth_book5")
    assert validator().parse(one) == BookTop(
        1790126515693,
        86699.6,
        2.274,
        86699.7,
        0.7095,
        ((86699.6, 2.274),),
        ((86699.7, 0.7095),),
        "BTCUSDT",
    )
    assert isinstance(validator().parse(five), BookTop)


def full_book(ts: int = 1790126515693, **level_changes: tuple[str, int, int, str]) -> str:
    """A depth_book15 frame of 15 levels a side (bids down from 86699.6, asks up from 86699.7, sizes
    varying); `level_changes` name=(side "b"/"a", level, 0 price / 1 size, new text)."""
    bids = [[f"{86699.6 - 0.1 * i - 0.2 * (i // 5):.1f}", f"{1 + (i * 7) % 5 * 0.37:.4f}"] for i in range(15)]
    asks = [
        [f"{86699.7 + 0.1 * i + 0.3 * (i // 5):.1f}", f"{0.5 + (i * 3) % 7 * 0.41:.4f}"] for i in range(15)
    ]
    data = {"b": bids, "a": asks}
    for side, level, member, text in level_changes.values():
        data[side][level][member] = text
    return json.dumps(
        {"ch": BOOK_CHANNEL, "symbol": "BTCUSDT", "ts": ts, "data": data}, separators=(",", ":")
    )


def test_a_full_15_level_book_is_accepted_level_for_level() -> None:
    raw = full_book()
    wire = json.loads(raw)["data"]
    got = validator().parse(raw)
    assert isinstance(got, BookTop) and len(got.bids) == len(got.asks) == BOOK_LEVELS == 15
    assert got.bids == tuple((float(p), float(q)) for p, q in wire["b"])
    assert got.asks == tuple((float(p), float(q)) for p, q in wire["a"])
    assert (got.bid, got.bid_qty, got.ask, got.ask_qty) == (*got.bids[0], *got.asks[0])
    assert len({p for p, _ in got.bids}) == len({p for p, _ in got.asks}) == 15
    assert len({q for _, q in got.bids + got.asks}) > 5, "sizes vary"


@pytest.mark.parametrize(
    ("reason", "change"),
    [
        ("crossed_book", ("b", 14, 0, "86699.6")),  # the last bid above the one before
        ("crossed_book", ("a", 9, 0, "86700.8")),  # an ask repeated deep in the book (= level 8)
        ("non_positive", ("a", 12, 1, "0")),
        ("non_positive", ("b", 10, 1, "-1.2")),
        ("not_finite", ("b", 7, 1, "NaN")),
        ("not_finite", ("a", 14, 0, "Infinity")),
        ("wrong_type", ("a", 11, 1, "1,5")),
        ("wrong_type", ("b", 13, 0, "")),
    ],
)
def test_a_bad_level_deep_in_a_15_level_book_drops_the_frame(
    reason: str, change: tuple[str, int, int, str]
) -> None:
    rejected(validator().parse(full_book(change=change)), reason)


def test_a_bad_15_level_frame_does_not_move_the_state() -> None:
    v = validator()
    assert isinstance(v.parse(full_book(1790126515000)), BookTop)
    rejected(v.parse(full_book(1790126515300, c=("a", 14, 1, "0"))), "non_positive")
    assert isinstance(v.parse(full_book(1790126515200)), BookTop), "the dropped frame's ts was not kept"


def test_price_frame() -> None:
    # `ft` 2026-09-23T00:00:00Z: day 20,719 of the epoch (calendar.timegm), in ms
    settled_ms = calendar.timegm((2026, 9, 23, 0, 0, 0)) * 1000
    assert settled_ms == 20_719 * 86_400_000
    # `nft` 2026-09-23T08:00:00Z: 8 h later, the next funding instant
    assert validator().parse(PRICE) == PricePush(
        1790126515695, 86688.3, 86720.6, -0.00077, "BTCUSDT", settled_ms, settled_ms + 8 * 3_600_000
    )


@pytest.mark.parametrize(
    ("ft", "settled_ms"),
    [
        (None, None),  # absent: the prices still count
        ("not a time", None),
        (1790121600000, None),  # a number, not the documented ISO text
        ("2026-09-23T08:00:00Z", (20_719 * 24 + 8) * 3_600_000),
        ("2026-09-23T08:00:00.250Z", (20_719 * 24 + 8) * 3_600_000 + 250),
    ],
)
def test_price_frame_settlement_instant(ft: object, settled_ms: int | None) -> None:
    data = {"ip": "86720.6", "mp": "86688.3", "fr": "-0.00077", "ft": ft, "nft": "2026-09-23T08:00:00Z"}
    push = validator().parse(with_data(PRICE, **data))
    assert isinstance(push, PricePush)
    assert push.mark == 86688.3 and push.settled_ms == settled_ms


def test_numbers_tolerated_and_symbol_case_insensitive() -> None:
    v = validator()
    assert isinstance(v.parse(with_data(KLINE, o=63404.6, c=63404, l=63404, h="63404.8")), KlinePush)
    assert isinstance(validator().parse(frame(KLINE, symbol="btcusdt")), KlinePush)
    lower = FrameValidator(symbol="btcusdt", kline_channel="market_kline_1min", max_jump_pct=5.0)
    assert isinstance(lower.parse(KLINE), KlinePush)
    assert isinstance(lower.parse(TICKERS), BookTop)


# --- every reject reason --------------------------------------------------------------------------------


REJECTS: list[tuple[str, str | bytes]] = [
    ("not_json", "hello"),
    ("not_json", '{"ch":"trade",x}'),
    ("not_json", b"\xff\xfe{}"),
    ("not_json", ""),
    ("truncated", KLINE[:57]),
    ("truncated", DEPTH15[:-1]),
    ("truncated", KLINE.encode()[:100]),
    ("not_object", '[{"ch":"trade"}]'),
    ("not_object", '"pong"'),
    ("not_object", "1790126515"),
    ("missing_field", frame(KLINE, ts=...)),
    ("missing_field", frame(KLINE, data=...)),
    ("missing_field", frame(KLINE, symbol=...)),
    ("missing_field", frame(KLINE, ch=...)),
    ("missing_field", with_data(KLINE, c=...)),
    ("missing_field", with_data(TICKERS, bd=...)),
    ("missing_field", frame(DEPTH15, data={"b": [], "a": [["86699.7", "0.7095"]]})),
    ("missing_field", frame(TRADE, data=[])),
    ("missing_field", with_data(PRICE, mp=None)),
    ("wrong_type", frame(KLINE, ts="1786650732204")),
    ("wrong_type", frame(KLINE, ts=True)),
    ("wrong_type", frame(KLINE, ts=1786650732204.0)),
    ("wrong_type", frame(KLINE, ch=1)),
    ("wrong_type", frame(KLINE, symbol=["BTCUSDT"])),
    ("wrong_type", frame(KLINE, data=[1, 2])),
    ("wrong_type", with_data(KLINE, o="63,404.6")),
    ("wrong_type", with_data(KLINE, o=True)),
    ("wrong_type", with_data(TRADE, s="hold")),
    # The unknown-symbol book: one frame of ["",""] levels.
    ("unknown_symbol", frame(DEPTH15, data={"b": [["", ""]], "a": [["", ""]]})),
    ("wrong_type", frame(DEPTH15, data={"b": [["86699.6"]], "a": [["86699.7", "0.7095"]]})),
    ("not_finite", with_data(KLINE, c="NaN")),
    ("not_finite", with_data(KLINE, h="inf")),
    ("not_finite", with_data(TRADE, p="1e999")),
    ("not_finite", with_data(PRICE, fr="-Infinity")),
    ("not_finite", with_data(KLINE, o=float("nan"))),  # a bare NaN token
    ("not_finite", frame(DEPTH15, data={"b": [["86699.6", "nan"]], "a": [["86699.7", "0.7095"]]})),
    ("non_positive", with_data(KLINE, l="0")),
    ("non_positive", with_data(KLINE, b="-0.5")),
    ("non_positive", with_data(TRADE, v="0")),
    ("non_positive", with_data(PRICE, ip="-86720.6")),
    ("non_positive", frame(DEPTH15, data={"b": [["86699.6", "0"]], "a": [["86699.7", "0.7095"]]})),
    ("non_positive", with_data(TICKERS, av="0")),
    ("non_positive", frame(KLINE, ts=-5)),
    # a finite number beyond any market (the candle files' bound, 1e15): found by an audit
    ("too_large", with_data(KLINE, o="1e308", h="1e308", l="1e308", c="1e308")),
    ("too_large", with_data(KLINE, b="1e308")),
    ("too_large", with_data(TRADE, v="1e15")),
    ("too_large", with_data(TICKER, la=10**20)),
    ("too_large", with_data(PRICE, ip="1e308")),
    ("too_large", frame(DEPTH15, data={"b": [["86699.6", "1e308"]], "a": [["86699.7", "0.7095"]]})),
    ("too_large", frame(DEPTH15, data={"b": [["86699.6", "1"]], "a": [["86699.7", "1"], ["1e308", "1"]]})),
    ("too_large", with_data(TICKERS, bv="1e308")),
    ("crossed_book", frame(DEPTH15, data={"b": [["86699.7", "1"]], "a": [["86699.7", "1"]]})),
    ("crossed_book", frame(DEPTH15, data={"b": [["86700", "1"]], "a": [["86699.7", "1"]]})),
    ("crossed_book", with_data(TICKERS, bd="68652")),
    (
        "crossed_book",
        frame(DEPTH15, data={"b": [["86699.5", "1"], ["86699.6", "1"]], "a": [["86699.7", "1"]]}),
    ),
    ("crossed_book", with_data(KLINE, h="63404.4")),  # high below low
    ("unknown_channel", frame(KLINE, ch="market_kline_5min")),
    ("unknown_channel", frame(KLINE, ch="mark_kline_1min")),
    ("unknown_channel", frame(DEPTH15, ch="depth_books")),
    ("unknown_channel", frame(TRADE, ch="Trade")),
    ("wrong_symbol", frame(KLINE, symbol="ETHUSDT")),
    ("wrong_symbol", frame(DEPTH15, symbol="")),
    ("wrong_symbol", with_data(TICKERS, s="ETHUSDT")),
    ("wrong_symbol", frame(TICKERS, data=[])),
    ("wrong_symbol", with_data(TICKER, s="ETHUSDT")),
]


@pytest.mark.parametrize(("reason", "raw"), REJECTS, ids=[f"{r}-{i}" for i, (r, _) in enumerate(REJECTS)])
def test_reject(reason: str, raw: str | bytes) -> None:
    rejected(validator().parse(raw), reason)


def test_every_reason_covered() -> None:
    covered = {r for r, _ in REJECTS} | {"ts_backwards", "price_jump", "ts_future", "bad_funding"}
    assert covered == set(REJECT_REASONS)


def test_a_price_or_size_just_under_the_bound_is_taken() -> None:
    """The bound is the candle files' (1e15, actors/feeds/history.py): just under it is data."""
    v = validator()
    book = v.parse(frame(DEPTH15, data={"b": [["999999999999999", "999999999999999"]], "a": [["1e15", "1"]]}))
    rejected(book, "too_large")  # the ask at the bound
    book = v.parse(frame(DEPTH15, data={"b": [["86699.6", "999999999999999"]], "a": [["86699.7", "1"]]}))
    assert isinstance(book, BookTop) and book.bid_qty == 999999999999999.0


def test_a_first_frame_priced_beyond_any_market_is_dropped_not_the_last_good_price() -> None:
    """Found by an audit: with no last good price yet (a symbol's first frame), a kline of prices
    1e308 was taken, its close the price every later one was judged against."""
    v = validator()
    rejected(v.parse(with_data(KLINE, o="1e308", h="1e308", l="1e308", c="1e308")), "too_large")
    assert isinstance(v.parse(frame(KLINE, ts=1786650732300)), KlinePush)


def test_a_rest_kline_row_or_book_beyond_any_market_is_dropped() -> None:
    rows = [
        {"open": 1, "high": "1e308", "low": 1, "close": 1, "time": 60_000, "quoteVol": "1"},
        {"open": 1, "high": 2, "low": 1, "close": 1, "time": 120_000, "quoteVol": "1e308"},
        {"open": 1, "high": 2, "low": 1, "close": 1, "time": 180_000, "quoteVol": "1"},
    ]
    problems: list[str] = []
    candles = parse_rest_klines(rows, 60.0, problems)
    assert [c.open_ts for c in candles] == [180.0] and len(problems) == 2, problems
    with pytest.raises(RestError, match="bad level"):
        parse_rest_depth({"bids": [["1", "1e308"]], "asks": [["2", "1"]]}, 0.0)


@pytest.mark.parametrize("fr", ["10.5", "-250", "1e300"])
def test_a_funding_rate_beyond_ten_percent_is_dropped(fr: str) -> None:
    """Found by an audit: the `price` channel's `fr` (percent) was taken whatever it said, and the
    broker charged it (1e300 %); a funding file's rates are held to 10 % (a fraction of 0.1)."""
    rejected(validator().parse(with_data(PRICE, fr=fr)), "bad_funding")
    assert validator().parse(with_data(PRICE, fr="-10")).funding_rate_pct == -10.0


def test_a_frame_ahead_of_the_time_that_passed_is_dropped_and_freezes_nothing() -> None:
    """Found by an audit: one kline frame an hour ahead was taken (its price never judged against
    the last), became its channel's last ts, and every genuine frame after it was `ts_backwards`
    until the next reconnect. A frame's ts may run ahead of its symbol's last by the time between
    their arrivals (any clock: only differences count) plus FUTURE_TOLERANCE_S."""
    from protocols.bitunix import FUTURE_TOLERANCE_S

    v = validator()
    t0 = 1786650732204
    assert isinstance(v.parse(frame(KLINE, ts=t0), 500.0), KlinePush)
    hour = with_data(frame(KLINE, ts=t0 + 3_600_000), o="634047", h="634048", l="634045", c="634047")
    rejected(v.parse(hour, 501.0), "ts_future")
    # the genuine frames go on, on every channel of the symbol
    assert isinstance(v.parse(frame(KLINE, ts=t0 + 1000), 501.2), KlinePush)
    depth = frame(DEPTH15, ts=t0 + 1500, data={"b": [["63404.6", "1"]], "a": [["63404.7", "1"]]})
    assert isinstance(v.parse(depth, 501.7), BookTop)
    # a quiet minute: its frames come a minute later, in exchange time as here
    assert isinstance(v.parse(frame(KLINE, ts=t0 + 61_500), 561.7), KlinePush)
    # up to the tolerance ahead (clocks' jitter, a frame held up and then the next on time)
    ahead = t0 + 61_500 + int((FUTURE_TOLERANCE_S - 0.5) * 1000)
    rejected(v.parse(frame(KLINE, ts=ahead + 1_000), 561.7), "ts_future")
    assert isinstance(v.parse(frame(KLINE, ts=ahead), 561.7), KlinePush)
    # after a reconnect the next frame starts afresh; without arrival times nothing is judged
    v.reset_sequence()
    assert isinstance(v.parse(frame(KLINE, ts=t0 + 7_200_000), 562.0), KlinePush)
    assert isinstance(validator().parse(frame(KLINE, ts=t0 + 10**9)), KlinePush)


def test_ts_backwards_per_channel_and_reset() -> None:
    v = validator()
    assert isinstance(v.parse(KLINE), KlinePush)
    assert isinstance(v.parse(KLINE), KlinePush)  # equal ts is fine
    rejected(v.parse(frame(KLINE, ts=1786650732203)), "ts_backwards")
    # Another channel keeps its own sequence.
    depth = frame(DEPTH15, ts=1786650732000, data={"b": [["63404.6", "1"]], "a": [["63404.7", "1"]]})
    assert isinstance(v.parse(depth), BookTop)
    # A rejected frame does not advance the sequence.
    rejected(v.parse(frame(KLINE, ts=1786650799999, symbol="ETHUSDT")), "wrong_symbol")
    assert isinstance(v.parse(frame(KLINE, ts=1786650732300)), KlinePush)
    # After a reconnect the sequence starts afresh.
    v.reset_sequence()
    assert isinstance(v.parse(frame(KLINE, ts=1786650732250)), KlinePush)


def test_price_jump() -> None:
    v = validator(max_jump_pct=2.0)
    t0 = 1786650732204
    assert isinstance(v.parse(KLINE), KlinePush)  # close 63404.7
    jumped = with_data(KLINE, o="66000", h="66000", l="66000", c="66000")  # +4.1 %
    rejected(v.parse(frame(jumped, ts=t0 + 500)), "price_jump")
    rejected(v.parse(frame(jumped, ts=t0 + 1000)), "price_jump")
    # The rejected frames did not move the last good price or its time: past 1 s the bound grows
    # with the square root of the time, and takes the move once 1.02 ** sqrt(dt) reaches it.
    rejected(v.parse(frame(jumped, ts=t0 + 1001)), "price_jump")
    assert 1.02 ** math.sqrt(4.0) < 66000 / 63404.7 < 1.02 ** math.sqrt(4.2)
    rejected(v.parse(frame(jumped, ts=t0 + 4000)), "price_jump")
    assert isinstance(v.parse(frame(jumped, ts=t0 + 4200)), KlinePush)
    t1 = t0 + 4200
    # Book mid and trades are checked against the same last good price.
    crash = frame(DEPTH15, ts=t1 + 100, data={"b": [["60000", "1"]], "a": [["60000.1", "1"]]})
    rejected(v.parse(crash), "price_jump")
    assert isinstance(
        v.parse(frame(TRADE, ts=t1 + 200, data=[{"p": "66500", "v": "1", "s": "sell"}])), TradePush
    )
    rejected(v.parse(frame(TRADE, ts=t1 + 300, data=[{"p": "70000", "v": "1", "s": "buy"}])), "price_jump")
    # The mark is checked too (an audit: a halved mark liquidated a position); the index is not.
    rejected(v.parse(frame(PRICE, ts=t1 + 400)), "price_jump")  # a mark of 86688.3: +30 %
    near = with_data(PRICE, mp="66510.0", ip="1000")
    assert isinstance(v.parse(frame(near, ts=t1 + 400)), PricePush)
    # reset_sequence keeps the last good price.
    v.reset_sequence()
    rejected(v.parse(frame(TRADE, ts=t1 + 500, data=[{"p": "60000", "v": "1", "s": "buy"}])), "price_jump")


def test_a_jump_stamped_over_a_second_on_but_arriving_at_once_is_judged() -> None:
    """Found by an audit: a 10x price stamped 1.5 s after the last good one passed (the check
    looked within 1 s of the exchange's ts only). With arrival times, the time since the last good
    price is the shorter of the two clocks; and a frame that came after a second of silence is
    judged too (found by a later audit: it passed whatever its price)."""
    v = validator(max_jump_pct=5.0)
    t0 = 1786650732204
    assert isinstance(v.parse(frame(KLINE, ts=t0), 100.0), KlinePush)  # close 63404.7
    tenfold = with_data(KLINE, o="634047", h="634048", l="634045", c="634047")
    rejected(v.parse(frame(tenfold, ts=t0 + 1500), 100.05), "price_jump")
    rejected(v.parse(frame(tenfold, ts=t0 + 1500), 101.5), "price_jump")  # after 1.5 s of silence


def _trade(ts: int, price: float) -> str:
    return frame(TRADE, ts=ts, data=[{"p": f"{price:.1f}", "v": "1", "s": "buy"}])


@pytest.mark.parametrize("factor", [10.0, 0.1])
@pytest.mark.parametrize("arrivals", [None, (100.0, 101.5)], ids=["ts", "ts_and_arrival"])
def test_an_absurd_price_after_a_silence_is_still_a_jump(
    factor: float, arrivals: tuple[float, float] | None
) -> None:
    """Found by an audit: the jump check looked only within 1 s of the last good price, so after
    1.5 s of silence (a reconnect, a quiet market) a close at 10x, or a tenth, passed and became
    the mark. Past 1 s the bound grows with the square root of the time: after 1.5 s, a move of at
    most 1.05 ** sqrt(1.5) up (6.2 %), or down to 1 / that (5.8 % under)."""
    v = validator(max_jump_pct=5.0)
    first, then = arrivals or (None, None)
    assert isinstance(v.parse(_push(KLINE_T0, "60000", "60000", "60000", "60000"), first), KlinePush)
    far = f"{60000 * factor:.1f}"
    result = v.parse(_push(KLINE_T0 + 1500, far, far, far, far), then)
    rejected(result, "price_jump")
    assert "in 1.5 s" in result.detail, result
    # the same price as a trade, a book's mid, a mark: each is judged the same way
    rejected(v.parse(_trade(KLINE_T0 + 1500, 60000 * factor), then), "price_jump")
    mark = with_data(PRICE, mp=far, ip=far)
    rejected(v.parse(frame(mark, ts=KLINE_T0 + 1500), then), "price_jump")
    # the last good price stayed; a price that moved within the grown bound is taken
    assert 1.05 ** math.sqrt(1.5) > 1.06 and 1.05 ** -math.sqrt(1.5) < 0.944
    move = 1.06 if factor > 1 else 0.944
    assert isinstance(v.parse(_trade(KLINE_T0 + 1500, 60000 * move), then), TradePush)


@pytest.mark.parametrize("factor", [1.2, 0.8])
@pytest.mark.parametrize("clock", ["ts", "ts_and_arrival", "arrival_with_ts_ahead"])
def test_a_big_move_is_refused_at_first_and_followed_once_the_bound_has_grown_to_it(
    factor: float, clock: str
) -> None:
    """A real fast market: a 20 % move away from the last good price is refused 5 s after it and
    taken 30 s after it. A refused price leaves the last good price (and its time) as it was, so
    the bound keeps growing and the new level is taken in the end: once 1.05 ** sqrt(t) reaches the
    move (a 20 % fall after 21 s, a 20 % rise after 14 s). With arrival times the shorter clock
    counts: a ts 8 s ahead of the arrivals does not make it sooner."""

    def at(t: float) -> tuple[int, float | None]:  # a frame t s after the last good one: ts, arrival
        if clock == "ts":
            return KLINE_T0 + round(t * 1000), None
        ahead = 8.0 if clock == "arrival_with_ts_ahead" else 0.0  # within ts_future's 10 s
        return KLINE_T0 + round((t + ahead) * 1000), 1000.0 + t

    def parse(t: float, price: float) -> Any:
        ts, arrival = at(t)
        return v.parse(_trade(ts, price), arrival)

    v = validator(max_jump_pct=5.0)
    ts0 = KLINE_T0
    assert isinstance(v.parse(_trade(ts0, 60000.0), None if clock == "ts" else 1000.0), TradePush)
    moved = 60000.0 * factor
    away = max(factor, 1.0 / factor)  # the move as a ratio, up or down alike
    assert 1.05 ** math.sqrt(5) < away < 1.05 ** math.sqrt(30)
    rejected(parse(5.0, moved), "price_jump")
    # each second on the level is offered again, refused until the bound has grown to it
    taken_at = next(t for t in range(1, 61) if 1.05 ** math.sqrt(t) >= away)
    assert taken_at == (21 if factor < 1 else 14)
    for t in range(6, taken_at):
        rejected(parse(float(t), moved), "price_jump")
    assert isinstance(parse(float(taken_at), moved), TradePush)
    # now the new level is the last good price: moves are judged from it, within 1 s again
    assert isinstance(parse(taken_at + 0.1, moved * 1.01), TradePush)
    rejected(parse(taken_at + 0.2, 60000.0), "price_jump")


def test_a_big_move_is_taken_30_s_on_by_either_clock() -> None:
    for factor in (1.2, 0.8):
        for arrivals in ((None, None), (1000.0, 1030.0)):
            v = validator(max_jump_pct=5.0)
            assert isinstance(v.parse(_trade(KLINE_T0, 60000.0), arrivals[0]), TradePush)
            assert isinstance(v.parse(_trade(KLINE_T0 + 30_000, 60000.0 * factor), arrivals[1]), TradePush)


def test_a_ts_far_ahead_on_a_frame_that_came_at_once_does_not_widen_the_bound() -> None:
    """The time since the last good price is the shorter of the frames' ts and their arrivals
    here: a forged ts does not buy a wider bound. Without a reconnect in between, a ts 1 h ahead
    is `ts_future` first; after one (which starts the ts_future check afresh, keeping the last
    good price and when it came), it is the jump check's own clock that refuses it."""
    v = validator(max_jump_pct=5.0)
    assert isinstance(v.parse(_trade(KLINE_T0, 60000.0), 100.0), TradePush)
    hour = 3_600_000
    # 10 % up, stamped 1 h on: by the ts alone 1.05 ** 60 (18x) would be allowed
    rejected(v.parse(_trade(KLINE_T0 + hour, 66000.0), 100.2), "ts_future")
    v.reset_sequence()
    for arrival in (100.2, 102.0):  # 0.2 s, and 2 s, after the last good price came
        assert 1.05 ** math.sqrt(2.0) < 1.1 < 1.05 ** math.sqrt(hour / 1000)
        result = v.parse(_trade(KLINE_T0 + hour, 66000.0), arrival)
        rejected(result, "price_jump")
        assert f"in {arrival - 100.0:g} s" in result.detail, result
    # within ts_future's 10 s, no reconnect: a ts 9 s on arriving 2 s after is judged as 2 s on
    v = validator(max_jump_pct=5.0)
    assert isinstance(v.parse(_trade(KLINE_T0, 60000.0), 100.0), TradePush)
    assert 1.05 ** math.sqrt(2.0) < 1.1 < 1.05 ** math.sqrt(9.0)
    rejected(v.parse(_trade(KLINE_T0 + 9000, 66000.0), 102.0), "price_jump")
    # and a frame that really came 9 s after takes it
    assert isinstance(v.parse(_trade(KLINE_T0 + 9000, 66000.0), 109.0), TradePush)


def test_the_bound_never_narrows_with_time() -> None:
    """Within 1 s a move of max_jump_pct percent passes, down as up (a 5 % fall is a little more
    than ln 1.05 in log terms); past 1 s the grown bound is never below that."""
    # a 4.95 % fall: under 1 / 1.05 ** sqrt(1.05), the log bound alone 1.05 s on
    assert 1.05 ** -math.sqrt(1.05) > 57030 / 60000
    for dt_ms in (500, 1000, 1050):
        v = validator(max_jump_pct=5.0)
        assert isinstance(v.parse(_trade(KLINE_T0, 60000.0)), TradePush)
        assert isinstance(v.parse(_trade(KLINE_T0 + dt_ms, 57030.0)), TradePush), dt_ms
        v = validator(max_jump_pct=5.0)
        assert isinstance(v.parse(_trade(KLINE_T0, 60000.0)), TradePush)
        rejected(v.parse(_trade(KLINE_T0 + dt_ms, 56900.0)), "price_jump")  # 5.2 % under


def test_max_jump_pct_zero_disables_the_check() -> None:
    v = validator(max_jump_pct=0.0)
    assert isinstance(v.parse(_trade(KLINE_T0, 60000.0), 100.0), TradePush)
    assert isinstance(v.parse(_trade(KLINE_T0 + 100, 600000.0), 100.1), TradePush)
    assert isinstance(v.parse(_trade(KLINE_T0 + 2000, 6000.0), 102.0), TradePush)


def test_small_moves_accepted() -> None:
    v = validator(max_jump_pct=0.5)
    for i, close in enumerate(("63404.7", "63500", "63600", "63400")):
        result = v.parse(frame(with_data(KLINE, c=close, h="63700", l="63300"), ts=1786650732204 + i * 500))
        assert isinstance(result, KlinePush), result


# --- REST -----------------------------------------------------------------------------------------------


def test_rest_doc_example() -> None:
    candles = parse_rest_klines(rest_data(200, KLINE_REST_DOC), 60)
    assert candles == [Candle(111.111, 60, 60000, 60001, 59989.2, 60000, 1.0)]


def kline_row(t: int | str, price: float, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "open": str(price - 1),
        "high": str(price + 5),
        "low": str(price - 5),
        "close": str(price),
        "time": t,
        "quoteVol": "2.5",
        "baseVol": str(2.5 * price),
        "type": "LAST_PRICE",
    }
    row.update(extra)
    return row


def test_rest_klines_oldest_first_dedup_and_bad_rows() -> None:
    base = 1790126400000
    rows = [
        kline_row(str(base + 180000), 63004),  # newest first, time as a string
        kline_row(base + 120000, 63003),
        kline_row(base + 120000, 99999),  # duplicate open time: dropped
        kline_row(base + 60000, 63002, close="NaN"),
        kline_row(base + 60000, 63002, high="62000"),  # high < low
        kline_row(base, 63001),
        kline_row(base - 60000, 63000, low="0"),
        kline_row(base - 120000, 63000, open=None),
        kline_row(base - 180000, 63000, time=True),
        kline_row(base - 240000, 63000, quoteVol="-1"),
        kline_row(base - 300000, 63000, close="70000"),  # close above high
        "garbage",
        None,
        kline_row(base + 60000, 63002),  # the good row for the time whose bad rows came first
    ]
    problems: list[str] = []
    candles = parse_rest_klines(rows, 60.0, problems)
    assert [c.open_ts for c in candles] == [(base + i * 60000) / 1000 for i in range(4)]
    assert [c.close for c in candles] == [63001, 63002, 63003, 63004]
    assert all(c.volume == 2.5 and c.interval_s == 60.0 for c in candles)
    # each skipped row is named (the feed counts and logs them as dropped data): the ten bad
    # rows above, in their order
    assert len(problems) == 10, problems
    assert "repeated" in problems[0] and "outside" in problems[2] and "not an object" in problems[-1]
    assert all(p.isprintable() and len(p) < 120 for p in problems)


def test_rest_klines_volume_readings() -> None:
    t = 1790126400000
    documented = {"open": 60000, "high": 60001, "low": 59999, "close": 60000, "time": t}
    assert parse_rest_klines([dict(documented, baseVol="3", quoteVol="180000")], 60)[0].volume == 3
    assert parse_rest_klines([dict(documented, quoteVol="3", baseVol="180000")], 60)[0].volume == 3
    # one field: read as the docs say (baseVol is the notional): 3 USDT at 60000
    assert parse_rest_klines([dict(documented, baseVol=3)], 60)[0].volume == 3 / 60000
    assert parse_rest_klines([dict(documented, quoteVol="3")], 60)[0].volume == 3
    # a coin under 1 USDT: the smaller field is the notional, not the quantity (the rule was the
    # smaller of the two); the one that times the price gives the other is the quantity, either way
    cheap = {"open": 0.1, "high": 0.1, "low": 0.1, "close": 0.1, "time": t}
    assert parse_rest_klines([dict(cheap, quoteVol="1000", baseVol="100")], 60)[0].volume == 1000
    assert parse_rest_klines([dict(cheap, baseVol="1000", quoteVol="100")], 60)[0].volume == 1000
    assert parse_rest_klines([documented], 60)[0].volume == 0.0
    assert parse_rest_klines([dict(documented, baseVol="0", quoteVol="0")], 60)[0].volume == 0.0
    assert parse_rest_klines([], 60) == []


@pytest.mark.parametrize("data", [None, {}, "[]", 5, {"data": []}])
def test_rest_klines_not_a_list(data: Any) -> None:
    with pytest.raises(RestError) as exc:
        parse_rest_klines(data, 60)
    assert exc.value.retryable is False


def test_trading_pairs_request_and_row() -> None:
    assert TRADING_PAIRS_PATH == "/api/v1/futures/market/trading_pairs"
    assert trading_pairs_params("btcusdt") == {"symbols": "BTCUSDT"}
    row = {"symbol": "BTCUSDT", "basePrecision": 4, "quotePrecision": 1, "symbolStatus": "OPEN"}
    other = {"symbol": "ETHUSDT", "basePrecision": 3}
    assert trading_pair_row([other, "junk", None, row], "btcusdt") is row
    assert trading_pair_row([{**row, "symbol": "btcusdt"}], "BTCUSDT") == {**row, "symbol": "btcusdt"}
    assert trading_pair_row([other], "BTCUSDT") is None, "no row: the exchange does not list it"
    assert trading_pair_row([], "BTCUSDT") is None
    for data in (None, {"symbol": "BTCUSDT"}, "BTCUSDT"):
        with pytest.raises(RestError) as bad:
            trading_pair_row(data, "BTCUSDT")
        assert bad.value.retryable


def test_unknown_symbol_is_code_20015() -> None:
    body = b'{"code":20015,"data":null,"msg":"this Futures is not allowed to trade."}'
    with pytest.raises(RestError) as err:
        rest_data(200, body)
    assert err.value.code == 20015 and not err.value.retryable


def test_rest_depth() -> None:
    body = b'{"code":0,"data":{"asks":[["86699.8","2.1"],["86699.7","0.7"]],"bids":[["86699.6","2.2"],["86699.5","2.7"]]},"msg":"Success"}'
    book = parse_rest_depth(rest_data(200, body), 1790126515.5)
    assert book == Book(1790126515.5, ((86699.6, 2.2), (86699.5, 2.7)), ((86699.7, 0.7), (86699.8, 2.1)))


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        {"asks": [], "bids": [["1", "1"]]},
        {"asks": [["2", "1"]]},
        {"asks": [["2", "1"]], "bids": [["2", "1"]]},
        {"asks": [["2", "1"]], "bids": [["", ""]]},
        {"asks": [["2", "0"]], "bids": [["1", "1"]]},
        {"asks": [["2", "NaN"]], "bids": [["1", "1"]]},
        {"asks": [["2"]], "bids": [["1", "1"]]},
    ],
)
def test_rest_depth_malformed(data: Any) -> None:
    with pytest.raises(RestError) as exc:
        parse_rest_depth(data, 1.0)
    assert exc.value.retryable is True


@pytest.mark.parametrize(
    ("status", "body", "code", "retryable"),
    [
        (200, b'{"code":10005,"data":null,"msg":"Too many requests, please try again later"}', 10005, True),
        (200, b'{"code":10006,"data":null,"msg":"Request too frequently"}', 10006, True),
        (200, b'{"code":20015,"data":null,"msg":"this Futures is not allowed to trade."}', 20015, False),
        (200, b'{"code":1,"data":null,"msg":"Network Error"}', 1, False),  # the missing-symbol reply
        (200, b'{"code":10001,"data":null,"msg":"Network Error"}', 10001, True),  # transient (docs)
        (200, b'{"code":404,"msg":"Not Found"}', 404, False),
        (200, b'{"code":10008,"msg":"Parameter error"}', 10008, False),
        (200, b'{"code":77777,"msg":"?"}', 77777, False),
        (429, b"", None, True),
        (503, b"<html>Service Unavailable</html>", None, True),
        (500, b'{"code":0,"data":[]}', 0, True),
        (404, b"<html>404</html>", None, False),
        (403, b'{"code":10004,"msg":"IP"}', 10004, False),
        (200, b"<html>cloudflare</html>", None, True),
        (200, b'{"code":0,"data":[', None, True),
        (200, b"[]", None, True),
        (200, b'{"data":[]}', None, True),
        (200, b"\xff\xfe\x00", None, True),
    ],
)
def test_rest_errors(status: int, body: bytes, code: int | None, retryable: bool) -> None:
    with pytest.raises(RestError) as exc:
        rest_data(status, body)
    err = exc.value
    assert (err.code, err.http_status, err.retryable) == (code, status, retryable)
    assert isinstance(err.msg, str) and str(err)


def test_rest_success() -> None:
    assert rest_data(200, b'{"code":0,"data":{"x":1},"msg":"Success"}') == {"x": 1}
    assert rest_data(200, b'{"code":"0","data":[],"msg":"Success"}') == []


# --- fuzzing ----------------------------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEYS = st.sampled_from(
    [
        *("ch", "ts", "data", "op", "symbol", "o", "h", "l", "c", "b", "a", "q", "s", "p", "v", "la"),
        *("bd", "ak", "bv", "av", "ip", "mp", "fr", "code", "msg", "open", "high", "low", "close"),
        *("time", "bids", "asks", "quoteVol", "baseVol"),
    ]
)
NASTY_STRINGS = st.sampled_from(
    [
        *("", "NaN", "nan", "inf", "-inf", "Infinity", "1e999", "-1e999", "0", "-0", "-1", "1e-400"),
        *("abc", "1_000", " 5 ", "0x10", "BTCUSDT", "btcusdt", "ETHUSDT", "buy", "sell", "\x00", "\ud800"),
        *("market_kline_1min", "depth_book1", "tickers", "ticker", "trade", "price", "63404.6"),
    ]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | NASTY_STRINGS
)
JSON = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(KEYS | st.text(max_size=6), children, max_size=5)
    ),
    max_leaves=25,
)


def paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path (keys/indices) to a member of a JSON value, the root excluded."""
    out: list[tuple[Any, ...]] = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    for k, v in items:
        out.append((*prefix, k))
        out.extend(paths(v, (*prefix, k)))
    return out


@st.composite
def mutated_frames(draw: st.DrawFn) -> str:
    """A documented frame with one to three members deleted, replaced or retyped."""
    obj = json.loads(draw(st.sampled_from(ALL_FRAMES)))
    for _ in range(draw(st.integers(1, 3))):
        ps = paths(obj)
        if not ps:
            break
        path = draw(st.sampled_from(ps))
        parent = obj
        for k in path[:-1]:
            parent = parent[k]
        key = path[-1]
        kind = draw(st.sampled_from(["delete", "replace", "nasty", "number", "wrap"]))
        if kind == "delete":
            del parent[key]
        elif kind == "replace":
            parent[key] = draw(JSON)
        elif kind == "nasty":
            parent[key] = draw(NASTY_STRINGS)
        elif kind == "number":
            v = parent[key]
            try:
                parent[key] = float(v) if isinstance(v, str) else draw(st.floats())
            except ValueError:
                parent[key] = draw(st.floats())
        else:
            parent[key] = [parent[key]]
    return json.dumps(obj)


@st.composite
def frame_like(draw: st.DrawFn) -> str:
    """Objects shaped like data frames with arbitrary members, to reach the channel parsers."""
    obj: dict[str, Any] = {
        "ch": draw(
            st.sampled_from(["market_kline_1min", "depth_book1", "depth_book15", "tickers", "ticker"])
            | st.sampled_from(["trade", "price"])
        ),
        "symbol": draw(st.sampled_from(["BTCUSDT", "btcusdt", "ETHUSDT"]) | SCALARS),
        "ts": draw(st.integers(min_value=-5, max_value=2**63) | SCALARS),
        "data": draw(JSON),
    }
    for k in draw(st.lists(st.sampled_from(["ch", "symbol", "ts", "data"]), max_size=2)):
        obj.pop(k, None)
    return json.dumps(obj)


def test_truncation_at_every_offset() -> None:
    for text in ALL_FRAMES:
        for i in range(1, len(text)):
            rejected(validator().parse(text[:i]), "truncated")
            rejected(validator().parse(text[:i].encode()), "truncated")


@pytest.mark.slow  # 300 examples
@FUZZ
@given(st.text() | st.binary())
def test_fuzz_arbitrary_input(raw: str | bytes) -> None:
    check_parsed(validator().parse(raw))


@pytest.mark.slow  # 300 examples
@FUZZ
@given(JSON)
def test_fuzz_arbitrary_json(value: Any) -> None:
    check_parsed(validator().parse(json.dumps(value)))


@pytest.mark.slow  # 300 examples
@FUZZ
@given(st.lists(mutated_frames() | frame_like() | st.sampled_from(DATA_FRAMES), min_size=1, max_size=6))
def test_fuzz_mutated_frames(frames: list[str]) -> None:
    v = validator(max_jump_pct=1.0)
    for raw in frames:
        check_parsed(v.parse(raw))
        check_parsed(v.parse(raw.encode()[: len(raw) // 2]))


def test_parse_never_raises_on_odd_objects() -> None:
    v = validator()
    odd: list[Any] = [
        None,
        5,
        [],
        bytearray(KLINE.encode()),
        "[" * 100000,
        "1" * 5000,
        '{"a":' + "1" * 5000 + "}",
    ]
    for raw in odd:
        check_parsed(v.parse(raw))


def check_rest(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except RestError as err:
        assert isinstance(err.retryable, bool) and isinstance(err.msg, str)
        return None


@pytest.mark.slow  # 300 examples
@FUZZ
@given(st.integers(min_value=100, max_value=599), st.binary() | JSON.map(lambda v: json.dumps(v).encode()))
def test_fuzz_rest_data(status: int, body: bytes) -> None:
    check_rest(rest_data, status, body)


@st.composite
def rest_bodies(draw: st.DrawFn) -> Any:
    """REST kline or depth data: arbitrary JSON, or realistic rows with members mutated."""
    if draw(st.booleans()):
        return draw(JSON)
    rows: list[Any] = [
        kline_row(1790126400000 - i * 60000, 63000.0 + i) for i in range(draw(st.integers(0, 5)))
    ]
    for row in rows:
        for key in draw(st.lists(st.sampled_from(list(row)), max_size=3)):
            row[key] = draw(SCALARS)
    if draw(st.booleans()):
        rows.append(draw(JSON))
    return rows


@pytest.mark.slow  # 300 examples
@FUZZ
@given(rest_bodies())
def test_fuzz_rest_klines(data: Any) -> None:
    candles = check_rest(parse_rest_klines, data, 60.0)
    if candles is not None:
        times = [c.open_ts for c in candles]
        assert times == sorted(set(times))
        for c in candles:
            assert 0 < c.low <= min(c.open, c.close) and max(c.open, c.close) <= c.high < math.inf
            assert 0 <= c.volume < math.inf


@pytest.mark.slow  # 300 examples
@FUZZ
@given(
    JSON
    | st.fixed_dictionaries(
        {
            "asks": st.lists(st.lists(SCALARS, max_size=3), max_size=4),
            "bids": st.lists(st.lists(SCALARS, max_size=3), max_size=4),
        }
    )
)
def test_fuzz_rest_depth(data: Any) -> None:
    book = check_rest(parse_rest_depth, data, 1.0)
    if book is not None:
        assert book.bids[0][0] < book.asks[0][0]
        assert [p for p, _ in book.bids] == sorted((p for p, _ in book.bids), reverse=True)
        assert [p for p, _ in book.asks] == sorted(p for p, _ in book.asks)


def test_a_mark_that_jumps_is_dropped_not_taken() -> None:
    """Found by an audit: the `price` channel's mark had no jump check, and a mark halved within
    300 ms liquidated a position. Now it is judged with the other prices of its symbol."""
    v = validator(max_jump_pct=5.0)
    t0 = 1790126515693
    assert isinstance(v.parse(DEPTH15), BookTop)  # mid 86699.65
    rejected(v.parse(frame(with_data(PRICE, mp="43344.2"), ts=t0 + 300)), "price_jump")
    mark = v.parse(frame(PRICE, ts=t0 + 300))  # the doc's own mark, 0.013 % under the mid
    assert isinstance(mark, PricePush) and mark.mark == 86688.3
    # after a second of silence too (found by a later audit: then any price passed): the bound
    # grows with the square root of the time, 1.05 ** sqrt(1.1) (5.5 %) after 1.1 s
    rejected(v.parse(frame(with_data(PRICE, mp="43344.2"), ts=t0 + 1400)), "price_jump")


KLINE_T0 = 1786650732204  # KLINE's ts: 12.204 s into its minute


def _push(ts: int, o: str, h: str, lo: str, c: str) -> str:
    return frame(with_data(KLINE, o=o, h=h, l=lo, c=c), ts=ts)


@pytest.mark.parametrize(
    ("o", "h", "lo", "c"),
    [
        ("70000", "63404.8", "63404.5", "63404.7"),  # the open above the high
        ("63404.6", "63404.8", "63404.5", "63000"),  # the close under the low
    ],
)
def test_a_kline_whose_range_does_not_hold_its_open_and_close_is_dropped(
    o: str, h: str, lo: str, c: str
) -> None:
    rejected(validator().parse(_push(KLINE_T0, o, h, lo, c)), "crossed_book")


def test_a_kline_that_widens_its_range_past_a_jump_is_dropped() -> None:
    """Found by an audit: only the close was jump-checked, and a push with its high at 10x the
    price worked a resting sell there, then liquidated the short at a price that never traded.
    A new high or low must be a price that traded within the last second: within max_jump_pct of
    the last good price."""
    v = validator(max_jump_pct=5.0)
    first = _push(KLINE_T0, "63404.6", "63404.8", "63404.5", "63404.7")
    assert isinstance(v.parse(first), KlinePush)
    # the same candle, 500 ms later: a high of 10x, and a low of a tenth, are dropped
    rejected(v.parse(_push(KLINE_T0 + 500, "63404.6", "634048.0", "63404.5", "63404.7")), "price_jump")
    rejected(v.parse(_push(KLINE_T0 + 500, "63404.6", "63404.8", "6340.4", "63404.7")), "price_jump")
    # a new high within the limit, where the close is, is taken
    assert isinstance(v.parse(_push(KLINE_T0 + 500, "63404.6", "64000.0", "63404.5", "64000.0")), KlinePush)
    # the next candle's first push: its range is checked too
    next_ts = (KLINE_T0 // 60_000 + 1) * 60_000 + 300
    book = frame(DEPTH15, ts=next_ts - 200, data={"b": [["64000.0", "1"]], "a": [["64000.1", "1"]]})
    assert isinstance(v.parse(book), BookTop)
    rejected(v.parse(_push(next_ts, "64000.0", "90000.0", "64000.0", "64000.0")), "price_jump")
    assert isinstance(v.parse(_push(next_ts, "64000.0", "64100.0", "63900.0", "64050.0")), KlinePush)


def test_a_new_high_after_a_silence_is_judged_by_the_grown_bound() -> None:
    """A new high or low is judged as any price, with the bound grown by the time since the last
    good price (found by an audit: past 1 s a new extreme was not judged at all)."""
    v = validator(max_jump_pct=5.0)
    assert isinstance(v.parse(_push(KLINE_T0, "60000.0", "60000.0", "60000.0", "60000.0")), KlinePush)
    assert 1.05 ** math.sqrt(5) < 1.2 < 1.05 ** math.sqrt(30)  # KLINE_T0 + 30 s: the same candle
    rejected(v.parse(_push(KLINE_T0 + 5000, "60000.0", "72000.0", "60000.0", "60000.0")), "price_jump")
    rejected(v.parse(_push(KLINE_T0 + 5000, "60000.0", "60000.0", "48000.0", "60000.0")), "price_jump")
    # the rejected pushes did not move the last good price's time: 30 s after it, the bound holds them
    wide = _push(KLINE_T0 + 30_000, "60000.0", "72000.0", "48000.0", "60000.0")
    assert isinstance(v.parse(wide), KlinePush)


def test_after_a_reconnect_the_first_kline_may_show_what_its_candle_did_meanwhile() -> None:
    """The first push after a reconnect shows the candle as it is, its range grown while the
    socket was down: its range is not judged against the price before (its close still is)."""
    v = validator(max_jump_pct=5.0)
    assert isinstance(v.parse(_push(KLINE_T0, "63404.6", "63404.8", "63404.5", "63404.7")), KlinePush)
    v.reset_sequence()
    depth = frame(DEPTH15, ts=KLINE_T0 + 800, data={"b": [["63404.6", "1"]], "a": [["63404.7", "1"]]})
    assert isinstance(v.parse(depth), BookTop)
    wide = _push(KLINE_T0 + 900, "63404.6", "70000.0", "60000.0", "63404.7")
    assert isinstance(v.parse(wide), KlinePush)


@pytest.mark.parametrize(
    ("value", "date_s", "expected"),
    [
        ("3", None, 3.0),  # whole seconds (RFC 9110 delay-seconds)
        (" 0 ", None, 0.0),
        ("120", None, 30.0),  # a long wait is cut to RETRY_AFTER_MAX_S: asked again after 30 s
        ("9" * 5000, None, 30.0),  # too long for int(): no ValueError
        ("Sat, 05 Dec 2026 09:00:10 GMT", 1_796_461_200.0, 10.0),  # a date, against the reply's Date
        ("Sat, 05 Dec 2026 09:00:10 GMT", None, 4.0),  # ... or this machine's clock (now_s)
        ("Sat, 05 Dec 2026 08:59:00 GMT", 1_796_461_200.0, 0.0),  # a date passed: no wait
        ("", None, None),
        (None, None, None),
        ("-5", None, None),  # neither form: ignored
        ("1.5", None, None),
        ("soon", None, None),
        ("\u00b2", None, None),  # a digit to str.isdigit, not to int()
    ],
)
def test_retry_after_is_read_in_both_forms_and_bounded(
    value: str | None, date_s: float | None, expected: float | None
) -> None:
    from protocols.bitunix import RETRY_AFTER_MAX_S, retry_after_s

    assert RETRY_AFTER_MAX_S == 30.0
    now_s = 1_796_461_206.0  # 2026-12-05T09:00:06Z (the date's 09:00:10 is 4 s after it)
    assert calendar.timegm((2026, 12, 5, 9, 0, 0)) == 1_796_461_200
    assert retry_after_s(value, date_s, now_s) == expected
