"""Soak: a session against the fake exchange with every fault on at once.

`nox -s soak` runs it for 3 minutes (`SOAK_SECONDS=180`); the test suite runs a 20-second one. It
passes only if the session ends by its duration, flat, with no unhandled error, the candle series has
no gap and no duplicate and matches the exchange's truth, and the run folder passes the validator.

The faults are scheduled by count (see tools/fake_bitunix/faults.py), so they come in the same order
against the data in every run: the first handshake is refused; every connection is dropped after 30
data frames (about 5 s); every 70th data frame starts a 3 s stall (longer than `stale_after_s`);
a tenth of each channel's frames are malformed, and every third REST reply is an error (the
instrument's `trading_pairs` request comes first, then the history seed's three pages: the seed's
second page is retried). The first candle closes 3.5 s in, inside the
first connection, so the session trades on live data before the faults pile up; then, every
minute, whatever the faults leave (WebSocket, REST polling or a backfill).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from tests.test_feed_bitunix import (
    REASON_OF_KIND,
    ZIGZAG_TRADER,
    assert_candles_match_truth,
    assert_clean_finish,
    kinds,
    live_session,
    market_records,
    offset_for_close_in,
)
from tools.fake_bitunix import FakeBitunix, Faults

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "20"))


def all_faults() -> Faults:
    return Faults(
        refuse_handshakes=1,
        drop_after_frames=30,
        stall_every_frames=70,
        stall_for_s=3,
        malformed_fraction=0.10,
        rest_error_fraction=0.34,
        rest_rate_limit_per_s=5,
        latency_ms=20,
    )


async def test_soak_every_fault_at_once(tmp_path: Path) -> None:
    fake = FakeBitunix(seed=21, zigzag_pct=0.2, time_offset_s=offset_for_close_in(3.5), faults=all_faults())
    result, events = await live_session(
        tmp_path,
        fake,
        *ZIGZAG_TRADER,
        "strategy.history=600",
        "feed.stale_after_s=2",
        "feed.failover_after_s=2.5",
        "feed.backoff_max_s=1",
        duration_s=SOAK_SECONDS,
    )
    print(fake.stats)  # shown when an assertion fails
    assert_clean_finish(result, events)
    report = result.report
    assert report["data_source"] == "bitunix"
    assert abs(report["elapsed_s"] - SOAK_SECONDS) < 1.0
    candles = assert_candles_match_truth(result.run_path, fake)
    assert len(candles) >= 600 + int(SOAK_SECONDS // 60)
    # every fault really happened, and the session saw it
    stats = fake.stats
    assert stats.drops >= 2 and stats.stalls >= 1 and stats.handshakes_refused == 1
    assert stats.rest_errors + stats.rest_rate_limited >= 1 and report["rest_retries"] >= 1
    assert report["reconnects"] >= 3
    # every malformed frame the fake broke was dropped and counted by its reason, and nothing else
    # was. Not exactly: the fake logs a frame when it queues it, so one queued behind the last frame
    # a dropped connection wrote (latency_ms), or at the stop, may never arrive; and a price jump is
    # judged by a bound that grows with the time since the last good price (after a long outage a
    # jumped frame may pass and the good frames after it be dropped as the jump, or a real move
    # beyond the bound be dropped): price_jump is left out.
    broke = Counter(
        REASON_OF_KIND[kind]
        for _, _, _, _, kind in (e for e in stats.faults_log if e[0] == "malformed")
        if kind != "price_jump"
    )
    dropped = Counter(report["malformed_dropped"])
    del dropped["price_jump"]
    lost_at_most = stats.drops + 1
    assert broke.total() > lost_at_most, broke  # enough broken frames for the bound to bite
    assert dropped <= broke, (dropped, broke)
    assert dropped.total() >= broke.total() - lost_at_most, (dropped, broke)
    k = kinds(events)
    # a drop makes the data stale unless REST polling already carries it (failover began during an
    # earlier outage): how many drops find polling running depends on timing, so only the stall's
    # own staleness is required (below), not one per drop
    assert k["feed.disconnected"] >= 3 and k["feed.stale"] >= 1
    assert any("no data for 2 s" in e["reason"] for e in events if e["kind"] == "feed.stale"), "a stall"
    assert [s["stale"] for s in market_records(result.run_path, "feed_status")][:2] == [True, False]
    assert report["fills"] >= 2  # it traded through all of it
