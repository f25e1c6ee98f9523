"""A sweep's spec (a TOML file, docs/sweeps.md): the base config, the data, the strategies and their
parameter space, the objective, the sampler and the walk-forward windows. Read and checked whole
before anything runs: every problem is one line naming the key (`SpecError`, exit 2)."""

from __future__ import annotations

import itertools
import json
import math
import random
import tomllib
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import attrs

from actors.config import STRATEGY_KINDS, ConfigError, load, strategy_keys, strategy_value_problem

OBJECTIVES = ("net_pnl", "return_pct", "sharpe", "profit_factor")
SAMPLERS = ("grid", "random", "tpe")
DAY_S = 86_400.0
# the keys a trial sets itself (its window's run folder and kill switch): not the spec's
TRIAL_KEYS = ("session.run_dir", "session.kill_switch")

Sampler = Literal["grid", "random", "tpe"]


class SpecError(Exception):
    """A sweep spec that cannot be run: one line per problem, each naming its key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@attrs.frozen
class Range:
    """A parameter's range for the random and TPE samplers: integers when both ends are."""

    low: float
    high: float
    log: bool = False

    @property
    def integer(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)


Domain = tuple[Any, ...] | Range  # the values to choose from, or a range


@attrs.frozen
class StrategySpace:
    kind: str
    space: dict[str, Domain]  # parameter (a key of [strategy]) -> its domain, in the spec's order
    # the id of the base config's [[strategies]] table it tunes (its other tables trade beside it,
    # as configured); None: the trial's one strategy is [strategy] of this kind
    table: str | None = None

    @property
    def name(self) -> str:
        """What the sweep's log, table and verdict call it: its table's id, or its kind."""
        return self.table or self.kind

    def sets(self, params: Mapping[str, Any]) -> list[str]:
        """The `--set` values that give a trial's config this strategy with `params`."""
        if self.table is not None:
            return [f"strategies.{self.table}.{k}={_toml(v)}" for k, v in params.items()]
        return [f"strategy.name={self.kind}", *(f"strategy.{k}={_toml(v)}" for k, v in params.items())]


@attrs.frozen
class Window:
    """One walk-forward window: its parameters are chosen on [train_start, train_end) and judged
    on [train_end, test_end) (Unix times of candle opens)."""

    index: int
    train_start: float
    train_end: float
    test_end: float

    @property
    def test_start(self) -> float:
        return self.train_end


@attrs.frozen
class SweepSpec:
    path: Path
    name: str
    base_config: Path | None
    data: tuple[tuple[str, Path], ...]  # (symbol, file); one file: its symbol is "" (the session's)
    strategies: tuple[StrategySpace, ...]
    objective: str
    min_trades: int
    sampler: Sampler
    budget: int  # random / tpe: trials per strategy per train window
    seed: int
    sets: tuple[str, ...]  # config keys every trial sets (`--set` form)
    start: float | None  # the first window's train start (None: the data's first candle)
    train_days: float
    test_days: float
    windows: int

    def windows_from(self, first_open: float) -> tuple[Window, ...]:
        """The windows, rolled by the test length from `start` (or the data's first candle)."""
        start = self.start if self.start is not None else first_open
        train, test = self.train_days * DAY_S, self.test_days * DAY_S
        return tuple(
            Window(i, start + i * test, start + i * test + train, start + i * test + train + test)
            for i in range(self.windows)
        )

    def grid(self, strategy: StrategySpace) -> list[dict[str, Any]]:
        """Every combination of a strategy's parameter values (the grid sampler)."""
        names = list(strategy.space)
        values = [strategy.space[n] for n in names]
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]  # type: ignore[arg-type]

    def random_params(self, strategy: StrategySpace) -> list[dict[str, Any]]:
        """`budget` distinct parameter sets drawn with the spec's seed (the random sampler): the
        same sets in every window, so windows compare like with like. A set drawn again is drawn
        anew (found by an audit: two trials of one backtest, one trial id, two rows in the table);
        a space with fewer sets than the budget gives each once (`space_size`)."""
        rng = random.Random(f"{self.seed}:{strategy.name}")
        wanted = min(self.budget, space_size(strategy.space))
        drawn: list[dict[str, Any]] = []
        seen: set[str] = set()
        # a bound for a list that repeats a value (its size counted it twice): never met otherwise
        for _ in range(100 * self.budget + 10_000):
            if len(drawn) >= wanted:
                break
            params = {n: _draw(rng, d) for n, d in strategy.space.items()}
            mark = json.dumps(params, sort_keys=True, default=str)
            if mark not in seen:
                seen.add(mark)
                drawn.append(params)
        return drawn


