"""`python -m tools.bench --quick` runs end to end: the figures exist and the equity check passes."""

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
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads(out.read_text())
    ours = res["peer_job"][0]["ours"]
    assert ours["candles"] == 5000 and ours["candles_per_s"] > 0 and ours["peak_rss_mib"] > 0
    assert ours["fills_match"] and ours["equity_match"], ours
    assert len(ours["runs_s"]) == 2 and ours["run_s"] == max(ours["runs_s"])  # the median of two: the slower
    assert abs(res["peer_job"][0]["floor"]["equity_diff"]) < 0.005
    assert res["mock10"]["session_s"] == 600 and res["mock10"]["peak_rss_mb"] > 0
    assert res["latency"]["n"] >= 1 and res["latency"]["p99_ms"] >= res["latency"]["p50_ms"] > 0
    assert "| target | figure | met |" in proc.stdout
