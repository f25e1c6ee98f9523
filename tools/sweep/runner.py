"""Running a sweep on Ray: a task per trial (`tools/sweep/trial.py`), the data put in the object
store once (each node fetches it once, its tasks share it), the train trials of every window at
once, each window's out-of-sample trial as soon as its train trials are in. Ray schedules,
places and retries (a worker that dies: `max_retries`); a trial that raises is recorded failed.

Trials already in the sweep's log (`trials.jsonl`) are not run again: a sweep killed at any
instant, run again, runs only the trials that had not finished."""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs
from loguru import logger

from actors.config import ConfigError
from tools.sweep.results import (
    TrialLog,
    best,
    iso,
    objective_value,
    provenance,
    rows,
    summary,
    write_json,
    write_table,
)
from tools.sweep.spec import (
    Domain,
    Range,
    SpecError,
    StrategySpace,
    SweepSpec,
    Window,
    cold_starts,
    trial_sets,
)
from tools.sweep.trial import (
    Trial,
    config_for,
    file_sha256,
    pack_folder,
    read_columns,
    run_trial,
    trial_key,
    unpack_folder,
)

# Ray retries a task whose worker died (not one whose backtest raised: that is recorded failed)
MAX_RETRIES = 2
# --address: how long the sweep waits for the cluster's address to take a connection
CONNECT_TIMEOUT_S = 10.0
# Ray's own connection attempts to a cluster's GCS (20 by default, each up to about 40 s when
# something takes the connection but no GCS answers): one, unless the environment says otherwise
GCS_ATTEMPTS_ENV = "RAY_gcs_server_port_wait_time_s"


class ClusterError(Exception):
    """`--address` names no Ray cluster the sweep can run on: `unreachable` (nothing answers
    there, or Ray could not connect: exit 4), else a value Ray cannot use (exit 2)."""

    def __init__(self, message: str, *, unreachable: bool) -> None:
        super().__init__(message)
        self.unreachable = unreachable


@attrs.define
class Counts:
    total: int
    done: int = 0
    running: int = 0  # submitted to Ray, not back yet: running or queued for a CPU
    failed: int = 0
    skipped: int = 0  # found in the log
    started: float = attrs.field(factory=time.monotonic)

    def rate(self) -> float:
        """Trials run per second (not counting those found in the log)."""
        elapsed = time.monotonic() - self.started
        ran = self.done - self.skipped
        return ran / elapsed if elapsed > 0 and ran > 0 else 0.0


Progress = Callable[[Counts], None]


@attrs.frozen
class SweepResult:
    out: Path
    counts: Counts
    summary: dict[str, Any]
    records: list[dict[str, Any]]  # the trials' records, in the table's order


# TPE: asks in a row that may give parameters the study has already, before it gives up
MAX_ASKS = 1000
# TPE: a study's trials in flight at once, whatever the workers (what the study is told before
# each ask decides its draws: a count of workers', or the order trials finish in, would make the
# same spec draw other trials)
TPE_IN_FLIGHT = 4


@attrs.define
class Study:
    """A window's Optuna study of one strategy: told its trials in the order it asked them, each
    followed by the next ask, so it draws the same trials whatever the order they finish in."""

    study: Any
    asked: int = 0  # of the budget
    known: set[str] = attrs.Factory(set)  # the keys it has asked
    pending: dict[str, Any] = attrs.Factory(dict)  # in flight, by key, in the order asked
    results: dict[str, dict[str, Any]] = attrs.Factory(dict)  # in, not yet told (one asked before is out)


