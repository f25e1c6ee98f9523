"""The session's configuration: schema, layered loading and validation.

Precedence, lowest first: built-in defaults < `--config` file < environment variables
`LAPTOP_AGENTS__SECTION__KEY` < CLI flags (`--set SECTION.KEY=VALUE` and the named flags).
Every problem found becomes one line naming the key, the bad value, where it came from and what is
allowed; `ConfigError` carries all of them so the CLI can print them and exit 2.

The session's strategies: either the one `[strategy]` table (its id is `strategy.name`) or several
`[[strategies]]` tables in the `--config` file, each with its `id`, its `kind` and its keys
(`Config.strategy_specs` gives them alike); the two forms are never mixed. Environment variables
and `--set` address `[strategy]` (`strategy.KEY`) and one key of a file's `[[strategies]]` table by
its id (`strategies.ID.KEY`: `--set strategies.trend.target_r=3`,
`LAPTOP_AGENTS__STRATEGIES__TREND__TARGET_R=3`); the tables themselves are written in the file.
"""

from __future__ import annotations

import ipaddress
import math
import re
import sys
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import attrs
import idna
import tomli_w

from actors import secrets
from actors.files import NotReadable, read_small_file

ENV_PREFIX = "LAPTOP_AGENTS__"

_INTERVAL_RE = re.compile(r"^([1-9][0-9]*)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Candle intervals the Bitunix public API serves (kline REST intervals and WS channels).
BITUNIX_INTERVALS = ("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d")
# Those a live session can run on: its history comes over REST, which has no 3m klines.
LIVE_INTERVALS = tuple(i for i in BITUNIX_INTERVALS if i != "3m")


class ConfigError(Exception):
    """One or more configuration problems, one human-readable line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def interval_seconds(interval: str) -> int:
    """`"5s"` -> 5, `"1m"` -> 60, `"1h"` -> 3600. Raises ValueError on anything else."""
    m = _INTERVAL_RE.fullmatch(interval)  # not `match`: `$` lets a final newline through
    if not m:
        raise ValueError(f"not an interval: {interval!r}")
    return int(m.group(1)) * _UNIT_S[m.group(2)]


# --- field constraints -------------------------------------------------------------------------


@attrs.frozen
class Rule:
    """What a key allows; `check` returns None when the value is fine, else what is allowed."""

    doc: str
    check: Callable[[Any], str | None] = attrs.field(default=lambda _v: None)


def _num(
    *, gt: float | None = None, ge: float | None = None, le: float | None = None, lt: float | None = None
) -> Callable[[Any], str | None]:
    parts = []
    if gt is not None:
        parts.append(f"> {gt:g}")
    if ge is not None:
        parts.append(f">= {ge:g}")
    if le is not None:
        parts.append(f"<= {le:g}")
    if lt is not None:
        parts.append(f"< {lt:g}")
    allowed = "a number " + " and ".join(parts) if parts else "a finite number"

    def check(v: Any) -> str | None:
        if isinstance(v, float) and not math.isfinite(v):
            return allowed
        if (gt is not None and v <= gt) or (ge is not None and v < ge) or (le is not None and v > le):
            return allowed
        if lt is not None and v >= lt:
            return allowed
        return None

    return check


def _zero_or(*, ge: float, le: float) -> Callable[[Any], str | None]:
    """0 (the feature off), or a number in [ge, le]."""
    within = _num(ge=ge, le=le)
    allowed = f"0 or a number >= {ge:g} and <= {le:g}"

    def check(v: Any) -> str | None:
        return None if v == 0 else (allowed if within(v) else None)

    return check


# the upper bounds of counts and cooldowns (found by an audit: 2**64 trades passed the check and
# crashed the session writing its first event; a cooldown of 1e20 minutes, its halt's end time)
MAX_COUNT = 1_000_000_000
MINUTES_A_YEAR = 525_600


def _choice(*choices: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in choices else "one of " + ", ".join(repr(c) for c in choices)

    return check


def _pattern(regex: str, allowed: str) -> Callable[[Any], str | None]:
    compiled = re.compile(regex)

    def check(v: Any) -> str | None:
        return None if compiled.fullmatch(v) else allowed

    return check


_DOTTED_QUAD = re.compile(r"[0-9]+(\.[0-9]+){3}")


def _host_ok(host: str) -> bool:
    """True for a host every client here can connect to by name: an IP address, or a name the
    resolver's IDNA codec encodes (each label 1 to 63 characters) and, as httpx and trio do, IDNA
    2008 encodes (a non-ASCII name) or decodes (an `xn--` label). Found by an audit: `a..b`,
    `xn--zz.com`, `999.1.1.1` or a snowman were accepted, and a session crashed with a traceback
    (exit 1) on its first connection, as did `--preflight`."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        if _DOTTED_QUAD.fullmatch(host):
            return False  # httpx: an invalid IPv4 address
    try:
        host.encode("idna")
        if not host.isascii():
            idna.encode(host)
        elif any(label.startswith("xn--") for label in host.split(".")):
            idna.decode(host)
    except UnicodeError:  # idna.IDNAError is one
        return False
    return True


def _url(*schemes: str, empty: bool = False) -> Callable[[Any], str | None]:
    """A URL of one of `schemes` with a valid host (`_host_ok`), no `user:password@` part, no
    whitespace or control characters, a valid port; `empty`: "" is allowed too (the feature is
    off)."""
    names = " or ".join(f"{scheme}://" for scheme in schemes)
    article = "an" if schemes[0].startswith("h") else "a"
    allowed = (
        "empty, or " if empty else ""
    ) + f"{article} {names} URL with a valid host and no user:password@ part"

    def check(v: Any) -> str | None:
        if empty and v == "":
            return None
        if len(v) > 2048 or any(c.isspace() or not c.isprintable() for c in v):
            return allowed
        try:
            parts = urlsplit(v)
            parts.port  # noqa: B018 (raises ValueError on a port out of range or not a number)
        except ValueError:
            return allowed
        if parts.scheme not in schemes or not parts.hostname or "@" in parts.netloc:
            return allowed
        if "[" in parts.netloc:  # a bracketed IPv6 address
            return None if _ipv6_host(parts.hostname) else allowed
        return None if _host_ok(parts.hostname) else allowed

    return check


def _ipv6_host(host: str) -> bool:
    """A bracketed host is an IPv6 address (found by the cockpit audit: a host no client could
    use passed, and the first use raised UnicodeError: at the first alert, or the feed's first
    connect, the session ended in a traceback; names go through `_host_ok`)."""
    try:
        ipaddress.IPv6Address(unquote(host))
    except ValueError:
        return False
    return True


_PATH_MAX = 4096


def _path(v: Any) -> str | None:
    """A file system path: not empty, no control characters (a NUL byte cannot be in a path),
    at most 4096 characters, each part at most 255."""
    allowed = "a non-empty path without control characters, at most 4096 characters (255 per part)"
    if not v.strip() or len(v) > _PATH_MAX or any(not c.isprintable() for c in v):
        return allowed
    if any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in v.split("/")):
        return allowed
    return None


def _interval(v: Any) -> str | None:
    allowed = "an interval such as '5s', '1m', '15m', '1h', at most '1d'"
    try:
        return None if interval_seconds(v) <= MAX_INTERVAL_S else allowed
    except ValueError:
        return allowed


def _nonempty(v: Any) -> str | None:
    return None if v.strip() else "a non-empty string"


# The shortest period, timeout or delay a key may set, seconds (and the lowest rate, per second):
# found by an audit, a heartbeat_s of 1e-300 hung the start (its next time could not advance) and
# 1e-12 flooded the session with heartbeats; the same for every loop a key paces.
MIN_PERIOD_S = 0.1
# The longest candle interval: the exchange's longest (found by an audit: a mock session of
# 99999999999999999999d hung, one of 365d crashed building its history).
MAX_INTERVAL_S = 86400
# session.seed: the generator takes any integer, a run id and the checkpoint's JSON numbers 64 bits
MAX_SEED = 2**63 - 1
# The mock's start price: at least this many ticks of the first symbol's price grid (a price under
# one tick rounds to 0), at most MAX_MOCK_PRICE USDT; its spread at most 1/MAX_SPREAD_SHARE of a
# symbol's start price (a bid under 0 otherwise).
MIN_MOCK_PRICE_TICKS = 100
MAX_MOCK_PRICE = 1e9
MAX_SPREAD_SHARE = 20


def key(default: Any, doc: str, check: Callable[[Any], str | None] | None = None) -> Any:
    """An attrs field with its documentation and constraint in the metadata."""
    rule = Rule(doc=doc, check=check) if check else Rule(doc=doc)
    return attrs.field(default=default, metadata={"rule": rule})


# --- the schema ---------------------------------------------------------------------------------


