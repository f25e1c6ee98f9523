"""`python -m tools.bench --quick` runs end to end: the figures exist and the reference check passes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, cli_env


def test_quick_bench_prints_the_figures_and_matches_the_reference(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["--quick", "--sizes", "5000", "--reps", "2", "--latency-seconds", "6", "--json", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "tools.bench", *args, "--work", str(tmp_path / "work")],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads(out.read_text())
    job = res["peer_job"][0]
    ours = job["ours"]
    # the whole CLI process, measured from outside: wall, CPU and its own peak RSS
    assert ours["candles"] == 5000 and ours["candles_per_s"] > 0 and ours["wall_s"] > 0
    assert ours["cpu_s"] > 0 and ours["peak_rss_mb"] > 0 and ours["rss_own"]
    assert ours["peak_rss_mb"] > ours["launcher_hwm_kib"] * 1024 / 1e6
    assert ours["fills_match"] and ours["equity_match"], ours
    assert ours["fills"] - ours["flatten_fill"] == job["reference_in_process"]["fills"]
    assert abs(ours["final_equity"] - job["reference_in_process"]["final_equity"]) < 0.005
    assert len(ours["runs_s"]) == 2 and ours["wall_s"] == max(ours["runs_s"])  # the median of two: the slower
    assert job["backtesting_py"] == {"skipped": "--quick"} and job["nautilus_trader"] == {
        "skipped": "--quick"
    }
    assert "real" not in res
    # which build its CLI ran, said in the header and kept: here the sources (an editable install);
    # `nox -s bench` installs the compiled build (setup.py) and says "compiled (mypyc)"
    assert res["build"] == {"build": "interpreted", "from": str(REPO)}
    assert f"build of the project the CLI runs: interpreted, from {REPO}" in proc.stdout
    assert res["mock10"]["session_s"] == 600 and res["mock10"]["peak_rss_mb"] > 0
    lat = res["latency"]
    assert lat["n"] >= 1 and lat["p99_ms"] >= lat["p50_ms"] > 0 and lat["due_p50_ms"] > 0
    assert "## Targets" in proc.stdout
    assert "PASS         5,000 candles: the same fills and final equity as reference_loop.py" in proc.stdout


def test_the_bench_runs_every_strategy_kind_over_the_real_data() -> None:
    from actors.config import STRATEGY_KINDS
    from tools import bench

    assert bench.STRATEGY_KINDS == STRATEGY_KINDS