class Planner:
    """Which trials a sweep runs: per window and strategy, the sampler's train trials; once they
    are all in, the out-of-sample trial of the best of them."""

    def __init__(self, spec: SweepSpec, windows: tuple[Window, ...], data_hashes: dict[str, str]) -> None:
        self.spec = spec
        self.windows = windows
        self.data_hashes = data_hashes
        self.studies: dict[tuple[int, str], Study] = {}  # TPE: by (window, strategy name)
        self.unasked = 0  # TPE: budget left unasked by studies whose space ran out (`take_unasked`)

    def trial(self, name: str, params: dict[str, Any], window: Window, phase: str) -> Trial:
        sets = tuple(trial_sets(self.spec, name, params))
        start, end = (
            (window.train_start, window.train_end)
            if phase == "train"
            else (window.test_start, window.test_end)
        )
        try:
            config = config_for(self.spec.base_config, sets)
        except ConfigError:
            # parameters that break a rule between keys (fast_period 30 with slow_period 21: the
            # spec checks each list's ends only): the trial runs, fails with the config error and
            # is recorded `failed`, the sweep goes on (it crashed the driver); keyed by its sets
            blob = json.dumps(
                {"sets": sets, "data": dict(sorted(self.data_hashes.items())), "window": [start, end]}
            )
            key = hashlib.sha256(blob.encode()).hexdigest()
        else:
            key = trial_key(config, self.data_hashes, start, end)
        return Trial(key, name, dict(params), window.index, phase, start, end, sets)  # type: ignore[arg-type]

    def train_params(self, strategy: StrategySpace) -> list[dict[str, Any]]:
        if self.spec.sampler == "grid":
            return self.spec.grid(strategy)
        if self.spec.sampler == "random":
            return self.spec.random_params(strategy)
        return []  # tpe: asked one by one (`ask`)

    def total(self) -> int:
        if self.spec.sampler == "grid":
            per_window = sum(len(self.spec.grid(s)) for s in self.spec.strategies)
        elif self.spec.sampler == "random":
            per_window = sum(len(self.spec.random_params(s)) for s in self.spec.strategies)
        else:
            per_window = self.spec.budget * len(self.spec.strategies)
        return len(self.windows) * (per_window + len(self.spec.strategies))

    def take_unasked(self) -> int:
        """TPE trials of the budget a study could not ask since the last call (its space had
        nothing new): not to be waited for (the progress total counted them)."""
        unasked, self.unasked = self.unasked, 0
        return unasked

    # --- TPE (Optuna's sampler, ask and tell) ---------------------------------------------------

    def study(self, window: Window, strategy: StrategySpace) -> Study:
        """The window's Optuna study of a strategy, made the first time."""
        import optuna

        key = (window.index, strategy.name)
        if key not in self.studies:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            sampler = optuna.samplers.TPESampler(seed=self.spec.seed + 1000 * window.index)
            self.studies[key] = Study(optuna.create_study(direction="maximize", sampler=sampler))
        return self.studies[key]

    def advance(self, window: Window, strategy: StrategySpace) -> list[Trial]:
        """A study's next TPE trials: it is told the trials that are in, in the order it asked
        them (one not yet in holds back those asked after it), and asks after each tell, up to
        `TPE_IN_FLIGHT` in flight, while its budget lasts (found by an audit: trials were told as
        they finished and as many were in flight as --workers, and the same spec drew other
        trials on 1 worker than on 2). A sweep run again asks and tells the same, its trials in
        the log found there as they are asked: the same trials as a sweep never stopped."""
        entry = self.study(window, strategy)
        asked: list[Trial] = []
        while True:
            while len(entry.pending) < TPE_IN_FLIGHT:
                trial = self._ask(entry, window, strategy)
                if trial is None:
                    break
                asked.append(trial)
            head = next(iter(entry.pending), None)
            if head is None or head not in entry.results:
                return asked
            self._tell(entry, entry.pending.pop(head), entry.results.pop(head))

    def _ask(self, entry: Study, window: Window, strategy: StrategySpace) -> Trial | None:
        """The study's next trial, or None when its budget is asked."""
        if entry.asked >= self.spec.budget:
            return None
        import optuna

        distributions = _distributions(strategy.space)
        for _ in range(MAX_ASKS):
            optuna_trial = entry.study.ask(distributions)
            trial = self.trial(strategy.name, dict(optuna_trial.params), window, "train")
            if trial.key not in entry.known:
                break
            # parameters it has drawn already (an integer range's, say): not run or counted
            # twice, and left out of its model (it was told them once)
            entry.study.tell(optuna_trial, state=optuna.trial.TrialState.PRUNED)
        else:  # the space has nothing new to give: the rest of the budget is not asked
            self.unasked += self.spec.budget - entry.asked
            entry.asked = self.spec.budget
            return None
        entry.asked += 1
        entry.pending[trial.key] = optuna_trial
        entry.known.add(trial.key)
        return trial

    def tell(self, window: int, name: str, record: dict[str, Any]) -> None:
        """A trial of a study is in: told when those asked before it are (`advance`)."""
        entry = self.studies.get((window, name))
        if entry is not None and record["key"] in entry.pending:
            entry.results[record["key"]] = record

    def _tell(self, entry: Study, optuna_trial: Any, record: dict[str, Any]) -> None:
        import optuna

        value = objective_value(record, self.spec)
        if value is None:
            entry.study.tell(optuna_trial, state=optuna.trial.TrialState.FAIL)
        else:
            entry.study.tell(optuna_trial, value)