@attrs.frozen
class SessionConfig:
    duration_min: float = key(
        10.0, "session length in minutes; the session stops by itself", _num(gt=0, le=1440)
    )
    symbol: str = key("BTCUSDT", "perpetual contract traded", _pattern(r"[A-Z0-9]{2,20}", "2-20 of A-Z, 0-9"))
    interval: str = key(
        "1m", "candle interval: 1m, 5m, ... (the mock source also takes seconds, e.g. 5s)", _interval
    )
    run_dir: str = key("runs", "folder that receives one run folder per session", _path)
    kill_switch: str = key(
        "kill.txt",
        "a file at this path stops a live session at once, flat (checked 4 times a second; backtests and "
        "replays do not look for it); a directory there is refused at start",
        _path,
    )
    seed: int = key(
        42,
        "seed of the session's one random generator (mock prices, latency jitter)",
        lambda v: None if 0 <= v <= MAX_SEED else f"an integer from 0 to {MAX_SEED} (2**63 - 1)",
    )
    flatten_timeout_s: float = key(
        10.0,
        "time allowed, after the stop, for the actors to finish their step before the flatten and the report go ahead without them",
        _num(ge=MIN_PERIOD_S, le=120),
    )
    disk_reserve_mb: float = key(
        50.0,
        "free disk space kept for the final record, MB: no start with less free on the run dir's disk, "
        "and a session stops (stop_reason storage) when its free space falls below it (0: off)",
        _num(ge=0),
    )


@attrs.frozen
class FeedConfig:
    source: str = key(
        "mock",
        "market data: 'bitunix' (live WebSocket + REST) or 'mock' (seeded random walk)",
        _choice("bitunix", "mock"),
    )
    fallback: str = key(
        "mock",
        "if no live data arrives within connect_timeout_s: 'mock' (loudly) or 'none' (keep retrying)",
        _choice("mock", "none"),
    )
    ws_url: str = key(
        "wss://fapi.bitunix.com/public/",
        "Bitunix public WebSocket URL",
        _url("ws", "wss"),
    )
    rest_url: str = key(
        "https://fapi.bitunix.com",
        "Bitunix REST base URL",
        _url("http", "https"),
    )
    connect_timeout_s: float = key(
        15.0, "seconds to wait for the first live data at start", _num(ge=MIN_PERIOD_S, le=600)
    )
    ping_interval_s: float = key(
        15.0,
        "seconds between the exchange's JSON pings (server drops idle sockets at ~60 s)",
        _num(ge=MIN_PERIOD_S, le=50),
    )
    stale_after_s: float = key(
        10.0,
        "no data frame of any symbol for this long of waiting on the socket (then 0.5 s more, for frames "
        "that came in while the process was held up) marks data stale and forces a reconnect; one "
        "symbol silent this long while others flow is stale alone",
        _num(ge=MIN_PERIOD_S, le=600),
    )
    backoff_initial_s: float = key(
        0.5, "first reconnect delay (exponential backoff, full jitter)", _num(ge=MIN_PERIOD_S, le=60)
    )
    backoff_max_s: float = key(30.0, "largest reconnect delay", _num(ge=MIN_PERIOD_S, le=600))
    failover_after_s: float = key(
        5.0,
        "WebSocket down (or a symbol stale alone) this long: poll REST for that data's candles and "
        "prices until it recovers",
        _num(ge=MIN_PERIOD_S, le=600),
    )
    rest_rate_limit: float = key(
        8.0, "REST requests per second at most (the exchange allows 10)", _num(ge=MIN_PERIOD_S, le=10)
    )
    rest_timeout_s: float = key(5.0, "timeout of one REST request", _num(ge=MIN_PERIOD_S, le=60))
    confirm_candle_s: float = key(
        2.0,
        "a live candle closed from its bucket's last WebSocket push is taken from the exchange's REST "
        "klines if they show it closed within this many seconds (the pushes come every 500 ms and miss "
        "the bucket's last trades); else it goes out as pushed, counted (0: never asked; at most 30)",
        _num(ge=0, le=30),
    )
    max_jump_pct: float = key(
        5.0,
        "a price moving more than this percent within a second of the last good price is rejected as "
        "bad data; after a longer silence the bound grows with the square root of the time (in log "
        "terms, 4 times as wide after 16 s)",
        _num(gt=0, le=100),
    )
    tick_interval_s: float = key(
        0.5, "mock source: seconds between best bid/ask ticks", _num(ge=MIN_PERIOD_S, le=60)
    )
    mock_start_price: float = key(
        60000.0,
        "mock source: price where the ticks begin (the seeded history ends there), USDT; at least 100 "
        "ticks of the symbol's price grid (10 for BTCUSDT)",
        _num(gt=0, le=MAX_MOCK_PRICE),
    )
    mock_volatility_pct: float = key(
        60.0, "mock source: annualised volatility of the random walk, percent", _num(gt=0, le=1000)
    )
    mock_spread_ticks: int = key(
        1,
        "mock source: bid/ask spread in ticks of each symbol's price grid (BTCUSDT: 0.1 USDT)",
        _num(ge=1, le=1000),
    )
    mock_history_candles: int = key(
        200,
        "mock source: closed candles of seeded history handed out at start, marked as history "
        "(strategies warm up on them, never trade on them); 0: none",
        _num(ge=0, le=10000),
    )
    mock_regime_min: float = key(
        30.0,
        "mock source: minutes each market regime lasts; regimes alternate trending and ranging "
        "(0: no regimes, a plain random walk)",
        _zero_or(ge=1, le=10080),
    )
    mock_trend_pct_per_hour: float = key(
        1.5,
        "mock source: drift of a trending regime (up or down, seeded), percent per hour",
        _num(ge=0, le=100),
    )
    mock_range_half_life_min: float = key(
        5.0,
        "mock source: half-life of a ranging regime's pull back to its centre, minutes",
        _num(gt=0, le=10080),
    )


@attrs.frozen
class BrokerConfig:
    starting_equity: float = key(10000.0, "paper account equity at start, USDT", _num(gt=0))
    taker_fee_bps: float = key(
        6.0, "taker fee in basis points of notional (Bitunix base tier 6)", _num(ge=0, le=100)
    )
    maker_fee_bps: float = key(
        2.0, "maker fee in basis points of notional (Bitunix base tier 2)", _num(ge=0, le=100)
    )
    funding: str = key(
        "none",
        "funding in backtests and mock sessions: 'none' (not modelled: funding_paid stays 0) or "
        "'constant' (funding_rate_pct every 8 h); a backtest's --funding FILE takes precedence, "
        "live Bitunix sessions use the exchange's rate",
        _choice("none", "constant"),
    )
    funding_rate_pct: float = key(
        0.01,
        "with funding = 'constant': the rate, percent of the position's value per 8 h interval "
        "(00/08/16 UTC); positive: longs pay shorts",
        _num(ge=-5, le=5),
    )
    leverage: float = key(2.0, "leverage of the isolated-margin position", _num(ge=1, le=125))
    latency_ms: float = key(
        150.0, "time from sending an order to it reaching the market, ms", _num(ge=0, le=60000)
    )
    latency_jitter_ms: float = key(50.0, "seeded random extra latency, 0..this, ms", _num(ge=0, le=60000))
    slippage_bps: float = key(
        2.0, "extra cost beyond the touch when book depth is unknown, basis points", _num(ge=0, le=1000)
    )
    limit_fill_on_touch: bool = key(False, "fill limit orders when the price only touches them (optimistic)")
    backtest_fill: str = key(
        "next_open",
        "backtests: fill market orders at the next candle's open (honest) or the signal candle's close",
        _choice("next_open", "close"),
    )
    intrabar: str = key(
        "pessimistic",
        "backtests: the path a candle is worked along: 'pessimistic' (the extreme against the open "
        "position first: a stop before a target) or 'ohlc' (open, the nearer extreme, the other, close)",
        _choice("pessimistic", "ohlc"),
    )
    max_volume_participation: float = key(
        0.1,
        "backtests: the largest share of a candle's volume the broker's fills may take in that candle",
        _num(gt=0, le=1),
    )


