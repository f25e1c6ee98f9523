"""Hostile input at the start-up path (Hypothesis): random CLI flags, TOML files and environment
values, each example carrying at least one invalid setting, give exit 2 with one message per
problem naming a key, flag or variable that was given — never a traceback, never a run folder, never
the value of a secret-named variable.

The start-up path is `actors.main.main(argv, env)` in this process (500 examples in seconds); a few
examples also run as real processes, where a traceback would reach stderr.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.config import SECTIONS, section_fields
from actors.main import FLAG_KEYS
from tests.conftest import cli_env, main_in_process

SECRET = "hunter2-S3CRET-value"  # the value of a secret-named variable; never to be echoed
SECRET_VAR = "EXCHANGE_WEBHOOK_TOKEN"

# keys no named flag overrides (an invalid value of them cannot be replaced by a valid flag)
_FLAG_OVERRIDDEN = set(FLAG_KEYS.values())
SCHEMA_KEYS = sorted(
    f"{section}.{name}"
    for section in SECTIONS
    for name in section_fields(section)
    if f"{section}.{name}" not in _FLAG_OVERRIDDEN
)

# hosts no resolver or HTTP client can encode
_BAD_HOSTS = [
    ("feed.rest_url", "http://a..b"),  # an empty label: the resolver's IDNA codec fails
    ("feed.rest_url", "http://xn--zz.com"),  # not punycode: httpx's IDNA decoding fails
    ("feed.rest_url", "http://999.1.1.1"),  # httpx: an invalid IPv4 address
    ("feed.ws_url", "wss://{}.com/public/".format("a" * 64)),  # a label over 63 characters
    ("feed.ws_url", "wss://\u2603.net/public/"),  # a code point IDNA does not allow
    ("observability.webhook_url", "http://a..b/hook"),
]

# values that are invalid for the key, whatever else is given (the key named by the message)
POISONS: list[tuple[str, str]] = [
    ("feed.ws_url", "ftp://fapi.bitunix.com/public/"),
    ("feed.ws_url", "wss://user:pa55word@fapi.bitunix.com/public/"),
    ("feed.ws_url", "wss:///no-host"),
    ("feed.rest_url", "https://u:p@fapi.bitunix.com"),
    ("feed.rest_url", "javascript:alert(1)"),
    ("feed.rest_url", "http://127.0.0.1:99999"),
    ("observability.webhook_url", "file:///etc/passwd"),
    ("observability.webhook_url", "https://hooks.example.com/a b"),
    # a host the HTTP and WebSocket clients cannot use (found by the cockpit audit: accepted, the
    # session ended in a traceback at its first alert, or its feed's first connect)
    ("observability.webhook_url", "https://hooks..example.com/hook"),
    ("observability.webhook_url", "http://[v1.x]/hook"),
    ("feed.ws_url", "wss://fapi..bitunix.com/public/"),
    ("feed.rest_url", f"https://{'x' * 64}.bitunix.com"),
    ("session.interval", "7x"),
    ("session.interval", "0m"),
    ("session.kill_switch", "bad\x01name"),
    ("session.kill_switch", "x" * 300),
    ("session.flatten_timeout_s", "-1"),
    ("session.flatten_timeout_s", "nan"),
    ("observability.progress", "loud"),
    ("feed.fallback", "maybe"),
    ("risk.max_orders_per_minute", "lots"),
    ("broker.starting_equity", "0"),
    ("broker.starting_equity", "inf"),
    ("observability.log_level", "LOUD"),
    ("state.checkpoint_interval_s", "1e9"),
    ("strategy.fast_period", "abc"),
    ("strategy.name", "no_such_strategy"),
    ("feed.api_key", "AKIA-something"),
    ("exchange.api_secret", "s3cr3t"),
    *_BAD_HOSTS,
    ("no_such_section.key2", "1"),
    ("session.no_such_key", "1"),
]

_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00"),
    max_size=40,
)
_numberish = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["", " ", "1e309", "-0", "0x10", "true", "None", "1_000", "½"]),
)
_value_text = st.one_of(_text, _numberish, st.sampled_from([SECRET, f"wss://{SECRET}@h/", "a" * 5000]))
_toml_value = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    _text,
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.sampled_from(["a", "b"]), st.integers(), max_size=2),
)


@st.composite
def _setting(draw: st.DrawFn) -> tuple[str, Any]:
    """A dotted key (of the schema, or not) and a value for it."""
    dotted = draw(
        st.one_of(
            st.sampled_from(SCHEMA_KEYS + [f"{k}" for k in FLAG_KEYS.values()]),
            st.builds(lambda s, k: f"{s}.{k}", st.sampled_from([*SECTIONS, "exchange", "x"]), _text),
        )
    )
    return dotted, draw(_value_text)


@st.composite
def _toml_doc(draw: st.DrawFn) -> bytes:
    """A TOML file: random sections and keys with values of any TOML type, or not TOML at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))
    doc: dict[str, Any] = {}
    for section in draw(st.lists(st.sampled_from([*SECTIONS, "exchange", "strategies", "zz"]), max_size=4)):
        if section == "strategies":
            doc[section] = draw(
                st.lists(
                    st.dictionaries(
                        st.sampled_from(["id", "kind", "symbol", "interval", "fast_period", "api_key"]),
                        _toml_value,
                        max_size=5,
                    ),
                    max_size=3,
                )
            ) or [{}]
            continue
        keys = [name for name in section_fields(section)] if section in SECTIONS else ["k", "secret"]
        doc[section] = draw(st.dictionaries(st.sampled_from([*keys, "unknown_key"]), _toml_value, max_size=4))
    return tomli_w.dumps(doc).encode()