def _distributions(space: dict[str, Domain]) -> dict[str, Any]:
    import optuna

    out: dict[str, Any] = {}
    for name, domain in space.items():
        if isinstance(domain, Range):
            if domain.integer:
                out[name] = optuna.distributions.IntDistribution(
                    int(domain.low), int(domain.high), log=domain.log
                )
            else:
                out[name] = optuna.distributions.FloatDistribution(domain.low, domain.high, log=domain.log)
        else:
            out[name] = optuna.distributions.CategoricalDistribution(list(domain))
    return out


def run_sweep(
    spec: SweepSpec,
    out: Path,
    *,
    address: str | None = None,
    address_said: str | None = None,
    workers: int | None = None,
    retry_failed: bool = False,
    progress: Progress | None = None,
) -> SweepResult:
    """Run (or finish) the sweep into `out`: its log, table, summary and sweep.html. `address`:
    a Ray cluster's (None: a local Ray of `workers` CPUs, default all), which errors name as
    `address_said` (default `--address ADDRESS`)."""
    import ray

    if address is not None:
        said = address_said or f"--address {address}"
        reach(address, said)
    out.mkdir(parents=True, exist_ok=True)
    out = out.resolve()
    base = config_for(spec.base_config, spec.sets)

    def read_data() -> tuple[dict[str, str], dict[str, Any]]:
        hashes = {symbol or base.symbols[0]: file_sha256(path) for symbol, path in spec.data}
        columns = {
            str(path): read_columns(path, base.interval_s, symbol or base.symbols[0])
            for symbol, path in spec.data
        }
        return hashes, columns

    # the data is read while Ray starts (its start-up waits on processes of its own)
    with ThreadPoolExecutor(1) as reader:
        reading = reader.submit(read_data)
        if address is None:  # ("local": whatever RAY_ADDRESS says, the CLI having read it)
            ray.init(
                address="local",
                num_cpus=workers,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        else:
            connect(address, said)
        try:
            data_hashes, columns = reading.result()
        except BaseException:
            ray.shutdown()
            raise
    first_open = min(float(c["open_ts"][0]) for c in columns.values() if len(c["open_ts"]))
    windows = spec.windows_from(first_open)
    empty = empty_windows(windows, columns, base.interval_s)
    if empty:  # refused before any trial runs (found by an audit: said, then its trials failed)
        ray.shutdown()
        raise SpecError(empty)
    short = short_windows(windows, columns, base.interval_s)
    cold = cold_starts(spec)
    for line in (*short, *cold):
        logger.warning(line)
    planner = Planner(spec, windows, data_hashes)
    if spec.sampler == "random":
        for strategy in spec.strategies:
            drawn = len(spec.random_params(strategy))
            if drawn < spec.budget:
                logger.warning(
                    "{}: its space holds {} parameter sets, fewer than sweep.budget ({}): each runs once",
                    strategy.name,
                    drawn,
                    spec.budget,
                )
    log = TrialLog(out / "trials.jsonl")
    counts = Counts(total=planner.total())
    show = progress or (lambda counts: None)

    try:
        columns_ref = ray.put(columns)
        driver_node = ray.get_runtime_context().get_node_id()
        remote = ray.remote(num_cpus=1, max_retries=MAX_RETRIES, retry_exceptions=False)(_run_remote)
        in_flight: dict[Any, Trial] = {}
        # by key, the trials waiting on one in flight: a window's test days can be the next
        # window's train days, and the same parameters then the same backtest (run once)
        sharing: dict[str, list[Trial]] = {}
        records: list[dict[str, Any]] = []
        groups: dict[tuple[int, str], list[dict[str, Any]]] = {}  # train records by (window, strategy name)
        waiting: dict[tuple[int, str], int] = {}  # train trials not yet in, by (window, strategy name)

        def finished(trial: Trial, record: dict[str, Any], *, from_log: bool) -> None:
            record = _as(trial, record)
            records.append(record)
            counts.done += 1
            counts.skipped += from_log
            counts.failed += record.get("status") != "ok"
            if trial.phase == "train":
                group = (trial.window, trial.strategy)
                groups.setdefault(group, []).append(record)
                planner.tell(trial.window, trial.strategy, record)
                waiting[group] -= 1
                follow(group)
            show(counts)

        def submit(trial: Trial) -> None:
            found = log.find(trial.key)
            if found is not None and (found["status"] == "ok" or not retry_failed):
                if (
                    trial.key,
                    trial.phase,
                    trial.strategy,
                ) not in log.records:  # the same backtest, another trial
                    log.append(_as(trial, found))
                finished(trial, found, from_log=True)
                return
            if trial.key in sharing:  # the same backtest is running (the other phase): its result
                sharing[trial.key].append(trial)
                return
            trial_dir = out / "trials" / trial.id
            ref = remote.remote(trial, spec.base_config, spec.data, columns_ref, trial_dir, driver_node)
            in_flight[ref] = trial
            sharing[trial.key] = []
            counts.running = len(in_flight)

        def follow(group: tuple[int, str]) -> None:
            """A group's next TPE trial, or once its train trials are in, its out-of-sample trial."""
            window = windows[group[0]]
            strategy = next(s for s in spec.strategies if s.name == group[1])
            if spec.sampler == "tpe":
                asked = planner.advance(window, strategy)
                counts.total -= planner.take_unasked()
                if asked:
                    waiting[group] += len(asked)  # all of them first: one may be in the log already
                    for trial in asked:
                        submit(trial)
                    return
            if waiting[group] == 0:
                top = best(groups.get(group, []), spec)
                if top is not None:
                    submit(planner.trial(strategy.name, top["params"], window, "test"))
                else:
                    counts.total -= 1  # no eligible parameters: no out-of-sample trial

        for window in windows:
            for strategy in spec.strategies:
                group = (window.index, strategy.name)
                groups[group] = []
                waiting[group] = 0
                if spec.sampler == "tpe":
                    # its first trials (each, once in, asks for the next; those in the log are
                    # found there as they are asked)
                    follow(group)
                    continue
                params_list = planner.train_params(strategy)
                waiting[group] = len(params_list)
                for params in params_list:
                    submit(planner.trial(strategy.name, params, window, "train"))
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                trial = in_flight.pop(ref)
                counts.running = len(in_flight)
                try:
                    record, folder = ray.get(ref)
                    if folder is not None:  # run on another node: its run folder, here too
                        unpack_folder(folder, out / "trials" / trial.id)
                except Exception as exc:  # the worker died more often than Ray retries
                    record = _failed(trial, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
                log.append(record)
                finished(trial, record, from_log=False)
                for other in sharing.pop(trial.key, []):  # the same backtest, another trial
                    log.append(_as(other, record))
                    finished(other, record, from_log=False)
    finally:
        log.close()
        ray.shutdown()
    # the same order whatever order the trials finished in (found by an audit: "as run", it was not)
    records.sort(key=lambda r: (r["window"], r["phase"] != "train", r["strategy"], r["trial_id"]))
    write_table(rows(records, spec), out)
    document = summary(spec, windows, records)
    hashes = dict(data_hashes, spec=file_sha256(spec.path))
    if spec.base_config is not None:
        hashes["base_config"] = file_sha256(spec.base_config)
    document["spec"] = provenance(spec, hashes, base.symbols[0])
    document["cold_starts"] = cold
    document["short_windows"] = short
    write_json(out / "sweep.json", document)
    _write_page(out)
    return SweepResult(out, counts, document, records)


def reach(address: str, said: str) -> None:
    """ClusterError unless the address Ray would connect to for `address` (`host:port`, `auto`: the
    cluster running on this machine, `ray://host:port`) takes a TCP connection within
    `CONNECT_TIMEOUT_S` (found by an audit: to an address where nothing answered, the sweep hung,
    stopped by hand after 120 s: Ray makes 20 attempts, each up to about 40 s)."""
    if address.startswith("ray://"):
        target: str | None = address.removeprefix("ray://")
    else:
        try:
            from ray._private.services import canonicalize_bootstrap_address
        except ImportError:  # another Ray's layout: the address as given
            target = address
        else:
            try:  # as ray.init reads it: 127.0.0.1 is this machine's address, auto its cluster's
                target = canonicalize_bootstrap_address(address)
            except ValueError as exc:
                raise ClusterError(f"{said}: {_first_line(exc)}", unreachable=False) from None
            except Exception as exc:  # auto without a cluster here (ConnectionError)
                raise ClusterError(f"{said}: {_first_line(exc)}", unreachable=True) from None
    host, sep, port = (target or "").rpartition(":")
    if not sep or not port.isdigit():
        return  # `local`, or a form Ray reads itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = (
            f"no answer in {CONNECT_TIMEOUT_S:g} s"
            if isinstance(exc, TimeoutError)
            else exc.strerror or str(exc)
        )
        where = "there" if target == address else f"at {target}"
        raise ClusterError(
            f"{said}: nothing answers {where} ({reason.lower()}): is a Ray head running at that address?",
            unreachable=True,
        ) from None


def connect(address: str, said: str) -> None:
    """`ray.init` on the cluster at `address`, with one connection attempt (`GCS_ATTEMPTS_ENV`);
    ClusterError, one line naming the address (`said`), when Ray cannot."""
    import ray

    if address != "local":  # ("local" starts a Ray here: its own start-up wait stays Ray's)
        os.environ.setdefault(GCS_ATTEMPTS_ENV, "1")
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except ValueError as exc:  # a form Ray does not take, or ray:// without ray[client]
        raise ClusterError(f"{said}: {_first_line(exc)}", unreachable=False) from None
    except Exception as exc:  # no GCS answers there (ConnectionError), a version mismatch...
        raise ClusterError(f"{said}: Ray could not connect: {_first_line(exc)}", unreachable=True) from None


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)[:300]


