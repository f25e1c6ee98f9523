"""The README documents every CLI flag, environment variable and config key the code has."""

from __future__ import annotations

import re

from actors.config import ENV_PREFIX, Config, to_dict
from actors.main import build_parser
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def test_every_cli_flag_is_documented() -> None:
    parser = build_parser()
    flags = {opt for action in parser._actions for opt in action.option_strings}
    section = README.split("## Command line", 1)[1].split("\n## ", 1)[0]
    table_rows = [line for line in section.splitlines() if line.startswith("| `-")]
    documented = {flag for row in table_rows for flag in re.findall(r"`(--?[a-z][a-z-]*)", row.split("|")[1])}
    assert flags == documented, (
        f"undocumented: {sorted(flags - documented)}, stale: {sorted(documented - flags)}"
    )


def _variables_read() -> set[str]:
    """The environment variables the program and its tools read: named in a call that reads the
    environment (`os.environ[...]`, `env.get(...)`, ...) or held by a constant the code reads
    them through (`API_KEY = "BITUNIX_API_KEY"`, with the `_FILE` forms `secrets.read` takes)."""
    from actors import secrets
    from tools import healthcheck

    used: set[str] = set()
    for path in [*(REPO / "actors").rglob("*.py"), *(REPO / "tools").rglob("*.py")]:
        used.update(
            re.findall(r"(?:environ|\benv)(?:\.get\(|\[)\s*[\"']([A-Z][A-Z0-9_]+)[\"']", path.read_text())
        )
    for name in (secrets.API_KEY, secrets.API_SECRET, secrets.STATE_KEY):
        used |= {name, name + secrets.FILE_SUFFIX}
    used.add(healthcheck.RUN_DIR_ENV)
    return {name for name in used if not name.startswith("PYTHON")}  # Python's own, for a child


def test_environment_variables_are_documented() -> None:
    """Found by a docs audit: this test scanned `actors/*.py` for `os.environ["..."]`, which the
    program never writes (it reads `env.get(...)` and constants), so it checked nothing."""
    assert f"{ENV_PREFIX}SECTION__KEY" in README
    assert f"{ENV_PREFIX}STRATEGIES__ID__KEY" in README and "`--set strategies.ID.KEY=VALUE`" in README
    used = _variables_read()
    assert {"BITUNIX_API_KEY", "LAPTOP_AGENTS_STATE_KEY_FILE", "LAPTOP_AGENTS__SESSION__RUN_DIR"} <= used
    table = README.split("### Environment variables", 1)[1].split("\n### ", 1)[0]
    sections = {"LAPTOP_AGENTS__SESSION__RUN_DIR": README.split("## Container", 1)[1].split("\n## ", 1)[0]}
    missing = [var for var in sorted(used) if f"`{var}" not in sections.get(var, table)]
    assert missing == []


def test_every_config_key_is_documented() -> None:
    for section, keys in to_dict(Config()).items():
        for key in keys:
            assert f"`{section}.{key}`" in README, f"{section}.{key} missing from README"


def _same_default(documented: str, default: object) -> bool:
    text = documented.strip().strip("`")
    if isinstance(default, bool):
        return text == str(default).lower()
    if isinstance(default, str):
        return text == (default or '""')
    try:
        return float(text) == float(default)  # type: ignore[arg-type]
    except ValueError:
        return False


def _default_column(section: str) -> dict[str, str]:
    """`key` -> its default as the table of `section` (of the README) writes it."""
    rows = re.findall(r"^\| `([a-z_]+\.[a-z0-9_]+)` \| ([^|]*) \|", section, flags=re.M)
    return dict(rows)


def test_the_keys_table_gives_each_key_its_real_default() -> None:
    """Found missing by a docs audit: a key's default column was checked nowhere."""
    table = _default_column(README.split("\n### Keys", 1)[1].split("\n### ", 1)[0])
    wrong = [
        f"{section}.{key}: {table[f'{section}.{key}']} in the README, {value!r} in the code"
        for section, keys in to_dict(Config()).items()
        for key, value in keys.items()
        if f"{section}.{key}" in table and not _same_default(table[f"{section}.{key}"], value)
    ]
    assert len(table) >= 60 and wrong == []


def test_each_strategy_parameters_table_gives_the_real_defaults() -> None:
    from actors.config import strategy_param_fields

    for kind in ("trend_pullback", "liquidity_sweep"):
        section = README.split(f"`{kind}`'s parameters:", 1)[1].split("\n\n", 2)[1]
        table = _default_column(section)
        fields = strategy_param_fields(kind)
        assert set(table) == {f"strategy.{name}" for name in fields}, kind
        wrong = [n for n, f in fields.items() if not _same_default(table[f"strategy.{n}"], f.default)]
        assert wrong == [], kind


def test_every_report_field_is_documented() -> None:
    from protocols.records import REPORT_FIELDS

    row = next(line for line in README.splitlines() if line.startswith("| `final_report.json`"))
    assert [f for f in REPORT_FIELDS if f"`{f}`" not in row] == []


