"""Issue 15, part 4: the WebSocket reconnect policy (actors/feeds/bitunix.py `Backoff`).

A connection that delivered data for `HEALTHY_S` (2 s) resets the backoff, so a server that drops
every connection after a few seconds costs a short delay each time; a connection that fails before
that (refused, closed before any data, data for less than 2 s) keeps it growing, so a server that
accepts and closes at once is retried ever more slowly. The policy alone (no sockets), and against
the fake exchange closing each connection before its first push. The 3-minute session against a
server dropping every connection after 5 s: tests/test_flapping_exchange.py.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from actors.feeds.bitunix import HEALTHY_S, Backoff
from tests.test_feed_bitunix import SMALL_HISTORY, run_feed
from tools.fake_bitunix import FakeBitunix, Faults


def test_backoff_resets_after_a_healthy_connection_and_grows_otherwise() -> None:
    backoff = Backoff(0.5, 30.0, random.Random(1))
    # connections that never delivered data (refused, closed at once): 1, 2, 3, ... up to the cap
    for n in range(12):
        delay = backoff.next_delay(0.0)
        assert backoff.attempt == n + 1
        assert 0.0 <= delay <= min(30.0, 0.5 * 2**n)
    # data, but for less than the healthy period: still failing
    backoff.next_delay(HEALTHY_S - 0.1)
    assert backoff.attempt == 13
    # a connection that delivered data for the healthy period: from the start again
    delay = backoff.next_delay(HEALTHY_S)
    assert backoff.attempt == 1 and delay <= 0.5
    # a server that drops every connection after a few seconds of data: never more than the first delay
    delays = [backoff.next_delay(4.5) for _ in range(200)]
    assert backoff.attempt == 1 and max(delays) <= 0.5
    # and the delays are drawn over the whole range (full jitter), not all at the top
    assert min(delays) < 0.05 and max(delays) > 0.45
    # once it stops delivering, the backoff grows again from there
    for n in range(1, 6):
        backoff.next_delay(0.0)
        assert backoff.attempt == n + 1


@pytest.mark.slow
async def test_a_server_that_closes_before_any_data_is_retried_ever_more_slowly(tmp_path: Path) -> None:
    fake = FakeBitunix(seed=16, faults=Faults(drop_after_s=0.05))  # before the first push
    run = await run_feed(tmp_path, fake, *SMALL_HISTORY, "feed.backoff_max_s=4", seconds=8)
    reconnecting = [e.fields for e in run.events if e.kind == "feed.reconnecting"]
    assert len(reconnecting) >= 3
    assert [r["attempt"] for r in reconnecting] == list(range(1, len(reconnecting) + 1))
    assert all(r["data_s"] == 0 for r in reconnecting)
    assert all(r.first_data_at is None for r in fake.stats.ws_log)
    # each wait drawn from a window twice the last one's (up to backoff_max_s): the seeded draws
    # (session.seed 42) make 7 attempts in these 8 s; a storm would make hundreds
    assert len(fake.stats.ws_log) == fake.stats.connections <= 8
    assert fake.stats.client_msgs_max_per_s <= 5
