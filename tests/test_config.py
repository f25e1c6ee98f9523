"""Config: defaults equal config/default.toml, precedence of every layer, clear errors."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import attrs
import pytest

from actors.config import Config, ConfigError, load, to_dict, to_toml
from tests.conftest import REPO, run_cli, run_main


def test_builtin_defaults_equal_default_toml() -> None:
    with (REPO / "config" / "default.toml").open("rb") as f:
        assert tomllib.load(f) == to_dict(Config())


def test_default_toml_documents_every_key() -> None:
    text = (REPO / "config" / "default.toml").read_text()
    lines = text.splitlines()
    for section, keys in to_dict(Config()).items():
        assert f"[{section}]" in lines
        for key in keys:
            i = next(n for n, line in enumerate(lines) if line.startswith(f"{key} = "))
            assert lines[i - 1].startswith("# "), f"{section}.{key} has no comment"


def test_default_toml_comments_are_the_schemas_docs() -> None:
    """Each key's comment in config/default.toml (its lines joined) is the key's documentation in the
    schema (`actors.config.key`, what `documented_toml` writes): found by a docs audit, the two
    had drifted apart (feed.stale_after_s), so one of them said less than the other."""
    from actors.config import section_fields

    lines = (REPO / "config" / "default.toml").read_text().splitlines()
    section, differ = "", []
    for n, line in enumerate(lines):
        if line.startswith("[") and line.endswith("]"):
            section = line.strip("[]")
        elif section and " = " in line and not line.startswith("#"):
            name = line.split(" = ", 1)[0]
            start = n
            while start > 0 and lines[start - 1].startswith("# "):
                start -= 1
            comment = " ".join(c[2:] for c in lines[start:n])
            doc = section_fields(section)[name].metadata["rule"].doc
            if comment != doc:
                differ.append(f"{section}.{name}: {comment!r} in the file, {doc!r} in the schema")
    assert differ == []


@pytest.mark.parametrize("name", ["live.toml", "default.toml"])
def test_shipped_configs_load_unmodified(name: str) -> None:
    load(REPO / "config" / name)


def test_templates_load_unmodified() -> None:
    templates = sorted((REPO / "config" / "templates").glob("*.toml"))
    assert templates, "config/templates/ has no templates"
    for path in templates:
        load(path)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_precedence_file_over_defaults(tmp_path: Path) -> None:
    path = _write(tmp_path, "[risk]\nmax_orders_per_minute = 3\n")
    assert Config().risk.max_orders_per_minute != 3
    assert load(path).risk.max_orders_per_minute == 3


def test_precedence_env_over_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "[risk]\nmax_orders_per_minute = 3\n")
    cfg = load(path, {"LAPTOP_AGENTS__RISK__MAX_ORDERS_PER_MINUTE": "4"})
    assert cfg.risk.max_orders_per_minute == 4


def test_precedence_flags_over_env(tmp_path: Path) -> None:
    path = _write(tmp_path, "[session]\nduration_min = 3\nseed = 1\n")
    env = {"LAPTOP_AGENTS__SESSION__DURATION_MIN": "4", "LAPTOP_AGENTS__SESSION__SEED": "2"}
    cfg = load(path, env, ["session.seed=3"], {"session.duration_min": (5.0, "--duration")})
    assert cfg.session.duration_min == 5.0
    assert cfg.session.seed == 3


def test_named_flag_beats_set(tmp_path: Path) -> None:
    cfg = load(None, {}, ["session.seed=3"], {"session.seed": (9, "--seed")})
    assert cfg.session.seed == 9


def test_env_and_set_are_typed_by_schema() -> None:
    cfg = load(None, {"LAPTOP_AGENTS__BROKER__STARTING_EQUITY": "2500"}, ["risk.max_position_size=0.02"])
    assert cfg.broker.starting_equity == 2500.0
    assert isinstance(cfg.broker.starting_equity, float)
    assert cfg.risk.max_position_size == 0.02


def test_several_problems_reported_together() -> None:
    with pytest.raises(ConfigError) as info:
        load(None, {}, ["risk.max_position_size=-1", "session.seed=abc", "session.nope=1"])
    assert len(info.value.problems) == 3


# (files, args, env, expected fragment of the one-line message)
INVALID = [
    ("[session]\nduration_min = 'ten'\n", [], {}, "session.duration_min: 'ten' is not allowed"),
    ("[risk]\nmax_position_size = -0.5\n", [], {}, "risk.max_position_size: -0.5 is not allowed"),
    ("[risk]\nmax_possition = 1\n", [], {}, "risk.max_possition: unknown key"),
    ("[sesion]\nseed = 1\n", [], {}, "unknown section 'sesion'"),
    ("[riskk]\n[session]\nseed = 1\n", [], {}, "riskk: unknown section 'riskk'"),  # empty (an audit)
    ("[session\nseed = 1\n", [], {}, "is not valid TOML"),
    # nested deeper than Python's recursion limit (found by an audit: tomllib's RecursionError, a
    # traceback, exit 1)
    ("x = " + "[" * 5000 + "]" * 5000 + "\n", [], {}, "is not valid TOML here: nested too deeply"),
    ("[session]\nrun_dir = " + "{a=" * 3000 + "1" + "}" * 3000 + "\n", [], {}, "nested too deeply"),
    (None, ["--config", "missing.toml"], {}, "file not found"),
    (None, ["--duration", "-1"], {}, "session.duration_min: -1.0 is not allowed (from --duration)"),
    (None, ["--source", "nyse"], {}, "feed.source: 'nyse' is not allowed"),
    (
        None,
        ["--set", "strategy.fast_period=30"],
        {},
        "strategy.fast_period: 30 is not allowed (from --set); expected less than strategy.slow_period (21)",
    ),
    (None, ["--set", "risk.max_orders_per_minute=1.5"], {}, "expected an integer"),
    (None, ["--set", "broker.taker_fee_bps"], {}, "expected SECTION.KEY=VALUE"),
    (
        None,
        [],
        {"LAPTOP_AGENTS__BROKER__STARTING_EQUITY": "nan"},
        "broker.starting_equity: nan is not allowed",
    ),
    (None, [], {"LAPTOP_AGENTS__RISK": "1"}, "expected LAPTOP_AGENTS__SECTION__KEY"),
    ("[session]\ninterval = '90x'\n", [], {}, "session.interval: '90x' is not allowed"),
    ("[session]\nseed = true\n", [], {}, "session.seed: True is not allowed"),
    ("session = 3\n", [], {}, "expected a [session] table"),
    # a live session on the exchange subscribes to its klines: seconds are the mock's only
    (
        "[session]\ninterval = '1s'\n[feed]\nsource = 'bitunix'\n",
        [],
        {},
        "session.interval: '1s' is not allowed with feed.source = 'bitunix' (a live session subscribes "
        "to the exchange's klines of its interval and takes its history over REST: an interval both "
        "serve, and REST serves no 3m); expected one of 1m, 5m,",
    ),
    (
        "[session]\ninterval = '3m'\n[feed]\nsource = 'bitunix'\n",
        [],
        {},
        "session.interval: '3m' is not allowed",
    ),
    # found by an audit: each passed --check-config, then hung the start for good (a regime of
    # 1e-9 minutes), or crashed it (a count beyond 64 bits in its first event, a halt ending past
    # what a timestamp holds), or ran on an interval of "1m\n"
    (None, ["--set", "feed.mock_regime_min=1e-9"], {}, "expected 0 or a number >= 1 and <= 10080"),
    (None, ["--set", "risk.max_trades=18446744073709551616"], {}, "risk.max_trades: 18446744073709551616"),
    (None, ["--set", "alerts.max_errors_per_min=10000000000"], {}, "expected a number >= 0 and <= 1e+09"),
    (None, ["--set", "risk.loss_streak_cooldown_min=1e20"], {}, "expected a number > 0 and <= 525600"),
    (None, ["--set", "session.interval=1m\n"], {}, "session.interval: '1m\\n' is not allowed"),
    # a kind's keys are not judged against the default kind when the kind given is refused
    (
        None,
        ["--set", "strategy.name=liquidity_swep", "--set", "strategy.lookback=3"],
        {},
        "strategy.name: 'liquidity_swep' is not allowed",
    ),
    # a warm-up longer than the history seeded: the strategy would start cold (any kind, not ema_cross only)
    (
        None,
        ["--set", "strategy.name=trend_pullback", "--set", "strategy.ema_slow=300"],
        {},
        "strategy.history: 200 is not allowed; expected at least the strategy's warm-up (300 candles",
    ),
]


def test_a_seconds_interval_with_the_exchange_feed_is_fine_for_a_backtest(tmp_path: Path) -> None:
    """The interval of a backtest is its data's: the live feed's kline rule does not apply."""
    config = _write(tmp_path, "[session]\ninterval = '5s'\n[feed]\nsource = 'bitunix'\n")
    data = tmp_path / "d.csv"
    rows = [f"{1_704_067_200_000 + i * 5_000},100.0,101.0,99.0,100.5,5.0" for i in range(30)]
    data.write_text("open_time_ms,open,high,low,close,volume\n" + "\n".join(rows) + "\n")
    result = run_main("--config", str(config), "--mode", "backtest", "--data", str(data), cwd=tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("text", "args", "env", "fragment"), INVALID)
def test_invalid_config_exits_2_with_one_clear_line(
    tmp_path: Path, text: str | None, args: list[str], env: dict[str, str], fragment: str
) -> None:
    if text is not None:
        args = ["--config", str(_write(tmp_path, text)), *args]
    result = run_main(*args, "--check-config", cwd=tmp_path, **env)
    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("config error: ")
    assert not (tmp_path / "runs").exists()


def test_invalid_config_creates_no_run_folder_without_check_config(tmp_path: Path) -> None:
    result = run_cli("--duration", "0", cwd=tmp_path)
    assert result.returncode == 2
    assert not (tmp_path / "runs").exists()


def test_check_config_prints_effective_config(tmp_path: Path) -> None:
    result = run_cli(
        "--config",
        str(REPO / "config" / "live.toml"),
        "--seed",
        "7",
        "--check-config",
        cwd=tmp_path,
        LAPTOP_AGENTS__RISK__MAX_ORDERS_PER_MINUTE="5",
    )
    assert result.returncode == 0, result.stderr
    printed = tomllib.loads(result.stdout)
    assert printed["session"]["seed"] == 7
    assert printed["risk"]["max_orders_per_minute"] == 5
    assert printed == to_dict(
        load(
            REPO / "config" / "live.toml",
            {"LAPTOP_AGENTS__RISK__MAX_ORDERS_PER_MINUTE": "5"},
            ["session.seed=7"],
        )
    )
    assert not (tmp_path / "runs").exists()


def test_unknown_flag_exits_2(tmp_path: Path) -> None:
    result = run_cli("--durtion", "1", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


# --- strategy kinds and their own parameters ---------------------------------------------------------


def test_strategy_kinds_are_the_registered_strategies() -> None:
    from actors.config import STRATEGY_KINDS
    from actors.strategies.base import REGISTRY

    assert sorted(STRATEGY_KINDS) == sorted(REGISTRY)


def test_a_kinds_parameters_are_keys_of_the_strategy_table() -> None:
    import attrs

    from actors.config import strategy_kinds

    for kind, params in strategy_kinds().items():
        if params is None:
            continue
        field = attrs.fields(params)[0]
        default = getattr(params(), field.name)
        config = load(None, {}, [f"strategy.name={kind}", f"strategy.{field.name}={default}"])
        assert isinstance(config.strategy_params, params)
        assert getattr(config.strategy_params, field.name) == default
        assert to_dict(config)["strategy"][field.name] == default  # --check-config shows it
        # and a resumed session reloads what to_dict wrote
        assert load(None, {}, [f"strategy.{k}={v}" for k, v in to_dict(config)["strategy"].items()]) == config


def test_a_parameter_of_another_kind_is_refused_naming_the_kind() -> None:
    import attrs

    from actors.config import strategy_kinds

    kinds = [(kind, params) for kind, params in strategy_kinds().items() if params is not None]
    assert kinds
    kind, params = kinds[0]
    name = attrs.fields(params)[0].name
    with pytest.raises(ConfigError) as info:
        load(None, {}, ["strategy.name=ema_cross", f"strategy.{name}=3"])
    assert f"strategy.{name}: not a parameter of strategy.name = 'ema_cross'" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load(None, {}, [f"strategy.name={kind}", f"strategy.{name}=not-a-number"])
    assert f"strategy.{name}: 'not-a-number' is not allowed" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load(None, {}, [f"strategy.name={kind}", "strategy.no_such_key=1"])
    assert "strategy.no_such_key: unknown key" in str(info.value)


# --- several strategies: [[strategies]] tables ----------------------------------------------------------

TWO = """
[session]
symbol = "BTCUSDT"
interval = "1m"

