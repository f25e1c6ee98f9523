"""One trial of a sweep: one backtest (the kernel, actors/kernel.py) of one strategy with one set of
parameters over one window of the data, into an ordinary run folder, and its figures.

A trial is keyed by what decides its result: the effective config (less where it writes), the
data files' sha256 and its window. A sweep run again skips the trials its log already holds."""

from __future__ import annotations

import bisect
import hashlib
import io
import itertools
import json
import math
import shutil
import tarfile
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import orjson

from actors.config import Config, load, to_toml
from actors.feeds.history import DataError, read_candles_csv
from actors.recording.report_stats import statistics
from protocols.messages import Candle, _new_tuple

Phase = Literal["train", "test"]
# a trial's figures, from its run folder: final_report.json's, and the ratios report.html shows
# (actors/recording/report_stats.py)
REPORT_FIGURES = ("net_pnl", "return_pct", "trade_count", "max_drawdown_pct", "fees_paid", "stop_reason")
RATIOS = ("sharpe", "profit_factor")


@attrs.frozen
class Trial:
    key: str  # sha256 of the config, the data and the window (hex)
    strategy: str
    params: dict[str, Any]
    window: int
    phase: Phase
    start: float  # the window's candles: open times in [start, end)
    end: float
    sets: tuple[str, ...]  # the trial's `--set` values (the spec's, the strategy and its parameters)

    @property
    def id(self) -> str:
        return self.key[:16]

    def record(self, **outcome: Any) -> dict[str, Any]:
        """The trial's line of the sweep's log: what it is, then `outcome` (status, figures...)."""
        return {
            "key": self.key,
            "trial_id": self.id,
            "strategy": self.strategy,
            "params": self.params,
            "window": self.window,
            "phase": self.phase,
            "start": self.start,
            "end": self.end,
            **outcome,
        }

    def cli(self, base_config: Path | None, data: Sequence[tuple[str, Path]], run_dir: Path) -> list[str]:
        """The CLI backtest that is this trial (`python -m actors.main` and these arguments)."""
        args = ["--config", str(base_config)] if base_config is not None else []
        args += ["--mode", "backtest", "--run-dir", str(run_dir)]
        args += [a for symbol, path in data for a in ("--data", f"{symbol}={path}" if symbol else str(path))]
        args += ["--from", _iso(self.start), "--until", _iso(self.end)]
        for value in (*self.sets, f"session.kill_switch={run_dir}/kill.txt"):
            args += ["--set", value]
        return args


