"""Alerts: rules over what the recorder writes, raised into the run folder and a webhook (no trio).

The recorder (actors/recording/recorder.py) is the one place every event of every runtime passes
through (the kernel's backtests and replays, and the live actors), and where the process's health
is sampled; it hands both to `AlertRules` and gives each alert to `AlertLog`.

Two families, kept apart for determinism (the tests compare `events.jsonl` between the runtimes,
and between a session and its replay):

- **Event rules** are functions of the events alone (their kinds, fields and `ts`): `breaker`
  (`breaker.tripped`), `liquidation`, `resume` (`session.resumed`), `fallback` (`feed.fallback`),
  `error_rate` (more than `alerts.max_errors_per_min` `error` events within 60 s of event time; once
  an episode: again only after `ERROR_QUIET_S` with no `error` event), `session_error` (an `error`
  event the session ends on: `where` "session" or "storage"; at once), `stale_flatten` (a live
  flatten's `order.submitted` whose `quote_age_s` is above 5 s) and `feed_down`
  (`feed.disconnected`, or a session on the exchange's feed starting or resuming, with no
  `feed.connected` or `feed.fallback` for `alerts.feed_down_s`, checked at every event, the
  heartbeats' included), `symbol_stale` (a symbol named by `feed.stale` and by no `feed.fresh`
  since, for `alerts.feed_down_s` while the feed is up, from the later of its `feed.stale` and the
  feed's last `feed.connected`; one alert per symbol) and `feed_flapping` (more than
  `alerts.max_disconnects_per_hour` `feed.disconnected` within an hour of event time; at most one
  alert an hour). Each is also written to `events.jsonl` as an `alert` event right after the event
  that raised it: the same events give the same alerts, in any runtime, so backtests on both
  runtimes, and replays of the data-driven ones (breaker, liquidation), keep writing the same lines.
- **Health rules** (`memory`: resident memory above `alerts.max_rss_mb`; `disk`: free space of the
  run folder's disk below `alerts.min_free_disk_mb`) depend on the machine, not on the data: they
  never enter `events.jsonl`, only `alerts.jsonl`, the log and the webhook. Each fires once when its
  figure crosses the limit and again only after it has come back clearly (memory to 90 % of its
  limit, free disk to 110 % of its: a figure wavering at its limit is one alert).

**Resolved**: a condition that ends is said once (found by an audit: an operator paged at night was
never told it recovered): `feed_down` at the `feed.connected` (or `feed.fallback`) that ends the
outage alerted, `symbol_stale` at the symbol's `feed.fresh` (or at a resume: `_forget_stale`),
`memory` and `disk` when their figure has come back clearly (as they re-arm), and `error_rate` after
`ERROR_QUIET_S` with no `error` event (checked at every event): an alert of the same rule, severity
`info`, its message starting `resolved: `, `details.resolved` true, `since` (when the condition
began) and `lasted_s`. Event rules' resolved alerts are `alert` events too.

`alerts.jsonl` (created with the first alert): one JSON object per alert, `ts` (ISO-8601 UTC, the
session clock), `run_id`, `seq` (the `alert` event's in `events.jsonl`; null for health alerts),
`rule`, `severity` (`warning`, `critical`, or `info`: resolved), `message`, `details`. A resume
takes the events after its checkpoint out of `events.jsonl` (their seqs are given again, to other
events), and closing a run killed before its first checkpoint may leave out the events of its last
step: the alerts of those events are moved to `alerts.discarded.jsonl` (`set_aside`; found by the
crash audit: they stayed, naming events that were gone or seqs that meant other events since), so
that every alert left with a seq names its `alert` event (the validator checks it). The webhook gets
the same object, plus `text` (one line for chat tools), when `observability.webhook_url` is set
(actors/recording/webhook.py; live sessions only)."""

from __future__ import annotations

import json
import math
import os
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import attrs
from loguru import logger

from actors import secrets
from actors.config import AlertsConfig
from actors.recording import checkpoint
from actors.recording.storage import cut_torn_tail, temp_file
from protocols.records import dumps_line, iso