@attrs.frozen
class RiskConfig:
    max_position_size: float = key(
        0.01,
        "largest absolute position allowed, in the contract's base unit (BTC for BTCUSDT), each symbol",
        _num(gt=0),
    )
    max_orders_per_minute: int = key(6, "orders allowed in any 60 s window (sliding)", _num(ge=1, le=600))
    max_notional: float = key(
        1000.0, "largest absolute position value allowed, USDT, each symbol", _num(gt=0)
    )
    max_leverage: float = key(
        2.0, "largest position notional / equity allowed, each symbol", _num(gt=0, le=125)
    )
    max_total_notional: float = key(
        0.0,
        "largest sum of every symbol's absolute position value, USDT (0: max_notional, the one "
        "symbol's cap shared by all)",
        _num(ge=0),
    )
    max_total_leverage: float = key(
        0.0,
        "largest sum of every symbol's position notional / equity (0: max_leverage, shared by all)",
        _num(ge=0, le=125),
    )
    sizing: str = key(
        "risk",
        "entry size: 'risk' (risk_per_trade_pct over the stop distance) or 'fixed' (strategy.order_qty)",
        _choice("risk", "fixed"),
    )
    risk_per_trade_pct: float = key(
        0.5, "equity risked per trade, percent; sizes entries from the stop distance", _num(gt=0, le=100)
    )
    max_loss_pct: float = key(
        2.0,
        "session loss from starting equity, percent, that flattens and stops the session",
        _num(gt=0, le=100),
    )
    max_daily_drawdown_pct: float = key(
        3.0,
        "drawdown from the UTC day's starting equity, percent, that trips the breaker",
        _num(gt=0, le=100),
    )
    max_consecutive_losses: int = key(
        5, "losing trades in a row that trip the breaker (0: off)", _num(ge=0, le=MAX_COUNT)
    )
    on_breaker: str = key(
        "auto",
        "when the breaker trips (after flattening): 'stop' the session, 'halt' new entries (the daily "
        "drawdown: until the next UTC midnight; the loss streak: for loss_streak_cooldown_min), or "
        "'auto': 'halt' in backtests, 'stop' in live sessions and replays",
        _choice("auto", "stop", "halt"),
    )
    breaker_cooldown_min: float = key(
        30.0,
        "minutes, at least, new entries stay halted after the daily drawdown breaker trips (halt mode); "
        "the halt lasts until the next UTC midnight when that is later",
        _num(gt=0, le=MINUTES_A_YEAR),
    )
    loss_streak_cooldown_min: float = key(
        30.0,
        "minutes new entries stay halted after the consecutive-loss breaker trips (halt mode); "
        "the streak then counts from zero",
        _num(gt=0, le=MINUTES_A_YEAR),
    )
    max_trades: int = key(
        0, "closed trades after which the session stops (0: no limit)", _num(ge=0, le=MAX_COUNT)
    )
    max_losses: int = key(
        0, "losing trades after which the session stops (0: no limit)", _num(ge=0, le=MAX_COUNT)
    )


# Every strategy kind (actors/strategies/, registered by name; tests/test_config.py checks the two
# lists agree). A kind's own parameters are keys of the same [strategy] table (`strategy_kinds`).
STRATEGY_KINDS = ("ema_cross", "trend_pullback", "liquidity_sweep")


@attrs.frozen
class StrategyConfig:
    name: str = key(
        "ema_cross",
        "strategy kind: 'ema_cross' (EMA fast/slow crossover), 'trend_pullback' (limit entry on the pullback "
        "to EMA 20 in an EMA 20/50 trend), 'liquidity_sweep' (a swing swept and reclaimed, target the VWAP); "
        "a kind's parameters are keys of this table (README, Strategies)",
        _choice(*STRATEGY_KINDS),
    )
    fast_period: int = key(9, "fast EMA period, candles", _num(ge=1, le=1000))
    slow_period: int = key(21, "slow EMA period, candles (must be > fast_period)", _num(ge=2, le=1000))
    history: int = key(
        200,
        "closed candles kept in memory, and seeded at start (live and mock); at least the strategy's "
        "warm-up (ema_cross: slow_period)",
        _num(ge=2, le=10000),
    )
    order_qty: float = key(0.001, "size of each entry with risk.sizing = 'fixed', BTC", _num(gt=0))
    stop_loss_pct: float = key(
        0.5,
        "protective stop-loss distance from entry, percent (0: none, which needs risk.sizing = 'fixed': "
        "risk sizing sizes by the stop)",
        _num(ge=0, le=50),
    )
    take_profit_pct: float = key(
        1.0,
        "take-profit distance from entry, percent (0: none; under 100: a short's target at 100 % would be "
        "a price of 0)",
        _num(ge=0, lt=100),
    )


# a [[strategies]] table's id: what its intents, orders, fills, signals and checkpoint carry
STRATEGY_ID_PATTERN = r"[a-z0-9_-]{1,32}"
# The live feed subscribes each symbol's kline, book and price channels on one WebSocket
# connection, which takes at most MAX_SUBSCRIPTIONS (protocols/bitunix.py; checked there too).
MAX_SUBSCRIPTIONS = 300
CHANNELS_PER_SYMBOL = 3
MAX_SYMBOLS = MAX_SUBSCRIPTIONS // CHANNELS_PER_SYMBOL
# The most session candles of history a live feed seeds per symbol (strategies on longer intervals
# want many: 200 one-hour candles are 12,000 one-minute ones)
MAX_SEED_CANDLES = 12_000


@attrs.frozen
class StrategyTableKeys:
    """The keys a `[[strategies]]` table has besides `[strategy]`'s common keys (`name` is `kind`
    there) and its kind's own parameters; only their rules and documentation are used."""

    id: str = key(
        "",
        "the strategy's unique id (1-32 of a-z, 0-9, _ and -): its signals, intents, orders, fills "
        "and checkpoint carry it",
        _pattern(STRATEGY_ID_PATTERN, "a unique id, 1-32 of a-z, 0-9, _ and -"),
    )
    kind: str = key(
        "",
        "strategy kind: " + ", ".join(repr(k) for k in STRATEGY_KINDS) + " (as strategy.name)",
        _choice(*STRATEGY_KINDS),
    )
    symbol: str = key(
        "",
        "contract it trades (default: session.symbol); strategies may trade different symbols",
        _pattern(r"[A-Z0-9]{2,20}", "2-20 of A-Z, 0-9"),
    )
    interval: str = key(
        "",
        "candle interval it decides on: session.interval (the default) or a whole multiple of it "
        "(e.g. 5m, 15m, 1h on 1m), built from the session's candles",
        _interval,
    )


REQUIRED_TABLE_KEYS = ("id", "kind")


@attrs.frozen
class StrategySpec:
    """One strategy of the session: its id, its common keys (`config.name` is its kind) and its
    kind's own parameters (an instance of the kind's params class; None: the kind has none)."""

    id: str
    config: StrategyConfig
    params: Any = None
    # as written in its [[strategies]] table (None: not written; the session's)
    symbol: str | None = None
    interval: str | None = None

    @property
    def kind(self) -> str:
        return self.config.name


@attrs.frozen
class ObservabilityConfig:
    heartbeat_s: float = key(
        1.0, "seconds between heartbeat events and metrics rows", _num(ge=MIN_PERIOD_S, le=3600)
    )
    progress: str = key(
        "auto",
        "live progress on stderr: auto (panel on a terminal, lines otherwise), plain, off",
        _choice("auto", "plain", "off"),
    )
    log_level: str = key("INFO", "console log level", _choice("DEBUG", "INFO", "WARNING", "ERROR"))
    log_rotation_mb: float = key(
        10.0, "session.log: start a new file when it reaches this size, MB", _num(gt=0, le=10240)
    )
    log_retention_files: int = key(
        5, "session.log: rotated files kept beside it (older ones are deleted)", _num(ge=1, le=1000)
    )
    backtest_heartbeat_candles: int = key(
        60,
        "backtests: one heartbeat (metrics row, a point of the equity curve) per this many candles' worth "
        "of data time (session.interval times this), on whole periods from the first candle; none within a gap "
        "in the data",
        _num(ge=1, le=1_000_000),
    )
    webhook_url: str = key(
        "",
        "alerts: POST each one as JSON to this http(s) URL (empty: no webhook)",
        _url("http", "https", empty=True),
    )
    webhook_timeout_s: float = key(
        5.0, "alerts: timeout of one webhook request, seconds", _num(ge=MIN_PERIOD_S, le=60)
    )
    webhook_attempts: int = key(
        4,
        "alerts: tries per webhook message (retried with backoff after network errors, HTTP 429 and 5xx)",
        _num(ge=1, le=10),
    )


@attrs.frozen
class AlertsConfig:
    max_rss_mb: float = key(
        2048.0, "alert when the process's resident memory exceeds this, MB (0: off)", _num(ge=0)
    )
    min_free_disk_mb: float = key(
        500.0, "alert when the run folder's disk has less free space than this, MB (0: off)", _num(ge=0)
    )
    max_errors_per_min: int = key(
        3,
        "alert when more than this many error events fall within one minute (0: off)",
        _num(ge=0, le=MAX_COUNT),
    )
    feed_down_s: float = key(
        60.0,
        "alert when the live feed's connection has been down this long, or one symbol's data stale "
        "this long while the feed is up, seconds (0: off)",
        _num(ge=0),
    )
    max_disconnects_per_hour: int = key(
        10,
        "alert when the live feed disconnects more than this many times within an hour (0: off)",
        _num(ge=0, le=MAX_COUNT),
    )


@attrs.frozen
class StateConfig:
    checkpoint_interval_s: float = key(
        1.0, "checkpoint at least this often (and after every order or fill)", _num(ge=MIN_PERIOD_S, le=3600)
    )


