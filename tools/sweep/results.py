"""A sweep's results: its log (`trials.jsonl`, one line per finished trial, appended as each
finishes: what a sweep run again skips), the table (`trials.csv`, `trials.parquet`), the
walk-forward summary and verdict (`sweep.json`)."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from tools.sweep.spec import SweepSpec, Window

COLUMNS = (
    "trial_id",
    "strategy",
    "window",
    "phase",
    "start",
    "end",
    "status",
    "error",
    "objective",
    "objective_value",
    "net_pnl",
    "return_pct",
    "sharpe",
    "profit_factor",
    "trade_count",
    "max_drawdown_pct",
    "fees_paid",
    "stop_reason",
    "seconds",
    "run_folder",
    "params",
)


class TrialLog:
    """`trials.jsonl`: each finished trial's record, appended and synced at once, so a sweep
    killed at any instant keeps every trial that finished (a torn last line is ignored)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # (key, phase, strategy) -> record: one backtest can be two strategies' trials
        self.records: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.by_key: dict[str, dict[str, Any]] = {}  # the last record of each backtest
        if path.exists():
            with path.open("rb") as f:
                for line in f:
                    try:
                        record = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        continue  # the line a kill cut short: that trial runs again
                    self.records[record["key"], record["phase"], record["strategy"]] = record
                    self.by_key[record["key"]] = record
        self._file = path.open("ab")

    def append(self, record: dict[str, Any]) -> None:
        self._file.write(orjson.dumps(record) + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.records[record["key"], record["phase"], record["strategy"]] = record
        self.by_key[record["key"]] = record

    def find(self, key: str) -> dict[str, Any] | None:
        """The record of a trial with this key, of any phase and strategy (the same backtest)."""
        return self.by_key.get(key)

    def close(self) -> None:
        self._file.close()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def objective_value(record: dict[str, Any], spec: SweepSpec) -> float | None:
    """The trial's objective; None when it failed, made fewer trades than `min_trades`, or the
    figure is undefined (a profit factor without a losing trade, say): never the best."""
    if record.get("status") != "ok" or (record.get("trade_count") or 0) < spec.min_trades:
        return None
    value = record.get(spec.objective)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def best(records: Iterable[dict[str, Any]], spec: SweepSpec) -> dict[str, Any] | None:
    """The record with the highest objective; of equal ones, the smallest trial id (whatever
    order the trials finished in)."""
    top, top_value = None, -math.inf
    for record in records:
        value = objective_value(record, spec)
        if value is None:
            continue
        if top is None or value > top_value or (value == top_value and record["trial_id"] < top["trial_id"]):
            top, top_value = record, value
    return top


def rows(records: Sequence[dict[str, Any]], spec: SweepSpec) -> list[dict[str, Any]]:
    """The table's rows: a row per trial (a trial in both phases, once per phase), in the order
    window, phase (train first), strategy, then trial id (whatever order they finished in)."""
    params = sorted({name for record in records for name in record["params"]})
    table = []
    for record in records:
        row: dict[str, Any] = {column: record.get(column) for column in COLUMNS}
        row["start"], row["end"] = iso(record["start"]), iso(record["end"])
        row["objective"] = spec.objective
        row["objective_value"] = objective_value(record, spec)
        # trials/<trial id>/<run>, whatever folder the log was written in (found by an audit: a
        # sweep folder moved, or copied, and run again ended in a ValueError after all its trials)
        row["run_folder"] = (
            Path("trials", *Path(record["run_path"]).parts[-2:]).as_posix()
            if record.get("run_path")
            else None
        )
        row["params"] = json.dumps(record["params"], sort_keys=True)
        for name in params:
            row[f"param.{name}"] = record["params"].get(name)
        table.append(row)
    return table


def write_table(table: list[dict[str, Any]], out: Path) -> None:
    """`trials.csv` (empty cells for undefined figures) and `trials.parquet`."""
    if not table:
        return
    names = list(table[0])
    tmp = out / "trials.csv.tmp"
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        writer.writerows(table)
    os.replace(tmp, out / "trials.csv")
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {name: [row.get(name) for row in table] for name in names}
    pq.write_table(pa.table(columns), out / "trials.parquet.tmp")
    os.replace(out / "trials.parquet.tmp", out / "trials.parquet")


def summary(spec: SweepSpec, windows: Sequence[Window], records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """`sweep.json`: per window, each strategy's best in-sample trial and its out-of-sample
    trial; the verdict, per strategy, is the out-of-sample figures summed over the windows."""
    out_windows = []
    verdict: dict[str, dict[str, Any]] = {}
    for window in windows:
        best_of: dict[str, Any] = {}
        oos: dict[str, Any] = {}
        for strategy in spec.strategies:
            name = strategy.name
            train = [
                r
                for r in records
                if r["window"] == window.index and r["phase"] == "train" and r["strategy"] == name
            ]
            test = [
                r
                for r in records
                if r["window"] == window.index and r["phase"] == "test" and r["strategy"] == name
            ]
            top = best(train, spec)
            verdict.setdefault(
                name,
                {
                    "out_of_sample_net_pnl": 0.0,
                    "in_sample_net_pnl": 0.0,
                    "out_of_sample_trades": 0,
                    "windows": 0,
                    "failed_windows": 0,
                    "no_best_windows": 0,
                    "in_sample_trials": 0,
                    "out_of_sample_days": 0.0,
                    "in_sample_days": 0.0,
                },
            )
            # how many parameter sets were tried: the best of many is optimistic by construction
            verdict[name]["in_sample_trials"] += len(train)
            if top is None:
                # no trial eligible (all failed, or fewer than min_trades): no out-of-sample run,
                # said as such (found by an audit: such a window was counted nowhere, the verdict
                # and the console said "over 1 windows" of 3 without a word about the third)
                verdict[name]["no_best_windows"] += 1
                continue
            best_of[name] = {
                "trial_id": top["trial_id"],
                "params": top["params"],
                "objective_value": objective_value(top, spec),
                "of_trials": len(train),
            }
            if test:
                t = test[0]
                oos[name] = {
                    "trial_id": t["trial_id"],
                    "objective_value": t.get(spec.objective) if t.get("status") == "ok" else None,
                    "net_pnl": t.get("net_pnl"),
                    "trade_count": t.get("trade_count"),
                }
                v = verdict[name]
                if t.get("status") != "ok":
                    # judged on nothing: neither side counts (found by an audit: a failed
                    # out-of-sample run counted as 0 beside its window's in-sample PnL)
                    v["failed_windows"] += 1
                    continue
                v["windows"] += 1
                # the days each side covers, to compare them per day (a train span is longer)
                v["out_of_sample_days"] += spec.test_days
                v["in_sample_days"] += spec.train_days
                v["in_sample_net_pnl"] += top.get("net_pnl") or 0.0
                v["out_of_sample_net_pnl"] += t.get("net_pnl") or 0.0
                v["out_of_sample_trades"] += t.get("trade_count") or 0
        out_windows.append(
            {
                "index": window.index,
                "train": {"start": iso(window.train_start), "end": iso(window.train_end)},
                "test": {"start": iso(window.test_start), "end": iso(window.test_end)},
                "best": best_of,
                "out_of_sample": oos,
            }
        )
    return {
        "name": spec.name,
        "objective": spec.objective,
        "min_trades": spec.min_trades,
        "sampler": spec.sampler,
        "windows": out_windows,
        "verdict": verdict,
    }


def provenance(spec: SweepSpec, hashes: dict[str, str], symbol: str) -> dict[str, Any]:
    """`sweep.json`'s `spec`: what made the sweep's trials, to tell which spec and data a result
    came from (`hashes`: sha256 of the spec file and the base config's, "spec" and "base_config",
    and of each data file's by its symbol; `symbol`: the session's, a lone file's)."""

    def domain(d: Any) -> Any:
        return list(d) if isinstance(d, tuple) else {"low": d.low, "high": d.high, "log": d.log}

    return {
        "file": str(spec.path),
        "sha256": hashes.get("spec"),
        "base_config": str(spec.base_config) if spec.base_config is not None else None,
        "base_config_sha256": hashes.get("base_config"),
        "data": [
            {"symbol": name, "file": str(path), "sha256": hashes.get(name)}
            for name, path in ((s or symbol, path) for s, path in spec.data)
        ],
        "sampler": spec.sampler,
        "budget": spec.budget if spec.sampler != "grid" else None,
        "seed": spec.seed,
        "set": list(spec.sets),
        "walk_forward": {
            "start": iso(spec.start) if spec.start is not None else None,
            "train_days": spec.train_days,
            "test_days": spec.test_days,
            "windows": spec.windows,
        },
        "strategies": [
            {"name": s.name, "kind": s.kind, "space": {n: domain(d) for n, d in s.space.items()}}
            for s in spec.strategies
        ],
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