ALERT_KIND = "alert"
ERROR_WINDOW_S = 60.0
# `error_rate` fires once an episode: the episode ends after this long with no `error` event, seconds
ERROR_QUIET_S = 300.0
FLAPPING_WINDOW_S = 3600.0  # `feed_flapping` counts the disconnects within this, seconds
# `error` events the session ends on (or, recorded at a resume, ended on): each alerts at once
FATAL_ERRORS = frozenset({"session", "storage"})
# A live flatten at a quote older than this alerts (`stale_flatten`), seconds
STALE_FLATTEN_S = 5.0
# `memory` and `disk` fire again only once their figure has come back this far: under 90 % of
# `alerts.max_rss_mb`, over 110 % of `alerts.min_free_disk_mb`
RECOVERED_RSS = 0.9
RECOVERED_DISK = 1.1


@attrs.frozen
class Alert:
    ts: float
    rule: str
    severity: str  # "warning" or "critical"; "info": a resolved alert (`_resolved`)
    message: str
    details: dict[str, Any]

    def fields(self) -> dict[str, Any]:
        """The `alert` event's fields."""
        return {
            "rule": self.rule,
            "severity": self.severity,
            "message": self.message,
            "details": self.details,
        }


class AlertRules:
    """The rules and the little state they keep (no I/O): events and health samples in, alerts out."""

    def __init__(self, config: AlertsConfig) -> None:
        self.config = config
        self.errors: deque[float] = deque()
        self.errors_alerted = False  # an error-rate episode is on (alerted, not quiet yet)
        self.last_error: float = -math.inf  # ts of the last `error` event counted
        self.episode_errors = 0  # the errors of the episode alerted, from its alert's first
        self.episode_since = 0.0  # ts of that first error
        self.feed_down_since: float | None = None
        self.feed_down_alerted = False
        self.on_exchange = False  # the session trades on the exchange's feed (not fallen back)
        self.disconnects: deque[float] = deque()  # within the last FLAPPING_WINDOW_S
        self.reconnects: deque[tuple[float, float]] = deque()  # (ts, downtime_s), the same
        self.flapping_quiet_until = -math.inf  # one feed_flapping alert per window
        # the symbols a `feed.stale` named and no `feed.fresh` since: (since, its reason), those
        # not alerted yet and those alerted (`symbol_stale`); the feed's last connect's ts
        self.stale: dict[str, tuple[float, str]] = {}
        self.stale_alerted: dict[str, tuple[float, str]] = {}
        self.feed_up_since = -math.inf
        self.rss_high = False
        self.disk_low = False
        self.rss_since = self.disk_since = 0.0  # when each was alerted

    def on_event(self, kind: str, ts: float, fields: dict[str, Any]) -> list[Alert]:
        alerts: list[Alert] = []
        feed_up = self.feed_down_since is None  # (before this event)
        if self.errors_alerted and ts - self.last_error >= ERROR_QUIET_S:
            self._errors_quiet(ts, alerts)
        if self.feed_down_since is not None:
            self._feed_down(kind, ts, alerts)
        if self.stale and feed_up and self.config.feed_down_s > 0:
            self._symbols_stale(ts, alerts)
        if kind in _STALE_KINDS:
            self._stale_or_fresh(kind, ts, fields, alerts)
        rule = _EVENT_RULES.get(kind)
        if rule is not None:
            alert = rule(self, ts, fields)
            if alert is not None:
                alerts.append(alert)
        if kind == "session.resumed" and (self.stale or self.stale_alerted):
            self._forget_stale(ts, alerts)
        return alerts

    def on_health(self, sample: dict[str, Any], ts: float) -> list[Alert]:
        alerts = []
        limit, rss = self.config.max_rss_mb, sample.get("rss_mb")
        if limit > 0 and rss is not None:
            if rss > limit and not self.rss_high:
                alerts.append(
                    Alert(
                        ts,
                        "memory",
                        "warning",
                        f"resident memory {rss:,.0f} MB is above alerts.max_rss_mb = {limit:g} MB",
                        {"rss_mb": rss, "max_rss_mb": limit},
                    )
                )
                self.rss_since = ts
            elif self.rss_high and rss <= RECOVERED_RSS * limit:
                alerts.append(
                    _resolved(
                        ts,
                        "memory",
                        f"resident memory {rss:,.0f} MB is back under {RECOVERED_RSS * 100:.0f} % of "
                        f"alerts.max_rss_mb = {limit:g} MB",
                        self.rss_since,
                        {"rss_mb": rss, "max_rss_mb": limit},
                    )
                )
            # re-armed only once clearly back (found by the cockpit audit: a figure wavering at
            # its limit alerted at every other sample)
            self.rss_high = rss > RECOVERED_RSS * limit if self.rss_high else rss > limit
        limit, free = self.config.min_free_disk_mb, sample.get("disk_free_mb")
        if limit > 0 and free is not None:
            if free < limit and not self.disk_low:
                alerts.append(
                    Alert(
                        ts,
                        "disk",
                        "critical",
                        f"{free:,.0f} MB free on the run folder's disk, below alerts.min_free_disk_mb = {limit:g} MB",
                        {"disk_free_mb": free, "min_free_disk_mb": limit},
                    )
                )
                self.disk_since = ts
            elif self.disk_low and free >= RECOVERED_DISK * limit:
                alerts.append(
                    _resolved(
                        ts,
                        "disk",
                        f"{free:,.0f} MB free on the run folder's disk, back over {RECOVERED_DISK * 100:.0f} % of "
                        f"alerts.min_free_disk_mb = {limit:g} MB",
                        self.disk_since,
                        {"disk_free_mb": free, "min_free_disk_mb": limit},
                    )
                )
            self.disk_low = free < RECOVERED_DISK * limit if self.disk_low else free < limit
        return alerts

    # --- the event rules -------------------------------------------------------------------------

    def _feed_down(self, kind: str, ts: float, alerts: list[Alert]) -> None:
        assert self.feed_down_since is not None
        limit = self.config.feed_down_s
        down = ts - self.feed_down_since
        if limit > 0 and not self.feed_down_alerted and down >= limit:
            self.feed_down_alerted = True
            alerts.append(
                Alert(
                    ts,
                    "feed_down",
                    "critical",
                    f"the market data feed has been down for {down:.0f} s (alerts.feed_down_s = {limit:g})",
                    {"down_s": round(down, 3), "since": iso(self.feed_down_since), "feed_down_s": limit},
                )
            )
        if kind in ("feed.connected", "feed.fallback"):  # live data again, or the mock source's
            if self.feed_down_alerted:  # said once it is over (found by an audit: never said)
                alerts.append(
                    _resolved(
                        ts,
                        "feed_down",
                        f"the market data feed is back after {down:.0f} s down"
                        if kind == "feed.connected"
                        else f"no more waiting on the market data feed after {down:.0f} s: "
                        "the session trades on the mock source",
                        self.feed_down_since,
                        {"feed_down_s": limit},
                    )
                )
            self.feed_down_since, self.feed_down_alerted = None, False

    def _symbols_stale(self, ts: float, alerts: list[Alert]) -> None:
        """`symbol_stale`: a symbol stale for `alerts.feed_down_s` while the feed is up, counted
        from its `feed.stale` or the feed's last connect, the later (found by an audit: one symbol
        silent while the others flowed never alerted; its outage with the feed down is `feed_down`'s)."""
        limit = self.config.feed_down_s
        for symbol, (since, reason) in list(self.stale.items()):
            stale = ts - max(since, self.feed_up_since)
            if stale < limit:
                continue
            self.stale_alerted[symbol] = self.stale.pop(symbol)
            alerts.append(
                Alert(
                    ts,
                    "symbol_stale",
                    "critical",
                    f"{symbol} market data stale for {stale:.0f} s while the feed is up ({reason}; "
                    f"alerts.feed_down_s = {limit:g}): entries on it are refused (stale_data)",
                    {
                        "symbol": symbol,
                        "stale_s": round(stale, 3),
                        "since": iso(since),
                        "reason": reason,
                        "feed_down_s": limit,
                    },
                )
            )

    def _stale_or_fresh(self, kind: str, ts: float, fields: dict[str, Any], alerts: list[Alert]) -> None:
        """The symbols a `feed.stale` names start their stale clock; those a `feed.fresh` names
        end it, with a resolved alert for those alerted."""
        symbols = fields.get("symbols")
        if not isinstance(symbols, list):
            return
        reason = str(fields.get("reason", ""))
        for symbol in map(str, symbols):
            if kind == "feed.stale":
                if symbol not in self.stale_alerted:
                    self.stale.setdefault(symbol, (ts, reason))
                continue
            self.stale.pop(symbol, None)
            alerted = self.stale_alerted.pop(symbol, None)
            if alerted is not None:
                alerts.append(
                    _resolved(
                        ts,
                        "symbol_stale",
                        f"{symbol} market data fresh again ({reason}) after {ts - alerted[0]:.0f} s stale",
                        alerted[0],
                        {"symbol": symbol, "reason": reason},
                    )
                )

    def _forget_stale(self, ts: float, alerts: list[Alert]) -> None:
        """A resumed process's feed starts each symbol anew and names in `feed.fresh` only those
        it named stale itself: the stale symbols of before are forgotten, and an alert of one of
        them is closed, saying so (else it would stay open for good)."""
        for symbol, (since, reason) in self.stale_alerted.items():
            alerts.append(
                _resolved(
                    ts,
                    "symbol_stale",
                    f"{symbol} no longer watched: the session was resumed and its feed starts anew "
                    f"(a new alert if {symbol} stays stale)",
                    since,
                    {"symbol": symbol, "reason": reason},
                )
            )
        self.stale.clear()
        self.stale_alerted.clear()

    def _submitted(self, ts: float, fields: dict[str, Any]) -> Alert | None:
        """A live flatten at a quote older than STALE_FLATTEN_S (found by an audit: a session
        restarted past its planned end closed its position at the quote of before the crash)."""
        age = fields.get("quote_age_s")
        if age is None or age <= STALE_FLATTEN_S:
            return None
        return Alert(
            ts,
            "stale_flatten",
            "critical",
            f"{fields.get('symbol', '')} position closed ({fields.get('reason')}) at the last quote the "
            f"market offered, {age:.1f} s old: the market may be elsewhere now",
            {k: fields.get(k) for k in ("symbol", "order_id", "reason", "quote_age_s", "requested_price")},
        )

    def _started(self, ts: float, fields: dict[str, Any]) -> Alert | None:
        """A session on the exchange's feed is down until it first connects (found by an audit:
        a feed that never connected never raised `feed_down`)."""
        self.on_exchange = fields.get("data_source") == "bitunix"
        if self.on_exchange:
            self.feed_down_since, self.feed_down_alerted = ts, False
        return None

    def _disconnected(self, ts: float, fields: dict[str, Any]) -> Alert | None:
        """Starts the feed-down clock (`_feed_down` raises the alert), and counts the disconnects
        of the last hour: more than `alerts.max_disconnects_per_hour` is one `feed_flapping` alert
        that sums them up, at most one an hour (found by the cockpit audit: a feed dropping every
        few seconds, each outage under `alerts.feed_down_s`, never raised an alert)."""
        if self.feed_down_since is None:
            self.feed_down_since, self.feed_down_alerted = ts, False
        limit = self.config.max_disconnects_per_hour
        if limit <= 0:
            return None
        self.disconnects.append(ts)
        self._forget_before(ts - FLAPPING_WINDOW_S)
        if len(self.disconnects) <= limit or ts < self.flapping_quiet_until:
            return None
        self.flapping_quiet_until = ts + FLAPPING_WINDOW_S
        down = sum(downtime for _, downtime in self.reconnects)
        return Alert(
            ts,
            "feed_flapping",
            "warning",
            f"the market data feed disconnected {len(self.disconnects)} times within an hour "
            f"(alerts.max_disconnects_per_hour = {limit}), down {down:.0f} s in all; "
            f"the last: {fields.get('reason', '')}",
            {
                "disconnects": len(self.disconnects),
                "max_disconnects_per_hour": limit,
                "down_s": round(down, 3),
            },
        )

    def _connected(self, ts: float, fields: dict[str, Any]) -> Alert | None:
        """The downtime of each reconnect of the last hour, for `feed_flapping`'s message; the
        stale symbols' clocks start again (`_symbols_stale`)."""
        self.feed_up_since = ts
        downtime = fields.get("downtime_s")
        if self.config.max_disconnects_per_hour > 0 and isinstance(downtime, int | float):
            self.reconnects.append((ts, float(downtime)))
            self._forget_before(ts - FLAPPING_WINDOW_S)
        return None

    def _forget_before(self, since: float) -> None:
        while self.disconnects and self.disconnects[0] <= since:
            self.disconnects.popleft()
        while self.reconnects and self.reconnects[0][0] <= since:
            self.reconnects.popleft()

    def _error(self, ts: float, fields: dict[str, Any]) -> Alert | None:
        where = fields.get("where")
        if where in FATAL_ERRORS:  # the session ends on it: at once, whatever the rate
            return Alert(
                ts,
                "session_error",
                "critical",
                f"the session ends on an error ({where}): {fields.get('message', '')}",
                {"where": where},
            )
        limit = self.config.max_errors_per_min
        if limit <= 0:
            return None
        self.last_error = ts
        self.errors.append(ts)
        while self.errors and self.errors[0] <= ts - ERROR_WINDOW_S:
            self.errors.popleft()
        # once an episode (found by an audit: errors persisting at 4 a minute raised an alert every
        # minute, 180 in three hours, each a webhook message); `_errors_quiet` ends it
        if self.errors_alerted:
            self.episode_errors += 1
            return None
        if len(self.errors) <= limit:
            return None
        self.errors_alerted = True
        self.episode_errors, self.episode_since = len(self.errors), self.errors[0]
        return Alert(
            ts,
            "error_rate",
            "critical",
            f"{len(self.errors)} errors within a minute (alerts.max_errors_per_min = {limit}); "
            f"the last: {fields.get('message', '')}",
            {"errors": len(self.errors), "max_errors_per_min": limit, "where": fields.get("where")},
        )

    def _errors_quiet(self, ts: float, alerts: list[Alert]) -> None:
        """The error-rate episode is over: no `error` event for ERROR_QUIET_S."""
        self.errors_alerted = False
        alerts.append(
            _resolved(
                ts,
                "error_rate",
                f"no error event for {ERROR_QUIET_S:.0f} s; {self.episode_errors} errors from "
                f"{iso(self.episode_since)} to {iso(self.last_error)}",
                self.episode_since,
                {"errors": self.episode_errors, "last_error": iso(self.last_error)},
            )
        )

    def _breaker(self, ts: float, fields: dict[str, Any]) -> Alert:
        action = "session stops" if fields.get("action") == "stop" else "entries halted"
        return Alert(
            ts,
            "breaker",
            "warning",
            f"circuit breaker tripped ({fields.get('reason')}: {fields.get('detail')}); flattened, {action}",
            {k: fields.get(k) for k in ("reason", "detail", "action", "equity", "halted_until_iso")},
        )

    def _liquidation(self, ts: float, fields: dict[str, Any]) -> Alert:
        return Alert(
            ts,
            "liquidation",
            "critical",
            f"{fields.get('symbol', '')} position {fields.get('position_qty')} liquidated "
            f"at mark {_price(fields.get('mark_price'))}",
            {
                k: fields.get(k)
                for k in ("symbol", "position_qty", "mark_price", "liquidation_price", "margin")
            },
        )

    def _resumed(self, ts: float, fields: dict[str, Any]) -> Alert:
        if self.on_exchange and not (self.feed_down_since is not None and self.feed_down_alerted):
            # (an outage alerted before the crash goes on: one alert, resolved once it connects)
            # the new process's feed is down until it connects (found by the cockpit audit: resumed
            # while the exchange was unreachable, it sat stale to its end with no alert: no
            # `feed.disconnected` from a feed never up, and the state of before the crash said up)
            self.feed_down_since, self.feed_down_alerted = ts, False
        fills = fields.get("discarded_fills") or []
        lost = (
            f", {len(fills)} {'fill' if len(fills) == 1 else 'fills'} among them, not kept: "
            + ", ".join(str(fill.get("fill_id")) for fill in fills)
            if fills
            else ""
        )
        crosses = len(fields.get("discarded_crosses") or [])
        if crosses:
            lost += f", {crosses} {'cross' if crosses == 1 else 'crosses'} of strategies' positions not kept"
        return Alert(
            ts,
            "resume",
            "warning",
            f"session resumed after a crash ({fields.get('downtime_s')} s down, "
            f"{fields.get('discarded_events', 0)} events discarded{lost})",
            {
                k: fields.get(k)
                for k in (
                    "downtime_s",
                    "checkpoint",
                    "discarded_events",
                    "discarded_fills",
                    "discarded_crosses",
                    "position_qty",
                )
            },
        )

    def _fallback(self, ts: float, fields: dict[str, Any]) -> Alert:
        self.on_exchange = False
        return Alert(
            ts,
            "fallback",
            "warning",
            f"no live market data: trading on the mock source ({fields.get('reason')})",
            {"reason": fields.get("reason"), "data_source": fields.get("data_source")},
        )


