"""Bitunix futures public market data: the wire format, validated. Pure and synchronous, no I/O.

See docs/bitunix-protocol.md (shared docs) for the frames this speaks. Two halves:

- WebSocket: `FrameValidator.parse` turns every received frame into a typed message or a
  `Rejected` naming one of `REJECT_REASONS`; it never raises. Frame builders for subscribe and ping.
- REST: `rest_data` unwraps the `{"code":0,"data":..}` envelope or raises `RestError` (with a
  retryable flag); `parse_rest_klines` / `parse_rest_depth` turn `data` into `Candle`s / a `Book`;
  `trading_pair_row` picks one symbol's row out of a `trading_pairs` reply (parsed into an
  `Instrument` by `protocols.instruments.from_trading_pair`).

Decisions that the exchange does not settle:

- Control frames: any object with an `op` member is a `Control`, even with a `ch` (the uncertain
  subscribe ack `{"op":"subscribe","ch":..,"data":{"result":true}}`). Unknown ops are `Control`
  too: they are harmless and the client may log them. `Control.data` is the frame's `data` member
  when it has one (connect, unsubscribe, subscribe error), else the rest of the frame without `op`
  (the ping reply: `{"pong":<client s>,"ping":<server s>}`).
- A kline push whose high is below its low, or whose open or close is outside [low, high], is
  rejected as `crossed_book` (a range that does not hold its own prices; found by an audit: a push
  with its high at 10x the price made a resting sell fill there); such rows are skipped in REST
  history. A push that widens its candle's range (a new high or low since the last push of the same
  candle, or the first push of the next candle) is jump-checked at the new extreme as any price is
  (below), without moving the last good price; the first push after a (re)connect is not (its
  candle may have moved meanwhile).
- A book side that is not strictly ordered (bids descending, asks ascending) is `crossed_book`.
  Every level must have a price and size > 0 (`non_positive`), not only the best one.
- Every price and size (a kline's volume too) must be below `MAX_MARKET_VALUE` (1e15, the candle
  files' bound): a larger one, finite, is `too_large` (found by an audit: a price of 1e308 in a
  symbol's first frame, or a book's size of 1e308, was taken; the price overflows the broker's
  grid as a candle file's did). REST kline rows and books are held to it as well.
- Price-jump check: kline close, book mid (depth_book* and tickers), trade price, ticker last and
  the `price` channel's mark share one "last good price" per symbol (the mark sits within a small
  basis of the last price; found by an audit: a mark halved within 300 ms was taken and liquidated
  a position). Within 1 s of the last good price a move of more than `max_jump_pct` percent is
  `price_jump`. After a longer time dt (s) the bound grows with it instead of vanishing (found by
  an audit: after 1.5 s of silence a 10x price was taken as the mark): a move is judged in log
  terms, the same up and down, and allowed up to ln(1 + max_jump_pct/100) * sqrt(dt), never less
  than `max_jump_pct` itself. dt is the time since the last good price by the tighter of the two
  clocks: the frames' ts, and their arrivals here when both are known (a ts far ahead on a frame
  that came at once does not widen it). A rejected price leaves the last good price (and its time)
  as it was, so the bound keeps growing and a real level is followed in the end: with the default
  5 %, a 20 % fall once about 21 s have passed since the last good price, a 20 % rise after about
  14 s, a 10x only after 37 min. `max_jump_pct <= 0` disables the check.
- Several symbols (one socket): every data message carries its `symbol`; timestamps, last good
  prices and the jump check are kept per symbol. A `tickers` frame (no top-level symbol) gives
  the row of the first subscribed symbol it holds.
- `reset_sequence()` (after a reconnect) forgets the per-channel last timestamps, so a new
  connection (possibly another server node with a slightly different clock) starts fresh, and
  keeps the last good price (and when it came): the first prices after the reconnect are judged
  against it, with the bound grown by the time the socket was down.
- An empty frame is `not_json`; a non-empty prefix of a valid frame is `truncated`.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, NoReturn

import attrs

from protocols.messages import MAX_MARKET_VALUE, Book, Candle

REJECT_REASONS: tuple[str, ...] = (
    "not_json",
    "truncated",
    "not_object",
    "missing_field",
    "wrong_type",
    "not_finite",
    "non_positive",
    "too_large",
    "crossed_book",
    "ts_backwards",
    "ts_future",
    "price_jump",
    "bad_funding",
    "unknown_channel",
    "wrong_symbol",
    "unknown_symbol",
)

# A data frame whose ts runs ahead of the last accepted one of its symbol by more than the time
# that passed here between the two, plus this, is `ts_future` (found by an audit: one frame an hour
# ahead became its channel's last ts, every genuine frame after it `ts_backwards`, the channel frozen
# while its symbol's other channels kept it fresh; and its price escaped the jump check)
FUTURE_TOLERANCE_S = 10.0
# a `price` frame's funding rate (percent per interval) beyond this is `bad_funding`: 10 %, the
# bound a funding file's rates are held to (actors/feeds/funding.py MAX_ABS_RATE, as a fraction)
MAX_FUNDING_PCT = 10.0

KLINE_PATH = "/api/v1/futures/market/kline"


def http_date_s(value: str | None) -> float | None:
    """A REST answer's `Date` header (RFC 7231, whole seconds) as epoch seconds; None without a
    readable one."""
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


RETRY_AFTER_MAX_S = 30.0  # the longest `Retry-After` waited out whole (a longer one: this long)


def retry_after_s(value: str | None, date_s: float | None, now_s: float) -> float | None:
    """A reply's `Retry-After` (RFC 9110: whole seconds, or an HTTP date, taken against the
    reply's own `Date` when it has one, else `now_s`) as seconds to wait, from 0 to
    `RETRY_AFTER_MAX_S`; None without a readable one. The protocol doc never saw the exchange
    send one (*uncertain*): a server asking for a day is asked again after half a minute."""
    text = (value or "").strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():
        return RETRY_AFTER_MAX_S if len(text) > 6 else min(float(text), RETRY_AFTER_MAX_S)
    at = http_date_s(text)
    if at is None:
        return None
    return min(max(at - (date_s if date_s is not None else now_s), 0.0), RETRY_AFTER_MAX_S)


DEPTH_PATH = "/api/v1/futures/market/depth"
TRADING_PAIRS_PATH = "/api/v1/futures/market/trading_pairs"
UNKNOWN_SYMBOL_CODE = 20015  # "this Futures is not allowed to trade."
BOOK_CHANNEL = "depth_book15"  # the live feed's book: 15 levels a side, the full window each push
BOOK_LEVELS = 15

# --- intervals and outgoing frames -------------------------------------------------------------------

_KLINE_CHANNELS = {
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
# The REST kline endpoint has no 3m.
_REST_INTERVALS = frozenset(("1m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d"))
_DEPTH_LIMITS = ("1", "5", "15", "50", "max")
MAX_KLINE_LIMIT = 200
MAX_SUBSCRIPTIONS = 300


def _kline_ms(channel: str) -> int:
    """A kline channel's candle length in ms (`market_kline_60min` -> 3,600,000); 0 if unknown."""
    suffix = channel.rsplit("_", 1)[-1]
    for unit, ms in (("min", 60_000), ("h", 3_600_000), ("day", 86_400_000), ("week", 604_800_000)):
        if suffix.endswith(unit) and suffix[: -len(unit)].isdigit():
            return int(suffix[: -len(unit)]) * ms
    return 0