# a window's side whose data holds less than this share of its candles is said (`short_windows`)
FULL_SHARE = 0.9


def short_windows(windows: tuple[Window, ...], columns: dict[str, Any], interval_s: float) -> list[str]:
    """What the sweep says at its start of each window's train or test days whose data (each
    file's) holds less than `FULL_SHARE` of their candles: days before the data's first candle,
    after its last, or in its gaps (found by an audit: only a window ending after the last candle
    was said; one across a gap of the data was judged on a few hours of its days, unsaid)."""
    said = []
    for window in windows:
        for side, start, end in (
            ("train", window.train_start, window.train_end),
            ("test", window.test_start, window.test_end),
        ):
            wanted = math.ceil((end - start) / interval_s - 1e-9)
            held = min(
                bisect.bisect_left(c["open_ts"], end) - bisect.bisect_left(c["open_ts"], start)
                for c in columns.values()
            )
            if wanted and held < FULL_SHARE * wanted:
                said.append(
                    f"window {window.index}: its {side} days ({iso(start)} to {iso(end)}) hold {held:,} of "
                    f"their {wanted:,} candles ({held / wanted:.0%}: the data starts later, ends earlier "
                    f"or has gaps there): its {'in' if side == 'train' else 'out-of'}-sample figures cover "
                    "that much"
                )
    return said


