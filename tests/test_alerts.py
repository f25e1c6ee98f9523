"""Alerts: each rule on its own (no I/O), and where they land: `alert` events for the rules over
events (the same in both runtimes), alerts.jsonl for every alert, health alerts outside
events.jsonl; metrics.csv rounded for people, with the health columns."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import trio

from actors.config import AlertsConfig, load
from actors.plan import Plan
from actors.recording.alerts import Alert, AlertLog, AlertRules
from actors.recording.webhook import Webhook
from actors.session import run_session
from protocols.records import METRIC_COLUMNS, metrics_csv_row
from tests.conftest import make_config, read_events
from tests.test_replay_backtest import write_bars
from tools.validate_session import validate

QUIET = AlertsConfig(max_rss_mb=0, min_free_disk_mb=0, max_errors_per_min=0, feed_down_s=0)


def rules(**limits: float) -> AlertRules:
    return AlertRules(AlertsConfig(**{**{"max_rss_mb": 0, "min_free_disk_mb": 0}, **limits}))  # type: ignore[arg-type]


def test_breaker_liquidation_resume_and_fallback_each_raise_one_alert() -> None:
    r = rules()
    breaker = r.on_event(
        "breaker.tripped", 10.0, {"reason": "daily_drawdown", "detail": "3 %", "action": "stop"}
    )
    liquidation = r.on_event(
        "liquidation", 11.0, {"symbol": "BTCUSDT", "position_qty": 0.5, "mark_price": 1.0}
    )
    resumed = r.on_event("session.resumed", 12.0, {"downtime_s": 42.0, "discarded_events": 3})
    fallback = r.on_event(
        "feed.fallback", 13.0, {"reason": "HandshakeError", "data_source": "mock (fallback)"}
    )
    assert [(a.rule, a.severity, a.ts) for a in breaker + liquidation + resumed + fallback] == [
        ("breaker", "warning", 10.0),
        ("liquidation", "critical", 11.0),
        ("resume", "warning", 12.0),
        ("fallback", "warning", 13.0),
    ]
    assert "daily_drawdown" in breaker[0].message and "session stops" in breaker[0].message
    assert "42.0 s down" in resumed[0].message and "3 events discarded)" in resumed[0].message
    lost = [{"fill_id": "BTCUSDT-f3"}, {"fill_id": "ETHUSDT-f1"}]
    (again,) = rules().on_event("session.resumed", 12.0, {"discarded_events": 5, "discarded_fills": lost})
    assert again.message.endswith("5 events discarded, 2 fills among them, not kept: BTCUSDT-f3, ETHUSDT-f1)")
    assert again.details["discarded_fills"] == lost
    assert r.on_event("heartbeat", 14.0, {}) == []
    assert r.on_event("order.filled", 14.0, {}) == []


def test_error_rate_counts_errors_within_a_minute_of_event_time() -> None:
    r = rules(max_errors_per_min=2)
    assert r.on_event("error", 0.0, {"message": "a"}) == []
    assert r.on_event("error", 30.0, {"message": "b"}) == []
    (alert,) = r.on_event("error", 59.0, {"message": "c", "where": "feed"})  # three within 60 s
    assert (alert.rule, alert.severity, alert.details["errors"]) == ("error_rate", "critical", 3)
    assert "the last: c" in alert.message
    assert r.on_event("error", 70.0, {}) == []  # still above: the same episode
    off = rules(max_errors_per_min=0)
    assert all(off.on_event("error", float(t), {}) == [] for t in range(100))


def test_errors_that_persist_for_hours_are_one_error_rate_alert_until_a_quiet_period() -> None:
    """Found by an audit: errors persisting at 4 a minute raised an `error_rate` alert every
    minute, 180 in three hours, each a webhook message. One alert per episode: the next only
    after `ERROR_QUIET_S` (300 s) of event time with no error."""
    r = rules(max_errors_per_min=3)
    raised = []
    for n in range(4 * 60 * 3):  # an error every 15 s for three hours: 4 within any minute
        raised += r.on_event("error", 15.0 * n, {"message": f"e{n}", "where": "feed"})
        raised += r.on_event("heartbeat", 15.0 * n + 7.5, {})
    assert [(a.rule, a.ts) for a in raised] == [("error_rate", 45.0)]  # the 4th within 60 s, once
    last = 15.0 * (4 * 60 * 3 - 1)
    assert r.on_event("heartbeat", last + 299.0, {}) == []
    for t in (last + 280.0, last + 281.0, last + 282.0):  # a burst within the quiet period
        assert r.on_event("error", t, {}) == []  # the same episode: not quiet yet
    burst = last + 282.0 + 300.0  # 300 s with no error: the next burst is a new episode
    assert resolved(r.on_event("error", burst, {})) == [("error_rate", "info", burst)]  # (its own test)
    for t in (burst + 1.0, burst + 2.0):
        assert r.on_event("error", t, {}) == []
    assert [a.rule for a in r.on_event("error", burst + 3.0, {})] == ["error_rate"]


def test_feed_down_fires_once_after_the_limit_at_any_event_and_rearms_on_reconnect() -> None:
    r = rules(feed_down_s=30)
    assert r.on_event("feed.disconnected", 100.0, {"reason": "closed"}) == []
    assert r.on_event("heartbeat", 129.0, {}) == []
    (alert,) = r.on_event("heartbeat", 130.0, {})
    assert (alert.rule, alert.severity, alert.details["down_s"]) == ("feed_down", "critical", 30.0)
    assert r.on_event("heartbeat", 131.0, {}) == []  # once per outage
    assert resolved(r.on_event("feed.connected", 140.0, {"downtime_s": 40.0})) == [
        ("feed_down", "info", 140.0)
    ]
    assert r.on_event("heartbeat", 500.0, {}) == []  # up again
    r.on_event("feed.disconnected", 600.0, {})
    r.on_event("feed.disconnected", 610.0, {})  # still the same outage
    again, back = r.on_event("feed.connected", 645.0, {})  # no event in between: raised on reconnect
    assert (again.rule, again.details["down_s"]) == ("feed_down", 45.0)
    assert resolved([back]) == [("feed_down", "info", 645.0)]
    short = rules(feed_down_s=30)
    short.on_event("feed.disconnected", 0.0, {})
    assert short.on_event("feed.connected", 29.0, {}) == []


def test_a_reconnect_storm_is_one_alert_an_hour_that_counts_the_disconnects() -> None:
    """Found by the cockpit audit: a feed dropped every few seconds, each outage shorter than
    `alerts.feed_down_s`, raised no alert at all, however many times it dropped."""
    r = rules(feed_down_s=0, max_disconnects_per_hour=3)  # (feed_down: its own test)
    raised = []
    for n in range(8):  # down 5 s every 20 s
        raised += r.on_event("feed.disconnected", 100.0 + 20 * n, {"reason": "closed by peer"})
        raised += r.on_event("feed.connected", 105.0 + 20 * n, {"downtime_s": 5.0})
    (alert,) = raised  # the fourth disconnect within the hour, once
    assert (alert.rule, alert.severity, alert.ts) == ("feed_flapping", "warning", 160.0)
    assert alert.details == {"disconnects": 4, "max_disconnects_per_hour": 3, "down_s": 15.0}
    assert alert.message == (
        "the market data feed disconnected 4 times within an hour (alerts.max_disconnects_per_hour = 3), "
        "down 15 s in all; the last: closed by peer"
    )
    assert r.on_event("feed.disconnected", 3759.0, {}) == []  # within the alert's hour
    for t in (3900.0, 3910.0):  # the storm's out of the window by now
        assert r.on_event("feed.disconnected", t, {}) == []
    assert [a.rule for a in r.on_event("feed.disconnected", 3920.0, {})] == ["feed_flapping"]
    off = rules(feed_down_s=0, max_disconnects_per_hour=0)
    assert all(off.on_event("feed.disconnected", float(t), {}) == [] for t in range(100))


def test_a_feed_that_never_connects_is_down_from_the_start() -> None:
    """Found by an audit: with no `feed.disconnected` (it never connected), no alert came in 23 s."""
    r = rules(feed_down_s=5)
    assert r.on_event("session.started", 100.0, {"data_source": "bitunix"}) == []
    (alert,) = r.on_event("heartbeat", 105.0, {})
    assert (alert.rule, alert.details["down_s"]) == ("feed_down", 5.0)
    up = rules(feed_down_s=5)
    up.on_event("session.started", 100.0, {"data_source": "bitunix"})
    assert up.on_event("feed.connected", 101.0, {}) == [] and up.on_event("heartbeat", 200.0, {}) == []
    fell_back = rules(feed_down_s=5)
    fell_back.on_event("session.started", 100.0, {"data_source": "bitunix"})
    assert fell_back.on_event("feed.fallback", 103.0, {}) != []  # its own `fallback` alert
    assert fell_back.on_event("heartbeat", 200.0, {}) == []  # the mock source's data flows
    mock = rules(feed_down_s=5)
    mock.on_event("session.started", 100.0, {"data_source": "mock"})
    assert mock.on_event("heartbeat", 200.0, {}) == []


def test_a_resumed_session_on_the_exchange_is_down_until_its_feed_connects() -> None:
    """Found by the cockpit audit: a session resumed while the exchange was unreachable (no
    fallback at a resume: stale, exits on the last prices) never alerted: its new process's feed
    never connected, so no `feed.disconnected`, and the rules' state from before the crash said up."""
    before = [
        ("session.started", 100.0, {"data_source": "bitunix"}),
        ("feed.connected", 101.0, {}),
        ("heartbeat", 150.0, {}),
    ]
    r = rules(feed_down_s=5)
    for kind, ts, fields in before:
        assert r.on_event(kind, ts, fields) == []
    assert [a.rule for a in r.on_event("session.resumed", 400.0, {"downtime_s": 250.0})] == ["resume"]
    assert r.on_event("heartbeat", 404.0, {}) == []
    (alert,) = r.on_event("heartbeat", 405.0, {})
    assert (alert.rule, alert.details["down_s"], alert.details["since"]) == (
        "feed_down", 5.0, "1970-01-01T00:06:40.000Z",
    )  # fmt: skip
    up = rules(feed_down_s=5)
    for kind, ts, fields in [*before, ("session.resumed", 400.0, {})]:
        up.on_event(kind, ts, fields)
    assert up.on_event("feed.connected", 401.0, {}) == [] and up.on_event("heartbeat", 500.0, {}) == []
    fell_back = rules(feed_down_s=5)  # resumed on the mock source it had fallen back to: no feed
    for kind, ts, fields in [*before, ("feed.fallback", 160.0, {"data_source": "mock (fallback: x)"})]:
        fell_back.on_event(kind, ts, fields)
    fell_back.on_event("session.resumed", 400.0, {})
    assert fell_back.on_event("heartbeat", 500.0, {}) == []
    mock = rules(feed_down_s=5)
    mock.on_event("session.started", 100.0, {"data_source": "mock"})
    mock.on_event("session.resumed", 400.0, {})
    assert mock.on_event("heartbeat", 500.0, {}) == []