@attrs.frozen
class Config:
    session: SessionConfig = attrs.field(factory=SessionConfig)
    feed: FeedConfig = attrs.field(factory=FeedConfig)
    broker: BrokerConfig = attrs.field(factory=BrokerConfig)
    risk: RiskConfig = attrs.field(factory=RiskConfig)
    strategy: StrategyConfig = attrs.field(factory=StrategyConfig)
    observability: ObservabilityConfig = attrs.field(factory=ObservabilityConfig)
    alerts: AlertsConfig = attrs.field(factory=AlertsConfig)
    state: StateConfig = attrs.field(factory=StateConfig)
    # the strategy kind's own parameters (an instance of its params class), None: its defaults
    strategy_params: Any = None
    # the [[strategies]] tables, in their order; empty: the one [strategy] table
    strategies: tuple[StrategySpec, ...] = ()

    @property
    def interval_s(self) -> int:
        return interval_seconds(self.session.interval)

    @property
    def strategy_specs(self) -> tuple[StrategySpec, ...]:
        """The session's strategies, in their configured order: the [[strategies]] tables, or the
        one [strategy] table with id `strategy.name`."""
        if self.strategies:
            return self.strategies
        return (StrategySpec(self.strategy.name, self.strategy, self.strategy_params),)

    @property
    def symbols(self) -> tuple[str, ...]:
        """Every symbol the session trades, in the order its strategies first name them (a strategy
        with no `symbol` trades session.symbol). One symbol: `(session.symbol,)`."""
        found: dict[str, None] = {}
        for spec in self.strategy_specs:
            found[(spec.symbol or self.session.symbol).upper()] = None
        return tuple(found) or (self.session.symbol.upper(),)

    def strategy_symbol(self, spec: StrategySpec) -> str:
        return (spec.symbol or self.session.symbol).upper()

    def strategy_interval_s(self, spec: StrategySpec) -> int:
        """The strategy's candle interval, seconds (default: the session's)."""
        return interval_seconds(spec.interval) if spec.interval else self.interval_s

    @property
    def strategy_history(self) -> int:
        """Closed candles of the session's interval the strategies need as history: the largest
        `history` of them, in session candles (a strategy on 5m candles of a 1m session with
        `history` 200 needs 1,000; the live feed seeds this many, at most MAX_SEED_CANDLES)."""
        needed = max(
            spec.config.history * (self.strategy_interval_s(spec) // self.interval_s)
            for spec in self.strategy_specs
        )
        return min(needed, MAX_SEED_CANDLES)


SECTIONS: dict[str, type] = {
    "session": SessionConfig,
    "feed": FeedConfig,
    "broker": BrokerConfig,
    "risk": RiskConfig,
    "strategy": StrategyConfig,
    "observability": ObservabilityConfig,
    "alerts": AlertsConfig,
    "state": StateConfig,
}
for _cls in (*SECTIONS.values(), StrategyTableKeys):
    attrs.resolve_types(_cls)
# the array of tables [[strategies]] (not a section: env variables and --set do not reach it)
STRATEGIES = "strategies"


def section_fields(section: str) -> dict[str, attrs.Attribute]:
    return {f.name: f for f in attrs.fields(SECTIONS[section])}


def strategy_kinds() -> dict[str, type | None]:
    """Each strategy kind and its parameters class (None: it has only [strategy]'s common keys).
    Imported here, not at the top: the strategies import this module."""
    import actors.strategies  # noqa: F401  (registers every kind)
    from actors.strategies.base import PARAMS

    return dict(PARAMS)


def strategy_param_fields(kind: str) -> dict[str, attrs.Attribute]:
    cls = strategy_kinds().get(kind)
    if cls is None:
        return {}
    attrs.resolve_types(cls)  # a module with `from __future__ import annotations` leaves them as text
    return {f.name: f for f in attrs.fields(cls)}


def strategy_common_keys(kind: str) -> tuple[str, ...]:
    """The common keys of [strategy] (`StrategyConfig`'s, `name` aside) the kind reads, e.g.
    `history` and `order_qty` for one whose stop is in ATRs (not `stop_loss_pct`)."""
    import actors.strategies  # noqa: F401  (registers every kind)
    from actors.strategies.base import COMMON_KEYS

    return COMMON_KEYS[kind]


def strategy_keys(kind: str) -> tuple[str, ...]:
    """Every key a strategy of this kind reads: the common ones it reads, then its own parameters."""
    return (*strategy_common_keys(kind), *strategy_param_fields(kind))


def strategy_value_problem(kind: str, dotted: str, text: str, source: str) -> str | None:
    """A value of one of a kind's keys (`dotted` ends with its name), given as `--set` text,
    checked against that key's own type and rule, not the rules between keys: the problem as a
    config error says it, or None (a sweep checks every value of a list with it)."""
    name = dotted.rpartition(".")[2]
    field = strategy_param_fields(kind).get(name) or section_fields("strategy").get(name)
    if field is None:
        return f"{dotted}: not a parameter of {kind}"
    problems: list[str] = []
    _check(problems, dotted, field, text, source, True)
    return problems[0] if problems else None


def _unread_key(prefix: str, name: str, kind_key: str, kind: str, source: str) -> str:
    return (
        f"{prefix}.{name}: not used by {kind_key} = {kind!r} (from {source}): that kind never reads it; "
        f"expected one of its keys: {', '.join(strategy_keys(kind))}"
    )


def without_unread_keys(data: Mapping[str, Any]) -> dict[str, Any]:
    """A config as `to_dict` writes it, without the common keys its strategies' kinds do not read:
    a config recorded before they were left out (and refused when set) loads as it ran."""
    out = dict(data)

    def keep(table: Mapping[str, Any], kind: Any) -> dict[str, Any]:
        if kind not in STRATEGY_KINDS:
            return dict(table)  # a problem of its own, named as such by the loader
        unread = set(section_fields("strategy")) - {"name", *strategy_common_keys(kind)}
        return {k: v for k, v in table.items() if k not in unread}

    if isinstance(out.get("strategy"), dict):
        out["strategy"] = keep(out["strategy"], out["strategy"].get("name", StrategyConfig().name))
    if isinstance(out.get(STRATEGIES), list):
        out[STRATEGIES] = [
            keep(table, table.get("kind")) if isinstance(table, dict) else table for table in out[STRATEGIES]
        ]
    return out


def _all_strategy_params() -> dict[str, attrs.Attribute]:
    fields: dict[str, attrs.Attribute] = {}
    for kind in strategy_kinds():
        fields.update(strategy_param_fields(kind))
    return fields


# --- typing values from each layer ----------------------------------------------------------------

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _type_name(t: Any) -> str:
    return {float: "a number", int: "an integer", str: "a string", bool: "true or false"}[t]


def _typed(value: Any, t: Any, from_text: bool) -> tuple[Any, str | None]:
    """Convert `value` to the field type `t`; text (env, flags) is parsed, TOML values must match."""
    if from_text:
        text = str(value).strip()
        try:
            if t is bool:
                if text.lower() in _TRUE:
                    return True, None
                if text.lower() in _FALSE:
                    return False, None
                raise ValueError
            if t is int:
                return int(text), None
            if t is float:
                return float(text), None
            return str(value), None
        except ValueError:
            return None, _type_name(t)
    if t is float and isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return float(value), None
        except OverflowError:  # a TOML integer beyond every float (`_huge_integer`)
            return None, _type_name(t)
    if t is int and isinstance(value, int) and not isinstance(value, bool):
        return value, None
    if t in (str, bool) and type(value) is t:
        return value, None
    return None, _type_name(t)


_INTEGER_TEXT = re.compile(r"[+-]?[0-9][0-9_]*")
# An integer beyond the bounds of every key (the largest, session.seed, is under 10**19): what the
# key's rule is asked about an integer too long to read (`_huge_integer`)
_BEYOND_EVERY_KEY = 10**100


def _huge_integer(value: Any, t: Any, from_text: bool) -> tuple[int, Any] | None:
    """An integer too long to be a value of type `t`: as text (the environment, flags) more
    digits than Python reads (`sys.get_int_max_str_digits()`, 4,300), or a TOML integer beyond
    every float for a number key; its digits and a stand-in beyond every key's bounds, for its
    rule to say what is allowed (found by an audit: `--set session.seed=999...` of thousands of
    digits said only "expected an integer", and a number key given a TOML integer of 400 digits
    ended in a traceback). None: not such an integer."""
    if from_text:
        text = str(value).strip()
        if t is not int or _INTEGER_TEXT.fullmatch(text) is None:
            return None
        digits, negative = len(text.lstrip("+-").replace("_", "")), text.startswith("-")
    elif t is float and isinstance(value, int) and not isinstance(value, bool):
        digits, negative = len(str(abs(value))), value < 0  # (tomllib reads at most 4,300 digits)
    else:
        return None
    sign = -1 if negative else 1
    return digits, sign * (_BEYOND_EVERY_KEY if t is int else math.inf)


def _huge_problem(dotted: str, field: attrs.Attribute, digits: int, stand_in: Any, where: str) -> str:
    """The problem of an integer of `digits` digits given to `dotted` (`_huge_integer`)."""
    allowed = field.metadata["rule"].check(stand_in) or _type_name(field.type)
    return f"{dotted}: an integer of {digits:,} digits is not allowed ({where}); expected {allowed}"


_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s]*@")
_SHOW_MAX = 200