def _iso(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def config_for(base: Path | None, sets: Sequence[str], run_dir: Path | None = None) -> Config:
    """A trial's config: the base config and the trial's sets (and where it writes)."""
    where = [f"session.run_dir={run_dir}", f"session.kill_switch={run_dir}/kill.txt"] if run_dir else []
    return load(base, {}, [*sets, *where], {})


def trial_key(config: Config, data_hashes: Mapping[str, str], start: float, end: float) -> str:
    """What decides a trial's result, hashed: the effective config as TOML (less session.run_dir
    and session.kill_switch), the data files' sha256 and the window."""
    toml = "\n".join(
        line for line in to_toml(config).splitlines() if not line.startswith(("run_dir =", "kill_switch ="))
    )
    blob = json.dumps({"config": toml, "data": dict(sorted(data_hashes.items())), "window": [start, end]})
    return hashlib.sha256(blob.encode()).hexdigest()


# --- the data, once per node ---------------------------------------------------------------------


# "open_ts", "interval_s", "open", "high", "low", "close", "volume": numpy float64 arrays; the rows
# that were not candles: "skip_at" (the candles before each, int64) and "skip_reason" (a list)
Columns = dict[str, Any]


def read_columns(path: Path, interval_s: float, symbol: str) -> Columns:
    """A candle file as columns (numpy arrays: Ray's object store shares them between the tasks
    of a node without copying), read by the CLI's own reader (bad rows skipped alike). DataError,
    as the CLI backtest says it, for a file of no candle or whose candles are another interval
    apart than session.interval."""
    import numpy as np

    from actors.session import SPACING_PEEK, check_order, check_spacing, no_candles

    skipped: dict[str, int] = {}
    read: dict[str, int] = {}
    first: list[tuple[int, str]] = []
    rows: list[tuple[Any, ...]] = []
    # each row that is not a candle, as the number of candles before it and its reason: a trial
    # counts those its window's reader would have (`window_candles`)
    skip_at: list[int] = []
    skip_reason: list[str] = []
    seen: dict[str, int] = {}
    for candle in read_candles_csv(path, interval_s, read, symbol, skipped_by=skipped, first_skipped=first):
        if skipped != seen:
            _note_skips(skipped, seen, len(rows), skip_at, skip_reason)
        rows.append(tuple(candle)[:7])
    _note_skips(skipped, seen, len(rows), skip_at, skip_reason)
    if not rows:  # as the CLI says it (found by an audit: a traceback once Ray had started)
        raise DataError(no_candles(str(path), read, skipped, first, windowed=False))
    # the CLI backtest's check of the order, over the rows its start reads (the first SPACING_PEEK
    # candles and the rows skipped before the last of them): found by an audit, a file newest first
    # was read as its first candle, and every trial failed where the CLI exits 2
    backwards = sum(
        at < SPACING_PEEK and reason == "csv_time_backwards"
        for at, reason in zip(skip_at, skip_reason, strict=True)
    )
    check_order(backwards, min(len(rows), SPACING_PEEK), str(path))
    # the CLI backtest's check of the spacing (found by an audit: with session.interval = "5m" on
    # 1m candles the reader skipped the rows less than an interval after the one before, and every
    # trial ran on each fifth 1m candle taken as a 5m one, where the CLI it stands for exits 2)
    if skipped.get("csv_overlapping"):  # candles closer than session.interval: mostly, or a few?
        head = list(itertools.islice(read_candles_csv(path, 0.0, symbol=symbol), SPACING_PEEK))
        apart = [b.open_ts - a.open_ts for a, b in itertools.pairwise(head)]
        if sum(abs(d - interval_s) <= 1e-6 for d in apart) * 2 < len(apart):
            check_spacing(head, interval_s, str(path))
    else:  # or wider apart (5m candles on a 1m session)
        head = list(itertools.islice(read_candles_csv(path, interval_s, symbol=symbol), SPACING_PEEK))
        check_spacing(head, interval_s, str(path))
    names = ("open_ts", "interval_s", "open", "high", "low", "close", "volume")
    arrays = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    columns: Columns = {
        name: np.asarray(values, dtype=np.float64) for name, values in zip(names, arrays, strict=True)
    }
    columns["skip_at"] = np.asarray(skip_at, dtype=np.int64)
    columns["skip_reason"] = skip_reason
    return columns


def _note_skips(
    skipped: dict[str, int], seen: dict[str, int], kept: int, skip_at: list[int], skip_reason: list[str]
) -> None:
    """The rows the reader skipped since `seen`, each noted after `kept` candles."""
    for reason, count in skipped.items():
        for _ in range(count - seen.get(reason, 0)):
            skip_at.append(kept)
            skip_reason.append(reason)
    seen.update(skipped)


def window_candles(
    columns: Columns, symbol: str, start: float, end: float, skipped: dict[str, int] | None = None
) -> Iterator[Candle]:
    """The candles opening in [start, end), as the CLI's reader gives them; `skipped` counts the
    rows that were not candles as the CLI backtest's reader does when it hands them out (found by
    an audit: a trial's report said `malformed_dropped: {}` where the CLI's counted the file's
    rows skipped): those before the window, and before each candle as it is handed out, and
    those before the first candle after the window once the window's are all out."""
    opens = columns["open_ts"]
    lo = bisect.bisect_left(opens, start) if math.isfinite(start) else 0
    hi = bisect.bisect_left(opens, end) if math.isfinite(end) else len(opens)
    fields = [
        columns[n][lo:hi].tolist()
        for n in ("open_ts", "interval_s", "open", "high", "low", "close", "volume")
    ]
    at: list[int] = columns["skip_at"].tolist() if "skip_at" in columns else []
    reasons: list[str] = columns.get("skip_reason", [])
    counts = skipped if skipped is not None else {}
    j = 0  # the next skipped row to count
    for k, (t, i, o, h, low, c, v) in enumerate(zip(*fields, strict=True), lo):
        while j < len(at) and at[j] <= k:
            counts[reasons[j]] = counts.get(reasons[j], 0) + 1
            j += 1
        yield _new_tuple(Candle, (t, i, o, h, low, c, v, False, symbol))
    while j < len(at) and at[j] <= hi:
        counts[reasons[j]] = counts.get(reasons[j], 0) + 1
        j += 1


# --- running one ---------------------------------------------------------------------------------


def run_trial(
    trial: Trial,
    base_config: Path | None,
    data: Sequence[tuple[str, Path]],
    columns: Mapping[str, Columns],  # by data file (its path as given)
    trial_dir: Path,
) -> dict[str, Any]:
    """Run the trial's backtest into `trial_dir` (emptied first: a trial killed half-way left a
    partial run folder) and return its log record: the trial, `status` ok (its figures) or
    failed (the error, one line), its run folder relative to the sweep's folder."""
    from actors import logs
    from actors.plan import Plan
    from actors.session import Session

    logs.configure("ERROR")  # the run folder's session.log has the rest
    began = time.perf_counter()
    record = trial.record()
    shutil.rmtree(trial_dir, ignore_errors=True)
    try:
        config = config_for(base_config, trial.sets, trial_dir)
        symbols = config.symbols
        pairs: tuple[tuple[str, Path], ...]
        if len(data) == 1 and not data[0][0]:
            pairs = ((symbols[0], data[0][1]),)
        else:
            given = dict(data)
            pairs = tuple((symbol, given[symbol]) for symbol in symbols)
        plan = Plan(
            mode="backtest",
            data=str(pairs[0][1]),
            data_by_symbol=tuple((s, str(p)) for s, p in pairs) if len(pairs) > 1 else (),
            window=(trial.start, trial.end),
        )

        skipped: dict[str, dict[str, int]] = {}

        def source(path: str, symbol: str) -> Iterator[Candle]:
            counts = skipped.setdefault(symbol, {})
            return window_candles(columns[path], symbol, trial.start, trial.end, counts)

        result = Session(
            config,
            plan,
            handle_signals=False,
            progress_mode="off",
            candle_source=source,
            candle_skipped=skipped,
        ).run_kernel()
        record.update(figures(result.run_path))
        record["run_path"] = str(result.run_path)
        record["status"] = "ok" if result.report.get("status") == "ok" else "failed"
        if record["status"] == "failed":
            detail = result.report.get("stop_detail")
            record["error"] = (
                f"session ended {result.report.get('status')}: {result.report.get('stop_reason')}"
                + (f" ({detail})" if detail else "")
            )
    except Exception as exc:  # a failing trial is recorded, the sweep goes on
        record["status"] = "failed"
        record["error"] = " ".join(traceback.format_exception_only(exc)).strip().splitlines()[-1][:500]
    record["seconds"] = round(time.perf_counter() - began, 3)
    return record


def figures(run_path: Path) -> dict[str, Any]:
    """A run folder's figures: its final report's, and the Sharpe ratio and profit factor of its
    events as report.html computes them (None where undefined)."""
    report = orjson.loads((run_path / "final_report.json").read_bytes())
    with (run_path / "events.jsonl").open("rb") as f:
        stats = statistics([orjson.loads(line) for line in f])
    return {**{name: report[name] for name in REPORT_FIGURES}, **{name: stats[name] for name in RATIOS}}


def pack_folder(folder: Path) -> bytes:
    """A trial's folder as a gzipped tar (its run folder and `latest`), to send to the driver."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=".")
    return buffer.getvalue()


def unpack_folder(packed: bytes, folder: Path) -> None:
    """`pack_folder`'s bytes into `folder` (replaced): regular files, folders and links inside it
    only (tarfile's `data` filter; on a Python before 3.11.4, which has none, the same rule
    checked member by member)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(packed), mode="r:gz") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(folder, filter="data")
            return
        root = folder.resolve()
        for member in tar.getmembers():
            target = (root / member.name).resolve()
            inside = target == root or root in target.parents
            if member.issym():
                link = (target.parent / member.linkname).resolve()
                inside = inside and (link == root or root in link.parents)
            if not inside or not (member.isfile() or member.isdir() or member.issym()):
                raise ValueError(f"a trial's packed run folder holds {member.name!r}: not unpacked")
        tar.extractall(folder)
