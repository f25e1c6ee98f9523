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

from actors.config import Config, load

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

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
    from actors.main import main

    out, err = io.StringIO(), io.StringIO()
    umask = os.umask(0o077)  # `main` sets the process's umask: given back after, as a process's end would
    os.umask(umask)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv, env)
        except SystemExit as exc:  # argparse's own errors
            code = exc.code if isinstance(exc.code, int) else 2
        finally:
            os.umask(umask)
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


# The longest real-time tests (minutes of wall time, mostly waiting), one module each: each is put
# at the head of a pytest-xdist worker's first batch, so that a worker starts each at once and the
# rest of the suite runs beside them.
LONGEST_FIRST = ("test_multi_symbol_live", "test_flapping_exchange")


def _first_batch(config: pytest.Config, n_items: int) -> int:
    """How many consecutive items pytest-xdist's load scheduling (3.x) hands each worker at first:
    a quarter of a worker's share (`LoadScheduling.schedule`); 1 without xdist."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)  # set in the workers, which collect
    if workers < 1 or n_items < 2 * workers:
        return 1
    batch = n_items // workers // 4
    chunk = config.getoption("maxschedchunk", None)
    return max(2, batch if chunk is None else min(batch, chunk))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def module_name(item: pytest.Item) -> str:
        module = getattr(item, "module", None)  # a test function's (pytest.Function) module
        return "" if module is None else module.__name__.rsplit(".", 1)[-1]

    for item in items:
        if module_name(item) in REAL_TIME_MODULES:
            item.add_marker(pytest.mark.slow)

    # the long ones first, each followed by a worker's first batch of the others (theirs stay in
    # order): xdist sends consecutive batches, so two long tests side by side would run one after
    # the other on one worker
    longest = [item for item in items if module_name(item) in LONGEST_FIRST]
    rest = iter([item for item in items if module_name(item) not in LONGEST_FIRST])
    batch = _first_batch(config, len(items))
    ordered: list[pytest.Item] = []
    for item in longest:
        ordered += [item, *itertools.islice(rest, batch - 1)]
    items[:] = [*ordered, *rest]


@pytest.fixture
def shared_data() -> Path:
    data = SHARED / "data"
    if not data.is_dir():
        pytest.skip(f"real market data not found at {data} (../shared beside the repo)")
    return data