def _show(value: Any) -> str:
    """A value as an error message quotes it: a URL's `user:password@` part masked, at most 200
    characters, every secret of the environment scrubbed (actors/secrets.py)."""
    text = repr(value) if isinstance(value, str) else str(value)
    text = _USERINFO.sub(r"\1***@", text)
    if len(text) > _SHOW_MAX:
        text = text[: _SHOW_MAX - 3] + "..."
    return secrets.scrub(text)


def _secret_key(dotted: str, source: str) -> str:
    return (
        f"{dotted}: secrets are not read from config files, --set or {ENV_PREFIX} variables (from "
        f"{source}); expected the exchange's key pair in the environment only: {secrets.API_KEY} and "
        f"{secrets.API_SECRET} (or {secrets.API_KEY}_FILE, {secrets.API_SECRET}_FILE naming files), "
        f"and the checkpoint key in {secrets.STATE_KEY}"
    )


# --- layers -----------------------------------------------------------------------------------------

# (section, key) -> (raw value, source, is_text); the [[strategies]] tables, all of them, are the
# one entry (STRATEGIES, "") -> (list of tables, source, False); a key of one of them set by the
# environment or --set is ("strategies.<id>", key) -> (raw value, source, is_text)
Layer = dict[tuple[str, str], tuple[Any, str, bool]]
# how the environment and --set name one key of a [[strategies]] table
TABLE_KEY_FORM = (
    "strategies.ID.KEY (a key of the [[strategies]] table with that id, e.g. strategies.trend.target_r=3)"
)


def _each_kinds_parameters() -> str:
    return "each kind's parameters: " + ", ".join(
        f"{kind}: {', '.join(strategy_param_fields(kind)) or '-'}" for kind in strategy_kinds()
    )


def _put(layer: Layer, problems: list[str], dotted: str, value: Any, source: str, is_text: bool) -> None:
    section, _, name = dotted.partition(".")
    if secrets.is_secret_config_key(name) or secrets.is_secret_config_key(section):
        problems.append(_secret_key(dotted, source))
        return
    if section == STRATEGIES:
        _put_table_key(layer, problems, dotted, name, value, source, is_text)
        return
    if section not in SECTIONS:
        problems.append(
            f"{dotted}: unknown section {section!r} (from {source}); allowed sections: "
            f"{', '.join(SECTIONS)}, and [[strategies]] tables"
        )
        return
    fields = section_fields(section)
    if name not in fields and not (section == "strategy" and name in _all_strategy_params()):
        allowed = ", ".join(fields)
        if section == "strategy":
            allowed += "; and " + _each_kinds_parameters()
        problems.append(f"{dotted}: unknown key (from {source}); allowed keys in [{section}]: {allowed}")
        return
    layer[(section, name)] = (value, source, is_text)


def _put_table_key(
    layer: Layer, problems: list[str], dotted: str, name: str, value: Any, source: str, is_text: bool
) -> None:
    """`strategies.<id>.<key>` from the environment or --set: one key of the file's table with that
    id (which table has it, and whether the key is one it may have, is checked with the tables)."""
    table_id, dot, table_key = name.partition(".")
    if not dot or not table_id or not table_key or "." in table_key:
        problems.append(
            f"{dotted}: expected {TABLE_KEY_FORM} (from {source}); the [[strategies]] tables themselves "
            "are written in the --config file"
        )
        return
    if re.fullmatch(STRATEGY_ID_PATTERN, table_id) is None:
        problems.append(
            f"{dotted}: {table_id!r} is not a [[strategies]] id (from {source}); expected 1-32 of a-z, 0-9, _ and -"
        )
        return
    if secrets.is_secret_config_key(table_key):
        problems.append(_secret_key(dotted, source))
        return
    if table_key == "id":
        problems.append(
            f"{dotted}: a table's id is written in the --config file only (from {source}); expected "
            f"another key of the [[strategies]] table {table_id!r}"
        )
        return
    layer[(f"{STRATEGIES}.{table_id}", table_key)] = (value, source, is_text)


def dict_layer(data: Mapping[str, Any], source: str, problems: list[str]) -> Layer:
    """A layer from a parsed TOML document (a `--config` file) or what `to_dict` wrote (the config
    a run folder recorded): section -> key -> value, and `strategies`: a list of tables."""
    layer: Layer = {}
    for section, table in data.items():
        if section == STRATEGIES:
            if not isinstance(table, list) or not table:
                problems.append(
                    f"{STRATEGIES}: expected one or more [[strategies]] tables (from {source}), got {_show(table)}"
                )
                continue
            layer[(STRATEGIES, "")] = (table, source, False)
            continue
        if secrets.is_secret_config_key(str(section)):
            problems.append(_secret_key(str(section), source))
            continue
        if not isinstance(table, dict):
            if section in SECTIONS:
                problems.append(
                    f"{section}: expected a [{section}] table (from {source}), got {_show(table)}"
                )
                continue
            # found by an audit: `duration_min = 1` above every table said "expected a
            # [duration_min] table"
            homes = [name for name in SECTIONS if section in section_fields(name)]
            hint = f" (a key of [{homes[0]}]: write it under [{homes[0]}])" if homes else ""
            problems.append(
                f"{section}: a key outside any table (from {source}){hint}; allowed sections: "
                f"{', '.join(f'[{name}]' for name in SECTIONS)}, and [[{STRATEGIES}]] tables"
            )
            continue
        if not table and section not in SECTIONS:  # an empty table puts no key to be judged
            problems.append(
                f"{section}: unknown section {section!r} (from {source}); allowed sections: "
                f"{', '.join(SECTIONS)}, and [[strategies]] tables"
            )
        for name, value in table.items():
            _put(layer, problems, f"{section}.{name}", value, source, is_text=False)
    return layer


def file_layer(path: Path, problems: list[str]) -> Layer:
    """The `--config` file's layer: a regular file of at most 1 MiB (actors/files.py)."""
    try:
        data = tomllib.loads(read_small_file(path).decode("utf-8"))
    except FileNotFoundError:
        problems.append(f"--config: file not found: {path}")
        return {}
    except IsADirectoryError:
        problems.append(f"--config: {path} is a directory, not a TOML file")
        return {}
    except NotReadable as exc:
        problems.append(f"--config: {path} is {exc}; expected a TOML file")
        return {}
    except OSError as exc:
        problems.append(f"--config: cannot read {path}: {exc.strerror}")
        return {}
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"--config: {path} is not valid TOML: {exc}")
        return {}
    except UnicodeDecodeError as exc:
        problems.append(f"--config: {path} is not valid TOML: not UTF-8 text (byte {exc.start})")
        return {}
    except RecursionError:  # tomllib recurses per level (found by an audit: a traceback, exit 1)
        problems.append(
            f"--config: {path} is not valid TOML here: nested too deeply (arrays or tables inside one "
            "another by the thousand); a config is [section] tables of plain values"
        )
        return {}
    except ValueError:  # tomllib's int() of an integer too long to read (found by an audit: a traceback)
        problems.append(_long_integer_in(path))
        return {}
    return dict_layer(data, str(path), problems)


_TOML_TABLE = re.compile(r"\s*\[\[?\s*([A-Za-z0-9_.-]+)\s*\]\]?")
_TOML_INTEGER = re.compile(r"\s*([A-Za-z0-9_.-]+)\s*=\s*([+-]?[0-9][0-9_]*)\s*(?:#.*)?")


def _long_integer_in(path: Path) -> str:
    """The problem of a `--config` file with an integer of more digits than Python reads
    (tomllib refuses it with a plain ValueError): its key, line and what the key allows."""
    limit = sys.get_int_max_str_digits()
    table = ""
    for n, line in enumerate(read_small_file(path).decode("utf-8").splitlines(), 1):
        if (header := _TOML_TABLE.match(line)) is not None:
            table = header[1]
            continue
        found = _TOML_INTEGER.fullmatch(line)
        if found is None or (digits := len(found[2].lstrip("+-").replace("_", ""))) <= limit:
            continue
        dotted = f"{table}.{found[1]}" if table else found[1]
        section, _, name = dotted.rpartition(".")
        fields = section_fields(section) if section in SECTIONS else {}
        if section in ("strategy", STRATEGIES):
            fields = {**section_fields("strategy"), **_all_strategy_params()}
        field = fields.get(name)
        where = f"from {path}, line {n}"
        if field is not None and field.type in (int, float):
            stand_in = (-1 if found[2].startswith("-") else 1) * (
                _BEYOND_EVERY_KEY if field.type is int else math.inf
            )
            return _huge_problem(dotted, field, digits, stand_in, where)
        return f"{dotted}: an integer of {digits:,} digits is not allowed ({where}); no key takes one"
    return f"--config: {path} is not valid TOML: an integer of more than {limit:,} digits"