_STALE_KINDS = frozenset({"feed.stale", "feed.fresh"})  # `_stale_or_fresh`'s
_EVENT_RULES: dict[str, Callable[[AlertRules, float, dict[str, Any]], Alert | None]] = {
    "session.started": AlertRules._started,
    "order.submitted": AlertRules._submitted,
    "feed.disconnected": AlertRules._disconnected,
    "feed.connected": AlertRules._connected,
    "error": AlertRules._error,
    "breaker.tripped": AlertRules._breaker,
    "liquidation": AlertRules._liquidation,
    "session.resumed": AlertRules._resumed,
    "feed.fallback": AlertRules._fallback,
}


class AlertLog:
    """Raises alerts: one line each in `alerts.jsonl` (opened with the first), a log line, and the
    message to `notify` (the webhook's queue; it must not block)."""

    def __init__(self, path: Path, notify: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.path = path / "alerts.jsonl"
        self.run_id = path.name
        self.notify = notify
        self.count = 0
        self._file: IO[str] | None = None
        # a write of alerts.jsonl failed (the recorder stops the session: a storage fault), or the
        # recorder had one: alerts are still logged and sent, no longer written
        self.fault: tuple[OSError, Path] | None = None
        self.quiet = False

    def raise_alert(self, alert: Alert, seq: int | None) -> None:
        self.count += 1
        record = {"ts": iso(alert.ts), "run_id": self.run_id, "seq": seq, **alert.fields()}
        if not (self.quiet or self.fault):
            try:
                if self._file is None:
                    self._file = self.path.open("a+", encoding="utf-8")
                    cut_torn_tail(self._file.fileno())  # a resumed session's, killed in a write
                self._file.write(secrets.scrub(dumps_line(record)) + "\n")
                self._file.flush()
            except OSError as exc:
                self.fault = (exc, self.path)
                self.close()
        log = {"critical": logger.error, "info": logger.info}.get(alert.severity, logger.warning)
        log("ALERT {}: {}", alert.rule, alert.message)
        if self.notify is not None:
            text = f"[{alert.severity}] {self.run_id}: {alert.message}"
            self.notify({**record, "text": text})

    def close(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            try:
                f.close()
            except OSError as exc:
                self.fault = self.fault or (exc, self.path)


ALERTS_FILE = "alerts.jsonl"
# the alerts of events taken out of events.jsonl (a resume, a close as abandoned): one JSON object
# per line, `after_seq` (the last seq events.jsonl kept then) and `alert` (or `torn`: the text of a
# line cut by a kill)
DISCARDED_ALERTS_FILE = "alerts.discarded.jsonl"


def set_aside(run: Path, after_seq: int) -> int:
    """Move the alerts of `run`'s alerts.jsonl whose `seq` is above `after_seq` (their events
    were taken out of events.jsonl) and a last line torn by a kill to `DISCARDED_ALERTS_FILE`,
    each durable before alerts.jsonl is replaced (a kill between the two leaves them in both: the
    next resume moves them again); health alerts (seq null) stay. How many were moved; OSError
    when a file cannot be written."""
    path = run / ALERTS_FILE
    try:
        raws = path.read_bytes().splitlines(keepends=True)
    except FileNotFoundError:
        return 0
    kept: list[bytes] = []
    moved: list[dict[str, Any]] = []
    for raw in raws:
        if not raw.endswith(b"\n"):
            moved.append({"after_seq": after_seq, "torn": raw.decode("utf-8", "replace")})
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        seq = record.get("seq") if isinstance(record, dict) else None
        if isinstance(seq, int) and seq > after_seq:
            moved.append({"after_seq": after_seq, "alert": record})
        else:
            kept.append(raw)
    if not moved:
        return 0
    with (run / DISCARDED_ALERTS_FILE).open("a", encoding="utf-8") as f:
        f.write("".join(dumps_line(entry) + "\n" for entry in moved))
        f.flush()
        os.fsync(f.fileno())
    checkpoint.fsync_dir(run)  # its name too, before alerts.jsonl loses them
    with temp_file(path) as tmp:
        with tmp.open("wb") as f:
            f.write(b"".join(kept))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    checkpoint.fsync_dir(run)
    return len(moved)


def _resolved(ts: float, rule: str, message: str, since: float, details: dict[str, Any]) -> Alert:
    """The alert that says `rule`'s condition, on since `since`, is over (severity info), once."""
    return Alert(
        ts,
        rule,
        "info",
        f"resolved: {message}",
        {"resolved": True, "since": iso(since), "lasted_s": round(ts - since, 3), **details},
    )


def _price(value: Any) -> str:
    """A price for a message: to 1e-8 at most, no float noise (found by an audit: "liquidated at
    mark 39427.168000000005"); as given when not a number."""
    return f"{value:.8f}".rstrip("0").rstrip(".") if isinstance(value, int | float) else str(value)