def test_an_error_the_session_ends_on_alerts_at_once() -> None:
    """Found by an audit: a session ending in error (one fatal error) raised no alert."""
    r = rules(max_errors_per_min=3)
    assert r.on_event("error", 1.0, {"where": "feed", "message": "one"}) == []  # counted, under the rate
    (alert,) = r.on_event("error", 2.0, {"where": "storage", "message": "No space left on device"})
    assert (alert.rule, alert.severity) == ("session_error", "critical")
    assert "(storage): No space left on device" in alert.message
    (crash,) = rules(max_errors_per_min=0).on_event("error", 3.0, {"where": "session", "message": "boom"})
    assert crash.rule == "session_error"


def test_memory_and_disk_fire_when_crossing_and_again_only_after_recovering() -> None:
    r = rules(max_rss_mb=100, min_free_disk_mb=50)
    ok = {"rss_mb": 90.0, "disk_free_mb": 60.0}
    assert r.on_health(ok, 1.0) == []
    alerts = r.on_health({"rss_mb": 120.0, "disk_free_mb": 10.0}, 2.0)
    assert [(a.rule, a.severity) for a in alerts] == [("memory", "warning"), ("disk", "critical")]
    assert r.on_health({"rss_mb": 130.0, "disk_free_mb": 5.0}, 3.0) == []  # still out: no repeat
    assert resolved(r.on_health(ok, 4.0)) == [("memory", "info", 4.0), ("disk", "info", 4.0)]
    assert [a.rule for a in r.on_health({"rss_mb": 101.0, "disk_free_mb": 60.0}, 5.0)] == ["memory"]
    assert r.on_health({"rss_mb": None, "disk_free_mb": None}, 6.0) == []  # psutil could not read
    assert rules().on_health({"rss_mb": 1e9, "disk_free_mb": 0.0}, 1.0) == []  # 0: off