# The variables of the program's own name that are not config keys (actors/secrets.py)
OTHER_VARIABLES = (secrets.STATE_KEY, secrets.STATE_KEY + secrets.FILE_SUFFIX)


def env_layer(env: Mapping[str, str], problems: list[str]) -> Layer:
    layer: Layer = {}
    for var, value in sorted(env.items()):
        if not var.startswith(ENV_PREFIX):
            if var.upper().startswith(ENV_PREFIX[:-2]) and var not in OTHER_VARIABLES:
                # found by an audit: LAPTOP_AGENTS_RISK__MAX_POSITION_SIZE (one underscore) was
                # silently ignored, the risk limit left at its default
                problems.append(
                    f"{var}: not a variable this program reads; expected {ENV_PREFIX}SECTION__KEY "
                    f"(two underscores after LAPTOP_AGENTS and between the two, e.g. "
                    f"{ENV_PREFIX}RISK__MAX_POSITION_SIZE), or {' or '.join(OTHER_VARIABLES)}"
                )
            continue
        parts = var[len(ENV_PREFIX) :].split("__")
        table_key = len(parts) >= 3 and parts[0].lower() == STRATEGIES
        if table_key:
            # the id runs to the last `__`: an id may hold underscores (`x_`, `a__b`), a key never
            # starts with one or holds two (found by an audit: the table `x_` was read as id `x`,
            # key `_lookback`, and no variable could reach it)
            table_id, _, name = var[len(ENV_PREFIX) + len(parts[0]) + 2 :].rpartition("__")
            parts = [parts[0], table_id, name]
        if not (len(parts) == 2 or table_key) or not all(parts):
            problems.append(
                f"{var}: expected {ENV_PREFIX}SECTION__KEY, or {ENV_PREFIX}STRATEGIES__ID__KEY for a key of "
                "the [[strategies]] table with that id"
            )
            continue
        _put(layer, problems, ".".join(part.lower() for part in parts), value, var, is_text=True)
    return layer


def sets_layer(assignments: Iterable[str], problems: list[str]) -> Layer:
    layer: Layer = {}
    for item in assignments:
        dotted, eq, value = item.partition("=")
        dots = 2 if dotted.strip().startswith(STRATEGIES + ".") else 1
        if not eq or dotted.count(".") != dots:
            problems.append(
                f"--set {item}: expected SECTION.KEY=VALUE, e.g. --set risk.max_orders_per_minute=4, or "
                f"{TABLE_KEY_FORM}"
            )
            continue
        _put(layer, problems, dotted.strip(), value, "--set", is_text=True)
    return layer


def flags_layer(flags: Mapping[str, tuple[Any, str]]) -> Layer:
    """Named CLI flags: `{"session.duration_min": (value, "--duration")}`, values already parsed."""
    problems: list[str] = []
    layer: Layer = {}
    for dotted, (value, flag) in flags.items():
        _put(layer, problems, dotted, value, flag, is_text=isinstance(value, str))
    assert not problems, problems  # flag names are fixed in code
    return layer


# --- building the config ------------------------------------------------------------------------------

# a value that did not pass (values themselves are never None)
_BAD = None


def _check(
    problems: list[str], dotted: str, field: attrs.Attribute, raw: Any, source: str, is_text: bool
) -> Any:
    """`raw` typed and checked against its field's rule; _BAD (with the problem added) if it fails."""
    value, expected = _typed(raw, field.type, is_text)
    if expected is not None:
        huge = _huge_integer(raw, field.type, is_text)
        if huge is not None:
            problems.append(_huge_problem(dotted, field, *huge, f"from {source}"))
        else:
            expected = _range_of(field) or expected
            problems.append(f"{dotted}: {_show(raw)} is not allowed (from {source}); expected {expected}")
        return _BAD
    allowed = field.metadata["rule"].check(value)
    if allowed is not None:
        shown = _show(value)
        if is_text and isinstance(value, float) and math.isinf(value) and "inf" not in str(raw).lower():
            shown = f"{_show(raw)} (beyond every float)"  # found by an audit: 400 nines said "inf"
        problems.append(f"{dotted}: {shown} is not allowed (from {source}); expected {allowed}")
        return _BAD
    return value


def _range_of(field: attrs.Attribute) -> str | None:
    """What a number key allows, in its rule's words (`an integer from 0 to ...`), said beside a
    value that is not a number at all (found by an audit: `--seed abc` said only "expected an
    integer"); None for other keys, or a rule without bounds."""
    if field.type not in (int, float):
        return None
    allowed = field.metadata["rule"].check(_BEYOND_EVERY_KEY if field.type is int else math.inf)
    if allowed is not None and field.type is int and allowed.startswith("a number "):
        return "an integer " + allowed.removeprefix("a number ")  # a count: `_num`'s words say a number
    return allowed


def _kind_params(
    problems: list[str],
    prefix: str,
    kind_key: str,
    kind: str,
    others: Iterable[tuple[str, Any, str, bool]],
    why: str = "",
) -> dict[str, Any]:
    """A strategy kind's own parameters, from the keys of its table that are not common keys:
    each must be one of the kind's (`kind_key` = `kind` names it otherwise) and pass its rule
    (the same check as every key). Returns the values that passed."""
    own = strategy_param_fields(kind)
    params: dict[str, Any] = {}
    for name, raw, source, is_text in others:
        if name not in own:
            problems.append(
                f"{prefix}.{name}: not a parameter of {kind_key} = {kind!r} (from {source}); "
                f"its parameters: {', '.join(own) or 'none beyond the common keys'}{why}"
            )
            continue
        value = _check(problems, f"{prefix}.{name}", own[name], raw, source, is_text)
        if value is not _BAD:
            params[name] = value
    return params


def _params(kind: str, values: dict[str, Any]) -> Any:
    """The kind's params instance (None: the kind has no params class)."""
    params_cls = strategy_kinds().get(kind)
    return params_cls(**values) if params_cls is not None else None


# a [[strategies]] table's keys set by the environment or --set: a Layer keyed (id, key)
TableKeys = Layer


def _strategy_tables(
    tables: list[Any], source: str, problems: list[str], overrides: TableKeys
) -> tuple[StrategySpec, ...]:
    """The [[strategies]] tables, each checked like [strategy] (the common keys by StrategyConfig's
    rules, the kind's own by its params class's), with the keys the environment and --set give
    them by id (`overrides`; later layers win, as for every key); every problem names
    `strategies[<id>].<key>` (`strategies[<index>]` while the table has no valid id) and where the
    key came from."""
    table_fields = {f.name: f for f in attrs.fields(StrategyTableKeys)}
    common = {name: f for name, f in section_fields("strategy").items() if name != "name"}
    any_param = _all_strategy_params()
    specs: list[StrategySpec] = []
    first_index: dict[str, int] = {}  # id -> the first table that has it
    for index, table in enumerate(tables):
        if not isinstance(table, dict):
            problems.append(
                f"{STRATEGIES}[{index}]: expected a [[strategies]] table (from {source}), got {_show(table)}"
            )
            continue
        raw_id = table.get("id")
        valid_id = isinstance(raw_id, str) and re.fullmatch(STRATEGY_ID_PATTERN, raw_id) is not None
        prefix = f"{STRATEGIES}[{raw_id if valid_id else index}]"
        before = len(problems)
        # name -> (raw value, where it came from, is_text): the file's, then the later layers'
        entries = {str(name): (raw, source, False) for name, raw in table.items()}
        if valid_id and raw_id not in first_index:
            entries.update({name: v for (tid, name), v in overrides.items() if tid == raw_id})
        found: dict[str, Any] = {}
        for name in REQUIRED_TABLE_KEYS:
            if name not in entries:
                allowed = table_fields[name].metadata["rule"].check("")
                problems.append(f"{prefix}.{name}: missing (from {source}); expected {allowed}")
        for name in ("id", "kind", "symbol", "interval"):
            if name in entries:
                raw, src, is_text = entries[name]
                value = _check(problems, f"{prefix}.{name}", table_fields[name], raw, src, is_text)
                if value is not _BAD:
                    found[name] = value
        if "id" in found:
            if found["id"] in first_index:
                problems.append(
                    f"{prefix}.id: {found['id']!r} is not allowed (from {source}); expected a unique id: "
                    f"the [[strategies]] tables at index {first_index[found['id']]} and {index} both have it"
                )
            else:
                first_index[found["id"]] = index
        values: dict[str, Any] = {}
        others: list[tuple[str, Any, str, bool]] = []
        for name, (raw, src, is_text) in entries.items():
            if name in table_fields:
                continue
            if name in common:
                value = _check(problems, f"{prefix}.{name}", common[name], raw, src, is_text)
                if value is not _BAD:
                    values[name] = value
            elif name in any_param:
                others.append((name, raw, src, is_text))
            elif secrets.is_secret_config_key(name):
                problems.append(_secret_key(f"{prefix}.{name}", src))
            else:
                hint = " (a [[strategies]] table names its kind with `kind`)" if name == "name" else ""
                problems.append(
                    f"{prefix}.{name}: unknown key (from {src}){hint}; allowed keys in [[strategies]]: "
                    f"{', '.join(table_fields)}, {', '.join(common)}; and {_each_kinds_parameters()}"
                )
        kind = found.get("kind")
        if kind is None:
            continue  # its parameters cannot be checked without it (the kind's problem is listed)
        problems += [
            _unread_key(prefix, name, f"{prefix}.kind", kind, src)
            for name, (_raw, src, _is_text) in entries.items()
            if name in common and name not in strategy_common_keys(kind)
        ]
        params = _kind_params(problems, prefix, f"{prefix}.kind", kind, others)
        if len(problems) > before:
            continue
        specs.append(
            StrategySpec(
                found["id"],
                StrategyConfig(name=kind, **values),
                _params(kind, params),
                symbol=found.get("symbol"),
                interval=found.get("interval"),
            )
        )
    ids = [table["id"] for table in tables if isinstance(table, dict) and isinstance(table.get("id"), str)]
    problems += [
        f"{STRATEGIES}.{tid}.{name}: no [[strategies]] table has the id {tid!r} (from {src}); expected "
        f"the id of one of {source}'s tables: {', '.join(map(repr, ids))}"
        for (tid, name), (_raw, src, _is_text) in overrides.items()
        if tid not in ids
    ]
    return tuple(specs)