_FLAG_VALUES = {
    "--duration": _numberish,
    "--seed": _numberish,
    "--symbol": _value_text,
    "--source": st.sampled_from(["mock", "bitunix", "BINANCE", ""]),
    "--run-dir": st.sampled_from(["runs", "other-runs"]),
    "--mode": st.sampled_from(["live", "backtest", "paper", ""]),
    "--runtime": st.sampled_from(["kernel", "actors", "threads"]),
    "--data": st.one_of(st.sampled_from(["missing.csv", "BTCUSDT=missing.csv", "=", "a" * 5000]), _text),
    "--funding": st.sampled_from(["missing.csv", "", "a" * 5000]),
    "--replay": st.sampled_from(["missing-run", "", "a" * 5000, "."]),
    "--resume": st.sampled_from(["no-such-run", "../..", ""]),
}
_SWITCHES = ["--fresh", "--check-config", "--preflight", "--no-such-flag", "-x"]


@st.composite
def hostile_start(draw: st.DrawFn) -> tuple[list[str], dict[str, str], bytes | None, str]:
    """(argv, environment, TOML file or None, the poisoned key)."""
    argv: list[str] = []
    for flag in draw(st.lists(st.sampled_from(sorted(_FLAG_VALUES)), max_size=4)):
        argv += [flag, draw(_FLAG_VALUES[flag])]
    argv += draw(st.lists(st.sampled_from(_SWITCHES), max_size=2, unique=True))
    for dotted, value in draw(st.lists(_setting(), max_size=4)):
        argv += ["--set", f"{dotted}={value}"]
    env = {SECRET_VAR: SECRET}
    for dotted, value in draw(st.lists(_setting(), max_size=3)):
        section, _, name = dotted.partition(".")
        var = f"LAPTOP_AGENTS__{section.upper()}__{name.upper()}"
        if re.fullmatch(r"[A-Z0-9_]+", var) and "\x00" not in value:
            env[var] = value
    toml = draw(_toml_doc()) if draw(st.booleans()) else None
    # the poison: an invalid value of a key no named flag overrides, as the last --set (it wins
    # over the file and the environment)
    key, value = draw(st.sampled_from(POISONS))
    if draw(st.booleans()):
        value = SECRET  # the value of a secret-named variable, as a config value: never echoed
        key = draw(
            st.sampled_from(["session.kill_switch", "feed.ws_url", "session.interval", "feed.fallback"])
        )
        if key == "session.kill_switch":
            value = SECRET + "\x01"
    assert key not in _FLAG_OVERRIDDEN  # else a valid named flag could replace it: a session
    argv += ["--set", f"{key}={value}"]
    return argv, env, toml, key