def test_a_figure_wavering_at_its_limit_alerts_once_until_it_has_clearly_recovered() -> None:
    """Found by the cockpit audit: free disk wavering around alerts.min_free_disk_mb (a log
    rotated, a temporary file) or memory around max_rss_mb alerted at each crossing, every other
    sample (twice a second at most): 300 alerts in 10 minutes, each a webhook message. Re-armed
    only once back to 90 % of max_rss_mb or 110 % of min_free_disk_mb."""
    r = rules(max_rss_mb=100, min_free_disk_mb=500)
    raised = []
    for n in range(600):  # ten minutes of samples a second, either side of both limits
        high = n % 2 == 0
        raised += r.on_health(
            {"rss_mb": 101.0 if high else 99.0, "disk_free_mb": 499.0 if high else 501.0}, n
        )
    assert [(a.rule, a.ts) for a in raised] == [("memory", 0.0), ("disk", 0.0)]
    back = r.on_health({"rss_mb": 90.0, "disk_free_mb": 550.0}, 600.0)  # clearly recovered
    assert resolved(back) == [("memory", "info", 600.0), ("disk", "info", 600.0)] and resolved(raised) == []
    again = r.on_health({"rss_mb": 101.0, "disk_free_mb": 499.0}, 601.0)
    assert [a.rule for a in again] == ["memory", "disk"]