def build(layers: Iterable[Layer], problems: list[str] | None = None) -> Config:
    """Merge layers (later wins), type and check every key; raise ConfigError listing all problems."""
    problems = list(problems or [])
    merged: Layer = {}
    for layer in layers:
        merged.update(layer)
    tables = merged.pop((STRATEGIES, ""), None)
    tables_source = tables[1] if tables is not None else None
    # keys of [[strategies]] tables set by the environment or --set, by table id
    overrides: TableKeys = {
        (section.partition(".")[2], name): merged.pop((section, name))
        for section, name in list(merged)
        if section.startswith(STRATEGIES + ".")
    }
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}

    single = sorted(name for section, name in merged if section == "strategy")
    replaced = ""  # what a kind's parameter error adds when [strategy] replaced the file's tables
    if tables is not None and single and all(merged[("strategy", name)][1] != tables[1] for name in single):
        # [strategy] keys from a later layer (the environment, --set) than the file's
        # [[strategies]]: the later layer wins, one strategy (`--set strategy.name=...` on
        # config/live.toml backtests one setup)
        replaced = (
            f" ([strategy] keys from the environment or --set replace {tables[1]}'s [[strategies]] "
            "with one [strategy] table, of strategy.name's kind: set strategy.name too, or change "
            "the [[strategies]] tables in the file)"
        )
        tables = None
    if tables is not None and single:
        sources = sorted({merged[("strategy", name)][1] for name in single})
        problems.append(
            f"strategy.{single[0]}: [strategy] (from {', '.join(sources)}: "
            f"{', '.join(f'strategy.{name}' for name in single)}) and [[strategies]] (from {tables[1]}) "
            "cannot both be given in one file; expected one or the other: [strategy] for one strategy, "
            "[[strategies]] tables for several (the environment and --set give [strategy] keys, which "
            "replace a file's [[strategies]], or strategies.ID.KEY, one key of a table)"
        )
        merged = {k: v for k, v in merged.items() if k[0] != "strategy"}

    # the common keys first: strategy.name says which kind's parameters the others must be
    others = []
    for (section, name), (raw, source, is_text) in sorted(merged.items()):
        field = section_fields(section).get(name)
        if field is None:
            others.append((name, raw, source, is_text))
            continue
        value = _check(problems, f"{section}.{name}", field, raw, source, is_text)
        if value is not _BAD:
            sections[section][name] = value
    kind = sections["strategy"].get("name", StrategyConfig().name)
    if ("strategy", "name") in merged and "name" not in sections["strategy"]:
        # a strategy.name refused (its error said so): its kind's keys cannot be judged (found by an
        # audit: they were judged against the default kind, errors naming a kind nobody chose)
        params: dict[str, Any] = {}
    else:
        problems += _unread_strategy_keys(merged, sections["strategy"], kind, replaced)
        params = _kind_params(problems, "strategy", "strategy.name", kind, others, replaced)
    specs: tuple[StrategySpec, ...] = ()
    if tables is not None:
        specs = _strategy_tables(tables[0], tables[1], problems, overrides)
    else:
        why = (
            "[strategy] keys from the environment or --set replaced the file's [[strategies]] tables"
            if replaced
            else "the config has no [[strategies]] tables"
        )
        problems += [
            f"{STRATEGIES}.{tid}.{name}: no [[strategies]] table to set it in (from {src}): {why}; expected "
            "a --config file with [[strategies]] tables, or strategy.KEY for the one [strategy] table"
            for (tid, name), (_raw, src, _is_text) in overrides.items()
        ]
    if problems:
        raise ConfigError(problems)
    config = Config(
        **{name: SECTIONS[name](**values) for name, values in sections.items()},
        strategy_params=_params(kind, params),
        strategies=specs,
    )
    cross = cross_checks(config)
    if cross:
        raise ConfigError([_with_source(problem, merged, tables_source, overrides) for problem in cross])
    return config


def _unread_strategy_keys(merged: Layer, values: dict[str, Any], kind: str, why: str) -> list[str]:
    """The [strategy] common keys set (in the file, the environment or by --set) that the kind does
    not read. A file's key that holds its built-in default is let through: config/default.toml lists
    every key, and a base for any kind (`--set strategy.name=trend_pullback` on it, a sweep's trials)
    must not be refused for ema_cross's defaults."""
    defaults = attrs.asdict(StrategyConfig())
    problems = []
    for (section, name), (_raw, source, is_text) in sorted(merged.items()):
        if section != "strategy" or name not in defaults or name == "name" or name not in values:
            continue
        if name in strategy_common_keys(kind) or (not is_text and values[name] == defaults[name]):
            continue
        problems.append(_unread_key("strategy", name, "strategy.name", kind, source) + why)
    return problems


_CROSS_PROBLEM = re.compile(
    r"^(?P<key>(?P<section>[a-z_]+)(?P<table>\[[^\]]*\])?\.(?P<name>[a-z_]+)): (?P<rest>.*?) is not allowed; "
)


def _with_source(problem: str, merged: Layer, tables_source: str | None, overrides: TableKeys) -> str:
    """A check across keys names where its key came from, as every other problem does
    (`strategy.fast_period: 30 is not allowed (from --set); expected ...`)."""
    m = _CROSS_PROBLEM.match(problem)
    if m is None:
        return problem
    if m["table"]:
        found_table = overrides.get((m["table"][1:-1], m["name"]))
        source = found_table[1] if found_table is not None else tables_source
    else:
        found = merged.get((m["section"], m["name"]))
        source = found[1] if found is not None else None
    if source is None:  # a default: nothing set it
        return problem
    head = f"{m['key']}: {m['rest']} is not allowed"
    return f"{head} (from {source}); {problem[m.end() :]}"


def _strategy_prefix(config: Config, spec: StrategySpec) -> str:
    """How a strategy's keys are named: `strategy` or `strategies[<id>]`."""
    return f"{STRATEGIES}[{spec.id}]" if config.strategies else "strategy"


def cross_checks(config: Config) -> list[str]:
    """Rules that involve more than one key."""
    problems: list[str] = []
    for spec in config.strategy_specs:
        prefix = _strategy_prefix(config, spec)
        problems += _one_market(config, spec, prefix)
        problems += _strategy_checks(config, spec, prefix)
    problems += _symbol_count(config)
    problems += _mock_prices(config)
    return problems


def _mock_prices(config: Config) -> list[str]:
    """The mock's start price on the first symbol's price grid, and a spread well under each
    symbol's start price (found by an audit: a start price of 0.04 and a spread of 1000 ticks
    on 10 USDT crashed the session with a traceback). Checked whatever feed.source is: the key
    is the mock's, and a live session may fall back to it."""
    from actors.feeds.levels import mock_level  # no trio (a backtest loads none)
    from protocols.instruments import price_decimals

    feed, problems = config.feed, []
    for k, symbol in enumerate(config.symbols):
        tick = 10.0 ** -price_decimals(symbol)
        level = feed.mock_start_price if k == 0 else mock_level(symbol)
        if k == 0 and level < MIN_MOCK_PRICE_TICKS * tick:
            problems.append(
                f"feed.mock_start_price: {level:g} is not allowed; expected at least "
                f"{MIN_MOCK_PRICE_TICKS * tick:g} USDT ({MIN_MOCK_PRICE_TICKS} ticks of {symbol}'s "
                f"price grid, {tick:g})"
            )
            continue
        if feed.mock_spread_ticks * tick > level / MAX_SPREAD_SHARE:
            most = max(0, math.floor(level / MAX_SPREAD_SHARE / tick))
            problems.append(
                f"feed.mock_spread_ticks: {feed.mock_spread_ticks} is not allowed; expected at most "
                f"{most} ({100 / MAX_SPREAD_SHARE:g} % of {symbol}'s mock start price, {level:g} USDT, "
                f"in ticks of {tick:g})"
            )
            break
    return problems