def space_size(space: Mapping[str, Domain]) -> float:
    """How many parameter sets a space holds (inf with a range of floats)."""
    size = 1.0
    for domain in space.values():
        if isinstance(domain, tuple):
            size *= len(domain)
        elif domain.integer:
            size *= max(0, math.floor(domain.high) - math.ceil(domain.low) + 1)
        else:
            return math.inf
    return size


def _draw(rng: random.Random, domain: Domain) -> Any:
    if isinstance(domain, tuple):
        return rng.choice(domain)
    if domain.log:
        value = math.exp(rng.uniform(math.log(domain.low), math.log(domain.high)))
    elif domain.integer:
        # each whole number alike (found by an audit: round(uniform) drew the ends half as often)
        return rng.randint(math.ceil(domain.low), math.floor(domain.high))
    else:
        value = rng.uniform(domain.low, domain.high)
    return round(value) if domain.integer else value


def load_spec(path: Path, data_overrides: Mapping[str, str] | None = None) -> SweepSpec:
    """The spec at `path` (relative paths in it are relative to its folder); `data_overrides`:
    `--data` of the command line (symbol, "" for the only one, -> file). SpecError otherwise."""
    problems: list[str] = []
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpecError([f"{path}: not valid TOML: {exc}"]) from None
    except RecursionError:  # tomllib recurses per level (found by an audit: a traceback)
        raise SpecError([f"{path}: not valid TOML here: nested too deeply"]) from None
    here = path.parent
    sweep = _table(raw, "sweep", problems)
    wf = _table(raw, "walk_forward", problems)
    for extra in set(raw) - {"sweep", "walk_forward", "strategy"}:
        problems.append(f"{extra}: unknown section; expected [sweep], [walk_forward], [[strategy]]")
    known = {"name", "base_config", "data", "objective", "min_trades", "sampler", "budget", "seed", "set"}
    problems += [
        f"sweep.{k}: unknown key; expected one of {', '.join(sorted(known))}" for k in set(sweep) - known
    ]
    known_wf = {"start", "train_days", "test_days", "windows"}
    problems += [
        f"walk_forward.{k}: unknown key; expected one of {', '.join(sorted(known_wf))}"
        for k in set(wf) - known_wf
    ]

    name = sweep.get("name", path.stem)
    if not isinstance(name, str) or not name:
        problems.append("sweep.name: expected a non-empty string")
        name = path.stem
    base = sweep.get("base_config")
    base_config = _path(here, base, "sweep.base_config", problems) if base is not None else None
    data = _data(here, sweep.get("data"), data_overrides or {}, problems)
    objective = _choice(sweep.get("objective", "net_pnl"), OBJECTIVES, "sweep.objective", problems)
    min_trades = _int(sweep.get("min_trades", 1), "sweep.min_trades", problems, low=0)
    sampler = _choice(sweep.get("sampler", "grid"), SAMPLERS, "sweep.sampler", problems)
    budget = _int(sweep.get("budget", 0), "sweep.budget", problems, low=0)
    if sampler != "grid" and budget < 1:
        problems.append(
            f"sweep.budget: the {sampler} sampler needs a trial budget >= 1 (trials per strategy per window)"
        )
    seed = _int(sweep.get("seed", 0), "sweep.seed", problems)
    sets = sweep.get("set", [])
    if not isinstance(sets, list) or not all(isinstance(s, str) and "=" in s for s in sets):
        problems.append('sweep.set: expected a list of "section.key=value" strings')
        sets = []
    for s in sets:
        if s.partition("=")[0].strip() in (*TRIAL_KEYS, "strategy.name"):
            problems.append(f"sweep.set: {s.partition('=')[0].strip()} is set by the sweep for each trial")

    start_text = wf.get("start")
    start = None
    if start_text is not None:
        start = _when(start_text, "walk_forward.start", problems)
    train_days = _number(wf.get("train_days"), "walk_forward.train_days", problems)
    test_days = _number(wf.get("test_days"), "walk_forward.test_days", problems)
    windows = _int(wf.get("windows", 1), "walk_forward.windows", problems, low=1)
    # the TPE sampler seeds window i with seed + 1000 i, which numpy takes from 0 to 2**32 - 1
    # (found by an audit: a seed beyond it ended in a traceback)
    top = 2**32 - 1 - 1000 * (windows - 1)
    if not 0 <= seed <= top:
        problems.append(
            f"sweep.seed: {seed} is not allowed; expected an integer from 0 to {top} (with {windows} window(s): "
            "window i is seeded with seed + 1000 x i, at most 2**32 - 1)"
        )

    strategies = _strategies(
        raw.get("strategy"), sampler, _base_tables(base_config, sets, problems), problems
    )
    if not problems:
        _check_configs(base_config, sets, strategies, problems, data)
    if problems:
        raise SpecError(problems)
    return SweepSpec(
        path=path,
        name=name,
        base_config=base_config,
        data=data,
        strategies=strategies,
        objective=objective,
        min_trades=min_trades,
        sampler=sampler,  # type: ignore[arg-type]
        budget=budget,
        seed=seed,
        sets=tuple(sets),
        start=start,
        train_days=train_days,
        test_days=test_days,
        windows=windows,
    )


