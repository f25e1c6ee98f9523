"""The figures of report.html, derived from a run's event records (the lines of events.jsonl as
dicts, in file order): the trade list, the equity curve and the statistics. Pure functions: no
files, no plotting, no live objects (actors/recording/html_report.py draws them)."""

from __future__ import annotations

import functools
import itertools
import math
import statistics as pystats
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import attrs

SECONDS_PER_YEAR = 365 * 86_400  # crypto trades every day of the year
MIN_RATIO_SPAN_S = 86_400.0  # the least sampled curve Sharpe and Sortino are given for (`statistics`)
FLAT_EPS = 1e-9


def ts_of(record: dict[str, Any]) -> float:
    """An event's time (`ts`, ISO-8601 UTC) in seconds since the epoch."""
    return seconds(record["ts"])


@functools.lru_cache(maxsize=1 << 17)  # the page reads the heartbeats' and trades' times twice
def seconds(text: str) -> float:
    """ISO-8601 UTC as events.jsonl writes it (`2026-11-24T02:21:50.123Z`) in seconds since the
    epoch; the day's start is looked up once per day (a long backtest has hundreds of thousands
    of events)."""
    if len(text) == 24 and text[10] == "T" and text[23] == "Z":
        return _day_start(text[:10]) + int(text[11:13]) * 3600 + int(text[14:16]) * 60 + float(text[17:23])
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@functools.lru_cache(maxsize=1024)
def _day_start(day: str) -> float:
    return datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp()


def slippage_cost(fill: dict[str, Any]) -> float:
    """What a fill's slippage cost in money: `slippage_bps` (against the decision's
    `requested_price`, positive when worse for us) of the requested notional."""
    bps = fill.get("slippage_bps")
    if not bps:  # none: no cost (and no arithmetic, for the many fills of a backtest without)
        return 0.0
    price = fill.get("requested_price") or fill.get("fill_price") or 0.0
    return float(bps) / 10_000 * float(price) * float(fill["qty"])


@attrs.frozen
class Trade:
    """One round trip of a symbol's net position (a `position.closed` event), with the slippage of
    the fills that opened and closed it."""

    symbol: str
    side: str
    qty: float
    entry_ts: float
    entry_price: float
    exit_ts: float
    exit_price: float
    realized_pnl: float
    fees: float
    slippage: float
    net_pnl: float
    held_s: float
    exit_reason: str


def trades(records: Iterable[dict[str, Any]]) -> list[Trade]:
    """The trade list. A fill's slippage goes to the trade it opens, adds to or closes; a fill that
    flips the position shares it between the trade it closes and the one it opens, by quantity."""
    first_symbol = ""
    position: dict[str, float] = {}
    open_cost: dict[str, float] = {}
    closing_cost: dict[str, float] = {}
    result: list[Trade] = []
    for r in records:
        kind = r["kind"]
        if kind == "session.started":
            first_symbol = r.get("symbol", "")
        elif kind == "order.filled":
            symbol = r.get("symbol") or first_symbol
            cost = slippage_cost(r)
            before = position.get(symbol, 0.0)
            after = r.get("position_qty", before)
            position[symbol] = after
            if abs(before) > FLAT_EPS and abs(after) > FLAT_EPS and (before > 0) != (after > 0):
                share = min(1.0, abs(before) / r["qty"]) if r["qty"] else 1.0
                closing_cost[symbol] = open_cost.get(symbol, 0.0) + cost * share
                open_cost[symbol] = cost * (1 - share)
            elif abs(before) > FLAT_EPS and abs(after) <= FLAT_EPS:
                closing_cost[symbol] = open_cost.get(symbol, 0.0) + cost
                open_cost[symbol] = 0.0
            else:
                open_cost[symbol] = open_cost.get(symbol, 0.0) + cost
        elif kind == "position.closed":
            symbol = r.get("symbol") or first_symbol
            exit_ts = ts_of(r)
            held_s = r.get("held_s", 0.0)
            result.append(
                Trade(  # by position (Trade's field order): several times cheaper than by keyword
                    symbol,
                    r["side"],
                    r["qty"],
                    r.get("opened_ts", exit_ts - held_s),
                    r["entry_price"],
                    exit_ts,
                    r["exit_price"],
                    r["realized_pnl"],
                    r["fees"],
                    closing_cost.pop(symbol, 0.0),
                    r["net_pnl"],
                    held_s,
                    r.get("exit_reason", ""),
                )
            )
    return result


def equity_curve(records: Iterable[dict[str, Any]]) -> list[tuple[float, float, float]]:
    """(time, equity, drawdown %) points: the start (`session.started`'s `starting_equity`, no
    drawdown) and every heartbeat (the last one is the final, flat account)."""
    points: list[tuple[float, float, float]] = []
    for r in records:
        kind = r["kind"]
        if kind == "heartbeat":
            equity = r.get("equity")
            if equity is not None:
                points.append((ts_of(r), float(equity), float(r.get("drawdown_pct") or 0.0)))
        elif kind == "session.started" and not points:
            points.append((ts_of(r), float(r["starting_equity"]), 0.0))
    return points