[[strategies]]
id = "trend"
kind = "trend_pullback"
stop_atr_mult = 2.0
order_qty = 0.002

[[strategies]]
id = "sweep-1"
kind = "liquidity_sweep"
symbol = "BTCUSDT"
interval = "1m"
lookback = 12
history = 300

[[strategies]]
id = "cross"
kind = "ema_cross"
fast_period = 5
slow_period = 13
"""


def test_strategies_tables_are_the_sessions_strategies_in_order(tmp_path: Path) -> None:
    from actors.strategies.liquidity_sweep import LiquiditySweepParams
    from actors.strategies.trend_pullback import TrendPullbackParams

    config = load(_write(tmp_path, TWO))
    specs = config.strategy_specs
    assert [(s.id, s.kind) for s in specs] == [
        ("trend", "trend_pullback"),
        ("sweep-1", "liquidity_sweep"),
        ("cross", "ema_cross"),
    ]
    assert specs[0].params == TrendPullbackParams(stop_atr_mult=2.0)
    assert specs[0].config.order_qty == 0.002
    assert specs[1].params == LiquiditySweepParams(lookback=12)
    assert (specs[1].symbol, specs[1].interval) == ("BTCUSDT", "1m")
    assert (specs[2].config.fast_period, specs[2].config.slow_period, specs[2].params) == (5, 13, None)
    assert config.strategy_history == 300  # the live feed seeds the largest history of them


def test_the_one_strategy_table_is_one_spec_with_id_its_name() -> None:
    config = load(REPO / "config" / "templates" / "trend_pullback.toml")
    (spec,) = config.strategy_specs
    assert (spec.id, spec.config, spec.params) == (
        config.strategy.name,
        config.strategy,
        config.strategy_params,
    )
    assert config.strategies == ()
    assert config.strategy_history == config.strategy.history
    config = load(None, {}, ["strategy.name=liquidity_sweep", "strategy.lookback=7"])
    (spec,) = config.strategy_specs
    assert spec.id == "liquidity_sweep" and spec.params.lookback == 7


def test_strategies_round_trip_through_the_output(tmp_path: Path) -> None:
    from actors.config import build, dict_layer, documented_toml, to_toml

    config = load(_write(tmp_path, TWO))
    values = to_dict(config)
    assert "strategy" not in values
    assert [t["id"] for t in values["strategies"]] == ["trend", "sweep-1", "cross"]
    assert values["strategies"][0]["stop_atr_mult"] == 2.0 and values["strategies"][0]["ema_slow"] == 50
    text = to_toml(config)
    assert text.count("[[strategies]]") == 3  # tables, not inline
    assert tomllib.loads(text) == values
    assert load(_write(tmp_path, text)) == config  # --check-config's output loads back the same
    assert load(_write(tmp_path, documented_toml(config))) == config
    problems: list[str] = []  # the config a run folder records, as --replay loads it
    assert build([dict_layer(values, "recorded", problems)], problems) == config
    # and the one [strategy] form as before
    one = load(None, {}, ["strategy.name=trend_pullback", "strategy.target_r=3"])
    assert "strategies" not in to_dict(one)
    assert load(_write(tmp_path, to_toml(one))) == one


def test_check_config_prints_the_strategies_tables(tmp_path: Path) -> None:
    path = _write(tmp_path, TWO)
    result = run_cli("--config", str(path), "--check-config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert tomllib.loads(result.stdout) == to_dict(load(path))
    assert result.stdout.count("[[strategies]]") == 3


ONE_TABLE = '[[strategies]]\nid = "a"\nkind = "ema_cross"\n'

# (file, args, expected fragment of the one-line message)
INVALID_STRATEGIES = [
    (
        ONE_TABLE + "lookback = 3\n",
        [],
        "strategies[a].lookback: not a parameter of strategies[a].kind = 'ema_cross'",
    ),
    (
        '[[strategies]]\nid = "b"\nkind = "liquidity_sweep"\ntarget_r = 3.0\n',
        [],
        "strategies[b].target_r: not a parameter of strategies[b].kind = 'liquidity_sweep'",
    ),
    (
        '[[strategies]]\nid = "a"\nkind = "trend_pullback"\nema_fast = "x"\n',
        [],
        "strategies[a].ema_fast: 'x' is not allowed",
    ),
    (
        '[[strategies]]\nid = "a"\nkind = "trend_pullback"\nema_fast = 0\n',
        [],
        "strategies[a].ema_fast: 0 is not allowed",
    ),
    (
        '[[strategies]]\nid = "a"\nkind = "trend_pullback"\nema_fast = 60\n',
        [],
        "strategies[a].ema_fast: 60 is not allowed (from ",  # the file's name, then what is allowed
    ),
    (ONE_TABLE + "fast_period = 30\n", [], "strategies[a].fast_period: 30 is not allowed"),
    (ONE_TABLE + "order_qty = -1\n", [], "strategies[a].order_qty: -1.0 is not allowed"),
    (ONE_TABLE + "nope = 1\n", [], "strategies[a].nope: unknown key"),
    (ONE_TABLE + "name = 'ema_cross'\n", [], "strategies[a].name: unknown key"),
    ('[[strategies]]\nid = "a"\nkind = "macd"\n', [], "strategies[a].kind: 'macd' is not allowed"),
    ('[[strategies]]\nkind = "ema_cross"\n', [], "strategies[0].id: missing"),
    ('[[strategies]]\nid = "a"\n', [], "strategies[a].kind: missing"),
    ('[[strategies]]\nid = "Bad Id"\nkind = "ema_cross"\n', [], "strategies[0].id: 'Bad Id' is not allowed"),
    ('[[strategies]]\nid = "' + "x" * 33 + '"\nkind = "ema_cross"\n', [], "strategies[0].id:"),
    (ONE_TABLE * 2, [], "strategies[a].id: 'a' is not allowed (from"),
    (ONE_TABLE + "symbol = 'eth'\n", [], "strategies[a].symbol: 'eth' is not allowed"),
    (
        ONE_TABLE + "interval = '90s'\n",
        [],
        "strategies[a].interval: '90s' is not allowed (from ",
    ),
    (ONE_TABLE + "interval = 'soon'\n", [], "strategies[a].interval: 'soon' is not allowed"),
    ("[strategy]\norder_qty = 0.002\n" + ONE_TABLE, [], "[strategy] (from"),
    (ONE_TABLE, ["--set", "strategies.id=b"], "--set strategies.id=b: expected SECTION.KEY=VALUE"),
    (
        ONE_TABLE,
        ["--set", "strategies.b.order_qty=1"],
        "strategies.b.order_qty: no [[strategies]] table has the id 'b'",
    ),
    (
        ONE_TABLE,
        ["--set", "strategies.a.id=b"],
        "strategies.a.id: a table's id is written in the --config file only",
    ),
    (
        ONE_TABLE,
        ["--set", "strategies.a.lookback=3"],
        "strategies[a].lookback: not a parameter of strategies[a].kind",
    ),
    (
        ONE_TABLE,
        ["--set", "strategies.a.order_qty=-1"],
        "strategies[a].order_qty: -1.0 is not allowed (from --set)",
    ),
    (
        ONE_TABLE,
        ["--set", "strategies.a.b.c=1"],
        "--set strategies.a.b.c=1: expected SECTION.KEY=VALUE, e.g. --set risk.max_orders_per_minute=4, or strategies.ID.KEY",
    ),
    ("strategies = []\n", [], "strategies: expected one or more [[strategies]] tables"),
    ("[strategies]\nid = 'a'\n", [], "strategies: expected one or more [[strategies]] tables"),
    ("strategies = [1]\n", [], "strategies[0]: expected a [[strategies]] table"),
]


@pytest.mark.parametrize(
    ("text", "args", "fragment"), INVALID_STRATEGIES, ids=[case[2] for case in INVALID_STRATEGIES]
)
def test_invalid_strategies_exit_2_with_one_clear_line(
    tmp_path: Path, text: str, args: list[str], fragment: str
) -> None:
    result = run_main("--config", str(_write(tmp_path, text)), *args, "--check-config", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("config error: ")


def test_strategies_problems_name_the_table_and_what_is_allowed(tmp_path: Path) -> None:
    def problems(text: str) -> list[str]:
        with pytest.raises(ConfigError) as info:
            load(_write(tmp_path, text))
        return info.value.problems

    (line,) = problems(ONE_TABLE + ONE_TABLE)
    assert "expected a unique id: the [[strategies]] tables at index 0 and 1 both have it" in line
    (line,) = problems("[strategy]\nname = 'ema_cross'\n" + ONE_TABLE)
    assert "[strategy]" in line and "[[strategies]]" in line and "one or the other" in line
    (line,) = problems(ONE_TABLE + "lookback = 3\n")
    assert line.endswith("its parameters: none beyond the common keys")
    (line,) = problems('[[strategies]]\nid = "a"\nkind = "macd"\n')
    assert "expected one of 'ema_cross', 'trend_pullback', 'liquidity_sweep'" in line
    (line,) = problems(ONE_TABLE + "nope = 1\n")
    assert "allowed keys in [[strategies]]: id, kind, symbol, interval, fast_period" in line
    assert "trend_pullback: ema_fast" in line
    (line,) = problems('[[strategies]]\nid = "Bad Id"\nkind = "ema_cross"\n')
    assert "expected a unique id, 1-32 of a-z, 0-9, _ and -" in line
    # strategies on several symbols: the session's symbols in the order first named
    two = ONE_TABLE + "symbol = 'ETHUSDT'\n" + '[[strategies]]\nid = "b"\nkind = "ema_cross"\n'
    config = load(_write(tmp_path, two), {})
    assert config.symbols == ("ETHUSDT", "BTCUSDT")
    many = "".join(
        f'[[strategies]]\nid = "s{i}"\nkind = "ema_cross"\nsymbol = "S{i:03d}USDT"\n' for i in range(101)
    )
    (line,) = problems(many)
    assert line.startswith("strategies.symbol: 101 symbols is not allowed; expected at most 100")
    # every table's problems at once
    assert len(problems(ONE_TABLE + "lookback = 3\n" + '[[strategies]]\nid = "b"\nkind = "macd"\n')) == 2
    # env variables and --set name a table's key by its id: the tables themselves are the file's
    with pytest.raises(
        ConfigError, match=re.escape("the [[strategies]] tables themselves are written in the --config file")
    ):
        load(_write(tmp_path, ONE_TABLE), {"LAPTOP_AGENTS__STRATEGIES__ID": "b"})


def test_a_kinds_rules_between_keys_are_config_errors_in_either_form() -> None:
    with pytest.raises(
        ConfigError, match=r"strategy\.ema_fast: 60 is not allowed \(from --set\); expected less than"
    ):
        load(None, {}, ["strategy.name=trend_pullback", "strategy.ema_fast=60"])


def test_the_readmes_strategies_example_loads(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Several strategies") :]
    example = section[
        section.index("```toml\n") + len("```toml\n") : section.index("```\n", section.index("```toml"))
    ]
    config = load(_write(tmp_path, example))
    assert [(s.id, s.kind) for s in config.strategy_specs] == [
        ("trend", "trend_pullback"),
        ("sweep", "liquidity_sweep"),
    ]


def test_strategy_set_on_the_command_line_overrides_the_files_strategies(tmp_path: Path) -> None:
    """Later layers win: `--set strategy.name=trend_pullback` on a file with [[strategies]] (as
    config/live.toml) runs that one strategy, with its defaults."""
    config = load(REPO / "config" / "live.toml", {}, ["strategy.name=trend_pullback", "strategy.target_r=3"])
    (spec,) = config.strategy_specs
    assert spec.id == "trend_pullback" and spec.params.target_r == 3.0 and config.strategies == ()
    env = {"LAPTOP_AGENTS__STRATEGY__NAME": "liquidity_sweep"}
    (spec,) = load(REPO / "config" / "live.toml", env).strategy_specs
    assert spec.id == "liquidity_sweep"
    assert [s.id for s in load(REPO / "config" / "live.toml").strategy_specs] == ["trend", "sweep"]


def test_a_key_of_one_strategies_table_is_set_by_its_id(tmp_path: Path) -> None:
    """`--set strategies.ID.KEY=VALUE` and `LAPTOP_AGENTS__STRATEGIES__ID__KEY`: one key of the file's
    table with that id, typed and checked as the file's own keys are (found by a session: re-pricing
    config/live.toml's `trend` entry meant editing the file, `--set` reaching [strategy] only)."""
    from actors.strategies.liquidity_sweep import LiquiditySweepParams
    from actors.strategies.trend_pullback import TrendPullbackParams

    live = REPO / "config" / "live.toml"
    trend, sweep = load(live).strategy_specs
    config = load(live, {}, ["strategies.trend.entry_expiry_candles=1", "strategies.sweep.order_qty=0.002"])
    assert [s.id for s in config.strategy_specs] == ["trend", "sweep"]
    assert config.strategy_specs[0].params == attrs.evolve(trend.params, entry_expiry_candles=1)
    assert config.strategy_specs[0].config == trend.config
    assert (
        config.strategy_specs[1].params
        == sweep.params
        == LiquiditySweepParams(lookback=10, stop_atr_mult=0.5)
    )
    assert config.strategy_specs[1].config.order_qty == 0.002 != sweep.config.order_qty
    # the environment the same, lower-cased; --set after it wins
    env = {"LAPTOP_AGENTS__STRATEGIES__TREND__TARGET_R": "3"}
    assert load(live, env).strategy_specs[0].params == TrendPullbackParams(target_r=3.0)
    assert load(live, env, ["strategies.trend.target_r=4"]).strategy_specs[0].params.target_r == 4.0
    # symbol, interval and kind too, with the checks that go with them
    moved = load(live, {}, ["strategies.sweep.symbol=ETHUSDT", "strategies.sweep.interval=5m"])
    assert (moved.strategy_specs[1].symbol, moved.strategy_specs[1].interval) == ("ETHUSDT", "5m")
    assert moved.symbols == ("BTCUSDT", "ETHUSDT")
    # what the config records (--check-config, a run folder) has the value: a replay runs as set
    assert to_dict(config)["strategies"][0]["entry_expiry_candles"] == 1
    assert load(_write(tmp_path, to_toml(config))) == config
    result = run_main(
        "--config", str(live), "--set", "strategies.trend.target_r=3", "--check-config", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert [t.get("target_r") for t in tomllib.loads(result.stdout)["strategies"]] == [3.0, None]

    def problems(env: dict[str, str], sets: list[str], path: Path | None = live) -> list[str]:
        with pytest.raises(ConfigError) as info:
            load(path, env, sets)
        return info.value.problems

    # a rule between keys names the key's source, --set here and the file there
    (line,) = problems({}, ["strategies.trend.ema_fast=60"])
    assert line.startswith("strategies[trend].ema_fast: 60 is not allowed (from --set); expected less than")
    (line,) = problems({}, ["strategies.trend.ema_slow=10"])
    assert line.startswith(f"strategies[trend].ema_fast: 20 is not allowed (from {live});")
    (line,) = problems({"LAPTOP_AGENTS__STRATEGIES__TREND__TARGET_R": "x"}, [])
    assert (
        "strategies[trend].target_r: 'x' is not allowed (from LAPTOP_AGENTS__STRATEGIES__TREND__TARGET_R)"
        in line
    )
    (line,) = problems({}, ["strategies.cross.target_r=3"])
    assert line == (
        "strategies.cross.target_r: no [[strategies]] table has the id 'cross' (from --set); expected the id "
        f"of one of {live}'s tables: 'trend', 'sweep'"
    )
    (line,) = problems({}, ["strategies.trend.fast_period=5"])
    assert line.startswith(
        "strategies[trend].fast_period: not used by strategies[trend].kind = 'trend_pullback' (from --set)"
    )
    (line,) = problems({}, ["strategies.trend.api_token=x"])
    assert line.startswith("strategies.trend.api_token: secrets are not read from config files")
    (line,) = problems({}, ["strategies.Trend.target_r=3"])
    assert "'Trend' is not a [[strategies]] id (from --set)" in line
    # no tables to set it in: none in the config, or [strategy] keys replaced them
    (line,) = problems({}, ["strategies.trend.target_r=3"], None)
    assert (
        "no [[strategies]] table to set it in (from --set): the config has no [[strategies]] tables" in line
    )
    (line,) = problems({}, ["strategy.name=trend_pullback", "strategies.trend.target_r=3"])
    assert "[strategy] keys from the environment or --set replaced the file's [[strategies]] tables" in line


def test_a_kind_parameter_set_over_a_files_strategies_says_what_replaced_them(tmp_path: Path) -> None:
    """`--set strategy.stop_atr_mult=2` on config/live.toml (two setups in [[strategies]]): the
    [strategy] table it makes replaces them, of the default kind, which has no such parameter. The
    error says so and what to do (it named a kind the user never chose, and no more)."""
    result = run_main(
        "--config", str(REPO / "config" / "live.toml"), "--set", "strategy.stop_atr_mult=2", "--check-config",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line]
    assert "strategy.stop_atr_mult: not a parameter of strategy.name = 'ema_cross' (from --set)" in line
    assert "replace" in line and "[[strategies]]" in line and "set strategy.name too" in line
    fixed = run_main(
        "--config", str(REPO / "config" / "live.toml"), "--set", "strategy.name=trend_pullback",
        "--set", "strategy.stop_atr_mult=2", "--check-config", cwd=tmp_path,
    )  # fmt: skip
    assert fixed.returncode == 0, fixed.stderr


def test_an_environment_strategy_key_replacing_a_files_strategies_is_said(tmp_path: Path) -> None:
    """Found by an audit: one `LAPTOP_AGENTS__STRATEGY__ORDER_QTY` in a container's environment
    silently turned the image's two setups into one ema_cross; the start now says so."""
    result = run_main(
        "--config", str(REPO / "config" / "live.toml"), "--source", "mock", "--duration", "0.01",
        "--run-dir", str(tmp_path / "runs"), cwd=tmp_path, LAPTOP_AGENTS__STRATEGY__ORDER_QTY="0.002",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    warned = [line for line in result.stderr.splitlines() if "replace" in line and "[[strategies]]" in line]
    assert len(warned) == 1 and "this session runs one ema_cross strategy" in warned[0]
    plain = run_main(
        "--config", str(REPO / "config" / "live.toml"), "--source", "mock", "--duration", "0.01",
        "--run-dir", str(tmp_path / "runs2"), cwd=tmp_path,
    )  # fmt: skip
    assert plain.returncode == 0 and "[[strategies]]" not in plain.stderr


# --- keys a strategy kind does not read (found by an audit: `stop_loss_pct = 0.3` on a
# trend_pullback, whose stop is in ATRs, was accepted: the trader believed in a 0.3 % stop) ------

EMA_CROSS_ONLY = ("fast_period", "slow_period", "stop_loss_pct", "take_profit_pct")


@pytest.mark.parametrize("kind", ["trend_pullback", "liquidity_sweep"])
@pytest.mark.parametrize("name", EMA_CROSS_ONLY)
def test_an_ema_cross_key_set_for_another_kind_is_refused(kind: str, name: str) -> None:
    value = "0.3" if name.endswith("_pct") else "5"
    with pytest.raises(ConfigError) as info:
        load(None, {}, [f"strategy.name={kind}", f"strategy.{name}={value}"])
    (line,) = info.value.problems
    assert line.startswith(f"strategy.{name}: not used by strategy.name = {kind!r} (from --set)")
    assert "stop_atr_mult" in line and "order_qty" in line  # the keys it does take
    with pytest.raises(ConfigError, match=f"strategy.{name}: not used by .* \\(from LAPTOP_AGENTS__"):
        load(None, {"LAPTOP_AGENTS__STRATEGY__NAME": kind, f"LAPTOP_AGENTS__STRATEGY__{name.upper()}": value})


def test_an_ema_cross_key_in_a_strategies_table_of_another_kind_is_one_clear_line(tmp_path: Path) -> None:
    text = '[[strategies]]\nid = "trend"\nkind = "trend_pullback"\nstop_loss_pct = 0.3\n'
    result = run_main("--config", str(_write(tmp_path, text)), "--check-config", cwd=tmp_path)
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line]
    assert line.startswith(
        "config error: strategies[trend].stop_loss_pct: not used by strategies[trend].kind = 'trend_pullback'"
    )
    assert "stop_atr_mult" in line and "target_r" in line
    sweep = '[[strategies]]\nid = "s"\nkind = "liquidity_sweep"\ntake_profit_pct = 2.0\nfast_period = 5\n'
    with pytest.raises(ConfigError) as info:
        load(_write(tmp_path, sweep))
    assert [p.split(":")[0] for p in info.value.problems] == [
        "strategies[s].take_profit_pct",
        "strategies[s].fast_period",
    ]


def test_the_keys_every_kind_reads_are_accepted_for_every_kind(tmp_path: Path) -> None:
    for kind in ("trend_pullback", "liquidity_sweep"):
        config = load(None, {}, [f"strategy.name={kind}", "strategy.order_qty=0.002", "strategy.history=300"])
        assert (config.strategy.order_qty, config.strategy.history) == (0.002, 300)
        text = f'[[strategies]]\nid = "a"\nkind = "{kind}"\norder_qty = 0.002\nhistory = 300\n'
        (spec,) = load(_write(tmp_path, text)).strategy_specs
        assert (spec.config.order_qty, spec.config.history) == (0.002, 300)


def test_a_files_unread_key_holding_its_default_is_let_through(tmp_path: Path) -> None:
    """config/default.toml lists every key (ema_cross's among them): a base for any kind."""
    config = load(REPO / "config" / "default.toml", {}, ["strategy.name=trend_pullback"])
    assert config.strategy.name == "trend_pullback"
    text = "[strategy]\nname = 'trend_pullback'\nstop_loss_pct = 0.3\n"
    with pytest.raises(ConfigError, match=r"strategy.stop_loss_pct: not used by .* \(from .*c.toml\)"):
        load(_write(tmp_path, text))


def test_the_effective_config_leaves_out_the_keys_its_kind_does_not_read(tmp_path: Path) -> None:
    """--check-config and the recorded config do not show a percent stop a trend_pullback never
    uses, and load back as the same config; an older recording that has them still loads."""
    from actors.config import build, dict_layer, to_toml, without_unread_keys

    for config in (
        load(None, {}, ["strategy.name=trend_pullback"]),
        load(REPO / "config" / "live.toml"),
    ):
        values = to_dict(config)
        tables = values.get("strategies") or [values["strategy"]]
        assert all(not set(EMA_CROSS_ONLY) & set(table) for table in tables)
        assert load(_write(tmp_path, to_toml(config))) == config
    older = to_dict(load(REPO / "config" / "live.toml"))
    for table in older["strategies"]:
        table.update(stop_loss_pct=0.3, fast_period=9)
    with pytest.raises(ConfigError):
        build([dict_layer(older, "recorded", [])])
    problems: list[str] = []
    again = build([dict_layer(without_unread_keys(older), "recorded", problems)], problems)
    assert again == load(REPO / "config" / "live.toml")


# --- bounds that keep a start from crashing or hanging (found by an audit) --------------------------

MAX_SEED = 2**63 - 1


def test_the_seed_is_at_most_2_to_the_63_minus_1_from_every_layer(tmp_path: Path) -> None:
    """`--seed 18446744073709551616` crashed with a traceback and left an empty run folder."""
    assert load(None, {}, [f"session.seed={MAX_SEED}"]).session.seed == MAX_SEED
    expected = f"expected an integer from 0 to {MAX_SEED}"
    with pytest.raises(
        ConfigError, match=f"session.seed: {MAX_SEED + 1} is not allowed .from --set.; {expected}"
    ):
        load(None, {}, [f"session.seed={MAX_SEED + 1}"])
    with pytest.raises(ConfigError, match="from LAPTOP_AGENTS__SESSION__SEED"):
        load(None, {"LAPTOP_AGENTS__SESSION__SEED": str(2**64)})
    with pytest.raises(ConfigError, match=r"from .*c\.toml"):
        load(_write(tmp_path, f"[session]\nseed = {2**63}\n"))
    runs = tmp_path / "runs"
    result = run_main(
        "--source", "mock", "--duration", "0.05", "--seed", str(2**64), "--run-dir", str(runs), cwd=tmp_path
    )
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line]
    assert line.startswith("config error: session.seed: 18446744073709551616 is not allowed (from --seed)")
    assert not runs.exists()


