"""The compiled build (opt-in): `BTC_AGENTS_COMPILE=1 pip install --no-build-isolation .` with mypy
installed compiles the backtest's hot path with mypyc: the broker, the risk gate, the strategies,
the kernel, the CSV reader and the recorder, from the same sources (their type annotations become C
types). The program behaves the same, 1.3-1.6x faster on a backtest (docs/performance.md);
`nox -s bench` measures this build, `nox -s compiled` runs `nox -s quick`'s tests against it. Without the variable (every other install: `pip install -e .`, the container, CI's
sessions) nothing is compiled and this file changes nothing: pyproject.toml says the rest.
"""

from __future__ import annotations

import os

from setuptools import setup

# The modules compiled: the components a backtest runs for every candle, and what they call per
# candle. No trio in any of them (the actors' loops stay interpreted). Not actors/broker/portfolio.py
# (several symbols' accounts): mypyc 2.4 cannot write the signature of its __init__ (a required
# keyword-only argument after an optional one) and stops.
COMPILED = [
    "actors/kernel.py",
    "actors/broker/paper.py",
    "actors/risk/gate.py",
    "actors/strategies/base.py",
    "actors/strategies/indicators.py",
    "actors/strategies/ema_cross.py",
    "actors/strategies/trend_pullback.py",
    "actors/strategies/liquidity_sweep.py",
    "actors/feeds/history.py",
    "actors/feeds/intervals.py",
    "actors/recording/recorder.py",
    "actors/recording/page_records.py",
    "protocols/records.py",
    "protocols/instruments.py",
    "actors/recording/storage.py",
    "actors/recording/alerts.py",
]

ext_modules = []
if os.environ.get("BTC_AGENTS_COMPILE") == "1":
    from mypyc.build import mypycify  # mypy, installed beside (nox -s bench installs it)

    ext_modules = mypycify(COMPILED, opt_level="3")

setup(ext_modules=ext_modules)