def test_readme_quick_start_has_the_two_commands() -> None:
    assert "nox -s session" in README
    assert "nox -s tests" in README
    assert "nox -s tests" in (REPO / ".ci" / "run").read_text()


def test_every_strategy_parameter_is_documented() -> None:
    from actors.config import strategy_kinds, strategy_param_fields

    for kind in strategy_kinds():
        for name in strategy_param_fields(kind):
            assert f"`strategy.{name}`" in README, f"{kind}: strategy.{name} missing from README"


def test_run_folder_tools_flags_are_documented() -> None:
    from tools import archive, cleanup, monitor

    section = README.split("## Run-folder tools", 1)[1].split("\n## ", 1)[0]
    for tool in (monitor, cleanup, archive):
        parser = tool.build_parser()
        assert f"`{parser.prog}" in section, parser.prog
        flags = {opt for action in parser._actions for opt in action.option_strings} - {"-h", "--help"}
        assert [
            flag for flag in sorted(flags) if f"`{flag}" not in section and f"{flag} " not in section
        ] == []


def test_sweep_flags_are_documented() -> None:
    from tools.sweep.__main__ import parser

    section = README.split("## Sweeps and walk-forward", 1)[1].split("\n## ", 1)[0]
    flags = {opt for action in parser()._actions for opt in action.option_strings} - {"-h", "--help"}
    assert [flag for flag in sorted(flags) if f"`{flag}" not in section] == []
    assert "`SPEC`" in section and "python -m tools.sweep" in section


def test_every_event_kind_the_code_writes_is_in_the_run_folders_list() -> None:
    """Found by an audit: `signal.skipped` and `order.cancel_rejected` were written to events.jsonl
    and documented nowhere. The feed's own `feed.*` kinds are listed in "Live market data"."""
    kinds: set[str] = set()
    for path in (REPO / "actors").rglob("*.py"):
        text = path.read_text()
        kinds.update(re.findall(r'Event\(\s*[^,()]+(?:\([^()]*\))?,\s*"([a-z_.]+)"', text))
        kinds.update(re.findall(r'kind="([a-z_.]+)"', text))
        # the live feed's own (`self._event("feed.stats", ...)`) and the alert rules' kind (found
        # by a docs audit: the patterns above missed every feed.* kind but feed.fallback)
        kinds.update(re.findall(r'_event\(\s*"([a-z_.]+)"', text))
        kinds.update(re.findall(r'^ALERT_KIND = "([a-z_.]+)"', text, flags=re.M))
    assert {
        "order.filled",
        "signal",
        "signal.skipped",
        "feed.fallback",
        "feed.stats",
        "feed.reconnecting",
        "alert",
    } <= kinds  # the patterns still find them
    row = next(line for line in README.splitlines() if line.startswith("| `events.jsonl`"))
    feed = README.split("## Live market data", 1)[1].split("\n## ", 1)[0]
    missing = [k for k in sorted(kinds) if f"`{k}`" not in (feed if k.startswith("feed.") else row)]
    assert missing == []


def test_every_console_line_is_in_the_readme() -> None:
    """The console's line kinds (`FILL`, `CLOSED`, `ORDER`, `CANCEL`, `CROSSED`, `UNDONE`): found by
    a docs audit, `CROSSED` was printed (and silenced by --quiet) and said nowhere."""
    console = (REPO / "actors" / "console.py").read_text()
    tags = set(re.findall(r'^\s+(?:return )?f"([A-Z]{4,})\s', console, flags=re.M))
    assert {"FILL", "CLOSED", "ORDER", "CANCEL", "CROSSED", "UNDONE"} <= tags
    quiet = next(line for line in README.splitlines() if line.startswith("| `--quiet`"))
    assert [tag for tag in sorted(tags) if f"`{tag}" not in README] == []
    assert [tag for tag in ("CROSSED", "UNDONE") if f"`{tag}`" not in quiet] == []


def test_the_keys_said_to_be_at_least_a_tenth_are() -> None:
    """The Keys section names the keys that pace a loop or bound a wait, at least 0.1 each: found by
    a docs audit, "the other `feed.*_s` keys" took in `feed.confirm_candle_s`, which takes 0 (off)
    and anything up to 30."""
    from actors.config import ConfigError, load

    text = README.split("\n### Keys", 1)[1].split("\n| key |", 1)[0]
    but = text.split(" but ", 1)[1].split(")", 1)[0] if " but " in text else ""
    exceptions = set(re.findall(r"`([a-z_]+\.[a-z_]+)`", but))
    named = set(re.findall(r"`([a-z_]+\.[a-z_]+)`", text)) - exceptions
    assert "the other `feed.*_s` keys" in text
    named |= {f"feed.{key}" for key in to_dict(Config())["feed"] if key.endswith("_s")} - exceptions
    assert {"observability.heartbeat_s", "feed.stale_after_s", "state.checkpoint_interval_s"} <= named
    below = []
    for key in sorted(named):
        try:
            load(None, {}, [f"{key}=0.09"])
        except ConfigError:
            continue
        below.append(key)
    assert below == []  # none takes less than 0.1
    for key in exceptions:  # and what the README excepts does
        load(None, {}, [f"{key}=0"])


