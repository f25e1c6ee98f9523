"""Instruments: what the exchange accepts for a symbol (price tick, quantity step, minimum and
maximum quantity, leverage) and its maintenance-margin tiers. Data and pure arithmetic, no trio.

Live sessions take the exchange's own figures from `GET /api/v1/futures/market/trading_pairs` at
start (`from_trading_pair`; `source = "exchange"`); mock sessions, replays of old runs and
backtests use the table below (`source = "table"`). Prices and quantities are kept on the grid
by counting in whole ticks and lots (integers), never by adding floats.

Where the table's figures come from (docs/fills.md says the same, with the choices):

- tick, lot, minimum quantity and maximum leverage: `trading_pairs` as recorded in
  `../shared/docs/bitunix-protocol.md` (BTCUSDT: `quotePrecision` 1, `basePrecision` 4,
  `minTradeVolume` 0.0001, `maxLeverage` 125); ETHUSDT and SOLUSDT: the same endpoint's
  precisions as published on Bitunix's contract pages (not in our recorded sources: *assumed*).
- maximum order quantities: not in our sources (the endpoint has `maxMarketOrderVolume` and
  `maxLimitOrderVolume`, values unrecorded): *assumed* generous caps, so that they bind only on
  orders no paper account here could carry.
- maintenance-margin tiers: Bitunix publishes its risk-limit tiers on its website, not through an
  endpoint our sources record. The table uses a conservative ladder (0.5 % maintenance up to
  50,000 USDT of notional, as the broker used before, rising with size) and says so: *assumed*.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal

import attrs

Rounding = Literal["up", "down", "nearest"]

# A price or quantity within this many grid steps of a grid point is on it (float noise).
_GRID_EPS: Final = 1e-6


@attrs.frozen
class MarginTier:
    """Positions with a notional up to `max_notional` USDT: this maintenance margin rate and at most
    this leverage."""

    max_notional: float
    maintenance_margin_rate: float
    max_leverage: float


def _to_tiers(value: Iterable[Any]) -> tuple[MarginTier, ...]:
    return tuple(t if isinstance(t, MarginTier) else MarginTier(**t) for t in value)


@attrs.frozen
class Instrument:
    """A linear USDT-margined perpetual as the exchange trades it."""

    symbol: str
    price_decimals: int  # the price tick is 10 ** -price_decimals (Bitunix `quotePrecision`)
    qty_decimals: int  # the quantity step is 10 ** -qty_decimals (`basePrecision`)
    min_qty: float  # `minTradeVolume`
    max_leverage: float
    max_market_qty: float
    max_limit_qty: float
    # a tuple of MarginTier (`from_dict` makes one of JSON's dicts): no converter, so that the
    # class compiles (setup.py: mypyc refuses a field whose default is attrs' field marker)
    tiers: tuple[MarginTier, ...]
    status: str = "OPEN"
    source: str = "table"  # "table" (shipped here) or "exchange" (trading_pairs at start)

    @property
    def tick_size(self) -> float:
        return 10.0**-self.price_decimals

    @property
    def lot_size(self) -> float:
        return 10.0**-self.qty_decimals

    # --- the grid ------------------------------------------------------------------------------

    def round_price(self, price: float, how: Rounding = "nearest") -> float:
        """`price` on the tick grid: rounded up, down, or to the nearest tick."""
        return _on_grid(price, self.price_decimals, how)

    def round_qty(self, qty: float, how: Rounding = "down") -> float:
        """`qty` on the lot grid (down by default: never more than asked)."""
        return _on_grid(qty, self.qty_decimals, how)

    def price_on_grid(self, price: float) -> bool:
        return _is_on_grid(price, self.price_decimals)

    def qty_on_grid(self, qty: float) -> bool:
        return _is_on_grid(qty, self.qty_decimals)

    # --- margin --------------------------------------------------------------------------------

    def tier(self, notional: float) -> MarginTier:
        """The tier of a position of `notional` USDT (the last tier beyond the table)."""
        for tier in self.tiers:
            if notional <= tier.max_notional:
                return tier
        return self.tiers[-1]

    def maintenance_margin_rate(self, notional: float) -> float:
        return self.tier(notional).maintenance_margin_rate

    # --- what the exchange refuses -------------------------------------------------------------

    def max_order_qty(self, order_type: str) -> float:
        """The largest order of `order_type` the exchange takes: a market or stop-market order
        `max_market_qty`, a limit `max_limit_qty`."""
        return self.max_market_qty if order_type in ("market", "stop_market") else self.max_limit_qty

    def refusal(
        self, qty: float, order_type: str, price: float | None = None, leverage: float | None = None
    ) -> str | None:
        """The exchange's reason to refuse an order (Bitunix error codes, bitunix-private-api.md
        §errors), or None when it would accept it. Prices of limit and stop orders must be on the
        tick grid; quantities on the lot grid, at least `min_qty`, at most the order type's cap."""
        if self.status not in ("OPEN",):
            return "symbol_not_trading"  # 20015 / symbolStatus CANCEL_ONLY, STOP
        if qty < self.min_qty - _GRID_EPS * self.lot_size:
            return "qty_below_minimum"  # 30017 the qty cannot be less than the minimum qty
        if not self.qty_on_grid(qty):
            return "qty_off_grid"  # 30016 (basePrecision)
        if qty > self.max_order_qty(order_type):
            return "qty_above_maximum"  # 30013 / 30039 exceeded the maximum order quantity
        if price is not None and not self.price_on_grid(price):
            return "price_off_grid"  # quotePrecision
        if leverage is not None and leverage > self.max_leverage:
            return "invalid_leverage"  # 20005
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (an unbounded figure is None)."""
        return dict(_finite(attrs.asdict(self)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Instrument:
        fields = dict(data)
        for name in ("max_market_qty", "max_limit_qty"):
            if fields.get(name) is None:
                fields[name] = math.inf
        fields["tiers"] = _to_tiers(
            {**t, "max_notional": math.inf if t["max_notional"] is None else t["max_notional"]}
            for t in fields["tiers"]
        )
        return cls(**fields)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


# 10.0 ** n, exact doubles (to 10 ** 22)
_POW10: Final = tuple(10.0**n for n in range(23))
# a product below this (2 ** 40) is within 2 ** -13 of the exact one (half an ulp)
_EXACT_BELOW: Final = 1099511627776.0
# (y + _RINT) - _RINT is y rounded to a whole number, for |y| < 2 ** 51 (2 ** 52 + 2 ** 51)
_RINT: Final = 6755399441055744.0


def fast_round(x: float, ndigits: int) -> float:
    """`round(x, ndigits)` (0 <= ndigits <= 22): the same double, its sign of zero included,
    without the decimal conversion `round` makes when `x` times `10 ** ndigits` comes out a
    whole number y (a quantity on its lot, a time in whole ms). The exact product is then within
    2 ** -13 of y (below 2 ** 40), so the decimal rounding is y / 10 ** ndigits exactly, and the
    nearest double to it is the quotient, correctly rounded (tests/test_records.py checks it
    against `round` with Hypothesis). Any other x: `round` itself."""
    scale = _POW10[ndigits]
    y = x * scale
    if -_EXACT_BELOW < y < _EXACT_BELOW and (y + _RINT) - _RINT == y:
        return y / scale
    return round(x, ndigits)


def _on_grid(value: float, decimals: int, how: Rounding) -> float:
    scale = 10**decimals
    units = value * scale
    if how == "up":
        n = math.ceil(units - _GRID_EPS)
    elif how == "down":
        n = math.floor(units + _GRID_EPS)
    else:
        n = math.floor(units + 0.5)
    return fast_round(n / scale, decimals)


def _is_on_grid(value: float, decimals: int) -> bool:
    units = value * 10**decimals
    return abs(units - round(units)) <= _GRID_EPS


# The conservative tier ladder of the table (see the module's docstring): notional up to, maintenance
# margin rate, maximum leverage.
# Each tier's maximum leverage leaves its initial margin (1 / leverage) above its maintenance rate,
# so that a position opened at any leverage it allows is not liquidated at its own entry price
# (found by an audit: at 50x and 2.5 %, a 9 BTC long was liquidated at the next quote); at least
# twice it, as exchanges' ladders do, but for the first tier's 125x (0.8 % over 0.5 %).
_LADDER = (
    MarginTier(50_000.0, 0.005, 125.0),
    MarginTier(250_000.0, 0.01, 50.0),
    MarginTier(1_000_000.0, 0.025, 20.0),
    MarginTier(5_000_000.0, 0.05, 10.0),
    MarginTier(math.inf, 0.1, 5.0),
)

TABLE: dict[str, Instrument] = {
    "BTCUSDT": Instrument("BTCUSDT", 1, 4, 0.0001, 125.0, 500.0, 1000.0, _LADDER),
    "ETHUSDT": Instrument("ETHUSDT", 2, 3, 0.001, 100.0, 5000.0, 10000.0, _LADDER),
    "SOLUSDT": Instrument("SOLUSDT", 3, 2, 0.01, 75.0, 50000.0, 100000.0, _LADDER),
}


def table_instrument(symbol: str) -> Instrument | None:
    """The shipped table's instrument for `symbol` (case-insensitive), or None."""
    return TABLE.get(symbol.upper())


