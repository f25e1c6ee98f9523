"""Benchmarks, printed as figures: `nox -s bench` (or `python -m tools.bench`).

1. The peer job from `../shared/bench/peers/` (EMA 20/50 crossover, 0.01 BTC, 0.06 % taker fee, fills
   at the signal candle's close, no latency or slippage) through the full actor pipeline, on the
   peers' own generated bars (100,000 and 500,000): fills (one by one) and final equity against
   `reference_loop.py` (to the cent), candles/s beside NautilusTrader's measured in the same run,
   peak memory.
2. Backtest throughput on the real 1-minute data in `../shared/data/` (honest defaults).
3. A 10-minute mock session's peak RSS (on a virtual clock: same work, no waiting).
4. The live path's tick-to-order latency, p50 and p99, from a real-time mock session.
5. Where a throughput target is missed: a cProfile summary of the pipeline (where the time goes).

Each measurement runs in a fresh process (tools/bench_child.py). Peers that are not installed in
this interpreter are reported as skipped. `--quick`: a smoke run (20,000 candles, no peers, no real
data, a short latency session). `--json FILE` keeps every figure.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PEERS = SHARED / "bench" / "peers"
REAL_DATA = ["btcusdt_perp_1m.csv.gz", "btcusdt_1m.csv.gz"]

# The peers' strategy (peers/common.py) as config keys.
PEER_JOB = [
    "strategy.fast_period=20",
    "strategy.slow_period=50",
    "strategy.order_qty=0.01",
    "strategy.stop_loss_pct=0",
    "strategy.take_profit_pct=0",
    "risk.sizing=fixed",
    "broker.starting_equity=100000",
    "broker.taker_fee_bps=6",
    "broker.backtest_fill=close",
    "broker.latency_ms=0",
    "broker.latency_jitter_ms=0",
    "broker.slippage_bps=0",
    "risk.max_position_size=1",
    "risk.max_notional=1000000",
    "risk.max_leverage=100",
    "risk.max_orders_per_minute=600",
    "risk.max_loss_pct=100",
    "risk.max_daily_drawdown_pct=100",
    "risk.max_consecutive_losses=0",
]
FAST, SLOW, QTY, FEE_RATE, START_CASH = 20, 50, 0.01, 0.0006, 100_000.0
# Real data, honest defaults (next-open fills, latency, slippage, risk sizing, stop and target),
# with the stop conditions off so that every candle is read.
REAL_JOB = ["risk.max_loss_pct=100", "risk.max_daily_drawdown_pct=100", "risk.max_consecutive_losses=0"]

# Targets (the issue): throughput >= 3x NautilusTrader's, memory in MB (10^6 bytes).
SPEEDUP_TARGET = 3.0
RSS_500K_TARGET_MB = 300.0
RSS_MOCK10_TARGET_MB = 150.0
P99_TARGET_MS = 5.0
PROFILE_CANDLES = 50_000


def _sets(sets: list[str]) -> list[str]:
    return [arg for s in sets for arg in ("--set", s)]


def _run_json(cmd: list[str], cwd: Path, timeout: float = 3600) -> dict[str, Any]:
    """Run one measurement process; its last line starting with `{` is its result."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env = {k: v for k, v in env.items() if not k.startswith("LAPTOP_AGENTS__")}
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s: {' '.join(cmd)}"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        return {"error": " / ".join(tail[-3:])[-400:] or f"exit code {proc.returncode}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def child(*args: str, timeout: float = 3600) -> dict[str, Any]:
    return _run_json([sys.executable, "-m", "tools.bench_child", *args], cwd=REPO, timeout=timeout)


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# --- machine --------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "?"
    mem_gib = math.nan
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    versions = {}
    for dist in ("btc-laptop-agents", "trio", "nautilus_trader", "pandas", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return {
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gib": round(mem_gib, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


# --- bars and the reference ----------------------------------------------------------------------


def generate_bars(n: int, path: Path) -> str:
    """The peers' bars (gen_bars.py, numpy) when numpy is here; otherwise seeded GBM bars of the same
    shape in pure Python (a smoke run only: not the peers' data). Returns how they were made."""
    if have("numpy") and (PEERS / "gen_bars.py").exists():
        proc = subprocess.run(
            [sys.executable, str(PEERS / "gen_bars.py"), str(n), str(path)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        if proc.returncode == 0:
            return "peers/gen_bars.py"
    rng = random.Random(7)
    close, sigma = 60_000.0, 0.0008
    with path.open("w", newline="\n") as f:
        f.write("open_time_ms,open,high,low,close,volume\n")
        for i in range(n):
            o = close
            close = round(o * math.exp(sigma * rng.gauss(0, 1)), 1)
            h = math.ceil(max(o, close) * (1 + abs(rng.gauss(0, 1)) * sigma / 2) * 10) / 10
            lo = math.floor(min(o, close) * (1 - abs(rng.gauss(0, 1)) * sigma / 2) * 10) / 10
            vol = max(round(math.exp(1 + 0.75 * rng.gauss(0, 1)), 3), 0.001)
            f.write(f"{1_704_067_200_000 + 60_000 * i},{o:.1f},{h:.1f},{lo:.1f},{close:.1f},{vol:.3f}\n")
    return "pure-Python GBM (numpy missing: not the peers' bars)"


def reference_fills(path: Path) -> tuple[list[tuple[int, str, float, float]], float]:
    """reference_loop.py's rules over the bar file, keeping each fill: (candle close time ms, side,
    qty, price), and the final equity. Checked against reference_loop.py's own fill count and
    equity when it runs. Streams the file, so that this process stays small: a child's `ru_maxrss`
    (what the peers report) counts this process's RSS at the fork."""
    af, as_ = 2.0 / (FAST + 1), 2.0 / (SLOW + 1)
    ef = es = c = math.nan
    cash, pos, prev = START_CASH, 0.0, None
    fills: list[tuple[int, str, float, float]] = []
    with path.open(newline="") as f:
        reader = csv.reader(f)
        next(reader)
        for i, row in enumerate(reader):
            c = float(row[4])
            if i == 0:
                ef = es = c
            ef = af * c + (1.0 - af) * ef
            es = as_ * c + (1.0 - as_) * es
            if i < SLOW - 1:
                continue
            d = ef - es
            t = int(row[0]) + 60_000
            if prev is not None:
                if prev < 0.0 < d and pos <= 0.0:
                    if pos < 0.0:
                        cash -= QTY * c + QTY * c * FEE_RATE
                        fills.append((t, "buy", QTY, c))
                    cash -= QTY * c + QTY * c * FEE_RATE
                    pos = QTY
                    fills.append((t, "buy", QTY, c))
                elif prev > 0.0 > d and pos >= 0.0:
                    if pos > 0.0:
                        cash += QTY * c - QTY * c * FEE_RATE
                        fills.append((t, "sell", QTY, c))
                    cash += QTY * c - QTY * c * FEE_RATE
                    pos = -QTY
                    fills.append((t, "sell", QTY, c))
            prev = d
    return fills, cash + pos * c


def our_fills(run_path: Path) -> list[tuple[int, str, float, float]]:
    """The strategy's fills (flatten-on-exit left out): (time ms, side, qty, price)."""
    fills = []
    with (run_path / "events.jsonl").open() as f:
        for line in f:
            if '"order.filled"' not in line:
                continue
            e = json.loads(line)
            if e["kind"] != "order.filled" or e["reason"] == "flatten_on_exit":
                continue
            ts = datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp()
            fills.append((round(ts * 1000), e["side"], round(e["qty"], 8), e["fill_price"]))
    return fills


def compare_fills(
    ours: list[tuple[int, str, float, float]], ref: list[tuple[int, str, float, float]]
) -> str | None:
    """None when the fills are the same, one by one; else where they first differ."""
    for i, (a, b) in enumerate(zip(ours, ref, strict=False)):
        if a[0] != b[0] or a[1] != b[1] or abs(a[2] - b[2]) > 1e-9 or abs(a[3] - b[3]) > 1e-6:
            return f"fill {i + 1}: ours {a}, reference {b}"
    if len(ours) != len(ref):
        return f"{len(ours)} fills, reference {len(ref)}"
    return None


# --- the measurements ----------------------------------------------------------------------------


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median `run_s` (of an even number, the slower middle one), with every
    run's time in `runs_s`; the first failure when none succeeded."""
    ok = sorted((r for r in runs if "run_s" in r), key=lambda r: r["run_s"])
    if not ok:
        return runs[0]
    return ok[len(ok) // 2] | {"runs_s": [r["run_s"] for r in runs if "run_s" in r]}


def bench_peer_job(n: int, work: Path, with_peers: bool, reps: int = 1) -> dict[str, Any]:
    data = work / f"bars_{n}.csv"
    made_by = generate_bars(n, data)
    out: dict[str, Any] = {"n": n, "bars": made_by}
    ref_fills, ref_equity = reference_fills(data)
    if have("pandas") and (PEERS / "reference_loop.py").exists():
        ref = _run_json([sys.executable, "reference_loop.py", str(data)], cwd=PEERS)
    else:
        ref = {
            "skipped": "pandas not installed here (reference_loop.py needs it); the same rules run in-process"
        }
    if "fills" in ref and (ref["fills"] != len(ref_fills) or abs(ref["final_equity"] - ref_equity) > 1e-3):
        ref["warning"] = f"in-process reference disagrees: {len(ref_fills)} fills, {ref_equity:.4f}"
    out["reference_loop"] = ref
    out["reference_in_process"] = {"fills": len(ref_fills), "final_equity": round(ref_equity, 6)}
    naut_ok = with_peers and have("nautilus_trader")
    if not with_peers:
        out["nautilus_trader"] = {"skipped": "--quick"}
    elif not naut_ok:
        out["nautilus_trader"] = {
            "skipped": "nautilus_trader not installed in this interpreter (nox -s bench installs it)"
        }
    # each engine `reps` times, one after the other in turn (a shared machine drifts), the median
    # reported; every one of our runs is checked fill by fill
    naut_runs: list[dict[str, Any]] = []
    our_runs: list[dict[str, Any]] = []
    for rep in range(reps):
        if naut_ok:
            naut_runs.append(_run_json([sys.executable, "bench_nautilus.py", str(data)], cwd=PEERS))
        run = child("backtest", str(data), str(work / f"runs_{n}_{rep}"), *_sets(PEER_JOB))
        if "error" not in run:
            mismatch = compare_fills(our_fills(Path(run["run_path"])), ref_fills)
            equity_diff = run["final_equity"] - ref_equity
            run["fills_match"] = mismatch is None
            run["fills_mismatch"] = mismatch
            run["equity_diff"] = round(equity_diff, 6)
            run["equity_match"] = abs(equity_diff) < 0.005  # the same to the cent
            shutil.rmtree(run["run_path"], ignore_errors=True)
        our_runs.append(run)
    if naut_runs:
        out["nautilus_trader"] = median_run(naut_runs)
    mine = median_run(our_runs)
    if "error" not in mine:
        # the figures of the median run; the checks must hold for every run
        mine["fills_match"] = all(r.get("fills_match") for r in our_runs)
        mine["equity_match"] = all(r.get("equity_match") for r in our_runs)
        mine["fills_mismatch"] = next(
            (r["fills_mismatch"] for r in our_runs if r.get("fills_mismatch")), None
        )
        naut = out["nautilus_trader"]
        if "bars_per_s" in naut:
            mine["x_nautilus"] = round(mine["candles_per_s"] / naut["bars_per_s"], 2)
            if "load_s" in naut and "prep_s" in naut:
                # like for like: our run reads the CSV and sets up too; Nautilus's run() does not
                whole = naut["load_s"] + naut["prep_s"] + naut["run_s"]
                mine["x_nautilus_with_load"] = round(mine["candles_per_s"] / (n / whole), 2)
    out["ours"] = mine
    floor = child("floor", str(data), *_sets(PEER_JOB))
    if "final_equity" in floor:
        floor["equity_diff"] = round(floor["final_equity"] - ref_equity, 6)
        floor["fills_match"] = floor["fills"] == len(ref_fills)
    out["floor"] = floor
    return out


def bench_profile(data: Path, work: Path, n: int) -> dict[str, Any]:
    """The pipeline under cProfile on the first PROFILE_CANDLES candles of the peer job."""
    m = min(n, PROFILE_CANDLES)
    prefix = work / f"bars_{m}_profile.csv"
    with data.open() as src, prefix.open("w") as dst:
        for i, line in enumerate(src):
            if i > m:
                break
            dst.write(line)
    r = child(
        "backtest",
        str(prefix),
        str(work / "runs_profile"),
        *_sets(PEER_JOB),
        "--profile",
        str(work / "profile.pstats"),
    )
    return r.get("profile", r) | {"candles": m, "run_s_profiled": r.get("run_s")}


def bench_real_data(work: Path) -> list[dict[str, Any]]:
    rows = []
    for name in REAL_DATA:
        data = SHARED / "data" / name
        if not data.exists():
            rows.append({"file": name, "skipped": f"{data} not found (../shared beside the repo)"})
            continue
        r = child("backtest", str(data), str(work / f"runs_{name}"), *_sets(REAL_JOB))
        if "run_path" in r:
            shutil.rmtree(r["run_path"], ignore_errors=True)
        rows.append({"file": name, **r})
    return rows


# --- output ----------------------------------------------------------------------------------------


def _f(x: Any, fmt: str = ",.0f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _runs_note(result: dict[str, Any]) -> str:
    """ "median of 3 runs (a, b, c s)" when the figure is a median, else ""."""
    runs = result.get("runs_s", ())
    return f"median of {len(runs)} runs ({', '.join(f'{t:.2f}' for t in runs)} s)" if len(runs) > 1 else ""


def peer_rows(results: list[dict[str, Any]]) -> list[str]:
    rows = [
        "| N bars | engine | run_s | candles/s | fills | final equity USDT | peak RSS MiB | notes |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        n = f"{r['n']:,}"
        for name in ("reference_loop", "nautilus_trader"):
            p = r[name]
            if "run_s" not in p:
                reason = p.get("skipped") or p.get("error", "?")
                rows.append(f"| {n} | {name} | - | - | - | - | - | skipped: {reason} |")
                continue
            note = "run() only: CSV parse and engine setup not timed" if name == "nautilus_trader" else ""
            if _runs_note(p):
                note += f"; {_runs_note(p)}"
            note += p.get("warning", "")
            rows.append(
                f"| {n} | {name} {p.get('version', '').strip('-')}".rstrip()
                + f" | {p['run_s']:.3f} | {p['bars_per_s']:,.0f} | "
                f"{p['fills']} | {p['final_equity']:.4f} | {p['peak_rss_mib']:.0f} | {note} |"
            )
        ri = r["reference_in_process"]
        m = r["ours"]
        if "error" in m:
            rows.append(f"| {n} | btc-laptop-agents | - | - | - | - | - | FAILED: {m['error']} |")
        else:
            notes = [
                "fills match one by one" if m["fills_match"] else f"fills DIFFER: {m['fills_mismatch']}",
                f"equity {'matches' if m['equity_match'] else 'DIFFERS'} ({m['equity_diff']:+.6f})",
                f"+1 flatten-on-exit fill ({m['fills']} in report)" if m["flatten_fill"] else "",
                f"**{m['x_nautilus']:.2f}x NautilusTrader**" if "x_nautilus" in m else "",
                f"{m['x_nautilus_with_load']:.2f}x its CSV load + setup + run()"
                if "x_nautilus_with_load" in m
                else "",
                f"{m['candles'] / m['cpu_s']:,.0f} candles per CPU-s",
                "timed: whole CLI run incl. CSV parse and run folder",
                _runs_note(m),
            ]
            rows.append(
                f"| {n} | btc-laptop-agents (actor pipeline) | {m['run_s']:.3f} | {m['candles_per_s']:,.0f} | "
                f"{m['fills'] - (1 if m['flatten_fill'] else 0)} | {m['final_equity']:.4f} | "
                f"{m['peak_rss_mib']:.0f} | {'; '.join(x for x in notes if x)} |"
            )
        fl = r["floor"]
        if "run_s" in fl:
            rows.append(
                f"| {n} | (floor: same classes, synchronous loop, not the pipeline) | {fl['run_s']:.3f} | "
                f"{fl['candles_per_s']:,.0f} | {fl['fills']} | {fl['final_equity']:.4f} | "
                f"{fl['peak_rss_mib']:.0f} | equity diff {fl['equity_diff']:+.6f} |"
            )
        if r["bars"] != "peers/gen_bars.py":
            rows.append(f"| {n} | (bars) | | | {ri['fills']} | {ri['final_equity']:.4f} | | {r['bars']} |")
    return rows


def real_rows(results: list[dict[str, Any]]) -> list[str]:
    rows = [
        "| data | candles | run_s | candles/s | peak RSS MiB | fills | trades | stop |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if "run_s" not in r:
            rows.append(f"| {r['file']} | - | - | - | - | - | - | {r.get('skipped') or r.get('error')} |")
            continue
        rows.append(
            f"| {r['file']} | {r['candles']:,} | {r['run_s']:.2f} | {r['candles_per_s']:,.0f} | "
            f"{r['peak_rss_mib']:.0f} | {r['fills']} | {r['trade_count']} | {r['stop_reason']} |"
        )
    return rows


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its figure and whether it is met (None: not measured)."""
    out = []
    for r in res.get("peer_job", []):
        m, n = r["ours"], r["n"]
        ok = "error" not in m
        out.append(
            {
                "target": f"same fills and final equity as reference_loop.py to the cent, {n:,} candles",
                "figure": (
                    f"fills {'match' if m['fills_match'] else 'differ'}, equity diff {m['equity_diff']:+.6f}"
                    if ok
                    else m["error"]
                ),
                "met": ok and m["fills_match"] and m["equity_match"],
            }
        )
        out.append(
            {
                "target": f"candles/s >= {SPEEDUP_TARGET:g}x NautilusTrader's, {n:,} candles",
                "figure": (
                    f"{m['candles_per_s']:,.0f} vs {r['nautilus_trader']['bars_per_s']:,.0f} = "
                    f"{m['x_nautilus']:.2f}x (its run() only"
                    + (
                        f"; with its CSV load and setup, as ours includes: {m['x_nautilus_with_load']:.2f}x)"
                        if "x_nautilus_with_load" in m
                        else ")"
                    )
                    if "x_nautilus" in m
                    else "NautilusTrader not measured"
                ),
                "met": m["x_nautilus"] >= SPEEDUP_TARGET if "x_nautilus" in m else None,
            }
        )
        if n == 500_000:
            out.append(
                {
                    "target": f"peak RSS < {RSS_500K_TARGET_MB:g} MB at 500,000 candles",
                    "figure": f"{m['peak_rss_mb']:.0f} MB" if ok else "-",
                    "met": ok and m["peak_rss_mb"] < RSS_500K_TARGET_MB,
                }
            )
    for key, what in (("mock10", ""), ("mock10_trading", ", trading often")):
        mock = res.get(key)
        if mock is None:
            continue
        out.append(
            {
                "target": f"10-minute mock session{what}: peak RSS < {RSS_MOCK10_TARGET_MB:g} MB",
                "figure": f"{mock['peak_rss_mb']:.0f} MB" if "peak_rss_mb" in mock else mock.get("error"),
                "met": mock["peak_rss_mb"] < RSS_MOCK10_TARGET_MB if "peak_rss_mb" in mock else False,
            }
        )
    lat = res.get("latency")
    if lat is not None:
        out.append(
            {
                "target": f"tick-to-order latency p99 < {P99_TARGET_MS:g} ms",
                "figure": (
                    f"p50 {lat['p50_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms ({lat['n']} orders)"
                    if "p99_ms" in lat
                    else lat.get("error")
                ),
                "met": lat["p99_ms"] < P99_TARGET_MS if "p99_ms" in lat else False,
            }
        )
    return out


def profile_rows(p: dict[str, Any]) -> list[str]:
    if "groups" not in p:
        return [f"profile failed: {p.get('error')}"]
    rows = [
        f"cProfile of the pipeline, peer job, first {p['candles']:,} candles (profiled run "
        f"{p['run_s_profiled']:.1f} s; {p['profiled_s']:.1f} s of own time counted); "
        f"{p['scheduler_batches'] / p['candles']:.1f} scheduler batches and "
        f"{p['task_switches'] / p['candles']:.1f} task switches per candle",
        "",
        "| where | own time s | share |",
        "|---|---:|---:|",
    ]
    rows += [f"| {k} | {v['tottime_s']:.2f} | {v['pct']:.1f} % |" for k, v in p["groups"].items()]
    rows += ["", "| function | calls | own s | cum s | share |", "|---|---:|---:|---:|---:|"]
    rows += [
        f"| `{t['function']}` | {t['ncalls']:,} | {t['tottime_s']:.2f} | {t['cumtime_s']:.2f} | {t['pct']:.1f} % |"
        for t in p["top"][:15]
    ]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 20,000 candles, no peers or real data"
    )
    parser.add_argument("--sizes", type=int, nargs="+", help="peer-job sizes (default 100000 500000)")
    parser.add_argument(
        "--reps",
        type=int,
        default=None,
        help="runs of each engine per peer-job size, median reported (default 3; --quick: 1)",
    )
    parser.add_argument(
        "--only",
        choices=["peers", "real", "session"],
        nargs="+",
        help="which parts to run (default: all; --quick: peers and session)",
    )
    parser.add_argument("--latency-seconds", type=float, help="length of the latency session (default 180)")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, help="profile the pipeline")
    parser.add_argument("--json", metavar="FILE", help="write every figure here")
    parser.add_argument("--work", metavar="DIR", help="keep the data and run folders here (default: temp)")
    args = parser.parse_args(argv)
    quick = args.quick
    sizes = args.sizes or ([20_000] if quick else [100_000, 500_000])
    args.reps = args.reps or (1 if quick else 3)
    latency_s = args.latency_seconds or (8.0 if quick else 180.0)
    only = set(args.only or (["peers", "session"] if quick else ["peers", "real", "session"]))

    res: dict[str, Any] = {"machine": machine(), "quick": quick}
    m = res["machine"]
    print(f"# btc-laptop-agents benchmark, {m['date_utc']} UTC{' (--quick)' if quick else ''}")
    print(
        f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['mem_gib']} GiB RAM, Python {m['python']}, "
        f"{m['platform']}; load average at start {m['loadavg_start']}"
    )
    print("versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()), flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if "peers" in only:
            res["peer_job"] = []
            print("\n## Peer job: EMA 20/50 crossover, 0.01 BTC, 0.06 % fee, fills at the signal close\n")
            for i, n in enumerate(sizes):
                print(f"... {n:,} candles", file=sys.stderr, flush=True)
                r = bench_peer_job(n, work, with_peers=not quick, reps=args.reps)
                res["peer_job"].append(r)
                for row in peer_rows([r])[0 if i == 0 else 2 :]:
                    print(row, flush=True)
        if "real" in only:
            print("\n## Real 1-minute data, honest defaults (next-open fills, latency, slippage, SL/TP)\n")
            res["real"] = bench_real_data(work)
            print("\n".join(real_rows(res["real"])), flush=True)
        if "session" in only:
            print("\n## Sessions\n", flush=True)
            for key, extra in (("mock10", []), ("mock10_trading", ["--trades-often"])):
                res[key] = child("mock10", str(work / f"runs_{key}"), *extra)
                mk = res[key]
                what = "config/live.toml" if not extra else "trading often: 2 s candles, EMA 2/5"
                print(
                    f"10-minute mock session ({what}, virtual clock): peak RSS {mk['peak_rss_mib']:.0f} MiB "
                    f"= {mk['peak_rss_mb']:.0f} MB; {mk['events']} events, {mk['fills']} fills, "
                    f"{mk['wall_s']:.2f} s wall"
                    if "peak_rss_mib" in mk
                    else f"10-minute mock session ({what}): FAILED: {mk.get('error')}",
                    flush=True,
                )
            res["latency"] = child(
                "latency",
                str(work / "runs_latency"),
                "--seconds",
                str(latency_s),
                timeout=latency_s + 120,
            )
            lat = res["latency"]
            print(
                f"tick-to-order latency ({lat['session_s']:.0f} s real-time mock session, {lat['n']} orders): "
                f"p50 {lat['p50_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms, max {lat['max_ms']:.3f} ms; "
                f"from the tick's due time (incl. the feed's timer wake-up): p50 {lat['due_p50_ms']:.3f} ms, "
                f"p99 {lat['due_p99_ms']:.3f} ms; peak RSS {lat['peak_rss_mib']:.0f} MiB"
                if "p99_ms" in lat
                else f"latency: FAILED: {lat.get('error')}",
                flush=True,
            )
        res["targets"] = targets(res)
        missed_speed = any(t["met"] is False and t["target"].startswith("candles/s") for t in res["targets"])
        if "peers" in only and (args.profile or (args.profile is None and missed_speed)):
            print("\n## Where the time goes\n", flush=True)
            big = max(sizes)
            res["profile"] = bench_profile(work / f"bars_{big}.csv", work, big)
            print("\n".join(profile_rows(res["profile"])), flush=True)
    res["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    res["total_s"] = round(time.perf_counter() - t0, 1)
    print("\n## Targets\n")
    print("| target | figure | met |\n|---|---|---|")
    for t in res["targets"]:
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        print(f"| {t['target']} | {t['figure']} | {met} |")
    print(f"\nload average at end {res['machine']['loadavg_end']}; {res['total_s']:.0f} s in all")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    correctness = [t for t in res["targets"] if t["target"].startswith("same fills")]
    return 1 if any(t["met"] is False for t in correctness) else 0


if __name__ == "__main__":
    sys.exit(main())