def empty_windows(windows: tuple[Window, ...], columns: dict[str, Any], interval_s: float) -> list[str]:
    """A spec problem (exit 2) for each window's train or test days a data file holds no candle of
    (found by an audit: only a warning at start, `hold 0 of their 1,440 candles`, then every trial
    of them failed, and the sweep went on): one line naming the window, its days and the file's
    span, the walk-forward key to change first. Days the data holds in part are only said
    (`short_windows`)."""
    said = []
    for window in windows:
        for side, start, end in (
            ("train", window.train_start, window.train_end),
            ("test", window.test_start, window.test_end),
        ):
            for path, c in columns.items():
                opens = c["open_ts"]
                if not len(opens) or bisect.bisect_left(opens, end) > bisect.bisect_left(opens, start):
                    continue
                first, last = float(opens[0]), float(opens[-1]) + interval_s
                if end <= first:
                    key, where = "walk_forward.start", "before its first candle: a later start"
                elif start >= last:
                    key, where = (
                        "walk_forward.windows",
                        "after its last candle: fewer windows or an earlier start",
                    )
                else:
                    key, where = "walk_forward", "in a gap of it: windows around the gap"
                said.append(
                    f"{key}: window {window.index}'s {side} days ({iso(start)} to {iso(end)}) hold no candle "
                    f"of the data ({path} spans {iso(first)} to {iso(last)}; those days are {where}): its "
                    "trials could not run"
                )
                break
    return said


