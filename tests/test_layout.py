"""The layering the architecture promises, checked: components and protocols without trio; no
`trio.testing` in production code; the backtest path loads no trio at all."""

from __future__ import annotations

import ast
import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env

COMPONENTS = [
    "actors/broker/paper.py",
    "actors/risk/gate.py",
    "actors/strategies/base.py",
    "actors/strategies/ema_cross.py",
    "actors/kernel.py",
    "actors/recording/recorder.py",
]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_protocols_and_components_import_no_trio() -> None:
    files = sorted((REPO / "protocols").glob("*.py")) + [REPO / f for f in COMPONENTS]
    offenders = {
        str(f.relative_to(REPO)): sorted(
            n for n in _imports(f) if n.split(".")[0] in ("trio", "trio_websocket")
        )
        for f in files
    }
    assert {f: n for f, n in offenders.items() if n} == {}


def test_nothing_in_production_imports_trio_testing() -> None:
    files = sorted((REPO / "actors").rglob("*.py")) + sorted((REPO / "protocols").rglob("*.py"))
    assert [
        str(f.relative_to(REPO)) for f in files if any(n.startswith("trio.testing") for n in _imports(f))
    ] == []


def test_the_backtest_path_loads_no_trio(tmp_path: Path) -> None:
    """Not only no direct import: nothing the kernel path imports pulls trio in, nor does a whole
    backtest run (found: the config's check of the mock's start prices imported the mock source,
    and trio with it)."""
    data = tmp_path / "bars.csv"
    rows = [f"{1_704_067_200_000 + k * 60_000},100.0,101.0,99.0,100.5,1.0" for k in range(30)]
    data.write_text("open_time_ms,open,high,low,close,volume\n" + "\n".join(rows) + "\n")
    argv = ["--mode", "backtest", "--data", str(data), "--run-dir", str(tmp_path / "runs")]
    argv += ["--set", "session.interval=1m", "--set", f"session.kill_switch={tmp_path / 'kill.txt'}"]
    code = (
        "import sys, actors.main, actors.session, actors.kernel, actors.strategies\n"
        "loaded = lambda: sorted(m for m in sys.modules if m.split('.')[0] in ('trio', 'trio_websocket', 'httpx'))\n"
        "print(loaded())\n"
        f"code = actors.main.main({argv!r})\n"
        "print(code, loaded())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=cli_env(), capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[0] == "[]", out.stdout  # imported
    assert out.stdout.strip().splitlines()[-1] == "0 []", out.stdout  # after a whole backtest


def test_the_conftests_longest_tests_exist() -> None:
    """`LONGEST_FIRST` names tests by node id: a renamed test would silently lose its place at the
    head of a worker's queue (and the suite its 5-minute margin)."""
    from tests.conftest import LONGEST_FIRST

    for node_id in LONGEST_FIRST:
        module, name = node_id.split("::")
        defined = {
            node.name
            for node in ast.walk(ast.parse((REPO / "tests" / module).read_text()))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        assert name in defined, node_id


def test_the_real_time_tests_are_dealt_over_every_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """`order_for_worksteal`: each long test heads a chunk as the scheduler will cut them, and the
    other real-time tests are spread over the chunks (none behind the longest), the quick ones
    after them."""
    from tests.conftest import LONGEST_FIRST, SLOW_SECONDS, _chunk_starts, order_for_worksteal

    class Item:
        def __init__(self, nodeid: str, slow: bool) -> None:
            self.nodeid, self.slow = nodeid, slow

        def get_closest_marker(self, name: str) -> object | None:
            return (name == "slow" and self.slow) or None

    longest = [Item(f"tests/{node_id}", True) for node_id in LONGEST_FIRST]
    slow = [Item(f"tests/test_feed.py::test_wait_{k}", True) for k in range(40)]  # one module
    quick = [Item(f"tests/test_quick.py::test_{k}", False) for k in range(400)]
    items = [*quick[:200], *slow, *longest, *quick[200:]]
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "6")
    order_for_worksteal(items)  # type: ignore[arg-type]

    assert sorted(i.nodeid for i in items) == sorted(i.nodeid for i in [*quick, *slow, *longest])
    bounds = [*_chunk_starts(len(items), 6), len(items)]
    chunks = [items[lo:hi] for lo, hi in itertools.pairwise(bounds)]
    assert chunks[0][0].nodeid.endswith("test_three_strategies_on_two_symbols_live_for_three_minutes")
    assert all(chunk[0] in longest for chunk in chunks)  # a long test at the head of each
    waiting = [sum(i in slow for i in chunk) for chunk in chunks]
    assert waiting[0] == 0 and sum(waiting) == 40, waiting  # none behind the 3-minute test
    # the seconds each chunk waits (its long tests' and SLOW_SECONDS a real-time test) level
    seconds = [
        sum(LONGEST_FIRST[i.nodeid.split("/")[-1]] for i in chunk if i in longest) + SLOW_SECONDS * n
        for chunk, n in zip(chunks, waiting, strict=True)
    ]
    assert max(seconds[1:]) - min(seconds[1:]) <= SLOW_SECONDS, seconds
    for chunk in chunks:  # in each: long, then real-time, then quick
        kinds = [0 if i in longest else 1 if i in slow else 2 for i in chunk]
        assert kinds == sorted(kinds)
