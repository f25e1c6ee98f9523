"""Soak: a session against the fake exchange with every fault on at once.

`nox -s soak` runs it for 3 minutes (`SOAK_SECONDS=180`); the test suite runs a shorter one. It passes
only if the session ends by its duration, flat, with no unhandled error, the candle series has no
gap and no duplicate and matches the exchange's truth, and the run folder passes the validator.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.test_feed_bitunix import (
    ZIGZAG_TRADER,
    assert_candles_match_truth,
    assert_clean_finish,
    kinds,
    live_session,
    offset_for_close_in,
)
from tools.fake_bitunix import FakeBitunix, Faults

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "75"))

ALL_FAULTS = Faults(
    drop_every_s=15,
    stall_every_s=40,
    stall_for_s=12,
    malformed_fraction=0.10,
    refuse_handshakes_for_s=3,
    rest_error_fraction=0.10,
    rest_rate_limit_per_s=5,
    latency_ms=20,
)


async def test_soak_every_fault_at_once(tmp_path: Path) -> None:
    fake = FakeBitunix(seed=21, zigzag_pct=0.2, time_offset_s=offset_for_close_in(10), faults=ALL_FAULTS)
    result, events = await live_session(
        tmp_path,
        fake,
        *ZIGZAG_TRADER,
        "feed.stale_after_s=5",
        "feed.failover_after_s=4",
        "feed.backoff_max_s=4",
        duration_s=SOAK_SECONDS,
    )
    assert_clean_finish(result, events)
    report = result.report
    assert report["data_source"] == "bitunix"
    assert abs(report["elapsed_s"] - SOAK_SECONDS) < 1.0
    candles = assert_candles_match_truth(result.run_path, fake)
    assert len(candles) >= 30 + int(SOAK_SECONDS // 60) - 1
    # every fault really happened, and the session saw it
    assert fake.stats.drops >= 2 and fake.stats.stalls >= 1 and fake.stats.handshakes_refused >= 1
    assert fake.stats.rest_errors + fake.stats.rest_rate_limited >= 1
    assert report["reconnects"] >= 2
    assert sum(report["malformed_dropped"].values()) >= 10
    k = kinds(events)
    assert k["feed.disconnected"] >= 2 and k["feed.stale"] >= 1
    assert report["fills"] >= 2  # it traded through all of it
