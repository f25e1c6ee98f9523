"""Config: defaults equal config/default.toml, precedence of every layer, clear errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from actors.config import Config, ConfigError, load, to_dict
from tests.conftest import REPO, run_cli


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
    ("[session\nseed = 1\n", [], {}, "is not valid TOML"),
    (None, ["--config", "missing.toml"], {}, "file not found"),
    (None, ["--duration", "-1"], {}, "session.duration_min: -1.0 is not allowed (from --duration)"),
    (None, ["--source", "nyse"], {}, "feed.source: 'nyse' is not allowed"),
    (None, ["--set", "strategy.fast_period=30"], {}, "strategy.fast_period: 30 is not allowed"),
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
]


@pytest.mark.parametrize(("text", "args", "env", "fragment"), INVALID)
def test_invalid_config_exits_2_with_one_clear_line(
    tmp_path: Path, text: str | None, args: list[str], env: dict[str, str], fragment: str
) -> None:
    if text is not None:
        args = ["--config", str(_write(tmp_path, text)), *args]
    result = run_cli(*args, "--check-config", cwd=tmp_path, **env)
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
