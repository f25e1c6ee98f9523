"""The strategy interface and the registry of strategies by name.

A strategy is a plain synchronous component (no trio) behind a small interface: what it
subscribes to, how many closed candles it needs to warm up, and for each candle two phases:
`update(candle)` takes it into the indicators and says whether a decision is due;
`decide(candle, account, now)` then returns order intents (and events to record, e.g. its
`signal`), with the account snapshot the candle arrived with. `on_candle` is the two in one;
`on_quote` takes quotes, for strategies that subscribe to them. It owns its indicators and setup
state and nothing else; its intents go to the risk gate. Strategies are registered by name
(`strategy.name` picks one).

The two phases let a runtime build the account snapshot only for the candles a strategy decides
on (the kernel does: a snapshot per candle was a tenth of a backtest's time); both runtimes call
the same methods in the same order (tests/test_kernel.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import attrs

from actors.config import StrategyConfig
from protocols.messages import AccountSnapshot, Candle, Event, MarketEvent, MarketView, OrderIntent, Tick

StrategyOutput = OrderIntent | Event


class Strategy(Protocol):
    """What the runtimes need of a strategy."""

    id: str
    symbol: str
    # the market event types it takes (the others never reach it)
    subscribes: ClassVar[tuple[type, ...]]

    @property
    def warmup(self) -> int:
        """Closed candles it needs before it can signal."""
        ...

    def update(self, candle: Candle) -> bool:
        """Take a closed candle into the indicators; True when `decide` is due for it."""
        ...

    def decide(self, candle: Candle, account: AccountSnapshot, now: float) -> list[StrategyOutput]:
        """After `update` said so: the decision on `candle`, with the account as it now is."""
        ...

    def on_candle(self, candle: Candle, account: AccountSnapshot, now: float) -> list[StrategyOutput]:
        """`update`, then `decide` when it is due."""
        ...

    def on_quote(self, tick: Tick, account: AccountSnapshot, now: float) -> list[StrategyOutput]: ...

    def state(self) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any]) -> None: ...


def handle(strategy: Strategy, view: MarketView, now: float) -> list[StrategyOutput]:
    """A market view, dispatched by the event's type."""
    event: MarketEvent = view.event
    if isinstance(event, Candle):
        return strategy.on_candle(event, view.account, now)
    if isinstance(event, Tick):
        return strategy.on_quote(event, view.account, now)
    return []


def funding_size(rate_pct: float, long: bool, block_pct: float, half_pct: float) -> float:
    """The original setups' funding gate: the share of a full-size entry the funding rate in force
    (percent per 8 h, positive: longs pay; a symbol settling every 4 h or 1 h has its rate scaled
    to 8 h by the broker, `AccountSnapshot.funding_rate_pct`) allows. 0 (no entry) when it runs against the position
    by more than `block_pct`, 0.5 by more than `half_pct`, else 1; funding in the trade's favour
    never holds it back."""
    against = rate_pct if long else -rate_pct
    if against > block_pct:
        return 0.0
    return 0.5 if against > half_pct else 1.0


def funding_gate_problems(half_pct: float, block_pct: float) -> list[str]:
    """The rule between the funding gate's two keys, as a config problem line (or none)."""
    if half_pct <= block_pct:
        return []
    return [
        f"strategy.funding_half_pct: {half_pct} is not allowed; expected at most "
        f"strategy.funding_block_pct ({block_pct})"
    ]


StrategyFactory = Callable[..., Strategy]
REGISTRY: dict[str, StrategyFactory] = {}
# each kind's own parameters: an attrs class whose fields are `actors.config.key`s (validated and
# documented like every config key); None: the kind reads only `StrategyConfig`
PARAMS: dict[str, type | None] = {}
# the common keys (`StrategyConfig`'s, `name` aside) each kind reads; the config refuses the others
# when a user sets them (found by an audit: `stop_loss_pct = 0.3` on a trend_pullback, whose stop
# is in ATRs, was accepted and never read)
COMMON_KEYS: dict[str, tuple[str, ...]] = {}


def register(
    name: str, params: type | None = None, common: tuple[str, ...] | None = None
) -> Callable[[StrategyFactory], StrategyFactory]:
    """Register a strategy class under `name`, called as `factory(config, id, symbol)` or, with a
    `params` class, `factory(config, id, symbol, params)` (an instance built from the config);
    `common`: the keys of `StrategyConfig` it reads (None: all of them)."""

    def add(factory: StrategyFactory) -> StrategyFactory:
        REGISTRY[name] = factory
        PARAMS[name] = params
        everything = tuple(f.name for f in attrs.fields(StrategyConfig) if f.name != "name")
        COMMON_KEYS[name] = everything if common is None else common
        return factory

    return add


def build_strategy(config: StrategyConfig, strategy_id: str, symbol: str, params: Any = None) -> Strategy:
    """The strategy `config.name` names (the config validates the name against the registry);
    `params`: its kind's parameters (the defaults when None)."""
    factory = REGISTRY[config.name]
    if PARAMS.get(config.name) is None:
        return factory(config, strategy_id, symbol)
    return factory(config, strategy_id, symbol, params)