def resolved(alerts: list[Alert]) -> list[tuple[str, str, float]]:
    """(rule, severity, ts) of the resolved alerts among `alerts`."""
    return [(a.rule, a.severity, a.ts) for a in alerts if a.details.get("resolved")]


def test_feed_down_is_resolved_once_when_the_feed_is_back() -> None:
    """Found by an audit: an operator paged at night by `feed_down` was never told the feed came
    back. A `feed_down` alert is followed, once, by a resolved one (severity info) when the feed
    connects (or the session falls back to the mock source); an outage never alerted is not."""
    r = rules(feed_down_s=30)
    r.on_event("feed.disconnected", 100.0, {"reason": "closed"})
    (down,) = r.on_event("heartbeat", 130.0, {})
    assert down.rule == "feed_down"
    (back,) = r.on_event("feed.connected", 172.5, {"downtime_s": 72.5})
    assert (back.rule, back.severity, back.ts) == ("feed_down", "info", 172.5)
    assert back.message == "resolved: the market data feed is back after 72 s down"
    assert back.details == {
        "resolved": True, "since": "1970-01-01T00:01:40.000Z", "lasted_s": 72.5, "feed_down_s": 30,
    }  # fmt: skip
    assert r.on_event("feed.connected", 173.0, {}) == [] and r.on_event("heartbeat", 999.0, {}) == []
    r.on_event("feed.disconnected", 1000.0, {})  # a short outage: no alert, nothing to resolve
    assert r.on_event("feed.connected", 1010.0, {}) == []
    fell_back = rules(feed_down_s=5)
    fell_back.on_event("session.started", 0.0, {"data_source": "bitunix"})
    assert [a.rule for a in fell_back.on_event("heartbeat", 5.0, {})] == ["feed_down"]
    alerts = fell_back.on_event("feed.fallback", 15.0, {"reason": "x", "data_source": "mock (fallback: x)"})
    assert [(a.rule, a.severity) for a in alerts] == [("feed_down", "info"), ("fallback", "warning")]
    assert (
        alerts[0].message
        == "resolved: no more waiting on the market data feed after 15 s: the session trades on the mock source"
    )


