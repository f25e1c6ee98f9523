"""Where the mock source's walks start: plain data and a function, without trio (the config's
checks read them in a backtest, which loads no trio; actors/feeds/mock.py, the live runtime's mock
source, starts its walks there; their price grids: `protocols.instruments.price_decimals`)."""

from __future__ import annotations

# Where a symbol's walk starts (its history ends there), USDT; the first symbol of a session starts
# at `feed.mock_start_price` instead. A symbol not listed: MOCK_OTHER_LEVEL (on BTCUSDT's 0.1 grid,
# where it trades unless the table knows it, a tick is then 1 bp).
MOCK_LEVELS = {"BTCUSDT": 60_000.0, "ETHUSDT": 3_000.0, "SOLUSDT": 150.0}
MOCK_OTHER_LEVEL = 1_000.0


def mock_level(symbol: str) -> float:
    """Where `symbol`'s walk starts unless it is the session's first symbol (`MOCK_LEVELS`)."""
    return MOCK_LEVELS.get(symbol.upper(), MOCK_OTHER_LEVEL)