def kline_channel(interval: str) -> str:
    """`"1m"` -> `"market_kline_1min"`, `"1h"` -> `"market_kline_60min"`, ... ValueError otherwise."""
    try:
        return _KLINE_CHANNELS[interval]
    except (KeyError, TypeError):
        raise ValueError(f"no Bitunix kline channel for interval {interval!r}") from None


def rest_interval(interval: str) -> str:
    """The REST kline `interval` value for a session interval. ValueError for 3m (REST lacks it)."""
    if isinstance(interval, str) and interval in _REST_INTERVALS:
        return interval
    raise ValueError(f"Bitunix REST klines do not serve interval {interval!r}")


def _frame(op: str, pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        raise ValueError(f"{op}: no channels")
    if len(pairs) > MAX_SUBSCRIPTIONS:
        raise ValueError(f"{op}: {len(pairs)} channels, at most {MAX_SUBSCRIPTIONS} per socket")
    args = [{"symbol": sym.upper(), "ch": ch} for sym, ch in pairs]
    return json.dumps({"op": op, "args": args}, separators=(",", ":"))


def _one_symbol(symbol: str, channels: Sequence[str]) -> list[tuple[str, str]]:
    if isinstance(channels, str):
        raise ValueError("channels must be a sequence of channel names, not one string")
    return [(symbol, ch) for ch in channels]


def subscribe_frame(symbol: str, channels: Sequence[str]) -> str:
    """`{"op":"subscribe","args":[{"symbol":"BTCUSDT","ch":"depth_book1"},..]}`, compact."""
    return _frame("subscribe", _one_symbol(symbol, channels))


def unsubscribe_frame(symbol: str, channels: Sequence[str]) -> str:
    """Same shape as `subscribe_frame` with `"op":"unsubscribe"`."""
    return _frame("unsubscribe", _one_symbol(symbol, channels))


def subscribe_pairs_frame(pairs: Sequence[tuple[str, str]]) -> str:
    """One subscribe frame for several symbols: an arg per (symbol, channel) pair, in order
    (at most MAX_SUBSCRIPTIONS: the most one socket takes)."""
    return _frame("subscribe", pairs)


def unsubscribe_pairs_frame(pairs: Sequence[tuple[str, str]]) -> str:
    """Same shape as `subscribe_pairs_frame` with `"op":"unsubscribe"`."""
    return _frame("unsubscribe", pairs)


def ping_frame(now_s: float) -> str:
    """`{"op":"ping","ping":<int unix seconds>}`."""
    return json.dumps({"op": "ping", "ping": int(now_s)}, separators=(",", ":"))


# --- parsed WebSocket messages -----------------------------------------------------------------------


@attrs.frozen
class KlinePush:
    """The current (unclosed) candle of our kline channel; its bucket is floor(ts / interval)."""

    ts_ms: int
    open: float
    high: float
    low: float
    close: float
    base_volume: float
    symbol: str = ""  # uppercase, as the validator accepted it


@attrs.frozen
class BookTop:
    """Best bid/ask from depth_book1/5/15 (with the levels, best first) or `tickers` (no levels)."""

    ts_ms: int
    bid: float
    bid_qty: float
    ask: float
    ask_qty: float
    bids: tuple[tuple[float, float], ...] = ()
    asks: tuple[tuple[float, float], ...] = ()
    symbol: str = ""  # uppercase, as the validator accepted it


@attrs.frozen
class PricePush:
    """`price` channel: mark and index price, last settled funding rate in percent."""

    ts_ms: int
    mark: float
    index: float
    funding_rate_pct: float
    symbol: str = ""  # uppercase, as the validator accepted it
    # `ft`: the funding instant `funding_rate_pct` was settled at, ms (None: absent or unreadable;
    # the frame's prices still count)
    settled_ms: int | None = None
    # `nft`: the symbol's next funding instant, ms (None: absent or unreadable). `nft - ft` is the
    # symbol's funding interval (8 h for most, 4 h or 1 h for some contracts), the period `fr` is for
    next_ms: int | None = None


@attrs.frozen
class TradePush:
    """`trade` channel: the last trade of the push. `ts_ms` is the frame's ts."""

    ts_ms: int
    price: float
    qty: float
    side: str  # "buy" | "sell"
    symbol: str = ""  # uppercase, as the validator accepted it


@attrs.frozen
class TickerPush:
    """`ticker` channel: the last traded price (the channel carries no bid/ask)."""

    ts_ms: int
    last: float
    symbol: str = ""  # uppercase, as the validator accepted it


@attrs.frozen
class Control:
    """connect, ping reply, unsubscribe reply, subscribe error or (uncertain) ack, unknown ops."""

    op: str
    data: Any


@attrs.frozen
class Rejected:
    """A frame that failed validation; `reason` is one of REJECT_REASONS, `detail` is for logs."""

    reason: str
    detail: str
    symbol: str = ""  # `unknown_symbol`: the symbol the exchange answered so


DataMessage = KlinePush | BookTop | PricePush | TradePush | TickerPush
Parsed = DataMessage | Control | Rejected


_EMPTY_LEVELS: Final = [["", ""]]


class _Reject(Exception):
    """Raised inside the parsers (never on the happy path), turned into `Rejected`."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail


def _reject(reason: str, detail: str) -> NoReturn:
    raise _Reject(reason, detail[:119])


def _show(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def _num(v: Any, name: str) -> float:
    """A finite float from a JSON string (the wire format) or a JSON number. Raises _Reject."""
    t = type(v)
    if t is str:
        try:
            x = float(v)
        except ValueError:
            _reject("wrong_type", f"{name} is not a number: {_show(v)}")
    elif t is float:
        x = v
    elif t is int:
        try:
            x = float(v)
        except OverflowError:
            _reject("not_finite", f"{name} overflows a float")
    elif v is None:
        _reject("missing_field", f"{name} is null")
    else:
        _reject("wrong_type", f"{name} is not a number: {_show(v)}")
    if x - x != 0.0:  # NaN or +-inf
        _reject("not_finite", f"{name} is not finite: {_show(v)}")
    return x


def _pos(v: Any, name: str) -> float:
    """A price or size: finite, above 0 and below MAX_MARKET_VALUE. Raises _Reject."""
    x = _num(v, name)
    if x <= 0.0:
        _reject("non_positive", f"{name} <= 0: {_show(v)}")
    if x >= MAX_MARKET_VALUE:
        _reject("too_large", f"{name} >= {MAX_MARKET_VALUE:g}: {_show(v)}")
    return x


def _field(d: dict[str, Any], key: str, what: str) -> Any:
    v = d.get(key)
    if v is None:
        _reject("missing_field", f"{what} has no {key}")
    return v


def _iso_ms(v: Any) -> int | None:
    """An ISO-8601 UTC time (`2026-09-23T08:00:00Z`, fractions allowed) as epoch ms; None when
    absent or unreadable."""
    if type(v) is not str:
        return None
    try:
        when = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return round(when.timestamp() * 1000)


def _level(lvl: Any, name: str) -> tuple[float, float]:
    if type(lvl) is not list or len(lvl) < 2:
        _reject("wrong_type", f"{name} level is not [price, size]: {_show(lvl)}")
    return _pos(lvl[0], name + " price"), _pos(lvl[1], name + " size")


def _levels(side: Any, name: str) -> list[tuple[float, float]]:
    """[[price, size], ..] -> [(price, size), ..], every value finite and > 0. Raises _Reject."""
    if type(side) is not list:
        _reject("wrong_type" if side is not None else "missing_field", f"{name} is not a list of levels")
    if not side:
        _reject("missing_field", f"{name} is empty")
    out = []
    for lvl in side:
        # Fast path for the wire format ["price", "size"]; anything odd goes through _level.
        if type(lvl) is list and len(lvl) == 2:
            p, q = lvl
            if type(p) is str and type(q) is str:
                try:
                    fp = float(p)
                    fq = float(q)
                except ValueError:
                    pass
                else:
                    if 0.0 < fp < MAX_MARKET_VALUE and 0.0 < fq < MAX_MARKET_VALUE:
                        out.append((fp, fq))
                        continue
        out.append(_level(lvl, name))
    return out


# JSON error tails that mean "the input stopped early" (see _decode_error).
_TRUNC_LITERALS = ("true", "false", "null", "NaN", "Infinity", "-Infinity")
_TRUNC_NUMBER = re.compile(r"[.eE][-+]?\s*\Z")
_TRUNC_ESCAPE = re.compile(r"u[0-9a-fA-F]{0,4}\s*\Z")


def _decode_error(e: json.JSONDecodeError) -> Rejected:
    """`truncated` when the JSON error is explained by the input ending early, else `not_json`."""
    doc, pos, msg = e.doc, e.pos, e.msg
    tail = doc[pos:]
    cut = not tail.strip()
    if not cut:
        if msg.startswith("Unterminated string"):
            cut = True
        elif msg == "Expecting value":
            t = tail.rstrip()
            cut = any(lit.startswith(t) and lit != t for lit in _TRUNC_LITERALS)
        elif msg == "Expecting ',' delimiter":
            cut = _TRUNC_NUMBER.match(tail) is not None
        elif msg.startswith("Invalid \\uXXXX"):
            cut = _TRUNC_ESCAPE.match(tail) is not None
    if cut and doc.strip():
        return Rejected("truncated", f"json cut off at {len(doc)} chars: {msg}"[:119])
    return Rejected("not_json", f"{msg} at {pos}"[:119])


# --- the validator -------------------------------------------------------------------------------------


def _upper_tuple(symbols: Iterable[str]) -> tuple[str, ...]:
    return tuple(s.upper() for s in symbols)


@attrs.define
class FrameValidator:
    """Parses and validates public WebSocket frames for the subscribed symbols (`symbol`, or all
    of `symbols` when given); keeps per-symbol, per-channel state. Every data message carries the
    symbol it is for; a frame for any other symbol is `wrong_symbol`.

    Only accepted frames update the state (per (symbol, channel) last ts, each symbol's last good
    price and its ts: a price jump is judged within one symbol's stream)."""

    symbol: str
    kline_channel: str
    max_jump_pct: float
    symbols: tuple[str, ...] = attrs.field(default=(), converter=_upper_tuple)
    _syms: frozenset[str] = attrs.field(init=False, repr=False)
    _handlers: dict[str, Any] = attrs.field(init=False, repr=False)
    _last_ts: dict[tuple[str, str], int] = attrs.field(init=False, repr=False, factory=dict)
    # each symbol's last good price: (price, its frame's ts, when that frame arrived here or None)
    _last_price: dict[str, tuple[float, int, float | None]] = attrs.field(
        init=False, repr=False, factory=dict
    )
    _arrival: float | None = attrs.field(init=False, repr=False, default=None)  # the frame being parsed
    # each symbol's current candle as its last accepted push showed it: (bucket, high, low)
    _kline_range: dict[str, tuple[int, float, float]] = attrs.field(init=False, repr=False, factory=dict)
    _kline_ms: int = attrs.field(init=False, repr=False, default=0)
    _sym: str = attrs.field(init=False, repr=False, default="")  # the symbol of the frame being parsed
    # each symbol's last accepted data frame: (its ts in ms, when it arrived here in s)
    _last_arrival: dict[str, tuple[int, float]] = attrs.field(init=False, repr=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        self._syms = frozenset(s.upper() for s in (self.symbols or (self.symbol,)))
        self._kline_ms = _kline_ms(self.kline_channel)
        self._handlers = {
            self.kline_channel: self._kline,
            "depth_book1": self._depth,
            "depth_book5": self._depth,
            "depth_book15": self._depth,
            "tickers": self._tickers,
            "ticker": self._ticker,
            "trade": self._trade,
            "price": self._price,
        }

    def reset_sequence(self) -> None:
        """After a reconnect: forget the per-channel last ts and the candles' ranges (the next push
        may show a candle that moved while the socket was down); keep the last good price."""
        self._last_ts.clear()
        self._kline_range.clear()
        self._last_arrival.clear()

    def parse(self, raw: str | bytes, arrival_s: float | None = None) -> Parsed:
        """One received frame -> a typed message, Control, or Rejected. Never raises. `arrival_s`:
        when it arrived, on any clock that runs at the rate of time (None: not checked against
        it): a data frame whose ts ran ahead of its symbol's last by more than the time between
        their arrivals, plus `FUTURE_TOLERANCE_S`, is `ts_future`."""
        self._arrival = arrival_s
        try:
            return self._parse(raw)
        except _Reject as r:
            return Rejected(r.reason, r.detail, self._sym if r.reason == "unknown_symbol" else "")
        except Exception as exc:  # a safety net: parse must never raise
            return Rejected("wrong_type", f"unexpected {type(exc).__name__}")

    def _parse(self, raw: str | bytes) -> Parsed:
        arrival_s = self._arrival
        if type(raw) is not str:
            if not isinstance(raw, bytes | bytearray | memoryview):
                return Rejected("not_json", f"frame is a {type(raw).__name__}, not text")
            try:
                raw = bytes(raw).decode("utf-8")
            except UnicodeDecodeError as e:
                if e.reason == "unexpected end of data":
                    return Rejected("truncated", "utf-8 cut off")
                return Rejected("not_json", "not utf-8")
        try:
            msg = json.loads(raw)
        except json.JSONDecodeError as e:
            return _decode_error(e)
        except (ValueError, RecursionError) as e:  # e.g. a 5000-digit integer, deep nesting
            return Rejected("not_json", f"undecodable: {type(e).__name__}")
        if type(msg) is not dict:
            return Rejected("not_object", f"json {type(msg).__name__}, not an object")

        op = msg.get("op")
        if op is not None:
            if type(op) is not str:
                return Rejected("wrong_type", f"op is not a string: {_show(op)}")
            if "data" in msg:
                return Control(op, msg["data"])
            return Control(op, {k: v for k, v in msg.items() if k != "op"})

        ch = msg.get("ch")
        if ch is None:
            return Rejected("missing_field", "frame has neither ch nor op")
        if type(ch) is not str:
            return Rejected("wrong_type", f"ch is not a string: {_show(ch)}")
        handler = self._handlers.get(ch)
        if handler is None:
            return Rejected("unknown_channel", f"channel {_show(ch)}")
        if ch != "tickers":
            sym = msg.get("symbol")
            if sym is None:
                return Rejected("missing_field", f"{ch} frame has no symbol")
            if type(sym) is not str:
                return Rejected("wrong_type", f"symbol is not a string: {_show(sym)}")
            if sym not in self._syms:
                sym = sym.upper()
                if sym not in self._syms:
                    return Rejected("wrong_symbol", f"{ch} frame for {_show(sym)}")
            self._sym = sym
        else:
            self._sym = self._tickers_symbol(msg.get("data"))
        ts = msg.get("ts")
        if ts is None:
            return Rejected("missing_field", f"{ch} frame has no ts")
        if type(ts) is not int:
            return Rejected("wrong_type", f"ts is not an integer: {_show(ts)}")
        if ts <= 0:
            return Rejected("non_positive", f"ts <= 0: {ts}")
        key = (self._sym, ch)
        last = self._last_ts.get(key)
        if last is not None and ts < last:
            return Rejected("ts_backwards", f"{ch} ts {ts} < last {last}")
        before = self._last_arrival.get(self._sym) if arrival_s is not None else None
        if before is not None and arrival_s is not None:
            ahead = (ts - before[0]) / 1000.0 - (arrival_s - before[1])
            if ahead > FUTURE_TOLERANCE_S:
                return Rejected(
                    "ts_future", f"{ch} ts {ts} is {ahead:.3g} s ahead of the time since the last"
                )
        data = msg.get("data")
        if data is None:
            return Rejected("missing_field", f"{ch} frame has no data")
        out: Parsed = handler(ts, data)
        self._last_ts[key] = ts
        if arrival_s is not None and (before is None or ts >= before[0]):
            self._last_arrival[self._sym] = (ts, arrival_s)
        return out

    def _jump(self, ts: int, price: float, what: str) -> None:
        """Reject `price` if it moved too far from the last good price for the time since it
        (`_jump_only`); otherwise remember it. Called last, so only accepted frames update the state."""
        self._jump_only(ts, price, what)
        self._last_price[self._sym] = (price, ts, self._arrival)

    def _jump_only(self, ts: int, price: float, what: str) -> None:
        """`_jump`'s check, leaving the last good price as it is: `price_jump` when the price moved
        more than max_jump_pct from the last good price within 1 s of it, or, after dt > 1 s, more
        than ln(1 + max_jump_pct/100) * sqrt(dt) in log terms (and more than max_jump_pct)."""
        last, last_ts, last_arrival = self._last_price.get(self._sym, (0.0, 0, None))
        pct = self.max_jump_pct
        if last <= 0.0 or pct <= 0.0:
            return
        ratio = price / last
        move = (ratio - 1.0) * 100.0
        if -pct <= move <= pct:  # within the 1 s bound: passes however long it has been
            return
        # the time since the last good price by the tighter of the exchange's ts and the arrivals
        # here (found by an audit: a 10x price stamped 1.5 s on, arriving right after the last good
        # one, escaped the check)
        dt = abs(ts - last_ts) / 1000.0
        arrival = self._arrival
        if arrival is not None and last_arrival is not None:
            waited = arrival - last_arrival
            if 0.0 <= waited < dt:
                dt = waited
        if dt <= 1.0:
            _reject(
                "price_jump",
                f"{what} {price:g} moved {move:+.3g}% from {last:g} in {dt:.3g} s (at most {pct:g}% within 1 s)",
            )
        # beyond 1 s: a random walk's spread grows with the square root of the time (found by an
        # audit: after 1.5 s of silence any price passed, a 10x one becoming the mark)
        bound = math.log1p(pct / 100.0) * math.sqrt(dt)
        step = math.log(ratio)
        if abs(step) > bound:
            allowed = max(pct, abs(math.expm1(bound if step > 0.0 else -bound)) * 100.0)
            _reject(
                "price_jump",
                f"{what} {price:g} moved {move:+.3g}% from {last:g} in {dt:.4g} s "
                f"(at most {allowed:.3g}% allowed after that long)",
            )

    def _kline(self, ts: int, data: Any) -> KlinePush:
        if type(data) is not dict:
            _reject("wrong_type", "kline data is not an object")
        o = _pos(_field(data, "o", "kline"), "open")
        h = _pos(_field(data, "h", "kline"), "high")
        lo = _pos(_field(data, "l", "kline"), "low")
        c = _pos(_field(data, "c", "kline"), "close")
        b = _num(_field(data, "b", "kline"), "volume")
        if b < 0.0:
            _reject("non_positive", f"volume < 0: {b:g}")
        if b >= MAX_MARKET_VALUE:
            _reject("too_large", f"volume >= {MAX_MARKET_VALUE:g}: {b:g}")
        if h < lo:
            _reject("crossed_book", f"kline high {h:g} < low {lo:g}")
        if not (lo <= o <= h and lo <= c <= h):
            _reject("crossed_book", f"kline open {o:g} or close {c:g} outside [{lo:g}, {h:g}]")
        bucket = ts // self._kline_ms if self._kline_ms else 0
        seen = self._kline_range.get(self._sym)
        if seen is not None and seen[0] <= bucket:
            same = seen[0] == bucket
            if h > (seen[1] if same else -1.0):
                self._jump_only(ts, h, "high")
            if lo < (seen[2] if same else float("inf")):
                self._jump_only(ts, lo, "low")
        self._jump(ts, c, "close")
        self._kline_range[self._sym] = (bucket, h, lo)
        return KlinePush(ts, o, h, lo, c, b, self._sym)

    def _depth(self, ts: int, data: Any) -> BookTop:
        if type(data) is not dict:
            _reject("wrong_type", "depth data is not an object")
        if data.get("b") == _EMPTY_LEVELS and data.get("a") == _EMPTY_LEVELS:
            # the exchange's one answer to a subscription of a symbol it does not trade
            _reject(
                "unknown_symbol",
                f"{self._sym}: empty levels, the answer to a symbol the exchange does not trade",
            )
        bids = _levels(data.get("b"), "bids")
        asks = _levels(data.get("a"), "asks")
        bid, bid_qty = bids[0]
        ask, ask_qty = asks[0]
        if bid >= ask:
            _reject("crossed_book", f"bid {bid:g} >= ask {ask:g}")
        prev = bid
        for i in range(1, len(bids)):
            p = bids[i][0]
            if p >= prev:
                _reject("crossed_book", f"bids not descending at level {i}")
            prev = p
        prev = ask
        for i in range(1, len(asks)):
            p = asks[i][0]
            if p <= prev:
                _reject("crossed_book", f"asks not ascending at level {i}")
            prev = p
        self._jump(ts, (bid + ask) * 0.5, "mid")
        return BookTop(ts, bid, bid_qty, ask, ask_qty, tuple(bids), tuple(asks), self._sym)

    def _tickers_symbol(self, data: Any) -> str:
        """The symbol of a `tickers` frame's row that `_tickers` reads: the first subscribed one
        (the frame has no top-level symbol); "" when there is none."""
        if type(data) is list:
            for row in data:
                s = row.get("s") if type(row) is dict else None
                if type(s) is str and s.upper() in self._syms:
                    return s.upper()
        return ""

    def _tickers(self, ts: int, data: Any) -> BookTop:
        """The row of the first subscribed symbol in the frame (the feed does not subscribe to
        `tickers`; with several symbols, one frame gives one of them)."""
        if type(data) is not list:
            _reject("wrong_type", "tickers data is not a list")
        sym = self._sym
        for row in data:
            if type(row) is not dict:
                continue
            s = row.get("s")
            if type(s) is str and s.upper() == sym:
                break
        else:
            wanted = ", ".join(sorted(self._syms))
            _reject("wrong_symbol", f"tickers has no {wanted} row ({len(data)} rows)")
        bid = _pos(_field(row, "bd", "tickers row"), "bid")
        ask = _pos(_field(row, "ak", "tickers row"), "ask")
        bid_qty = _pos(_field(row, "bv", "tickers row"), "bid size")
        ask_qty = _pos(_field(row, "av", "tickers row"), "ask size")
        if bid >= ask:
            _reject("crossed_book", f"bid {bid:g} >= ask {ask:g}")
        self._jump(ts, (bid + ask) * 0.5, "mid")
        return BookTop(ts, bid, bid_qty, ask, ask_qty, symbol=sym)

    def _ticker(self, ts: int, data: Any) -> TickerPush:
        if type(data) is not dict:
            _reject("wrong_type", "ticker data is not an object")
        s = data.get("s")
        if s is not None and (type(s) is not str or s.upper() != self._sym):
            _reject("wrong_symbol", f"ticker row for {_show(s)}")
        last = _pos(_field(data, "la", "ticker"), "last")
        self._jump(ts, last, "last")
        return TickerPush(ts, last, self._sym)

    def _trade(self, ts: int, data: Any) -> TradePush:
        if type(data) is not list:
            _reject("wrong_type", "trade data is not a list")
        if not data:
            _reject("missing_field", "trade data is empty")
        row = data[-1]
        if type(row) is not dict:
            _reject("wrong_type", "trade row is not an object")
        price = _pos(_field(row, "p", "trade"), "price")
        qty = _pos(_field(row, "v", "trade"), "size")
        side = _field(row, "s", "trade")
        if side != "buy" and side != "sell":
            if type(side) is not str or side.lower() not in ("buy", "sell"):
                _reject("wrong_type", f"trade side {_show(side)}")
            side = side.lower()
        self._jump(ts, price, "trade")
        return TradePush(ts, price, qty, side, self._sym)

    def _price(self, ts: int, data: Any) -> PricePush:
        if type(data) is not dict:
            _reject("wrong_type", "price data is not an object")
        mark = _pos(_field(data, "mp", "price"), "mark")
        index = _pos(_field(data, "ip", "price"), "index")
        fr = _num(_field(data, "fr", "price"), "funding rate")
        if abs(fr) > MAX_FUNDING_PCT:
            _reject("bad_funding", f"funding rate {fr:g} % is beyond +-{MAX_FUNDING_PCT:g} % per interval")
        self._jump(ts, mark, "mark")
        return PricePush(ts, mark, index, fr, self._sym, _iso_ms(data.get("ft")), _iso_ms(data.get("nft")))


# --- REST ------------------------------------------------------------------------------------------------


class RestError(Exception):
    """A failed REST call: exchange `code` (None when there is none), HTTP status, message, and
    whether retrying later may succeed (rate limits, 429, 5xx, garbled bodies)."""

    def __init__(
        self, msg: str, *, code: int | None = None, http_status: int = 200, retryable: bool = False
    ) -> None:
        super().__init__(msg)
        self.msg = msg
        self.code = code
        self.http_status = http_status
        self.retryable = retryable

    def __str__(self) -> str:
        code = "" if self.code is None else f" code {self.code}"
        kind = "retryable" if self.retryable else "permanent"
        return f"{self.msg} (HTTP {self.http_status}{code}, {kind})"


# 10001 "Network Error" is transient (private-api.md §6); 10005/10006 rate limits
RETRYABLE_CODES = frozenset((10001, 10005, 10006))


def printable(text: str) -> str:
    """The exchange's text as the session may log it: every control character escaped (`\n` as
    `\\n`, `\x1b` as `\\x1b`), so that it can neither drive a terminal nor forge a log line."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _code(v: Any) -> int | None:
    if type(v) is int:
        return v
    if type(v) is str and v.strip().lstrip("-").isdigit() and len(v) < 20:
        return int(v)
    return None


def rest_data(http_status: int, body: bytes) -> Any:
    """The `data` of a `{"code":0,"data":..,"msg":"Success"}` reply, or RestError."""
    env: Any = None
    try:
        env = json.loads(body)
    except Exception:
        env = None
    code = _code(env.get("code")) if type(env) is dict else None
    text = env.get("msg") if type(env) is dict else None
    msg = printable(text[:200]) if type(text) is str else ""
    if not 200 <= http_status < 300:
        retry = http_status == 429 or http_status >= 500
        raise RestError(msg or f"HTTP {http_status}", code=code, http_status=http_status, retryable=retry)
    if type(env) is not dict or code is None:
        head = body[:60] if isinstance(body, bytes | bytearray) else b""
        raise RestError(f"garbled reply {head!r}", http_status=http_status, retryable=True)
    if code != 0:
        raise RestError(
            msg or f"code {code}", code=code, http_status=http_status, retryable=code in RETRYABLE_CODES
        )
    return env.get("data")


def _rest_num(v: Any) -> float | None:
    """A finite float from a string or number, else None."""
    t = type(v)
    if t is str:
        try:
            x = float(v)
        except ValueError:
            return None
    elif t is float or t is int:
        try:
            x = float(v)
        except OverflowError:
            return None
    else:
        return None
    return x if x - x == 0.0 else None


_MAX_TIME_MS = 10**15  # year 33658: anything later is garbage


def _rest_time(v: Any) -> int | None:
    """Candle open time in ms from an int or a numeric string (or an integral float)."""
    t = type(v)
    if t is int:
        return v if 0 <= v < _MAX_TIME_MS else None
    if t is str or t is float:
        x = _rest_num(v)
        if x is not None and 0 <= x < _MAX_TIME_MS and x == int(x):
            return int(x)
    return None


def parse_rest_klines(data: Any, interval_s: float, problems: list[str] | None = None) -> list[Candle]:
    """REST kline rows (newest first on the wire) -> Candles oldest first, one per open time.

    Bad rows (not an object, missing or non-numeric fields, NaN, prices <= 0, a price or volume
    from MAX_MARKET_VALUE (1e15) on, high < low,
    open/close outside [low, high], negative volume, an open time given again) are skipped, each
    named in `problems` when it is given (the feed counts and logs them as dropped data). The
    volume names are swapped in practice (`quoteVol` holds the base size): `_base_volume` reads
    them. Raises RestError (not retryable) only when `data` is not a list."""
    if type(data) is not list:
        raise RestError(f"kline data is not a list: {type(data).__name__}", retryable=False)
    seen: dict[int, Candle] = {}
    for row in data:
        why = _kline_row_problem(row, interval_s, seen)
        if why is None:
            continue  # (added to `seen`)
        if problems is not None:
            problems.append(why[:119])
    return [seen[t] for t in sorted(seen)]


def _kline_row_problem(row: Any, interval_s: float, seen: dict[int, Candle]) -> str | None:
    """None when `row` is a good kline row, added to `seen` under its open time; else why not."""
    if type(row) is not dict:
        return f"kline row is not an object: {_show(row)}"
    raw_t = row.get("time")
    t = _rest_time(raw_t)
    prices = {k: _rest_num(row.get(k)) for k in ("open", "high", "low", "close")}
    if t is None:
        return f"kline row time is not a time in ms: {_show(raw_t)}"
    bad = [k for k, v in prices.items() if v is None]
    if bad:
        return f"kline row {t}: {bad[0]} is not a finite number: {_show(row.get(bad[0]))}"
    if t in seen:
        return f"kline row {t}: its open time repeated"
    o, h, lo, c = (prices[k] for k in ("open", "high", "low", "close"))
    assert o is not None and h is not None and lo is not None and c is not None
    if lo <= 0.0:
        return f"kline row {t}: low {lo:g} <= 0"
    if h >= MAX_MARKET_VALUE:
        return f"kline row {t}: high {h:g} >= {MAX_MARKET_VALUE:g}"
    if not lo <= o <= h or not lo <= c <= h:
        return f"kline row {t}: open {o:g} or close {c:g} outside [low {lo:g}, high {h:g}]"
    vols: dict[str, float] = {}
    for key in ("quoteVol", "baseVol"):
        raw = row.get(key)
        if raw is not None:
            v = _rest_num(raw)
            if v is None or not 0.0 <= v < MAX_MARKET_VALUE:
                return f"kline row {t}: {key} is not a size: {_show(raw)}"
            vols[key] = v
    seen[t] = Candle(t / 1000, interval_s, o, h, lo, c, _base_volume(vols, c))
    return None


def _base_volume(vols: dict[str, float], price: float) -> float:
    """A REST kline row's base quantity. The names are swapped in practice (`quoteVol` the base
    quantity, `baseVol` the quote notional: docs); with both, the one that times the price gives
    the other is the base (whatever the names, and for a coin priced under 1 USDT too, where the
    smaller of the two is the notional); with one, read as the docs say."""
    q, b = vols.get("quoteVol"), vols.get("baseVol")
    if q is not None and b is not None:
        return q if abs(q * price - b) <= abs(b * price - q) else b
    if q is not None:
        return q
    if b is not None:
        return b / price
    return 0.0


def _rest_levels(side: Any, name: str) -> list[tuple[float, float]]:
    if type(side) is not list or not side:
        raise RestError(f"depth {name} missing or empty", retryable=True)
    out = []
    for lvl in side:
        p = q = None
        if type(lvl) is list and len(lvl) >= 2:
            p, q = _rest_num(lvl[0]), _rest_num(lvl[1])
        if p is None or q is None or not (0.0 < p < MAX_MARKET_VALUE and 0.0 < q < MAX_MARKET_VALUE):
            raise RestError(f"depth {name} has a bad level {_show(lvl)}", retryable=True)
        out.append((p, q))
    return out


def parse_rest_depth(data: Any, ts: float) -> Book:
    """`{"asks":[["p","q"]..],"bids":[..]}` -> Book(ts, bids descending, asks ascending).
    RestError (retryable) when malformed, empty or crossed."""
    if type(data) is not dict:
        raise RestError(f"depth data is not an object: {type(data).__name__}", retryable=True)
    bids = sorted(_rest_levels(data.get("bids"), "bids"), key=lambda lv: -lv[0])
    asks = sorted(_rest_levels(data.get("asks"), "asks"))
    if bids[0][0] >= asks[0][0]:
        raise RestError(f"depth crossed: bid {bids[0][0]:g} >= ask {asks[0][0]:g}", retryable=True)
    return Book(ts, tuple(bids), tuple(asks))


def kline_params(
    symbol: str,
    interval: str,
    limit: int = MAX_KLINE_LIMIT,
    end_time_ms: int | None = None,
    start_time_ms: int | None = None,
) -> dict[str, str]:
    """Query parameters for GET KLINE_PATH (last-price candles). ValueError on a bad limit/interval."""
    if not 1 <= limit <= MAX_KLINE_LIMIT:
        raise ValueError(f"kline limit {limit} not in 1..{MAX_KLINE_LIMIT}")
    params = {
        "symbol": symbol.upper(),
        "interval": rest_interval(interval),
        "limit": str(int(limit)),
        "type": "LAST_PRICE",
    }
    if start_time_ms is not None:
        params["startTime"] = str(int(start_time_ms))
    if end_time_ms is not None:
        params["endTime"] = str(int(end_time_ms))
    return params


def trading_pairs_params(symbols: str | Sequence[str]) -> dict[str, str]:
    """Query parameters for GET TRADING_PAIRS_PATH, for one symbol or several (comma-separated)."""
    names = [symbols] if isinstance(symbols, str) else list(symbols)
    return {"symbols": ",".join(s.upper() for s in names)}


def trading_pair_row(data: Any, symbol: str) -> dict[str, Any] | None:
    """The row of `symbol` (case-insensitive) in a `trading_pairs` reply's `data`, or None when the
    reply has none (the exchange does not list the symbol). RestError (retryable) when `data` is
    not a list of rows."""
    if type(data) is not list:
        raise RestError(f"trading_pairs data is not a list: {type(data).__name__}", retryable=True)
    sym = symbol.upper()
    for row in data:
        if type(row) is dict and type(row.get("symbol")) is str and row["symbol"].upper() == sym:
            return row
    return None


def depth_params(symbol: str, limit: int | str = 15) -> dict[str, str]:
    """Query parameters for GET DEPTH_PATH; `limit` in 1, 5, 15, 50, "max" (else code 10008)."""
    lim = str(limit)
    if lim not in _DEPTH_LIMITS:
        raise ValueError(f"depth limit {limit!r} not one of {', '.join(_DEPTH_LIMITS)}")
    return {"symbol": symbol.upper(), "limit": lim}