def _table(raw: dict[str, Any], name: str, problems: list[str]) -> dict[str, Any]:
    table = raw.get(name, {})
    if not isinstance(table, dict):
        problems.append(f"{name}: expected a table [{name}]")
        return {}
    return table


def _path(here: Path, value: Any, key: str, problems: list[str]) -> Path:
    if not isinstance(value, str) or not value:
        problems.append(f"{key}: expected a file path (relative to the spec's folder)")
        return Path()
    path = Path(value) if Path(value).is_absolute() else here / value
    if not path.is_file():
        problems.append(f"{key}: {_not_a_file(path)}: {path}")
    return path


def _not_a_file(path: Path) -> str:
    """Why `path` is no data file (found by a CLI audit: a directory was said "file not found")."""
    return (
        "a directory, not a file"
        if path.is_dir()
        else "not a regular file"
        if path.exists()
        else "file not found"
    )


def _data(
    here: Path, value: Any, overrides: Mapping[str, str], problems: list[str]
) -> tuple[tuple[str, Path], ...]:
    """`sweep.data`: one file, or a table SYMBOL = file; `--data` replaces it."""
    if overrides:
        pairs = {symbol: Path(path) for symbol, path in overrides.items()}
        for symbol, path in pairs.items():
            if not path.is_file():
                problems.append(f"--data {symbol + '=' if symbol else ''}{path}: {_not_a_file(path)}")
        return tuple(pairs.items())
    if isinstance(value, str):
        return (("", _path(here, value, "sweep.data", problems)),)
    if isinstance(value, dict) and value:
        return tuple(
            (str(symbol).upper(), _path(here, path, f"sweep.data.{symbol}", problems))
            for symbol, path in value.items()
        )
    problems.append(
        "sweep.data: expected a candle file, or a table SYMBOL = file (relative to the spec's folder)"
    )
    return ()


def _choice(value: Any, allowed: tuple[str, ...], key: str, problems: list[str]) -> str:
    if value not in allowed:
        problems.append(f"{key}: {value!r} is not one of {', '.join(allowed)}")
        return allowed[0]
    return str(value)