def test_an_outage_alerted_before_a_crash_is_resolved_once_after_the_resume() -> None:
    """The resumed process's feed is down until it connects: the outage alerted before the crash
    goes on (no second alert), and is resolved when the feed connects."""
    r = rules(feed_down_s=5)
    r.on_event("session.started", 0.0, {"data_source": "bitunix"})
    r.on_event("feed.connected", 1.0, {})
    r.on_event("feed.disconnected", 10.0, {})
    assert [a.rule for a in r.on_event("heartbeat", 15.0, {})] == ["feed_down"]
    assert [a.rule for a in r.on_event("session.resumed", 100.0, {})] == ["resume"]
    assert r.on_event("heartbeat", 200.0, {}) == []  # the same outage: alerted already
    (back,) = r.on_event("feed.connected", 201.0, {})
    assert (back.severity, back.details["lasted_s"]) == ("info", 191.0)


def on_exchange(limit: float) -> AlertRules:
    """The rules of a session on the exchange's feed, connected at 1.0."""
    r = rules(feed_down_s=limit)
    r.on_event("session.started", 0.0, {"data_source": "bitunix"})
    r.on_event("feed.connected", 1.0, {})
    return r


def test_a_symbol_stale_alone_alerts_after_feed_down_s_and_is_resolved_when_fresh() -> None:
    """Found by an audit: a symbol gone stale while the others flow (its entries refused
    `stale_data`, its stops blind) never alerted, however long. `symbol_stale`: a symbol named by
    `feed.stale` and not by a `feed.fresh` for `alerts.feed_down_s` while the feed is up; resolved
    (info) at its `feed.fresh`."""
    r = on_exchange(30)
    stale = {"reason": "no data for 10 s", "symbols": ["ETHUSDT"]}
    assert r.on_event("feed.stale", 100.0, stale) == []
    assert r.on_event("heartbeat", 129.0, {}) == []
    (alert,) = r.on_event("heartbeat", 130.0, {})
    assert (alert.rule, alert.severity, alert.ts) == ("symbol_stale", "critical", 130.0)
    assert alert.message == (
        "ETHUSDT market data stale for 30 s while the feed is up (no data for 10 s; "
        "alerts.feed_down_s = 30): entries on it are refused (stale_data)"
    )
    assert alert.details == {
        "symbol": "ETHUSDT", "stale_s": 30.0, "since": "1970-01-01T00:01:40.000Z",
        "reason": "no data for 10 s", "feed_down_s": 30,
    }  # fmt: skip
    assert r.on_event("heartbeat", 131.0, {}) == []  # once
    assert r.on_event("feed.stale", 140.0, {"reason": "REST poll failed", "symbols": ["ETHUSDT"]}) == []
    (back,) = r.on_event("feed.fresh", 150.0, {"reason": "websocket data", "symbols": ["ETHUSDT"]})
    assert (back.rule, back.severity) == ("symbol_stale", "info")
    assert back.message == "resolved: ETHUSDT market data fresh again (websocket data) after 50 s stale"
    assert (back.details["symbol"], back.details["lasted_s"]) == ("ETHUSDT", 50.0)
    assert r.on_event("heartbeat", 999.0, {}) == []
    # each symbol on its own clock; a stale period shorter than the limit is nothing
    r.on_event("feed.stale", 1000.0, {"reason": "x", "symbols": ["ETHUSDT"]})
    r.on_event("feed.stale", 1010.0, {"reason": "x", "symbols": ["SOLUSDT"]})
    assert r.on_event("feed.fresh", 1020.0, {"reason": "x", "symbols": ["ETHUSDT"]}) == []
    assert r.on_event("heartbeat", 1039.0, {}) == []
    assert [a.details["symbol"] for a in r.on_event("heartbeat", 1040.0, {})] == ["SOLUSDT"]
    off = on_exchange(0)
    off.on_event("feed.stale", 100.0, stale)
    assert off.on_event("heartbeat", 1e6, {}) == []