def test_every_template_is_in_the_configuration_section() -> None:
    """Found by a docs audit: three_symbols.toml was missing from the section's list of templates."""
    section = README.split("## Configuration", 1)[1].split("\n### ", 1)[0]
    templates = sorted(p.stem for p in (REPO / "config" / "templates").glob("*.toml"))
    assert len(templates) >= 7
    assert [t for t in templates if t not in section] == []


def test_every_module_is_on_the_map() -> None:
    """docs/architecture.md's layout names every module of actors/, protocols/ and tools/ (found
    by a docs audit: tools/bench_child.py and tools/bench_feed.py were not on it)."""
    text = (REPO / "docs" / "architecture.md").read_text()
    modules = [
        p
        for top in ("actors", "protocols", "tools")
        for p in sorted((REPO / top).rglob("*.py"))
        if p.stem not in ("__init__", "__main__")
    ]
    assert len(modules) > 50
    assert [str(p.relative_to(REPO)) for p in modules if not re.search(rf"\b{p.stem}\b", text)] == []


def test_the_field_names_the_run_folder_table_gives_are_the_codes() -> None:
    """Every field (or value) name the run folder's `events.jsonl` and `metrics.csv` rows name is one
    the code writes: a renamed field would leave its old name in the README."""
    source = "\n".join(p.read_text() for top in ("actors", "protocols") for p in (REPO / top).rglob("*.py"))
    for file in ("events.jsonl", "metrics.csv"):
        row = next(line for line in README.splitlines() if line.startswith(f"| `{file}`"))
        names = set(re.findall(r"`([a-z][a-z0-9_]*)`", row.split("|")[2]))
        assert len(names) >= 3, file
        stale = sorted(n for n in names if f'"{n}"' not in source and f"{n}=" not in source)
        assert stale == [], file


def _flags_of_help(module: str) -> set[str]:
    """The flags `python -m MODULE --help` lists (its parser is built inside its `main`)."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*|-[a-z])\b", out)) - {"-h", "--help"}


def test_the_healthcheck_and_report_flags_are_documented() -> None:
    """Found by a docs audit: the flags of these tools were checked nowhere."""
    for module in ("tools.healthcheck", "tools.report"):
        flags = _flags_of_help(module)
        assert flags, module
        assert [f for f in sorted(flags) if f"`{f}" not in README and f"{f} " not in README] == [], module


def test_the_fake_exchanges_flags_the_docs_name_exist() -> None:
    """The fake exchange's switches the README and the runbook name are its parser's (its `--help`
    lists the others)."""
    from tools.fake_bitunix.server import _parser

    flags = {opt for action in _parser()._actions for opt in action.option_strings}
    docs = README + (REPO / "docs" / "RUNBOOK.md").read_text()
    named = {
        flag
        for paragraph in docs.split("\n\n")
        if "tools.fake_bitunix" in paragraph
        for flag in re.findall(r"`(?:python -m tools\.fake_bitunix )?(--[a-z][a-z-]*)", paragraph)
        if flag not in ("--source", "--set", "--config")  # the session's, pointed at it
    }
    assert {"--port", "--api-key", "--stall-symbol"} <= named
    assert sorted(named - flags) == []


def _allowed(key: str, sets: tuple[str, ...] = ()) -> str:
    """What the loader says a key allows: its message for a value of no type (or, a path's, for
    an empty one)."""
    from actors.config import ConfigError, load

    for bad in ("bogus", ""):
        try:
            load(None, {}, [*sets, f"{key}={bad}"])
        except ConfigError as exc:
            found = re.search(r"; expected (.*)$", str(exc).splitlines()[0])
            assert found is not None, str(exc)
            return found.group(1)
    raise AssertionError(f"{key} takes anything")


def test_the_allowed_column_is_what_the_loader_allows() -> None:
    """Each key's `allowed` column (the Keys table and the strategy parameter tables) is the range
    the loader's exit-2 message gives for it (found by a docs audit: most keys' ranges were written
    nowhere, e.g. `session.duration_min` at most 1440, `broker.leverage` 1 to 125)."""
    tables = {(): README.split("\n### Keys", 1)[1].split("\n### ", 1)[0]}
    for kind in ("trend_pullback", "liquidity_sweep"):
        tables[(f"strategy.name={kind}",)] = README.split(f"`{kind}`'s parameters:", 1)[1].split("\n\n", 2)[1]
    wrong = []
    for sets, section in tables.items():
        assert "| key | default | allowed | meaning |" in section
        rows = re.findall(r"^\| `([a-z_]+\.[a-z0-9_]+)` \| [^|]* \| ([^|]*) \|", section, flags=re.M)
        assert len(rows) >= 10
        wrong += [
            f"{key}: {text!r}, the loader: {_allowed(key, sets)!r}"
            for key, text in rows
            if text != _allowed(key, sets)
        ]
    assert wrong == []