def _int(value: Any, key: str, problems: list[str], low: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or (low is not None and value < low):
        problems.append(f"{key}: expected an integer{f' >= {low}' if low is not None else ''}, got {value!r}")
        return low or 0
    return value


def _number(value: Any, key: str, problems: list[str]) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < math.inf:
        problems.append(f"{key}: expected a number of days > 0, got {value!r}")
        return 1.0
    return float(value)


def _when(value: Any, key: str, problems: list[str]) -> float:
    if isinstance(value, datetime):
        when = value
    else:
        try:
            when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            problems.append(f"{key}: not an ISO-8601 date or date and time: {value!r}")
            return 0.0
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _base_tables(base: Path | None, sets: list[str], problems: list[str]) -> dict[str, str] | None:
    """The base config's [[strategies]] tables (with the spec's sets): id -> kind; None when it
    has none (or cannot be read: that problem is noted)."""
    try:
        config = load(base, {}, list(sets), {})
    except ConfigError as exc:
        problems += [f"sweep.base_config (with sweep.set): {p}" for p in exc.problems]
        return None
    return {spec.id: spec.kind for spec in config.strategies} or None


def _strategies(
    value: Any, sampler: str, tables: dict[str, str] | None, problems: list[str]
) -> tuple[StrategySpace, ...]:
    """The spec's [[strategy]] tables: each names a `kind` (the trial's one strategy) or the `id`
    of one of the base config's [[strategies]] tables (`tables`: id -> kind)."""
    if not isinstance(value, list) or not value:
        problems.append("strategy: expected one or more [[strategy]] tables (kind or id, and space)")
        return ()
    out = []
    names = set()
    for i, table in enumerate(value):
        where = f"strategy[{i}]"
        if not isinstance(table, dict):
            problems.append(f"{where}: expected a table (kind or id, and space)")
            continue
        table_id = table.get("id")
        if table_id is not None:
            table_id = str(table_id)
            if "kind" in table:
                problems.append(f"{where}: give kind (one strategy) or id (a base config table), not both")
                continue
            if tables is None or table_id not in tables:
                have = f"one of {', '.join(tables)}" if tables else "none: it has no [[strategies]] tables"
                problems.append(
                    f"{where}.id: {table_id!r} is not an id of the base config's [[strategies]]; {have}"
                )
                continue
            kind = tables[table_id]
        else:
            given = table.get("kind")
            if given not in STRATEGY_KINDS:
                problems.append(f"{where}.kind: {given!r} is not one of {', '.join(STRATEGY_KINDS)}")
                continue
            kind = str(given)
        name = table_id or kind
        if name in names:
            problems.append(f"{where}.{'id' if table_id else 'kind'}: {name} is given twice")
        names.add(name)
        extra = set(table) - {"kind", "id", "space"}
        problems += [f"{where}.{k}: unknown key; expected kind or id, and space" for k in extra]
        space_raw = table.get("space", {})
        if not isinstance(space_raw, dict) or not space_raw:
            problems.append(
                f"{where}.space: expected a table of parameters, each a list of values or a range"
            )
            continue
        params = set(strategy_keys(kind))  # the keys its kind reads (not ema_cross's stop_loss_pct)
        space: dict[str, Domain] = {}
        for name, domain in space_raw.items():
            key = f"{where}.space.{name}"
            if name not in params:
                problems.append(
                    f"{key}: not a parameter of {kind}; expected one of {', '.join(sorted(params))}"
                )
                continue
            if isinstance(domain, list) and domain and all(_scalar(v) for v in domain):
                twice = [v for k, v in enumerate(domain) if v in domain[:k]]
                if twice:  # a trial twice over (one trial id, two rows of the table)
                    problems.append(f"{key}: {_toml(twice[0])} is listed twice; list each value once")
                    continue
                space[name] = tuple(domain)
            elif isinstance(domain, dict) and sampler != "grid":
                low, high = domain.get("low"), domain.get("high")
                if (
                    not isinstance(low, int | float)
                    or not isinstance(high, int | float)
                    or not (_number_like(low) and _number_like(high) and low < high)
                    or set(domain) - {"low", "high", "log"}
                    or not isinstance(domain.get("log", False), bool)
                ):
                    problems.append(
                        f"{key}: a range is {{ low = number, high = number, log = bool }} with low < high"
                    )
                    continue
                if domain.get("log", False) and low <= 0:  # (found by an audit: a traceback)
                    problems.append(f"{key}: log = true needs low > 0 (got low = {low})")
                    continue
                space[name] = Range(low, high, bool(domain.get("log", False)))
            else:
                expect = (
                    "a list of values" if sampler == "grid" else "a list of values or a range { low, high }"
                )
                problems.append(f"{key}: expected {expect}")
        out.append(StrategySpace(kind, space, table_id))
    return tuple(out)


def _scalar(value: Any) -> bool:
    return isinstance(value, int | float | str | bool)


def _number_like(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def trial_sets(spec: SweepSpec, name: str, params: Mapping[str, Any]) -> list[str]:
    """The `--set` values of one trial's config: the spec's, then the strategy's (`name`: its
    kind or its table's id) with its parameters."""
    (strategy,) = [s for s in spec.strategies if s.name == name]
    return [*spec.sets, *strategy.sets(params)]


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _check_configs(
    base: Path | None,
    sets: list[str],
    strategies: tuple[StrategySpace, ...],
    problems: list[str],
    data: tuple[tuple[str, Path], ...] = (),
) -> None:
    """Each strategy's first and last parameter values make a valid config (the config's own
    rules: a bad value fails here, not in the hundredth trial) and every value listed between them
    passes its key's own rule; a data table has a file for each
    symbol its trials trade and none other (as the CLI's `--data SYMBOL=FILE` holds it: found by an
    audit, a table without the traded symbol's file ran every trial into `KeyError`, exit 0)."""
    table = {symbol for symbol, _ in data if symbol}
    said: set[str] = set()
    for strategy in strategies:
        # the values between a list's ends against their key's own rule (found by an audit:
        # `[5, "b", 9]` passed, its middle value failed as a trial and the table's writer ended the
        # sweep in a traceback once every trial had run); the ends are checked together below, and
        # a rule between keys broken by a combination is a trial's (docs/sweeps.md)
        prefix = f"strategies.{strategy.table}" if strategy.table is not None else "strategy"
        bad = [
            problem
            for name, domain in strategy.space.items()
            if isinstance(domain, tuple)
            for value in domain[1:-1]
            if (
                problem := strategy_value_problem(
                    strategy.kind, f"{prefix}.{name}", _toml(value), "the spec's list"
                )
            )
            is not None
        ]
        problems += [f"strategy {strategy.name}: {problem}" for problem in bad]
        for pick in (0, -1):
            params = {
                name: (
                    domain[pick] if isinstance(domain, tuple) else (domain.low if pick == 0 else domain.high)
                )
                for name, domain in strategy.space.items()
            }
            try:
                config = load(base, {}, [*sets, *strategy.sets(params)], {})
                if table:
                    for symbol in sorted(set(config.symbols) - table - said):
                        said.add(symbol)
                        problems.append(
                            f"sweep.data: no file for {symbol}, which strategy {strategy.name} trades"
                        )
                    for symbol in sorted(table - set(config.symbols) - said):
                        said.add(symbol)
                        problems.append(
                            f"sweep.data.{symbol}: no strategy of strategy {strategy.name}'s trials trades it"
                        )
            except ConfigError as exc:
                problems += [f"strategy {strategy.name} with {params}: {p}" for p in exc.problems]
                break  # the next strategy's too (found by an audit: only the first was said)


# a warm-up this share of the test days or more is said at the start (`cold_starts`)
COLD_SHARE = 0.1


def cold_starts(spec: SweepSpec) -> list[str]:
    """What the sweep says at its start of each strategy whose warm-up takes `COLD_SHARE` of the
    test days or more (its longest, at the first or last values of its space): each window's
    out-of-sample run starts cold on its own days, as the CLI backtest of them does, and trades
    nothing before its warm-up is over (found by an audit: ema_cross with slow_period 200 on 3 h
    test days made no trade out of sample, a verdict of 0.00 over 2 of 2 windows, unsaid)."""
    from actors.config import interval_seconds, strategy_warmups

    test_s = spec.test_days * DAY_S
    said = []
    for strategy in spec.strategies:
        longest = (0.0, 0, "")
        for pick in (0, -1):
            params = {
                name: (
                    domain[pick] if isinstance(domain, tuple) else (domain.low if pick == 0 else domain.high)
                )
                for name, domain in strategy.space.items()
            }
            try:
                config = load(spec.base_config, {}, [*spec.sets, *strategy.sets(params)], {})
            except ConfigError:  # a combination its trial records as failed
                continue
            for table, candles in strategy_warmups(config):
                if strategy.table is not None and table.id != strategy.table:
                    continue
                interval = table.interval or config.session.interval
                seconds = candles * float(interval_seconds(interval))
                longest = max(longest, (seconds, candles, interval))
        seconds, candles, interval = longest
        if seconds >= COLD_SHARE * test_s:
            end = (
                "longer than them: it cannot trade out of sample"
                if seconds >= test_s
                else f"{seconds / test_s:.0%} of them"
            )
            said.append(
                f"{strategy.name}: each out-of-sample run starts cold on its test days and warms up on "
                f"their first {candles} {interval} candles ({seconds / 3600:.1f} h of {test_s / 3600:.1f} h), "
                f"trading none before: {end}"
            )
    return said