@contextlib.contextmanager
def _in(folder: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


_PREFIXES = ("config error: ", "error: ", "python -m actors.main: error: ", "usage: ")


def _check(
    argv: list[str],
    env: dict[str, str],
    toml: bytes | None,
    key: str,
    code: int,
    out: str,
    err: str,
    folder: Path,
) -> None:
    given = " ".join(argv)
    assert code == 2, f"exit {code} for {argv!r}\n{err}"
    assert "Traceback" not in err and "Traceback" not in out, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "no message"
    assert all(line.startswith(_PREFIXES) for line in lines), err
    # the message names something that was given: the poisoned key, a flag, a variable, the file
    names = {key, "--config", SECRET_VAR, *(a for a in argv if a.startswith("-")), *env}
    names |= {a.split("=", 1)[0] for a in argv if "=" in a}
    names |= set(re.findall(r"[a-z_]+\.[a-z_0-9]+", given))
    assert any(name and name in err for name in names), f"nothing given is named:\n{err}"
    assert SECRET not in err and SECRET not in out, err
    created = sorted(p.name for p in folder.iterdir() if p.name != "config.toml")
    assert created == [], f"files created: {created}"


@pytest.fixture(scope="module")
def work() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="hostile-") as d:
        yield Path(d)


def _in_process(folder: Path, argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    with _in(folder):
        return main_in_process(argv, env)


def _as_process(folder: Path, argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    base = {k: v for k, v in cli_env().items() if not k.startswith("LAPTOP_AGENTS")}
    proc = subprocess.run(
        [sys.executable, "-m", "actors.main", *argv],
        cwd=folder,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode, proc.stdout, proc.stderr


def _try(
    work: Path, start: Any, run: Callable[[Path, list[str], dict[str, str]], tuple[int, str, str]]
) -> None:
    """One example in a folder of its own (its TOML file, if any, as `--config`), checked."""
    argv, env, toml, key = start
    with tempfile.TemporaryDirectory(dir=work) as d:
        folder = Path(d)
        if toml is not None:
            (folder / "config.toml").write_bytes(toml)
            argv = ["--config", "config.toml", *argv]
        code, out, err = run(folder, argv, env)
        _check(argv, env, toml, key, code, out, err, folder)


_SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}


@pytest.mark.slow  # 500 examples (nox -s quick: test_the_poisons_are_each_refused_alone)
@settings(max_examples=500, **_SETTINGS)
@given(start=hostile_start())
def test_hostile_start_exits_2_naming_a_key_without_traceback_or_run_folder(work: Path, start: Any) -> None:
    _try(work, start, _in_process)


@pytest.mark.slow
@settings(max_examples=12, **_SETTINGS)
@given(start=hostile_start())
def test_hostile_start_as_a_process_prints_no_traceback(work: Path, start: Any) -> None:
    _try(work, start, _as_process)


def test_the_poisons_are_each_refused_alone(tmp_path: Path) -> None:
    """Each poison on its own is an error naming its key (so a passing example is not luck)."""
    for key, value in POISONS:
        with _in(tmp_path):
            code, _, err = main_in_process(["--set", f"{key}={value}"], {})
        assert code == 2 and key in err, (key, value, err)
        assert "pa55word" not in err and "u:p@" not in err


@pytest.mark.parametrize(("key", "url"), _BAD_HOSTS)
def test_a_url_whose_host_cannot_be_encoded_is_a_config_error(tmp_path: Path, key: str, url: str) -> None:
    """Found by an audit: these URLs were accepted, then a session crashed with a traceback (exit 1)
    on its first connection (UnicodeError, idna's IDNAError, httpx.InvalidURL), as did
    `--preflight`; now the config refuses them, naming the key."""
    with _in(tmp_path):
        code, out, err = main_in_process(["--check-config", "--set", f"{key}={url}"], {})
    assert code == 2, (code, out)
    assert err.startswith(f"config error: {key}: ") and "valid host" in err, err
    assert "Traceback" not in err


def test_the_preflight_with_a_url_whose_host_cannot_be_encoded_exits_2(tmp_path: Path) -> None:
    env = {"BITUNIX_API_KEY": "pf-key-0123456789", "BITUNIX_API_SECRET": "pf-secret-0123456789"}
    code, out, err = _as_process(tmp_path, ["--preflight", "--set", "feed.rest_url=http://a..b"], env)
    assert (code, out) == (2, ""), err
    assert err.startswith("config error: feed.rest_url: ") and "Traceback" not in err, err
