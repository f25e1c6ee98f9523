"""Benchmarks, printed as figures: `nox -s bench` (or `python -m tools.bench`).

1. The peer job from `../shared/bench/peers/` (EMA 20/50 crossover, 0.01 BTC, 0.06 % taker fee, fills
   at the signal candle's close, no latency or slippage) as a whole CLI process (`python -m
   actors.main --mode backtest`: start-up, CSV parse, every component, the run folder written), on
   the peers' own generated bars (100,000 and 500,000): fills (one by one) and final equity against
   `reference_loop.py` (to the cent), candles/s beside backtesting.py and NautilusTrader measured
   in the same run, CPU time and peak memory.
2. The real 1-minute data in `../shared/data/`, honest defaults, the stop conditions off, as whole
   CLI processes too.
3. A 10-minute mock session's peak RSS (on a virtual clock: same work, no waiting).
4. The live path's tick-to-order latency, p50 and p99, from a real-time mock session.
5. A sweep (`python -m tools.sweep`, issue 16) over the real data with a local Ray of 1 and of 2
   workers (trials per minute), and the per-trial overhead beside the same trials as bare CLI
   backtests.
6. With `--profile`, or when the throughput target is missed: a cProfile summary of the kernel on
   the peer job (where the time goes).

Every measured process is started by a small launcher (`tools/bench_child.py spawn`) that times it
from spawn to exit and takes its CPU time and peak RSS from `wait4`, for that process alone. Peers
that are not installed in this interpreter, or fail, are reported as skipped. `--quick`: a smoke
run (20,000 candles, no peers, no real data, a short latency session). `--json FILE` keeps every
figure.
"""

from __future__ import annotations

import argparse
import csv
import functools
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
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from actors.secrets import child_env

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
    "broker.max_volume_participation=1",  # the peers take any size at the price
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
# Each strategy kind runs over the real data (as actors.config.STRATEGY_KINDS; tests/test_bench.py
# checks they agree: this module imports nothing of the project's, so that it measures it cold).
STRATEGY_KINDS = ("ema_cross", "trend_pullback", "liquidity_sweep")

# The peers run by this benchmark: key, script, the module it needs.
PEER_ENGINES = [
    ("backtesting_py", "bench_backtesting.py", "backtesting"),
    ("nautilus_trader", "bench_nautilus.py", "nautilus_trader"),
]
ENGINE_NAMES = {
    "ours": "btc-laptop-agents (kernel, whole CLI)",
    "backtesting_py": "backtesting.py",
    "nautilus_trader": "NautilusTrader",
    "reference_loop": "reference_loop.py (plain loop, not an engine)",
}

# Targets (the issue), judged at TARGET_N candles: candles/s (the whole CLI process) at least
# SPEEDUP_TARGET x backtesting.py's run(); peak RSS in MB (10^6 bytes). Earlier issues' targets,
# still shown: the mock session's memory and the live path's latency.
TARGET_N = 500_000
SPEEDUP_TARGET = 1.5
SWEEP_SPEEDUP_TARGET = 1.6  # issue 16: a sweep with 2 workers against 1, trials per minute
RSS_TARGET_MB = 100.0
RSS_MOCK10_TARGET_MB = 150.0
P99_TARGET_MS = 5.0
PROFILE_CANDLES = 100_000
WARMUP_CANDLES = 2_000


def _sets(sets: list[str]) -> list[str]:
    return [arg for s in sets for arg in ("--set", s)]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in child_env(os.environ).items() if not k.startswith("LAPTOP_AGENTS__")}
    return env | extra


