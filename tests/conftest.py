"""Shared test helpers: configs built through the real loader, and run-folder readers."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from actors.config import Config, load

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# Hypothesis draws the same examples on every run (each test's own hash seeds them), so that a red
# run is always a change's and never a new draw's: CI once went red on an unrelated commit when a
# test that had passed in every earlier run drew a new case (":A:", tests/test_console.py).
# `nox -s explore` (HYPOTHESIS_PROFILE=explore) draws new examples each run, to look for such cases.
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

# A config that trades often and never stops early: short candles, fast EMAs, generous limits.
TRADES_OFTEN = [
    "session.interval=2s",
    "strategy.fast_period=2",
    "strategy.slow_period=5",
    "risk.max_orders_per_minute=100",
    "risk.max_loss_pct=50",
    "risk.max_daily_drawdown_pct=50",
    "risk.max_consecutive_losses=0",
    "feed.mock_volatility_pct=150",
]


def make_config(tmp_path: Path, *sets: str, duration_min: float = 1.0) -> Config:
    return load(
        None,
        {},
        [f"session.run_dir={tmp_path / 'runs'}", f"session.kill_switch={tmp_path / 'kill.txt'}", *sets],
        {"session.duration_min": (duration_min, "--duration")},
    )


def read_events(run_path: Path) -> list[dict[str, Any]]:
    with (run_path / "events.jsonl").open() as f:
        return [json.loads(line) for line in f]


def read_report(run_path: Path) -> dict[str, Any]:
    return json.loads((run_path / "final_report.json").read_text())


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAPTOP_AGENTS__")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run_cli(*args: str, cwd: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "actors.main", *args],
        cwd=cwd,
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def main_in_process(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """The CLI's `main(argv, env)` in this process: its exit code, stdout and stderr."""
    from actors import secrets
    from actors.main import main
    from actors.recording import checkpoint

    out, err = io.StringIO(), io.StringIO()
    umask = os.umask(0o077)  # `main` sets the process's umask: given back after, as a process's end would
    os.umask(umask)
    # and the checkpoint key and the secrets' scrubber it installs (found by a test run: a
    # LAPTOP_AGENTS_STATE_KEY given to one in-process start left the worker's test process
    # verifying every later test's unsigned checkpoints under it, all refused)
    key, scrubber = checkpoint._key, secrets._scrubber
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv, env)
        except SystemExit as exc:  # argparse's own errors
            code = exc.code if isinstance(exc.code, int) else 2
        finally:
            os.umask(umask)
            checkpoint.use_key(key)
            secrets._scrubber = scrubber
    return code, out.getvalue(), err.getvalue()