# The statistics, in the order the page shows them: (key, label, how it is shown).
STATISTICS: tuple[tuple[str, str, str], ...] = (
    ("trades", "Trades", "int"),
    ("wins", "Winning trades", "int"),
    ("losses", "Losing trades", "int"),
    ("win_rate", "Win rate", "pct_fraction"),
    ("avg_win", "Average win (USDT)", "money"),
    ("avg_loss", "Average loss (USDT)", "money"),
    ("profit_factor", "Profit factor", "ratio"),
    ("expectancy", "Expectancy per trade (USDT)", "money"),
    ("max_losing_streak", "Longest losing streak (trades)", "int"),
    ("gross_pnl", "Gross PnL before fees and funding (USDT)", "money"),
    ("fees", "Fees (USDT)", "money"),
    ("slippage", "Slippage cost, in the gross PnL already (USDT)", "money"),
    ("funding", "Funding paid (USDT)", "money"),
    ("net_pnl", "Net PnL (USDT)", "money"),
    ("return_pct", "Return", "pct"),
    ("sharpe", "Sharpe ratio (annualised)", "ratio"),
    ("sortino", "Sortino ratio (annualised)", "ratio"),
    ("max_drawdown_pct", "Maximum drawdown", "pct"),
    ("time_in_market", "Time in market", "pct_fraction"),
    ("fees_share", "Fees / |gross PnL|", "pct_fraction"),
    ("slippage_share", "Slippage / |gross PnL|", "pct_fraction"),
    ("fills", "Fills", "int"),
    ("sample_s", "Equity sampled every", "seconds"),
)


def statistics(
    records: Sequence[dict[str, Any]], curve: list[tuple[float, float, float]] | None = None
) -> dict[str, float | int | None]:
    """The statistics of a run from its event records (and their `equity_curve`, when the caller
    has it already). `None` where a figure is undefined.

    Trades are the `position.closed` events, judged by their `net_pnl` (realized PnL less the
    trade's fees; funding is left out of a trade, as of the account's wins and losses: it is in
    `funding` and in the run's net PnL):
    - `trades`, `wins` (net_pnl > 0), `losses` (net_pnl < 0); `win_rate` = wins / trades;
    - `avg_win` = mean net_pnl of the wins, `avg_loss` = mean net_pnl of the losses (negative);
    - `profit_factor` = sum of the wins' net_pnl / -(sum of the losses' net_pnl) (None without a loss);
    - `expectancy` = mean net_pnl per trade;
    - `max_losing_streak` = the most losses in a row, in the order the trades closed (a trade
      that is not a loss ends a streak; a breaker's halt does not).
    Money over the whole run, from the `order.filled` and `funding` events:
    - `gross_pnl` = sum of the fills' `realized_pnl` (before fees and funding); `fees` = sum of
      their `fee`; `slippage` = sum over fills of `slippage_bps` / 10,000 x `requested_price` x
      `qty` (what filling worse than the decision's price cost: the fills' prices carry it, so
      it is in gross_pnl already, not to be taken off it again); `funding` = sum of `amount`;
    - `net_pnl` = `session.stopped`'s `ending_equity` - `session.started`'s `starting_equity`;
      `return_pct` = net_pnl / starting equity x 100;
    - `fees_share` = fees / |gross_pnl|, `slippage_share` = slippage / |gross_pnl| (None when
      gross_pnl is 0); `fills` = number of fills.
    The equity curve (`equity_curve`: the starting equity, then every heartbeat's equity):
    - returns r_i = e_i / e_(i-1) - 1 between consecutive points; `sample_s` = the median time
      between points; periods a year N = 365 x 86,400 / sample_s;
    - `sharpe` = mean(r) / stdev(r) x sqrt(N), stdev the sample one (n - 1), no risk-free rate
      (None with fewer than 2 returns or no variation);
    - `sortino` = mean(r) / sqrt(sum(min(r_i, 0)^2) / n) x sqrt(N) (None without a negative return);
    - both None for a curve sampling less than a day (the time between its points, each step
      counted at most sample_s: a 10-minute session's; a few hours on either side of a gap in a
      backtest's data, whatever the gap's length): annualised from minutes of returns they
      would read like -900 and say nothing; from fewer than 30 closed trades (a curve flat but
      for their steps) they say little more, and the page says so beside them;
    - `max_drawdown_pct` = the largest fall from the running peak of equity, in percent, as the
      broker marks it at every step (live: every quote; backtests: each candle's open and close,
      and its high and low along its path, docs/fills.md): the largest `drawdown_pct` of the
      heartbeats and `session.stopped`'s `max_drawdown_pct` (final_report.json's figure).
    - `time_in_market` = the share of the run (`session.started` to `session.stopped`) during
      which some position was open: the union over the trades of [opened_ts, opened_ts + held_s].
    """
    # one pass over the records (a long backtest's are hundreds of thousands), each kind's
    # figures in record order (the sums below add them in that order, as one sum per kind would)
    started: dict[str, Any] | None = None
    stopped: dict[str, Any] | None = None
    closed: list[dict[str, Any]] = []
    fills = 0
    gross: float = 0  # as `sum` starts (an int: a run with none of them shows 0, not 0.0)
    fees: float = 0
    slippage: float = 0
    funding: float = 0
    drawdowns: list[float] = []
    for r in records:
        kind = r["kind"]
        if kind == "order.filled":
            fills += 1
            gross += float(r["realized_pnl"])
            fees += float(r["fee"])
            slippage += slippage_cost(r)
        elif kind == "position.closed":
            closed.append(r)
        elif kind == "heartbeat":
            drawdowns.append(float(r.get("drawdown_pct") or 0.0))
        elif kind == "funding":
            funding += float(r["amount"])
        elif kind == "session.started":
            started = started or r
        elif kind == "session.stopped":
            stopped = r
    net = [float(r["net_pnl"]) for r in closed]
    won = [x for x in net if x > 0]
    lost = [x for x in net if x < 0]
    streak = longest = 0
    for x in net:
        streak = streak + 1 if x < 0 else 0
        longest = max(longest, streak)
    starting = float(started["starting_equity"]) if started else None
    ending = float(stopped["ending_equity"]) if stopped and stopped.get("ending_equity") is not None else None
    net_pnl = ending - starting if starting is not None and ending is not None else None
    sharpe, sortino, sample_s = _ratios(equity_curve(records) if curve is None else curve)
    if stopped and stopped.get("max_drawdown_pct") is not None:
        drawdowns.append(float(stopped["max_drawdown_pct"]))
    return {
        "trades": len(net),
        "wins": len(won),
        "losses": len(lost),
        "win_rate": len(won) / len(net) if net else None,
        "avg_win": sum(won) / len(won) if won else None,
        "avg_loss": sum(lost) / len(lost) if lost else None,
        "profit_factor": sum(won) / -sum(lost) if lost else None,
        "expectancy": sum(net) / len(net) if net else None,
        "max_losing_streak": longest,
        "gross_pnl": gross,
        "fees": fees,
        "slippage": slippage,
        "funding": funding,
        "net_pnl": net_pnl,
        "return_pct": net_pnl / starting * 100 if net_pnl is not None and starting else None,
        "sharpe": sharpe,
        "sortino": sortino,
        "max_drawdown_pct": max(drawdowns, default=0.0),
        "time_in_market": _time_in_market(closed, started, stopped),
        "fees_share": fees / abs(gross) if gross else None,
        "slippage_share": slippage / abs(gross) if gross else None,
        "fills": fills,
        "sample_s": sample_s,
    }