THOUSANDS = "9" * 5000  # more digits than Python reads into an int from text (4,300)


@pytest.mark.parametrize(
    ("args", "env", "source"),
    [
        (["--set", f"session.seed={THOUSANDS}"], {}, "from --set"),
        (["--set", f"session.seed=-{THOUSANDS}"], {}, "from --set"),
        (["--seed", THOUSANDS], {}, "from --seed"),
        ([], {"LAPTOP_AGENTS__SESSION__SEED": THOUSANDS}, "from LAPTOP_AGENTS__SESSION__SEED"),
        (["--config", "c.toml"], {}, "from c.toml, line 3"),
    ],
)
def test_a_seed_of_thousands_of_digits_is_refused_with_the_range(
    tmp_path: Path, args: list[str], env: dict[str, str], source: str
) -> None:
    """Found by an audit: `--set session.seed=999...` of thousands of digits said only "expected an
    integer" (`--seed` echoed all of them and no range; a --config file's ended in a traceback)."""
    _write(tmp_path, f"# a seed\n[session]\nseed = {THOUSANDS}\n")
    for check in (["--check-config"], ["--source", "mock", "--duration", "0.05"]):
        result = run_cli(*args, *check, cwd=tmp_path, **env)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        (line,) = [line for line in result.stderr.splitlines() if line]
        assert line == (
            f"config error: session.seed: an integer of 5,000 digits is not allowed ({source}); "
            f"expected an integer from 0 to {MAX_SEED} (2**63 - 1)"
        )
    assert not (tmp_path / "runs").exists()