def run_main(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`run_cli` in this process (`main_in_process` with `cli_env(**env)`, in `cwd`): for the
    many cases of one check, a few of which go through `run_cli` as well."""
    old = Path.cwd()
    os.chdir(cwd)
    try:
        code, out, err = main_in_process(list(args), cli_env(**env))
    finally:
        os.chdir(old)
    return subprocess.CompletedProcess(list(args), code, out, err)


# Modules whose tests run on real time (real sockets, processes, containers, benchmarks): all slow.
REAL_TIME_MODULES = {
    "test_feed_bitunix",
    "test_fake_bitunix",
    "test_soak",
    "test_container",
    "test_bench",
    "test_bench_feed",
    "test_cli_session",
    "test_crash_resume",
}


# The longest tests (wall seconds as measured, most of it waiting on real time), longest first.
# pytest-xdist's `worksteal` scheduling (noxfile.py) first deals the collected items to the workers
# in equal consecutive chunks, and a worker that runs out steals the tail of the longest queue: each
# long test heads a chunk (the next longest goes to the chunk with the least of them so far), so that
# it starts at once and the short ones run beside it on the other workers.
LONGEST_FIRST = {
    "test_multi_symbol_live.py::test_three_strategies_on_two_symbols_live_for_three_minutes": 181,
    "test_flapping_exchange.py::test_a_server_dropping_every_connection_after_5_s_keeps_the_feed_up": 30,
    "test_real_data_backtest.py::test_every_order_event_over_the_whole_real_data_is_on_the_grid": 27,
    "test_feed_bitunix.py::test_during_failover_the_mark_and_equity_follow_the_rest_prices": 25,
    "test_report_html.py::test_a_live_sessions_report_in_chromium": 23,
    "test_first_session.py::test_first_sessions_without_internet_fall_back_warm_and_trade": 20,
    "test_soak.py::test_soak_every_fault_at_once": 20,
    "test_feed_bitunix.py::test_session_subscribes_pings_and_trades_through_drops": 18,
}


# What a real-time test not in LONGEST_FIRST is counted as when the chunks are dealt (their median
# is a few seconds, most of it waiting).
SLOW_SECONDS = 5


def _chunk_starts(n_items: int, workers: int) -> list[int]:
    """Where each worker's first chunk begins, as `WorkStealingScheduling.check_schedule`
    (pytest-xdist 3.x) deals `n_items` to `workers` idle workers: each the pending count over the
    workers left."""
    starts, dealt = [], 0
    for i in range(workers):
        starts.append(dealt)
        dealt += (n_items - dealt) // (workers - i)
    return starts


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)  # a test function's (pytest.Function) module
        if module is not None and module.__name__.rsplit(".", 1)[-1] in REAL_TIME_MODULES:
            item.add_marker(pytest.mark.slow)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(LongestFirst(), "longest-first")
    if os.environ.get("BTC_AGENTS_EXPECT_COMPILED") == "1":  # nox -s compiled: nothing interpreted
        import importlib

        from tools.bench import HOT_MODULES  # the hot path's modules (setup.py compiles them all)

        files = {name: str(importlib.import_module(name).__file__) for name in HOT_MODULES}
        interpreted = {name: file for name, file in files.items() if file.endswith(".py")}
        if interpreted:
            raise pytest.UsageError(f"the compiled build was expected, these modules are not: {interpreted}")


class LongestFirst:
    """Orders the items after `-m` and `-k` have deselected (trylast; the marks above come before
    them), as the workers will be dealt them."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        order_for_worksteal(items)


def order_for_worksteal(items: list[pytest.Item]) -> None:
    """In a pytest-xdist worker: the `LONGEST_FIRST` tests at the heads of the chunks."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)  # set in the workers, which collect
    if workers < 2:
        return
    seconds = {item: LONGEST_FIRST.get(item.nodeid.split("/")[-1], 0) for item in items}
    longest = sorted((item for item in items if seconds[item]), key=lambda item: -seconds[item])
    rest = [item for item in items if not seconds[item]]
    # each long test to the chunk with the fewest seconds so far, then the other real-time tests
    # (`SLOW_SECONDS` each) likewise: a stolen test is taken from a queue's tail, so a module of them
    # left together in one chunk (the feed's: 170 s of waiting) ran on one worker after the others
    # were done (measured: the last 35 s of the suite with most of the machine idle)
    load = [0] * workers
    heads: list[list[pytest.Item]] = [[] for _ in range(workers)]
    slow_of: list[list[pytest.Item]] = [[] for _ in range(workers)]

    def deal(item: pytest.Item, into: list[list[pytest.Item]], weight: int) -> None:
        k = load.index(min(load))
        into[k].append(item)
        load[k] += weight

    for item in longest:
        deal(item, heads, seconds[item])
    for item in rest:
        if item.get_closest_marker("slow"):
            deal(item, slow_of, SLOW_SECONDS)
    quick = iter(item for item in rest if not item.get_closest_marker("slow"))
    # the chunks' sizes as the scheduler will cut them, each its long tests first, then its other
    # real-time tests, then the quick ones (the last to run, or to be stolen from its tail)
    n = len(items)
    bounds = [*_chunk_starts(n, workers), n]
    ordered: list[pytest.Item] = []
    for head, its_slow, lo, hi in zip(heads, slow_of, bounds[:-1], bounds[1:], strict=True):
        fill = list(itertools.islice(quick, max(0, hi - lo - len(head) - len(its_slow))))
        ordered += [*head, *its_slow, *fill]
    items[:] = [*ordered, *quick]


@pytest.fixture
def shared_data() -> Path:
    data = SHARED / "data"
    if not data.is_dir():
        pytest.skip(f"real market data not found at {data} (../shared beside the repo)")
    return data