def _run_remote(
    trial: Trial, base_config: Path | None, data: Any, columns: Any, trial_dir: Path, driver_node: str
) -> tuple[dict[str, Any], bytes | None]:
    """The trial in a Ray task; on another node than the driver's, its run folder comes back
    with the record (packed), for the sweep's folder to hold every trial's run."""
    import ray

    record = run_trial(trial, base_config, data, columns, trial_dir)
    elsewhere = ray.get_runtime_context().get_node_id() != driver_node
    return record, pack_folder(trial_dir) if elsewhere else None


# what a trial is (its record's identity); the rest of a record is its outcome
IDENTITY = ("key", "trial_id", "strategy", "params", "window", "phase", "start", "end")


def _as(trial: Trial, record: dict[str, Any]) -> dict[str, Any]:
    """`record`'s outcome as `trial`'s: the same backtest (one key) is several trials when a
    window's test days are the next window's train days, or when two strategy tables' parameters
    make one config (found by an audit: the first trial's strategy and parameters went with the
    shared result, one strategy's row filed under the other's, its out-of-sample trial built from
    the other's parameters)."""
    return trial.record(**{k: v for k, v in record.items() if k not in IDENTITY})


def _failed(trial: Trial, error: str) -> dict[str, Any]:
    return trial.record(status="failed", error=error)


def _write_page(out: Path) -> None:
    """sweep.html; a page that cannot be built is logged, never the sweep's failure."""
    from loguru import logger

    try:
        from tools.sweep.html import write_sweep_html

        write_sweep_html(out)
    except Exception as exc:
        logger.error("sweep.html not written: {}", exc)