def grid_instrument(symbol: str) -> Instrument:
    """The shipped table's instrument for `symbol`, or BTCUSDT's for a symbol the table does not
    know: the grid prices are put on before (or without) the exchange's own word on it (the mock's
    walks, a strategy's limit prices, the console's figures)."""
    return TABLE.get(symbol.upper()) or TABLE["BTCUSDT"]


def price_decimals(symbol: str) -> int:
    """The decimals of `symbol`'s price tick (`grid_instrument`'s)."""
    return grid_instrument(symbol).price_decimals


def from_trading_pair(row: Mapping[str, Any], fallback: Instrument | None = None) -> Instrument:
    """An instrument from one `trading_pairs` row (strings or numbers, as the exchange sends them).
    The tiers (not in the row) and any cap the row leaves out come from `fallback` (the table's
    instrument for the symbol) or the table's ladder. Raises ValueError on a row that cannot be
    used (the message names the field)."""

    def num(name: str, default: float | None = None) -> float:
        raw = row.get(name)
        if raw is None or raw == "":
            if default is None:
                raise ValueError(f"trading_pairs: {name} missing")
            return default
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"trading_pairs: {name} is not a number: {raw!r}") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"trading_pairs: {name} out of range: {raw!r}")
        return value

    symbol = str(row.get("symbol") or "").upper()
    if not symbol:
        raise ValueError("trading_pairs: symbol missing")
    price_decimals = int(num("quotePrecision"))
    qty_decimals = int(num("basePrecision"))
    if not (0 <= price_decimals <= 12 and 0 <= qty_decimals <= 12):
        raise ValueError("trading_pairs: quotePrecision and basePrecision must be 0..12")
    base = fallback
    min_qty = num("minTradeVolume", 10.0**-qty_decimals)
    return Instrument(
        symbol=symbol,
        price_decimals=price_decimals,
        qty_decimals=qty_decimals,
        min_qty=min_qty if min_qty > 0 else 10.0**-qty_decimals,
        max_leverage=num("maxLeverage", base.max_leverage if base else 125.0),
        max_market_qty=num("maxMarketOrderVolume", base.max_market_qty if base else math.inf) or math.inf,
        max_limit_qty=num("maxLimitOrderVolume", base.max_limit_qty if base else math.inf) or math.inf,
        tiers=base.tiers if base else _LADDER,
        status=str(row.get("symbolStatus") or "OPEN").upper(),
        source="exchange",
    )
