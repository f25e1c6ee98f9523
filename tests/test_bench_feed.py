"""`tools.bench_feed`: the micro benchmark measures and dispatches every frame (the session part,
35 s of real time, is run by hand: `python -m tools.bench_feed`)."""

from __future__ import annotations

import pytest

from protocols import bitunix
from tools.bench_feed import SUBSCRIBERS, feed_config, make_frames, push_intervals, run_micro


def test_frames_come_in_the_exchange_mix_and_are_all_accepted() -> None:
    frames = make_frames(1200)
    assert frames.kinds == {"kline": 400, "depth": 600, "price": 200}
    assert frames.candles == 3  # 200 s of exchange time: 3 minutes closed
    config = feed_config()
    validator = bitunix.FrameValidator(
        symbol=config.session.symbol, kline_channel="market_kline_1min", max_jump_pct=config.feed.max_jump_pct
    )
    parsed = [validator.parse(raw) for raw in frames.raw]
    assert sum(isinstance(p, bitunix.KlinePush) for p in parsed) == 400
    books = [p for p in parsed if isinstance(p, bitunix.BookTop)]
    assert len(books) == 600
    # the feed's depth_book15 pushes: 15 levels a side, a spread of one tick
    assert all(len(b.bids) == len(b.asks) == bitunix.BOOK_LEVELS == 15 for b in books)
    assert all(b.ask - b.bid == pytest.approx(0.1) for b in books)
    assert sum(f'"ch":"{bitunix.BOOK_CHANNEL}"' in raw for raw in frames.raw) == 600
    assert sum(isinstance(p, bitunix.PricePush) for p in parsed) == 200


async def test_micro_benchmark_dispatches_every_frame_to_every_subscriber() -> None:
    frames = make_frames(1200)
    m = await run_micro(frames, repeat=1)
    assert m["frames"] == 1200
    assert m["parse_us"] > 0 and m["parse_frames_per_s"] > 0
    assert m["dispatch_us"] > 0 and m["dispatch_frames_per_s"] > 0
    assert m["dispatch_us"] > m["parse_us"]  # dispatch includes the parse
    # a Book and its Tick per depth frame, a trade Tick per kline push after the first (and a book)
    expected = {"Book": 600, "Tick": 600 + 399, "Funding": 200, "Candle": 3}
    assert m["expected"] == expected
    assert m["received"] == [expected] * len(SUBSCRIBERS) == [expected] * 3
    assert m["all_dispatched"]
    assert m["feed_events"] == 0  # no first-data event, no backfill: no REST call was made


async def test_a_frame_the_parser_rejects_stops_the_micro_benchmark() -> None:
    frames = make_frames(12)
    frames.raw[5] = frames.raw[5].replace('"symbol":"BTCUSDT"', '"symbol":"ETHUSDT"')
    with pytest.raises(ValueError, match="wrong_symbol"):
        await run_micro(frames, repeat=1)


@pytest.mark.parametrize("rate", [60, 200, 500])
def test_push_intervals_add_up_to_the_rate_in_the_mix(rate: float) -> None:
    kline_ms, depth_s, price_s = push_intervals(rate)
    total = 1000 / kline_ms + 1 / depth_s + 1 / price_s
    assert total == pytest.approx(rate)
    assert 1 / price_s == pytest.approx(rate / 6)
    assert 1000 / kline_ms == pytest.approx(rate / 3, rel=0.05)