def test_symbols_stale_with_the_feed_down_are_feed_downs_until_it_reconnects() -> None:
    """A dropped connection makes every symbol stale: that is `feed_down`'s, and each symbol's
    clock starts again when the feed connects (a symbol whose data comes back soon after, no
    alert; one that stays away, its own alert)."""
    r = on_exchange(30)
    r.on_event("feed.disconnected", 100.0, {"reason": "closed"})
    r.on_event("feed.stale", 100.0, {"reason": "closed", "symbols": ["BTCUSDT", "ETHUSDT"]})
    assert [a.rule for a in r.on_event("heartbeat", 130.0, {})] == ["feed_down"]
    assert r.on_event("heartbeat", 200.0, {}) == []  # no symbol_stale while the feed is down
    assert [a.rule for a in r.on_event("feed.connected", 300.0, {})] == ["feed_down"]  # resolved
    assert r.on_event("feed.fresh", 300.5, {"reason": "websocket data", "symbols": ["BTCUSDT"]}) == []
    assert r.on_event("heartbeat", 329.0, {}) == []
    (alert,) = r.on_event("heartbeat", 330.0, {})
    assert (alert.rule, alert.details["symbol"], alert.details["stale_s"]) == (
        "symbol_stale",
        "ETHUSDT",
        30.0,
    )
    (back,) = r.on_event("feed.fresh", 340.0, {"reason": "REST polling", "symbols": ["ETHUSDT"]})
    assert back.details["lasted_s"] == 240.0  # stale since the drop


def test_a_symbol_alerted_stale_before_a_crash_is_said_no_longer_watched_at_the_resume() -> None:
    """The resumed process's feed starts every symbol anew and names in `feed.fresh` only those
    it named stale itself: the alert of before the crash is closed at the resume, saying so."""
    r = on_exchange(5)
    r.on_event("feed.stale", 10.0, {"reason": "x", "symbols": ["ETHUSDT"]})
    r.on_event("feed.stale", 14.0, {"reason": "x", "symbols": ["SOLUSDT"]})
    assert [a.details["symbol"] for a in r.on_event("heartbeat", 15.0, {})] == ["ETHUSDT"]
    resume, closed = r.on_event("session.resumed", 18.5, {})  # (SOLUSDT stale 4.5 s, not alerted)
    assert (resume.rule, closed.rule, closed.severity) == ("resume", "symbol_stale", "info")
    assert closed.message == (
        "resolved: ETHUSDT no longer watched: the session was resumed and its feed starts anew "
        "(a new alert if ETHUSDT stays stale)"
    )
    r.on_event("feed.connected", 101.0, {})
    assert r.on_event("heartbeat", 200.0, {}) == []  # SOLUSDT forgotten too


