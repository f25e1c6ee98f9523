"""Strategies: the interface and registry (`base`), and each strategy in its own module."""

from actors.strategies import ema_cross
from actors.strategies import liquidity_sweep as liquidity_sweep
from actors.strategies import trend_pullback as trend_pullback
from actors.strategies.base import REGISTRY, Strategy, build_strategy, handle

__all__ = ["REGISTRY", "Strategy", "build_strategy", "ema_cross", "handle"]