def _one_market(config: Config, spec: StrategySpec, prefix: str) -> list[str]:
    """A strategy's interval: the session's, or a whole number of them (its candles are built
    from the session's: actors/feeds/intervals.py)."""
    problems: list[str] = []
    session = config.session
    if spec.interval is None:
        return problems
    wanted, base = interval_seconds(spec.interval), config.interval_s
    if wanted < base or wanted % base:
        problems.append(
            f"{prefix}.interval: {spec.interval!r} is not allowed; expected session.interval "
            f"({session.interval!r}) or a whole multiple of it (e.g. 5m, 15m, 1h on 1m): a strategy's "
            "candles are built from the session's"
        )
    return problems


def _symbol_count(config: Config) -> list[str]:
    symbols = config.symbols
    if len(symbols) <= MAX_SYMBOLS:
        return []
    return [
        f"strategies.symbol: {len(symbols)} symbols is not allowed; expected at most {MAX_SYMBOLS} "
        f"(each takes {CHANNELS_PER_SYMBOL} subscriptions of one WebSocket connection, at most "
        f"{MAX_SUBSCRIPTIONS}): {', '.join(symbols)}"
    ]


def _strategy_checks(config: Config, spec: StrategySpec, prefix: str) -> list[str]:
    """ema_cross's rules between keys here; another kind's in its constructor (its message names
    `strategy.<key>`: renamed for a [[strategies]] table)."""
    problems: list[str] = []
    s = spec.config
    if s.name != "ema_cross":
        from actors.strategies.base import build_strategy

        try:
            built = build_strategy(s, spec.id, config.strategy_symbol(spec), spec.params)
        except ValueError as exc:
            problems.append(
                re.sub(r"\bstrategy\.", f"{prefix}.", str(exc)) if prefix != "strategy" else str(exc)
            )
            return problems
        if built.warmup > s.history:  # the history seeded would leave it cold at the start
            problems.append(
                f"{prefix}.history: {s.history} is not allowed; expected at least the strategy's "
                f"warm-up ({built.warmup} candles with these parameters)"
            )
        return problems
    if s.fast_period >= s.slow_period:
        problems.append(
            f"{prefix}.fast_period: {s.fast_period} is not allowed; expected less than "
            f"{prefix}.slow_period ({s.slow_period})"
        )
    if config.risk.sizing == "risk" and s.stop_loss_pct == 0:
        problems.append(
            f"{prefix}.stop_loss_pct: 0 is not allowed with risk.sizing = 'risk'; expected a stop distance > 0 "
            "(or risk.sizing = 'fixed')"
        )
    if s.slow_period > s.history:
        problems.append(
            f"{prefix}.history: {s.history} is not allowed; "
            f"expected at least {prefix}.slow_period ({s.slow_period})"
        )
    return problems


def strategy_warmups(config: Config) -> list[tuple[StrategySpec, int]]:
    """Each strategy and the candles of its interval it warms up on before it can decide (the
    count its `history` must hold: ema_cross's slow_period, the others' `warmup`)."""
    from actors.strategies.base import build_strategy

    out = []
    for spec in config.strategy_specs:
        s = spec.config
        if s.name == "ema_cross":
            needed = s.slow_period
        else:
            needed = build_strategy(s, spec.id, config.strategy_symbol(spec), spec.params).warmup
        out.append((spec, needed))
    return out


def seed_problems(config: Config) -> list[str]:
    """A live session's (the exchange's feed or the mock's) strategies must be warm at its start:
    the warm-up their `history` holds (the same count the history rule takes) must fit in the
    history seeded, at most MAX_SEED_CANDLES session candles (found by an audit: a [[strategies]]
    table on 1h candles with a warm-up of 250 passed every check, but 12,000 one-minute candles
    are 200 hours: the strategy sat cold, silently, through its first 50 live hours). Backtests
    warm up on their data and are not held to it."""
    problems = []
    for spec, needed in strategy_warmups(config):
        ratio = config.strategy_interval_s(spec) // config.interval_s
        most = MAX_SEED_CANDLES // ratio
        if needed <= most:
            continue
        interval = spec.interval or config.session.interval
        problems.append(
            f"{_strategy_prefix(config, spec)}.interval: {interval!r} is not allowed in a live session "
            f"with a warm-up of {needed} candles; expected an interval on which the history seeded at "
            f"start holds it: at most {MAX_SEED_CANDLES:,} {config.session.interval} candles are seeded, "
            f"{most} of {interval} (a shorter interval, a longer session.interval, or parameters with a "
            "shorter warm-up; a backtest warms up on its data)"
        )
    return problems


def load(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    sets: Iterable[str] = (),
    flags: Mapping[str, tuple[Any, str]] | None = None,
) -> Config:
    """The effective config from every layer. Raises ConfigError."""
    problems: list[str] = []
    layers = []
    if path is not None and not str(path).strip():  # Path("") is ".", the current folder
        problems.append("--config: an empty path; expected a TOML file")
    elif path is not None:
        layers.append(file_layer(Path(path), problems))
    layers.append(env_layer(env or {}, problems))
    layers.append(sets_layer(sets, problems))
    layers.append(flags_layer(flags or {}))
    return build(layers, problems)


# --- output ----------------------------------------------------------------------------------------


def strategy_table(spec: StrategySpec) -> dict[str, Any]:
    """A [[strategies]] table: id, kind, symbol and interval (when written), the common keys, the
    kind's own parameters."""
    table: dict[str, Any] = {"id": spec.id, "kind": spec.kind}
    if spec.symbol is not None:
        table["symbol"] = spec.symbol
    if spec.interval is not None:
        table["interval"] = spec.interval
    read = strategy_common_keys(spec.kind)
    table.update((k, v) for k, v in attrs.asdict(spec.config).items() if k in read)
    if spec.params is not None:
        table.update(attrs.asdict(spec.params))
    return table


def to_dict(config: Config) -> dict[str, Any]:
    """Section -> key -> value; the strategy kind's parameters are keys of [strategy]. With
    [[strategies]]: `strategies`, a list of tables, in [strategy]'s place (which is left out)."""
    values: dict[str, Any] = {}
    for section in SECTIONS:
        if section == "strategy" and config.strategies:
            values[STRATEGIES] = [strategy_table(spec) for spec in config.strategies]
            continue
        values[section] = attrs.asdict(getattr(config, section))
    if not config.strategies:  # the common keys its kind reads (`strategy_common_keys`)
        read = {"name", *strategy_common_keys(config.strategy.name)}
        values["strategy"] = {k: v for k, v in values["strategy"].items() if k in read}
    if not config.strategies and config.strategy_params is not None:
        values["strategy"].update(attrs.asdict(config.strategy_params))
    return values


def to_toml(config: Config) -> str:
    """`to_dict` as TOML, the [[strategies]] as tables (tomli_w would write them inline)."""
    blocks = []
    for section, value in to_dict(config).items():
        if section == STRATEGIES:
            blocks += [f"[[{STRATEGIES}]]\n{tomli_w.dumps(table)}" for table in value]
        else:
            blocks.append(f"[{section}]\n{tomli_w.dumps(value)}")
    return "\n".join(blocks)


def _documented(name: str, value: Any, doc: str) -> list[str]:
    return [f"# {doc}", f"{name} = {tomli_w.dumps({'v': value}).strip()[len('v = ') :]}"]


def documented_toml(config: Config | None = None) -> str:
    """The config as TOML with each key's documentation as a comment (config/default.toml's shape)."""
    config = config or Config()
    values = to_dict(config)
    lines = [
        "# btc-laptop-agents: every configuration key with its built-in default.",
        "# Precedence: these defaults < --config FILE < LAPTOP_AGENTS__SECTION__KEY < CLI flags.",
    ]
    table_fields = {f.name: f for f in attrs.fields(StrategyTableKeys)}
    for section in SECTIONS:
        if section == "strategy" and config.strategies:
            for table in values[STRATEGIES]:
                lines += ["", f"[[{STRATEGIES}]]"]
                fields = {
                    **table_fields,
                    **section_fields("strategy"),
                    **strategy_param_fields(table["kind"]),
                }
                for name, value in table.items():
                    lines += _documented(name, value, fields[name].metadata["rule"].doc)
            continue
        lines += ["", f"[{section}]"]
        for name, field in section_fields(section).items():
            if name in values[section]:  # [strategy]: the common keys its kind reads
                lines += _documented(name, values[section][name], field.metadata["rule"].doc)
    return "\n".join(lines) + "\n"