def _ratios(curve: list[tuple[float, float, float]]) -> tuple[float | None, float | None, float | None]:
    """Sharpe, Sortino (see `statistics`) and the sampling interval of the equity curve."""
    equity = [e for _, e, _ in curve]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(curve) if b[0] > a[0]]
    if not gaps:
        return None, None, None
    sample_s = pystats.median(gaps)
    returns = [b / a - 1 for a, b in itertools.pairwise(equity) if a]
    # the time the returns sample, each step counted at most sample_s, not the curve's span: a gap
    # in a backtest's data (no points within it) stretched a few hours of returns over a day
    # (found by an audit); with no gap, the same
    sampled_s = sum(min(gap, sample_s) for gap in gaps)
    if len(returns) < 2 or sampled_s < MIN_RATIO_SPAN_S:
        return None, None, sample_s
    scale = math.sqrt(SECONDS_PER_YEAR / sample_s)
    mean = sum(returns) / len(returns)
    sd = pystats.stdev(returns)
    downside = math.sqrt(sum(min(r, 0.0) ** 2 for r in returns) / len(returns))
    sharpe = mean / sd * scale if sd > 0 else None
    sortino = mean / downside * scale if downside > 0 else None
    return sharpe, sortino, sample_s


def _time_in_market(
    closed: list[dict[str, Any]], started: dict[str, Any] | None, stopped: dict[str, Any] | None
) -> float | None:
    if started is None or stopped is None:
        return None
    span = ts_of(stopped) - ts_of(started)
    if span <= 0:
        return None
    intervals = sorted(_held(r) for r in closed)
    total, end = 0.0, -math.inf
    for a, b in intervals:
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total / span


def _held(closed: dict[str, Any]) -> tuple[float, float]:
    """A closed trade's time in the market: [opened_ts, opened_ts + held_s] (either one, when the
    other is missing, from the close's time)."""
    opened, held = closed.get("opened_ts"), closed.get("held_s")
    if opened is None or held is None:  # the close's time is read only when one is missing
        close = ts_of(closed)
        if opened is None:
            opened = close - (held or 0.0)
        if held is None:
            held = close - opened
    return opened, opened + held