def test_memory_and_disk_are_resolved_once_when_clearly_back() -> None:
    """Each alerted figure, once back past its re-arm level (memory under 90 % of its limit, free
    disk over 110 % of its), raises one resolved alert (info), with the figure."""
    r = rules(max_rss_mb=100, min_free_disk_mb=500)
    assert [a.rule for a in r.on_health({"rss_mb": 120.0, "disk_free_mb": 400.0}, 10.0)] == ["memory", "disk"]
    assert r.on_health({"rss_mb": 95.0, "disk_free_mb": 520.0}, 20.0) == []  # back, not clearly
    memory, disk = r.on_health({"rss_mb": 80.0, "disk_free_mb": 600.0}, 70.0)
    assert (memory.rule, memory.severity, disk.rule, disk.severity) == ("memory", "info", "disk", "info")
    assert (
        memory.message == "resolved: resident memory 80 MB is back under 90 % of alerts.max_rss_mb = 100 MB"
    )
    assert disk.message == (
        "resolved: 600 MB free on the run folder's disk, back over 110 % of alerts.min_free_disk_mb = 500 MB"
    )
    assert memory.details == {
        "resolved": True, "since": "1970-01-01T00:00:10.000Z", "lasted_s": 60.0, "rss_mb": 80.0, "max_rss_mb": 100,
    }  # fmt: skip
    assert disk.details["disk_free_mb"] == 600.0 and disk.details["lasted_s"] == 60.0
    assert r.on_health({"rss_mb": 80.0, "disk_free_mb": 600.0}, 80.0) == []  # once


def test_an_error_rate_episode_is_resolved_after_its_quiet_period() -> None:
    r = rules(max_errors_per_min=2)
    for t in (0.0, 10.0, 20.0):
        alerts = r.on_event("error", t, {"message": "x"})
    assert [a.rule for a in alerts] == ["error_rate"]
    r.on_event("error", 100.0, {})  # within the episode
    assert r.on_event("heartbeat", 399.0, {}) == []  # 299 s after the last error
    (quiet,) = r.on_event("heartbeat", 400.0, {})
    assert (quiet.rule, quiet.severity) == ("error_rate", "info")
    assert quiet.message == (
        "resolved: no error event for 300 s; 4 errors from 1970-01-01T00:00:00.000Z to 1970-01-01T00:01:40.000Z"
    )
    assert quiet.details["errors"] == 4 and quiet.details["lasted_s"] == 400.0
    assert r.on_event("heartbeat", 500.0, {}) == []


def test_alert_log_appends_json_lines_and_notifies(tmp_path: Path) -> None:
    run = tmp_path / "run-1"
    run.mkdir()
    sent: list[dict[str, object]] = []
    log = AlertLog(run, sent.append)
    (alert,) = rules(max_rss_mb=1).on_health({"rss_mb": 5.0}, 1_700_000_000.0)
    log.raise_alert(alert, None)
    log.raise_alert(alert, 7)
    log.close()
    lines = [json.loads(line) for line in (run / "alerts.jsonl").read_text().splitlines()]
    assert [(line["rule"], line["seq"], line["run_id"]) for line in lines] == [
        ("memory", None, "run-1"),
        ("memory", 7, "run-1"),
    ]
    assert lines[0]["ts"] == "2023-11-14T22:13:20.000Z" and lines[0]["details"]["rss_mb"] == 5.0
    assert [{k: v for k, v in m.items() if k != "text"} for m in sent] == lines
    assert sent[0]["text"] == "[warning] run-1: " + lines[0]["message"]


def test_metrics_csv_rounding_for_people() -> None:
    row = {
        "ts": "x",
        "elapsed_s": 1.23456,
        "price": 60006.350000000006,
        "equity": 9999.994999,
        "realized_pnl": -0.001,
        "unrealized_pnl": 1.005,
        "fees_paid": 0.36048,
        "funding_paid": -0.015,
        "position_qty": 0.0010000000000000002,
        "drawdown_pct": 0.123456,
        "cpu_pct": 3.2,
        "rss_mb": 80.5,
        "open_files": 12,
        "disk_free_mb": None,
    }
    out = metrics_csv_row(row, 1, 4)
    assert out == {
        **row,
        "elapsed_s": "1.235",
        "price": "60006.4",
        "equity": "9999.99",
        "realized_pnl": "0.00",  # never -0.00
        "unrealized_pnl": f"{round(1.005, 2):.2f}",
        "fees_paid": "0.36",
        "funding_paid": f"{round(-0.015, 2):.2f}",
        "position_qty": "0.0010",
        "drawdown_pct": "0.12",
    }


