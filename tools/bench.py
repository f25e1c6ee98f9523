"""Benchmarks, printed as figures: `nox -s bench` (or `python -m tools.bench`).

1. The peer job from `../shared/bench/peers/` (EMA 20/50 crossover, 0.01 BTC, 0.06 % taker fee, fills
   at the signal candle's close, no latency or slippage) through the full actor pipeline, on the
   peers' own generated bars (100,000 and 500,000): fills and final equity against
   `reference_loop.py` (to the cent), candles/s beside NautilusTrader's measured in the same run,
   peak memory.
2. Backtest throughput on the real 1-minute data in `../shared/data/`.
3. A 10-minute mock session's peak RSS (on a virtual clock: same work, no waiting).
4. The live path's tick-to-order latency, p50 and p99, from a real-time mock session.

Each measurement runs in a fresh process. Peers that are not installed are reported as skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PEERS = SHARED / "bench" / "peers"

PEER_JOB = [
    "--set",
    "strategy.fast_period=20",
    "--set",
    "strategy.slow_period=50",
    "--set",
    "strategy.order_qty=0.01",
    "--set",
    "strategy.sizing=fixed",
    "--set",
    "broker.starting_equity=100000",
    "--set",
    "broker.taker_fee_bps=6",
    "--set",
    "broker.backtest_fill=close",
    "--set",
    "broker.latency_ms=0",
    "--set",
    "broker.latency_jitter_ms=0",
    "--set",
    "broker.slippage_bps=0",
    "--set",
    "risk.max_position_size=1",
    "--set",
    "risk.max_notional=1000000",
    "--set",
    "risk.max_leverage=100",
    "--set",
    "risk.max_orders_per_minute=600",
    "--set",
    "risk.max_loss_pct=100",
    "--set",
    "risk.max_daily_drawdown_pct=100",
    "--set",
    "risk.max_consecutive_losses=0",
]


def _run_json(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a benchmark process; its last line starting with `{` is its result."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=3600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr or proc.stdout)[-800:]}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def ours(data: Path, run_dir: Path, extra: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "tools.bench_child", "backtest", str(data), str(run_dir), *extra]
    return _run_json(cmd, cwd=REPO)


def peer(script: str, data: Path) -> dict[str, Any]:
    if not (PEERS / script).exists():
        return {"error": f"{PEERS / script} not found"}
    return _run_json([sys.executable, script, str(data)], cwd=PEERS)


def pre_flatten_equity(run: Path) -> float:
    """Equity marked at the last close before flatten-on-exit's fee (the peers' final-equity rule)."""
    report = json.loads((run / "final_report.json").read_text())
    equity = report["ending_equity"]
    with (run / "events.jsonl").open() as f:
        for line in f:
            event = json.loads(line)
            if event["kind"] == "order.filled" and event.get("reason") == "flatten_on_exit":
                equity += event["fee"]
    return float(equity)


def bench_peer_job(sizes: list[int], work: Path) -> list[str]:
    rows = [
        "| N bars | engine | run_s | candles/s | fills | final equity | peak RSS MiB | notes |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for n in sizes:
        data = work / f"bars_{n}.csv"
        gen = subprocess.run(
            [sys.executable, "gen_bars.py", str(n), str(data)], cwd=PEERS, capture_output=True, text=True
        )
        if gen.returncode != 0:
            rows.append(
                f"| {n:,} | - | - | - | - | - | - | gen_bars.py failed: {gen.stderr.strip()[-200:]} |"
            )
            continue
        ref = peer("reference_loop.py", data)
        naut = peer("bench_nautilus.py", data)
        mine = ours(data, work / f"runs_{n}", PEER_JOB)
        for name, r in (("reference_loop", ref), ("nautilus_trader", naut)):
            if "error" in r:
                rows.append(
                    f"| {n:,} | {name} | - | - | - | - | - | skipped: {r['error'].splitlines()[-1][:120]} |"
                )
            else:
                rows.append(
                    f"| {n:,} | {name} | {r['run_s']:.3f} | {r['bars_per_s']:,.0f} | {r['fills']} | "
                    f"{r['final_equity']:.4f} | {r['peak_rss_mib']:.0f} | |"
                )
        if "error" in mine:
            rows.append(f"| {n:,} | btc-laptop-agents | - | - | - | - | - | failed: {mine['error'][-200:]} |")
            continue
        equity = pre_flatten_equity(Path(mine["run_path"]))
        notes = []
        if "error" not in ref:
            same = mine["fills"] == ref["fills"] + (1 if mine["flatten_fill"] else 0)
            notes.append(f"fills {'match' if same else 'DIFFER'} reference (+1 flatten)")
            notes.append(f"equity diff {equity - ref['final_equity']:+.4f}")
        if "error" not in naut:
            notes.append(f"{mine['candles_per_s'] / naut['bars_per_s']:.1f}x NautilusTrader")
        rows.append(
            f"| {n:,} | btc-laptop-agents | {mine['run_s']:.3f} | {mine['candles_per_s']:,.0f} | "
            f"{mine['fills']} | {equity:.4f} | {mine['peak_rss_mib']:.0f} | {'; '.join(notes)} |"
        )
    return rows


def bench_real_data(work: Path) -> list[str]:
    data = SHARED / "data" / "btcusdt_perp_1m.csv.gz"
    if not data.exists():
        return [f"real data: skipped ({data} not found; ../shared beside the repo)"]
    r = ours(data, work / "runs_real", [])
    if "error" in r:
        return [f"real data: failed: {r['error'][-300:]}"]
    return [
        f"real data ({data.name}, honest defaults): {r['candles']:,} candles in {r['run_s']:.2f} s = "
        f"{r['candles_per_s']:,.0f} candles/s, peak RSS {r['peak_rss_mib']:.0f} MiB, fills {r['fills']}"
    ]


def bench_session(work: Path) -> list[str]:
    r = _run_json([sys.executable, "-m", "tools.bench_child", "mock10", str(work / "runs_mock")], cwd=REPO)
    lat = _run_json(
        [sys.executable, "-m", "tools.bench_child", "latency", str(work / "runs_latency")], cwd=REPO
    )
    out = []
    out.append(
        f"10-minute mock session: peak RSS {r['peak_rss_mib']:.0f} MiB (target < 150)"
        if "error" not in r
        else f"10-minute mock session: failed: {r['error'][-300:]}"
    )
    out.append(
        f"tick-to-order latency: p50 {lat['p50_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms over {lat['n']} orders "
        "(target p99 < 5 ms)"
        if "error" not in lat
        else f"latency: failed: {lat['error'][-300:]}"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 500_000])
    parser.add_argument(
        "--only", choices=["peers", "real", "session"], nargs="+", default=["peers", "real", "session"]
    )
    args = parser.parse_args(argv)
    print(f"machine: {os.cpu_count()} cpus, {sys.version.split()[0]}, {sys.platform}")
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(tmp)
        if "peers" in args.only:
            print("\n".join(bench_peer_job(args.sizes, work)), flush=True)
        if "real" in args.only:
            print("\n".join(bench_real_data(work)), flush=True)
        if "session" in args.only:
            print("\n".join(bench_session(work)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