def test_a_number_key_given_an_integer_beyond_every_float_is_refused_with_its_range(tmp_path: Path) -> None:
    """Found by an audit: a TOML integer of 400 digits for a number key (a float: at most about
    1.8e308) ended in an OverflowError traceback."""
    huge = "9" * 400
    path = _write(tmp_path, f"[risk]\nmax_loss_pct = {huge}\n")
    with pytest.raises(ConfigError) as raised:
        load(path)
    assert raised.value.problems == [
        f"risk.max_loss_pct: an integer of 400 digits is not allowed (from {path}); expected a number > 0 and <= 100"
    ]
    _write(tmp_path, f'[[strategies]]\nid = "a"\nkind = "ema_cross"\nfast_period = {THOUSANDS}\n')
    with pytest.raises(
        ConfigError, match=r"an integer of 5,000 digits is not allowed \(from .*c\.toml, line 4\); expected"
    ):
        load(path)


@pytest.mark.parametrize(
    ("setting", "problem"),
    [
        # not a number at all: the key's range beside it (found by an audit: "expected an integer")
        ("session.seed=abc", f"session.seed: 'abc' is not allowed (from --set); expected an integer from 0 to {MAX_SEED} (2**63 - 1)"),
        ("risk.max_orders_per_minute=1.5", "risk.max_orders_per_minute: '1.5' is not allowed (from --set); expected an integer >= 1 and <= 600"),
        ("risk.max_loss_pct=abc", "risk.max_loss_pct: 'abc' is not allowed (from --set); expected a number > 0 and <= 100"),
        # digits beyond every float: said as given, not as "inf" (found by an audit)
        ("session.duration_min=1e999", "session.duration_min: '1e999' (beyond every float) is not allowed (from --set); expected a number > 0 and <= 1440"),
        ("risk.max_loss_pct=inf", "risk.max_loss_pct: inf is not allowed (from --set); expected a number > 0 and <= 100"),
    ],
)  # fmt: skip
def test_a_number_keys_bad_text_is_said_with_the_keys_range(setting: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load(None, {}, [setting])
    assert raised.value.problems == [problem]
    huge = "9" * 400
    with pytest.raises(ConfigError) as raised:
        load(None, {}, [f"risk.max_loss_pct={huge}"])
    (said,) = raised.value.problems
    assert said.startswith("risk.max_loss_pct: '999") and said.endswith(
        "... (beyond every float) is not allowed (from --set); expected a number > 0 and <= 100"
    )


@pytest.mark.parametrize("interval", ["2d", "25h", "365d", "99999999999999999999d", "86401s"])
def test_an_interval_longer_than_a_day_is_refused(tmp_path: Path, interval: str) -> None:
    """A mock session of 99999999999999999999d hung, one of 365d crashed building its history."""
    with pytest.raises(ConfigError, match=f"session.interval: '{interval}' is not allowed .* at most '1d'"):
        load(None, {}, [f"session.interval={interval}"])
    table = f'[[strategies]]\nid = "a"\nkind = "ema_cross"\ninterval = "{interval}"\n'
    with pytest.raises(ConfigError, match=f"strategies.a..interval: '{interval}' is not allowed"):
        load(_write(tmp_path, table))


def test_a_day_long_interval_is_allowed() -> None:
    assert load(None, {}, ["session.interval=1d"]).interval_s == 86400
    assert load(None, {}, ["session.interval=24h"]).interval_s == 86400


@pytest.mark.parametrize(
    ("sets", "fragment"),
    [
        (
            ["feed.mock_start_price=0.04"],
            "feed.mock_start_price: 0.04 is not allowed (from --set); expected at least 10 USDT",
        ),
        (["feed.mock_start_price=9.9"], "expected at least 10 USDT (100 ticks of BTCUSDT's price grid, 0.1)"),
        (["feed.mock_start_price=1e308"], "feed.mock_start_price: 1e+308 is not allowed"),
        (
            ["feed.mock_start_price=10", "feed.mock_spread_ticks=1000"],
            "feed.mock_spread_ticks: 1000 is not allowed (from --set); expected at most 5",
        ),
        (["feed.mock_start_price=10", "feed.mock_spread_ticks=6"], "expected at most 5 (5 % of BTCUSDT's"),
    ],
)
def test_mock_prices_a_session_cannot_quote_are_refused(sets: list[str], fragment: str) -> None:
    """A start price under a tick and a spread wider than the price crashed with a traceback."""
    with pytest.raises(ConfigError) as info:
        load(None, {}, sets)
    (line,) = info.value.problems
    assert fragment in line


def test_the_mock_prices_at_their_bounds_are_allowed() -> None:
    config = load(None, {}, ["feed.mock_start_price=10", "feed.mock_spread_ticks=5"])
    assert (config.feed.mock_start_price, config.feed.mock_spread_ticks) == (10.0, 5)
    assert load(None, {}, ["feed.mock_start_price=1e9"]).feed.mock_start_price == 1e9


@pytest.mark.slow  # walks over every valid key (3 s of CPU): nox -s tests runs it, nox -s quick leaves it out
def test_the_mock_walk_stays_on_its_grid_whatever_its_valid_keys() -> None:
    """`session.interval = 1d` with `feed.mock_volatility_pct = 1000` walked the history to 0
    ("Candle.low must be > 0"); the strongest trend and the shortest half-life allowed with it
    overflowed. Every price stays at least a tick, finite."""
    import random

    from actors.feeds.mock import RandomWalk

    config = load(
        None,
        {},
        [
            "session.interval=1d",
            "feed.mock_volatility_pct=1000",
            "feed.mock_trend_pct_per_hour=100",
            "feed.mock_range_half_life_min=0.001",
            "feed.mock_history_candles=10000",
            "feed.mock_start_price=10",
            "feed.mock_spread_ticks=5",
        ],
    )
    for seed in range(3):
        walk = RandomWalk(config.feed, random.Random(seed), "BTCUSDT")
        history = walk.history(1e9, 86400, config.feed.tick_interval_s)
        assert len(history) == 10000
        prices = [p for c in history for p in (c.open, c.high, c.low, c.close)]
        assert min(prices) >= 0.1 and max(prices) < float("inf")
        ticks = [walk.step(1e9 + k * 60.0, 60.0)[0] for k in range(2000)]
        assert all(0.1 <= t.bid < t.ask < float("inf") for t in ticks)


PERIOD_KEYS = [
    "observability.heartbeat_s",
    "observability.webhook_timeout_s",
    "state.checkpoint_interval_s",
    "session.flatten_timeout_s",
    "feed.tick_interval_s",
    "feed.connect_timeout_s",
    "feed.ping_interval_s",
    "feed.stale_after_s",
    "feed.backoff_initial_s",
    "feed.backoff_max_s",
    "feed.failover_after_s",
    "feed.rest_timeout_s",
    "feed.rest_rate_limit",
]


@pytest.mark.parametrize("name", PERIOD_KEYS)
def test_a_period_key_is_at_least_a_tenth_of_a_second(name: str) -> None:
    """`observability.heartbeat_s = 1e-300` hung the start (the next heartbeat's time could not
    advance), 1e-12 flooded the session; every key that paces a loop has the same floor."""
    for tiny in ("1e-300", "1e-12", "0.09"):
        with pytest.raises(
            ConfigError, match=f"{name}: {tiny} is not allowed .from --set.; expected a number >= 0.1"
        ):
            load(None, {}, [f"{name}={tiny}"])
    section, key = name.split(".")
    assert getattr(getattr(load(None, {}, [f"{name}=0.1"]), section), key) == 0.1


def test_a_heartbeat_too_short_leaves_nothing_behind(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    result = run_cli(
        "--source", "mock", "--duration", "0.05", "--run-dir", str(runs),
        "--set", "observability.heartbeat_s=1e-300", cwd=tmp_path, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line]
    assert line.startswith("config error: observability.heartbeat_s: 1e-300 is not allowed")
    assert not runs.exists()


# --- the environment's variables, the --config file itself (found by an audit) --------------------


@pytest.mark.parametrize(
    "var",
    [
        "LAPTOP_AGENTS_RISK__MAX_POSITION_SIZE",
        "LAPTOP_AGENTS_STATE_KEYFILE",
        "LAPTOP_AGENTS",
        "laptop_agents_risk",
    ],
)
def test_a_mistyped_variable_of_the_programs_name_is_refused(tmp_path: Path, var: str) -> None:
    """`LAPTOP_AGENTS_RISK__MAX_POSITION_SIZE=0.5` (one underscore) was silently ignored: the
    position cap stayed 0.01 while the trader believed it 0.5."""
    result = run_main("--check-config", cwd=tmp_path, **{var: "0.5"})
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line]
    assert line.startswith(
        f"config error: {var}: not a variable this program reads; expected LAPTOP_AGENTS__SECTION__KEY"
    )
    assert "LAPTOP_AGENTS_STATE_KEY" in line and "0.5" not in line  # its value is never echoed
    assert result.stdout == ""


def test_the_programs_other_variables_are_not_config_typos(tmp_path: Path) -> None:
    key = "k" * 20
    assert run_main("--check-config", cwd=tmp_path, LAPTOP_AGENTS_STATE_KEY=key).returncode == 0
    (tmp_path / "key").write_text(key)
    ok = run_main("--check-config", cwd=tmp_path, LAPTOP_AGENTS_STATE_KEY_FILE=str(tmp_path / "key"))
    assert ok.returncode == 0, ok.stderr


def test_a_config_that_is_not_a_regular_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    """`--config FIFO` hung; `--config /dev/zero` ended in a MemoryError traceback."""
    import os

    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    for path, what in (
        (fifo, "not a regular file"),
        (Path("/dev/zero"), "not a regular file"),
        (tmp_path, "a directory"),
    ):
        result = run_cli("--check-config", "--config", str(path), cwd=tmp_path, timeout=20)
        assert result.returncode == 2
        (line,) = [line for line in result.stderr.splitlines() if line]
        assert line.startswith(f"config error: --config: {path} is {what}"), line


def test_an_empty_config_path_is_named_as_such() -> None:
    """Found by an audit: `--config ""` said ". is a directory" (Path("") is the current folder)."""
    for empty in ("", " "):
        with pytest.raises(ConfigError, match=r"^--config: an empty path; expected a TOML file$"):
            load(empty)


def test_a_config_file_over_a_mebibyte_is_refused(tmp_path: Path) -> None:
    big = _write(tmp_path, "# " + "x" * (1024 * 1024) + "\n")
    with pytest.raises(
        ConfigError, match=r"--config: .*c\.toml is larger than 1024 KiB; expected a TOML file"
    ):
        load(big)
    assert (
        load(
            _write(tmp_path, "# " + "x" * 1000 + "\n[risk]\nmax_orders_per_minute = 3\n")
        ).risk.max_orders_per_minute
        == 3
    )


@pytest.mark.parametrize(("text", "home"), [("duration_min = 1\n", "[session]"), ("foo = 1\n", None)])
def test_a_key_outside_any_table_is_said_so(tmp_path: Path, text: str, home: str | None) -> None:
    """`duration_min = 1` above every table said "expected a [duration_min] table"."""
    with pytest.raises(ConfigError) as info:
        load(_write(tmp_path, text + "[risk]\nmax_orders_per_minute = 3\n"))
    (line,) = info.value.problems
    name = text.split(" ")[0]
    assert line.startswith(f"{name}: a key outside any table (from ")
    assert "allowed sections: [session], [feed], [broker]" in line and "[[strategies]]" in line
    assert (f"a key of {home}: write it under {home}" in line) == (home is not None)


def test_a_strategies_table_whose_id_holds_underscores_is_reached_by_the_environment(tmp_path: Path) -> None:
    """An id may hold `_` anywhere (`x_`, `_y`, `a__b`): `LAPTOP_AGENTS__STRATEGIES__ID__KEY` takes
    the id up to the last `__` (keys never start with `_` nor hold `__`). Found by an audit: the
    table `x_` was read as id `x` and key `_lookback`, refused, and no variable could set it."""
    tables = "".join(
        f'[[strategies]]\nid = "{tid}"\nkind = "liquidity_sweep"\n' for tid in ("x", "x_", "_y", "a__b")
    )
    path = _write(tmp_path, tables)
    env = {
        "LAPTOP_AGENTS__STRATEGIES__X___LOOKBACK": "5",
        "LAPTOP_AGENTS__STRATEGIES___Y__LOOKBACK": "6",
        "LAPTOP_AGENTS__STRATEGIES__A__B__LOOKBACK": "7",
        "LAPTOP_AGENTS__STRATEGIES__X__LOOKBACK": "8",
    }
    lookbacks = {s.id: s.params.lookback for s in load(path, env).strategy_specs}
    assert lookbacks == {"x": 8, "x_": 5, "_y": 6, "a__b": 7}
    # a variable with no key, or no id, is still refused with the form expected
    for var in ("LAPTOP_AGENTS__STRATEGIES__X__", "LAPTOP_AGENTS__STRATEGIES____LOOKBACK"):
        with pytest.raises(ConfigError, match=re.escape(f"{var}: expected LAPTOP_AGENTS__SECTION__KEY")):
            load(path, {var: "5"})


def test_a_take_profit_of_100_percent_is_refused() -> None:
    """Found by an audit: `strategy.take_profit_pct = 100` was allowed, and every ema_cross short
    put its take-profit at a price of 0 (price x (1 - 100 / 100)), a buy limit no exchange takes."""
    with pytest.raises(ConfigError) as info:
        load(None, {}, ["strategy.take_profit_pct=100"])
    assert info.value.problems == [
        "strategy.take_profit_pct: 100.0 is not allowed (from --set); expected a number >= 0 and < 100"
    ]
    assert load(None, {}, ["strategy.take_profit_pct=99.5"]).strategy.take_profit_pct == 99.5