async def test_a_full_webhook_queue_drops_and_counts() -> None:
    hook = Webhook("http://127.0.0.1:9/", timeout_s=1, attempts=1, queue_size=2)
    for n in range(5):
        hook.notify({"rule": "memory", "n": n})
    assert hook.dropped == 3


async def test_a_session_writes_rounded_metrics_with_health(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    config = make_config(tmp_path, "alerts.max_rss_mb=1", duration_min=0.5)
    result = await run_session(config, handle_signals=False, progress_mode="off")
    with (result.run_path / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(METRIC_COLUMNS)
    for row in rows:
        assert len(row["price"].split(".")[1]) == 1  # BTCUSDT's tick: 0.1
        assert all(len(row[k].split(".")[1]) == 2 for k in ("equity", "fees_paid", "drawdown_pct"))
        assert float(row["rss_mb"]) > 1 and int(row["open_files"]) > 0 and float(row["disk_free_mb"]) > 0
    metrics = json.loads((result.run_path / "metrics.json").read_text())
    assert metrics["fields"] == list(METRIC_COLUMNS) == list(metrics["columns"])
    assert all(set(r) == set(METRIC_COLUMNS) for r in metrics["rows"])
    (memory,) = [json.loads(line) for line in (result.run_path / "alerts.jsonl").read_text().splitlines()]
    assert (memory["rule"], memory["seq"]) == ("memory", None)  # a health alert: not in events.jsonl
    assert [e for e in read_events(result.run_path) if e["kind"] == "alert"] == []
    assert validate(result.run_path) == []


BREAKER = [
    "strategy.fast_period=2",
    "strategy.slow_period=5",
    "risk.max_orders_per_minute=600",
    "risk.max_daily_drawdown_pct=0.3",
    "risk.max_loss_pct=50",
    "risk.on_breaker=halt",
    "broker.backtest_fill=close",
]


@pytest.mark.parametrize("runtime", ["kernel", "actors"])
async def test_a_breaker_trip_is_an_alert_event_and_a_line_of_alerts_jsonl(
    tmp_path: Path, autojump_clock: trio.abc.Clock, runtime: str
) -> None:
    data = tmp_path / "bars.csv"
    write_bars(data, 3000)
    config = load(None, {}, [f"session.run_dir={tmp_path / 'runs'}", "session.interval=1m", *BREAKER])
    plan = Plan(mode="backtest", data=str(data), runtime=runtime)  # type: ignore[arg-type]
    result = await run_session(config, plan=plan, handle_signals=False, progress_mode="off")
    events = read_events(result.run_path)
    trips = [n for n, e in enumerate(events) if e["kind"] == "breaker.tripped"]
    assert trips, "the data should trip the breaker"
    alerts = [e for e in events if e["kind"] == "alert"]
    assert [events[n + 1]["kind"] for n in trips] == ["alert"] * len(trips)  # right after the trip
    assert [a["rule"] for a in alerts] == ["breaker"] * len(trips)
    assert all(set(a) == {"seq", "ts", "kind", "rule", "severity", "message", "details"} for a in alerts)
    logged = [json.loads(line) for line in (result.run_path / "alerts.jsonl").read_text().splitlines()]
    assert [(line["seq"], line["rule"]) for line in logged if line["seq"] is not None] == [
        (a["seq"], "breaker") for a in alerts
    ]
    assert validate(result.run_path) == []