def _run_json(cmd: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one process; its last line starting with `{` is its result."""
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=timeout + 30
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s: {' '.join(cmd)}"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        return {"error": " / ".join(tail[-3:])[-400:] or f"exit code {proc.returncode}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def child(*args: str, timeout: float = 3600) -> dict[str, Any]:
    """A measurement that runs inside a fresh process of its own (tools/bench_child.py)."""
    return _run_json(
        [sys.executable, "-m", "tools.bench_child", *args],
        cwd=REPO,
        timeout=timeout,
        env=_env(PYTHONDONTWRITEBYTECODE="1"),
    )


def launch(command: list[str], cwd: Path, timeout: float = 3600, **env: str) -> dict[str, Any]:
    """`command` as a process of its own, measured from outside by the launcher (tools/bench_child.py
    spawn): wall time from spawn to exit, its CPU time, its peak RSS (`wait4`; the launcher's own
    RSS cannot count: see `bench_child.spawn`). `result`: the command's JSON line, if any."""
    r = _run_json(
        [
            sys.executable,
            "-m",
            "tools.bench_child",
            "spawn",
            "--cwd",
            str(cwd),
            "--timeout",
            f"{timeout:g}",
            "--",
            *command,
        ],
        cwd=REPO,
        timeout=timeout,
        env=_env(**env),
    )
    if "error" in r and "wall_s" not in r:
        return {"error": f"launcher: {r['error']}"}
    return r


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# The modules of a backtest's hot path that the compiled build compiles (setup.py's COMPILED has
# them all): the probe below says which build the CLI runs; under `nox -s compiled`,
# tests/conftest.py refuses to run unless they are all compiled.
HOT_MODULES = (
    "actors.kernel",
    "actors.broker.paper",
    "actors.risk.gate",
    "actors.strategies.ema_cross",
    "actors.feeds.history",
    "actors.recording.recorder",
)
_PROBE = (
    "import importlib, json\n"
    "files = {m: importlib.import_module(m).__file__ for m in %r}\n"
    "print(json.dumps(files))\n"
)


@functools.cache
def project_build(work: Path) -> dict[str, Any]:
    """Which build of the project the CLI processes run, and from where: from a folder outside the
    repository Python imports the installed package (`nox -s bench` installs the compiled build,
    setup.py); where none is installed, the repository's own sources, from the repository."""
    for cwd in (work, REPO):
        r = _run_json([sys.executable, "-c", _PROBE % (HOT_MODULES,)], cwd=cwd, timeout=60)
        if "error" not in r:
            n = sum(not str(f).endswith(".py") for f in r.values())
            kind = (
                "compiled (mypyc)"
                if n == len(HOT_MODULES)
                else f"partly compiled ({n} of {len(HOT_MODULES)} hot modules)"
                if n
                else "interpreted"
            )
            where = Path(str(r[HOT_MODULES[0]])).parents[1]
            return {"cwd": cwd, "build": kind, "from": str(where)}
    return {"cwd": REPO, "build": "unknown (the probe failed)", "from": str(REPO)}


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
    for dist in ("btc-laptop-agents", "trio", "backtesting", "nautilus_trader", "pandas", "numpy"):
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
            env=_env(PYTHONDONTWRITEBYTECODE="1"),
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


def prefix_file(data: Path, n: int, out: Path) -> Path:
    """The first `n` candles of a bar file (its header kept)."""
    with data.open() as src, out.open("w") as dst:
        for i, line in enumerate(src):
            if i > n:
                break
            dst.write(line)
    return out


Fill = tuple[int, str, float, float]


def reference_fills(path: Path) -> tuple[list[Fill], float]:
    """reference_loop.py's rules over the bar file, keeping each fill: (candle close time ms, side,
    qty, price), and the final equity. Checked against reference_loop.py's own fill count and
    equity when it runs."""
    af, as_ = 2.0 / (FAST + 1), 2.0 / (SLOW + 1)
    ef = es = c = math.nan
    cash, pos, prev = START_CASH, 0.0, None
    fills: list[Fill] = []
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


def _events(run_path: Path) -> Iterator[dict[str, Any]]:
    with (run_path / "events.jsonl").open(encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def read_run(run_path: Path) -> dict[str, Any]:
    """What a finished backtest run folder says: the report's figures, the strategy's fills
    (flatten-on-exit left out) and the peers' final equity: cash plus the position marked at the
    last close, before flatten-on-exit's fee."""
    report = json.loads((run_path / "final_report.json").read_text())
    fills: list[Fill] = []
    flatten_fee = 0.0
    flatten_fill = False
    stopped: dict[str, Any] = {}
    for e in _events(run_path):
        kind = e["kind"]
        if kind == "order.filled":
            if e["reason"] == "flatten_on_exit":
                flatten_fee += e["fee"]
                flatten_fill = True
                continue
            ts = datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp()
            fills.append((round(ts * 1000), e["side"], round(e["qty"], 8), e["fill_price"]))
        elif kind == "session.stopped":
            stopped = e
    return {
        "fills": report["fills"],
        "strategy_fills": fills,
        "flatten_fill": flatten_fill,
        "final_equity": round(stopped["ending_equity"] + flatten_fee, 6),
        "ending_equity": report["ending_equity"],
        "net_pnl": report["net_pnl"],
        "trade_count": report["trade_count"],
        "stop_reason": report["stop_reason"],
        "status": report["status"],
    }


def compare_fills(ours: list[Fill], ref: list[Fill]) -> str | None:
    """None when the fills are the same, one by one; else where they first differ."""
    for i, (a, b) in enumerate(zip(ours, ref, strict=False)):
        if a[0] != b[0] or a[1] != b[1] or abs(a[2] - b[2]) > 1e-9 or abs(a[3] - b[3]) > 1e-6:
            return f"fill {i + 1}: ours {a}, reference {b}"
    if len(ours) != len(ref):
        return f"{len(ours)} fills, reference {len(ref)}"
    return None


# --- the measurements ----------------------------------------------------------------------------


def run_cli(
    data: Path, run_dir: Path, sets: list[str], candles: int, timeout: float = 1800
) -> dict[str, Any]:
    """One backtest as a whole CLI process (`python -m actors.main --mode backtest`), measured from
    spawn to exit; then its run folder is read (not timed) and removed."""
    command = [sys.executable, "-m", "actors.main", "--mode", "backtest", "--data", str(data)]
    command += ["--run-dir", str(run_dir), "--set", "session.interval=1m"]
    command += ["--set", f"session.kill_switch={run_dir / 'kill.txt'}", *_sets(sets)]
    # run where the installed build is the one imported (`project_build`); the modules it does not
    # compile cached as bytecode (pip writes it at install; from the repository, the warm-up run),
    # even where PYTHONDONTWRITEBYTECODE is set
    cwd = project_build(run_dir.parent)["cwd"]
    r = launch(command, cwd=cwd, timeout=timeout, PYTHONDONTWRITEBYTECODE="")
    r.pop("result", None)
    run_path = (run_dir / "latest").resolve()
    if "error" not in r and not (run_path / "final_report.json").exists():
        r["error"] = "no final_report.json in the run folder"
    if "error" in r:
        return r
    r.update(read_run(run_path))
    r["candles"] = candles
    r["candles_per_s"] = round(candles / r["wall_s"], 1)
    r["candles_per_cpu_s"] = round(candles / r["cpu_s"], 1) if r["cpu_s"] > 0 else math.nan
    shutil.rmtree(run_path, ignore_errors=True)
    return r


def run_peer(script: str, data: Path, timeout: float = 3600) -> dict[str, Any]:
    """A peer's script as a process of its own: its JSON line (its own phases: load_s, prep_s,
    run_s, bars_per_s, ...) with the launcher's figures for the whole process."""
    r = launch([sys.executable, script, str(data)], cwd=PEERS, timeout=timeout, PYTHONDONTWRITEBYTECODE="1")
    own = r.pop("result", None)
    if "error" in r:
        return r
    if not own or "run_s" not in own:
        return r | {"error": f"{script} printed no result line"}
    # their own `peak_rss_mib` is RUSAGE_SELF's ru_maxrss: the same figure as the launcher's
    return {**own, "peak_rss_mib_own": own.get("peak_rss_mib"), **r}


def median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run with the median `key` time (of an even number, the slower middle one), with every
    run's time in `runs_s`; the first failure when none succeeded."""
    ok = sorted((r for r in runs if key in r and "error" not in r), key=lambda r: r[key])
    if not ok:
        return runs[0] if runs else {"error": "not run"}
    return ok[len(ok) // 2] | {"runs_s": [r[key] for r in runs if key in r and "error" not in r]}


def bench_peer_job(n: int, work: Path, with_peers: bool, reps: int = 1, warm: bool = False) -> dict[str, Any]:
    data = work / f"bars_{n}.csv"
    made_by = generate_bars(n, data)
    out: dict[str, Any] = {"n": n, "bars": made_by}
    ref_fills, ref_equity = reference_fills(data)
    if have("pandas") and (PEERS / "reference_loop.py").exists():
        ref = run_peer("reference_loop.py", data, timeout=600)
    else:
        ref = {
            "skipped": "pandas not installed here (reference_loop.py needs it); the same rules run in-process"
        }
    if "fills" in ref and (ref["fills"] != len(ref_fills) or abs(ref["final_equity"] - ref_equity) > 1e-3):
        ref["warning"] = f"in-process reference disagrees: {len(ref_fills)} fills, {ref_equity:.4f}"
    out["reference_loop"] = ref
    out["reference_in_process"] = {"fills": len(ref_fills), "final_equity": round(ref_equity, 6)}
    peers = []
    for key, script, module in PEER_ENGINES:
        if not with_peers:
            out[key] = {"skipped": "--quick"}
        elif not have(module):
            out[key] = {"skipped": f"{module} not installed in this interpreter (nox -s bench installs it)"}
        elif not (PEERS / script).exists():
            out[key] = {"skipped": f"{PEERS / script} not found"}
        else:
            peers.append((key, script))
    if warm:
        # once each, untimed, on a small prefix: bytecode compiled, interpreter and libraries in the
        # page cache, so that no engine's first timed run pays for it
        small = prefix_file(data, WARMUP_CANDLES, work / "bars_warmup.csv")
        run_cli(small, work / "runs_warmup", PEER_JOB, WARMUP_CANDLES)
        for _, script in peers:
            run_peer(script, small, timeout=600)
    # each engine `reps` times, one after the other in turn (a shared machine drifts), the median
    # reported; every one of our runs is checked fill by fill
    peer_runs: dict[str, list[dict[str, Any]]] = {key: [] for key, _ in peers}
    our_runs: list[dict[str, Any]] = []
    for rep in range(reps):
        run = run_cli(data, work / f"runs_{n}_{rep}", PEER_JOB, n)
        if "error" not in run:
            mismatch = compare_fills(run.pop("strategy_fills"), ref_fills)
            equity_diff = run["final_equity"] - ref_equity
            run["fills_match"] = mismatch is None
            run["fills_mismatch"] = mismatch
            run["equity_diff"] = round(equity_diff, 6)
            run["equity_match"] = abs(equity_diff) < 0.005  # the same to the cent
        our_runs.append(run)
        for key, script in peers:
            peer_runs[key].append(run_peer(script, data, timeout=3600))
    for key, runs in peer_runs.items():
        out[key] = median_run(runs, "run_s")
    mine = median_run(our_runs, "wall_s")
    if "error" not in mine:
        # the figures of the median run; the checks must hold for every run
        mine["fills_match"] = all(r.get("fills_match") for r in our_runs)
        mine["equity_match"] = all(r.get("equity_match") for r in our_runs)
        mine["fills_mismatch"] = next(
            (r["fills_mismatch"] for r in our_runs if r.get("fills_mismatch")), None
        )
        mine["peak_rss_mb_max"] = max(r["peak_rss_mb"] for r in our_runs if "peak_rss_mb" in r)
        mine["rss_own_all"] = all(r.get("rss_own") for r in our_runs if "peak_rss_mb" in r)
        for key, _, _ in PEER_ENGINES:
            peer = out[key]
            if "bars_per_s" in peer:
                # against its run() alone, as the peers report it; and process against process
                mine[f"x_{key}"] = round(mine["candles_per_s"] / peer["bars_per_s"], 3)
                mine[f"x_{key}_process"] = round(peer["wall_s"] / mine["wall_s"], 3)
    out["ours"] = mine
    return out


def bench_profile(data: Path, work: Path, n: int) -> dict[str, Any]:
    """The kernel under cProfile, in a fresh process, on the first PROFILE_CANDLES candles of the
    peer job."""
    m = min(n, PROFILE_CANDLES)
    prefix = prefix_file(data, m, work / f"bars_{m}_profile.csv")
    r = child(
        "profile",
        str(prefix),
        str(work / "runs_profile"),
        *_sets(PEER_JOB),
        "--out",
        str(work / "profile.pstats"),
    )
    if "run_path" in r:
        shutil.rmtree(r["run_path"], ignore_errors=True)
    return r.get("profile", r) | {"candles": m, "run_s_profiled": r.get("run_s_profiled")}


def bench_real_data(work: Path) -> list[dict[str, Any]]:
    rows = []
    for name in REAL_DATA:
        data = SHARED / "data" / name
        if not data.exists():
            rows.append({"file": name, "skipped": f"{data} not found (../shared beside the repo)"})
            continue
        count = child("count", str(data), timeout=1800)
        if "candles" not in count:
            rows.append({"file": name, **count})
            continue
        for kind in STRATEGY_KINDS:  # each strategy over the same data (issue 12)
            sets = [*REAL_JOB, f"strategy.name={kind}"]
            r = run_cli(data, work / f"runs_{name}_{kind}", sets, count["candles"], timeout=3600)
            r.pop("strategy_fills", None)
            rows.append({"file": name, "strategy": kind, "skipped_rows": count["skipped_rows"], **r})
    return rows


# --- sweeps (issue 16) ------------------------------------------------------------------------------

SWEEP_SPEC = """
[sweep]
name = "bench"
data = "{data}"
objective = "net_pnl"
min_trades = 1
sampler = "grid"
set = [{sets}]

[walk_forward]
start = "2025-05-05"
train_days = 14
test_days = 7
windows = 3

[[strategy]]
kind = "ema_cross"
[strategy.space]
fast_period = [5, 9, 13]
slow_period = [21, 34]
stop_loss_pct = [0.5, 1.0]

[[strategy]]
kind = "trend_pullback"
[strategy.space]
stop_atr_mult = [1.0, 1.5, 2.0]
target_r = [1.5, 2.0]
"""


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def bench_sweep(work: Path) -> dict[str, Any]:
    """`python -m tools.sweep` over the perpetual real data (60 trials: two strategies, grids of 12
    and 6, three walk-forward windows of 14 days in-sample and 7 out-of-sample in the data's
    longest contiguous stretch, and their out-of-sample trials: a sweep of the size sweeps have,
    over which Ray's start-up and shutdown, about 6 s, are spread) with a local Ray of 1 and of
    2 workers, whole processes (Ray's start-up included); then each of its trials as a bare CLI
    backtest, one after the other: the per-trial overhead of the sweep is its time per trial
    with 1 worker less the CLI's."""
    data = SHARED / "data" / "btcusdt_perp_1m.csv.gz"
    if not data.exists():
        return {"skipped": f"{data} not found (../shared beside the repo)"}
    if not have("ray"):
        return {"skipped": "Ray is not installed (the sweep extra)"}
    spec = work / "sweep_bench.toml"
    spec.write_text(SWEEP_SPEC.format(data=data, sets=", ".join(json.dumps(s) for s in REAL_JOB)))
    out: dict[str, Any] = {}
    for workers in (1, 2):
        folder = work / f"sweep_{workers}"
        shutil.rmtree(folder, ignore_errors=True)
        command = [sys.executable, "-m", "tools.sweep", str(spec), "--out", str(folder)]
        r = launch([*command, "--workers", str(workers), "--progress", "off"], cwd=REPO, timeout=1800)
        r.pop("result", None)
        if "error" in r:
            return {"error": f"{workers} worker(s): {r['error']}"}
        records = [json.loads(line) for line in (folder / "trials.jsonl").read_text().splitlines()]
        r["trials"] = len(records)
        r["failed"] = sum(rec["status"] != "ok" for rec in records)
        r["trials_per_min"] = round(len(records) / r["wall_s"] * 60, 2)
        out[f"workers_{workers}"] = r
        out["records"] = records
    out["speedup"] = round(out["workers_2"]["trials_per_min"] / out["workers_1"]["trials_per_min"], 2)
    # each trial as a bare CLI backtest (the same arguments: python -m actors.main --from --until ...)
    cli_s = []
    for rec in out.pop("records"):
        run_dir = work / "sweep_cli" / f"{rec['trial_id']}-{rec['phase']}"
        sets = [*REAL_JOB, f"strategy.name={rec['strategy']}"]
        sets += [f"strategy.{k}={v}" for k, v in rec["params"].items()]
        command = [sys.executable, "-m", "actors.main", "--mode", "backtest", "--data", str(data)]
        command += ["--run-dir", str(run_dir), "--from", _iso(rec["start"]), "--until", _iso(rec["end"])]
        command += ["--set", f"session.kill_switch={run_dir / 'kill.txt'}", *_sets(sets)]
        r = launch(command, cwd=REPO, timeout=600)
        if "error" in r:
            return {**out, "error": f"CLI backtest of trial {rec['trial_id']}: {r['error']}"}
        cli_s.append(r["wall_s"])
        shutil.rmtree(run_dir, ignore_errors=True)
    one = out["workers_1"]
    out["cli_mean_s"] = round(sum(cli_s) / len(cli_s), 3)
    out["sweep_per_trial_s"] = round(one["wall_s"] / one["trials"], 3)
    out["overhead_per_trial_s"] = round(out["sweep_per_trial_s"] - out["cli_mean_s"], 3)
    return out


def sweep_rows(r: dict[str, Any]) -> list[str]:
    if "workers_1" not in r:
        return [
            f"sweep: {'skipped: ' + r['skipped'] if 'skipped' in r else 'FAILED: ' + str(r.get('error'))}"
        ]
    rows = [
        "| workers | trials | whole process s (CPU s) | trials/min | peak RSS MB |",
        "|---:|---:|---:|---:|---:|",
    ]
    for workers in (1, 2):
        w = r[f"workers_{workers}"]
        rows.append(
            f"| {workers} | {w['trials']} ({w['failed']} failed) | {w['wall_s']:.1f} ({w['cpu_s']:.1f}) | "
            f"{w['trials_per_min']:.1f} | {w['peak_rss_mb']:.0f} |"
        )
    rows.append("")
    rows.append(
        f"2 workers: {r['speedup']:.2f}x the trials per minute of 1 (Ray's start-up included). Per trial, "
        f"1 worker: {r['sweep_per_trial_s']:.2f} s in the sweep against {r['cli_mean_s']:.2f} s as a bare "
        f"CLI backtest (the same trials, one process each): {r['overhead_per_trial_s']:+.2f} s of overhead "
        "per trial (Ray's start-up and the data read once, spread over the trials; less than one CLI "
        "start-up each)"
        if "cli_mean_s" in r
        else f"2 workers: {r['speedup']:.2f}x; CLI comparison failed: {r.get('error')}"
    )
    return rows


# --- output ----------------------------------------------------------------------------------------


def _runs_note(result: dict[str, Any]) -> str:
    """ "median of 3 (a, b, c s)" when the figure is a median, else ""."""
    runs = result.get("runs_s", ())
    return f"median of {len(runs)} ({', '.join(f'{t:.2f}' for t in runs)} s)" if len(runs) > 1 else ""


def _rss(r: dict[str, Any]) -> str:
    if "peak_rss_mb" not in r:
        return "-"
    return f"{r['peak_rss_mb']:.0f}" + ("" if r.get("rss_own", True) else " (launcher's floor)")


def peer_rows(results: list[dict[str, Any]], header: bool = True) -> list[str]:
    rows = (
        [
            "| N candles | engine | timed s | candles/s | whole process s (CPU s) | fills | final equity USDT "
            "| peak RSS MB | notes |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        if header
        else []
    )
    for r in results:
        n = f"{r['n']:,}"
        for key in ("reference_loop", "backtesting_py", "nautilus_trader"):
            p = r[key]
            name = ENGINE_NAMES[key]
            if "run_s" not in p or "error" in p:
                reason = (
                    f"skipped: {p['skipped']}"
                    if "skipped" in p
                    else f"FAILED, skipped: {p.get('error', '?')}"
                )
                rows.append(f"| {n} | {name} | - | - | - | - | - | - | {reason} |")
                continue
            if key == "reference_loop":
                note = "the correctness reference; timed: its loop"
            else:
                note = f"timed: its run() only (CSV load {p['load_s']:.2f} s, setup {p['prep_s']:.2f} s not)"
                if key == "backtesting_py":
                    note += f"; run() includes init() {p.get('init_s', 0):.2f} s and compute_stats {p.get('stats_s', 0):.2f} s"
            notes = [note, _runs_note(p), p.get("warning", "")]
            version = p.get("version", "").strip("-")
            rows.append(
                f"| {n} | {name} {version}".rstrip()
                + f" | {p['run_s']:.3f} | {p['bars_per_s']:,.0f} | {p['wall_s']:.2f} ({p['cpu_s']:.2f}) | "
                f"{p['fills']} | {p['final_equity']:.4f} | {_rss(p)} | {'; '.join(x for x in notes if x)} |"
            )
        ri = r["reference_in_process"]
        m = r["ours"]
        name = ENGINE_NAMES["ours"]
        if "error" in m:
            rows.append(f"| {n} | {name} | - | - | - | - | - | - | FAILED: {m['error']} |")
        else:
            notes = [
                "fills match one by one" if m["fills_match"] else f"fills DIFFER: {m['fills_mismatch']}",
                f"equity {'matches' if m['equity_match'] else 'DIFFERS'} ({m['equity_diff']:+.6f})",
                f"+1 flatten-on-exit fill ({m['fills']} in report)" if m["flatten_fill"] else "",
                f"**{m['x_backtesting_py']:.2f}x backtesting.py's run()**, {m['x_backtesting_py_process']:.2f}x its process"
                if "x_backtesting_py" in m
                else "",
                f"{m['x_nautilus_trader']:.2f}x NautilusTrader's run(), {m['x_nautilus_trader_process']:.2f}x its process"
                if "x_nautilus_trader" in m
                else "",
                f"{m['candles_per_cpu_s']:,.0f} candles per CPU-s",
                "timed: the whole CLI process, spawn to exit",
                _runs_note(m),
            ]
            rows.append(
                f"| {n} | **{name}** | {m['wall_s']:.3f} | **{m['candles_per_s']:,.0f}** | "
                f"{m['wall_s']:.2f} ({m['cpu_s']:.2f}) | "
                f"{m['fills'] - (1 if m['flatten_fill'] else 0)} | {m['final_equity']:.4f} | "
                f"{_rss(m)} | {'; '.join(x for x in notes if x)} |"
            )
        if r["bars"] != "peers/gen_bars.py":
            rows.append(f"| {n} | (bars) | | | | {ri['fills']} | {ri['final_equity']:.4f} | | {r['bars']} |")
    return rows


def real_rows(results: list[dict[str, Any]]) -> list[str]:
    rows = [
        "| data | strategy | candles | whole process s | candles/s | CPU s | peak RSS MB | fills | trades | stop |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        kind = r.get("strategy", "-")
        if "wall_s" not in r or "error" in r:
            rows.append(
                f"| {r['file']} | {kind} | - | - | - | - | - | - | - | {r.get('skipped') or r.get('error')} |"
            )
            continue
        rows.append(
            f"| {r['file']} | {kind} | {r['candles']:,} | {r['wall_s']:.2f} | {r['candles_per_s']:,.0f} | "
            f"{r['cpu_s']:.2f} | {_rss(r)} | {r['fills']} | {r['trade_count']} | {r['stop_reason']} |"
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
                "target": f"{n:,} candles: the same fills and final equity as reference_loop.py, to the cent",
                "figure": (
                    f"fills {'match one by one' if m['fills_match'] else 'DIFFER'}, equity diff {m['equity_diff']:+.6f}"
                    if ok
                    else m["error"]
                ),
                "met": ok and m["fills_match"] and m["equity_match"],
            }
        )
        if n != TARGET_N:
            continue
        bt = r["backtesting_py"]
        out.append(
            {
                "target": f"{n:,} candles: candles/s >= {SPEEDUP_TARGET:g}x backtesting.py's run()",
                "figure": (
                    f"{m['candles_per_s']:,.0f} (whole CLI process) vs {bt['bars_per_s']:,.0f} = "
                    f"{m['x_backtesting_py']:.2f}x"
                    if "x_backtesting_py" in m
                    else (
                        "our run failed"
                        if not ok
                        else f"backtesting.py not measured: {bt.get('skipped') or bt.get('error')}"
                    )
                ),
                "met": m["x_backtesting_py"] >= SPEEDUP_TARGET
                if "x_backtesting_py" in m
                else None
                if ok
                else False,
            }
        )
        out.append(
            {
                "target": f"{n:,} candles: peak RSS < {RSS_TARGET_MB:g} MB",
                "figure": f"{m['peak_rss_mb_max']:.1f} MB (the largest of the runs)" if ok else "-",
                "met": ok and m["rss_own_all"] and m["peak_rss_mb_max"] < RSS_TARGET_MB,
            }
        )
    sweep = res.get("sweep")
    if sweep is not None:
        out.append(
            {
                "target": f"sweep throughput: 2 workers >= {SWEEP_SPEEDUP_TARGET:g}x 1 worker (trials per minute)",
                "figure": f"{sweep['speedup']:.2f}x"
                if "speedup" in sweep
                else sweep.get("skipped") or sweep.get("error"),
                "met": sweep["speedup"] >= SWEEP_SPEEDUP_TARGET
                if "speedup" in sweep
                else None
                if "skipped" in sweep
                else False,
            }
        )
    if res.get("peer_job") and not any(r["n"] == TARGET_N for r in res["peer_job"]):
        out.append(
            {"target": f"{TARGET_N:,} candles: speed and memory", "figure": "size not run", "met": None}
        )
    for key, what in (("mock10", ""), ("mock10_trading", ", trading often")):
        mock = res.get(key)
        if mock is None:
            continue
        out.append(
            {
                "target": f"10-minute mock session{what}: peak RSS < {RSS_MOCK10_TARGET_MB:g} MB (earlier issue)",
                "figure": f"{mock['peak_rss_mb']:.0f} MB" if "mode" in mock else mock.get("error"),
                "met": mock["peak_rss_mb"] < RSS_MOCK10_TARGET_MB if "mode" in mock else False,
            }
        )
    lat = res.get("latency")
    if lat is not None:
        measured = "p99_ms" in lat and lat.get("n", 0) > 0
        out.append(
            {
                "target": f"tick-to-order latency p99 < {P99_TARGET_MS:g} ms (earlier issue)",
                "figure": (
                    f"p50 {lat['p50_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms ({lat['n']} orders)"
                    if measured
                    else lat.get("error", "no order in the session")
                ),
                "met": lat["p99_ms"] < P99_TARGET_MS if measured else False,
            }
        )
    return out


def profile_rows(p: dict[str, Any]) -> list[str]:
    if "groups" not in p:
        return [f"profile failed: {p.get('error')}"]
    per = p["profiled_s"] / p["candles"] * 1e6
    rows = [
        f"cProfile of the kernel (`Session.run_kernel()`, in-process, the interpreted sources: cProfile "
        f"cannot see inside compiled functions), peer job, first {p['candles']:,} "
        f"candles: {p['run_s_profiled']:.2f} s profiled, {p['profiled_s']:.2f} s of own time counted "
        f"({per:.1f} us per candle under the profiler; profiling inflates small calls)",
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


MIN_SIZE = 1_000  # candles of a peer job: its EMA 50 warm and trades to compare


def _problems(args: argparse.Namespace) -> list[str]:
    """The flags' values it cannot use, one line each (found by a CLI audit: `--sizes 0` and
    `--reps -1` ran and said nothing of them, `--reps 0` and `--latency-seconds 0` ran the defaults,
    `--latency-seconds -3` ended in a MISS with exit 0, and `--json DIR` failed with a traceback at
    the very end, after the whole benchmark)."""
    problems = [
        f"--sizes {n}: expected a number of candles of at least {MIN_SIZE:,}"
        for n in args.sizes or ()
        if n < MIN_SIZE
    ]
    if args.reps is not None and args.reps < 1:
        problems.append(f"--reps {args.reps}: expected 1 or more")
    seconds = args.latency_seconds
    if seconds is not None and not 0 < seconds <= 86_400:
        problems.append(f"--latency-seconds {seconds:g}: expected a number of seconds > 0, at most 86400")
    if args.json is not None:
        out = Path(args.json)
        if out.is_dir():
            problems.append(f"--json {out}: is a directory; expected the path of a file")
        elif not out.parent.is_dir():
            problems.append(f"--json {out}: its folder {out.parent} does not exist")
    if args.work is not None and Path(args.work).exists() and not Path(args.work).is_dir():
        problems.append(f"--work {args.work}: is a file; expected a folder (made when missing)")
    return problems


def build_parser() -> argparse.ArgumentParser:
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
        choices=["peers", "real", "session", "sweep"],
        nargs="+",
        help="which parts to run (default: all; --quick: peers and session)",
    )
    parser.add_argument("--latency-seconds", type=float, help="length of the latency session (default 180)")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, help="profile the kernel")
    parser.add_argument("--json", metavar="FILE", help="write every figure here")
    parser.add_argument("--work", metavar="DIR", help="keep the data and run folders here (default: temp)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if problems := _problems(args):  # before anything runs (the figures take minutes to hours)
        parser.error("; ".join(problems))
    quick = args.quick
    sizes = args.sizes or ([20_000] if quick else [100_000, 500_000])
    reps = args.reps if args.reps is not None else (1 if quick else 3)
    latency_s = args.latency_seconds if args.latency_seconds is not None else (8.0 if quick else 180.0)
    only = set(args.only or (["peers", "session"] if quick else ["peers", "real", "session", "sweep"]))

    res: dict[str, Any] = {"machine": machine(), "quick": quick, "reps": reps}
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
        build = project_build(work)
        res["build"] = {"build": build["build"], "from": build["from"]}
        print(f"build of the project the CLI runs: {build['build']}, from {build['from']}", flush=True)
        if "peers" in only:
            res["peer_job"] = []
            print(
                "\n## Peer job: EMA 20/50 crossover, 0.01 BTC, 0.06 % fee, fills at the signal close"
                f" ({reps} run{'s' if reps > 1 else ''} of each engine per size, in turn)\n"
            )
            for i, n in enumerate(sizes):
                print(f"... {n:,} candles", file=sys.stderr, flush=True)
                r = bench_peer_job(n, work, with_peers=not quick, reps=reps, warm=i == 0)
                res["peer_job"].append(r)
                for row in peer_rows([r], header=i == 0):
                    print(row, flush=True)
        if "real" in only:
            print("\n## Real 1-minute data, honest defaults, stop conditions off (whole CLI process)\n")
            res["real"] = bench_real_data(work)
            print("\n".join(real_rows(res["real"])), flush=True)
        if "session" in only:
            print("\n## Sessions\n", flush=True)
            for key, extra in (("mock10", []), ("mock10_trading", ["--trades-often"])):
                res[key] = child("mock10", str(work / f"runs_{key}"), *extra, timeout=600)
                mk = res[key]
                what = "config/live.toml" if not extra else "trading often: 2 s candles, EMA 2/5"
                print(
                    f"10-minute mock session ({what}, virtual clock): peak RSS {mk['peak_rss_mb']:.0f} MB; "
                    f"{mk['events']} events, {mk['fills']} fills, {mk['wall_s']:.2f} s wall"
                    if "mode" in mk
                    else f"10-minute mock session ({what}): FAILED: {mk.get('error')}",
                    flush=True,
                )
            res["latency"] = child(
                "latency", str(work / "runs_latency"), "--seconds", str(latency_s), timeout=latency_s + 120
            )
            lat = res["latency"]
            print(
                f"tick-to-order latency ({lat['session_s']:.0f} s real-time mock session, {lat['n']} orders "
                f"on {lat['candles']} candles): from the candle's hand-over to order.submitted p50 "
                f"{lat['p50_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms, max {lat['max_ms']:.3f} ms; from the "
                f"closing tick's due time: p50 {lat['due_p50_ms']:.3f} ms, p99 {lat['due_p99_ms']:.3f} ms; "
                f"peak RSS {lat['peak_rss_mb']:.0f} MB"
                if lat.get("n")
                else f"latency: FAILED: {lat.get('error', 'no order in the session')}",
                flush=True,
            )
        if "sweep" in only:
            print(
                "\n## Sweeps on Ray (python -m tools.sweep): 60 trials of 7 to 14 days over the perpetual data\n",
                flush=True,
            )
            res["sweep"] = bench_sweep(work)
            print("\n".join(sweep_rows(res["sweep"])), flush=True)
        res["targets"] = targets(res)
        missed_speed = any(t["met"] is False and "backtesting.py" in t["target"] for t in res["targets"])
        if "peers" in only and (args.profile or (args.profile is None and missed_speed)):
            print("\n## Where the time goes\n", flush=True)
            big = max(sizes)
            res["profile"] = bench_profile(work / f"bars_{big}.csv", work, big)
            print("\n".join(profile_rows(res["profile"])), flush=True)
    res["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    res["total_s"] = round(time.perf_counter() - t0, 1)
    print("\n## Targets\n")
    for t in res["targets"]:
        verdict = {True: "PASS", False: "MISS", None: "NOT MEASURED"}[t["met"]]
        print(f"{verdict:<12} {t['target']}: {t['figure']}")
    print(f"\nload average at end {res['machine']['loadavg_end']}; {res['total_s']:.0f} s in all")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    correctness = [t for t in res["targets"] if "reference_loop.py" in t["target"]]
    return 1 if any(t["met"] is False for t in correctness) else 0


if __name__ == "__main__":
    sys.exit(main())
