"""The README documents every CLI flag, environment variable and config key the code has."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable

import pytest

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
        used.update(_READS.findall(path.read_text()))
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


# a call that reads the environment, and the variable it names
_READS = re.compile(r"(?:environ|\benv|getenv)(?:\.get\(|\[|\()\s*[\"']([A-Z][A-Z0-9_]+)[\"']")


def test_the_variables_the_tests_and_nox_read_are_documented() -> None:
    """Found by a CLI audit: the variables were checked in actors/ and tools/ only;
    `MULTI_SYMBOL_SECONDS`, `CONTAINER_REQUIRED`, `CONTAINER_IMAGE`, `CONTAINER_SWEEP_IMAGE` and
    `BTC_AGENTS_EXPECT_COMPILED`, read by the tests, were written nowhere."""
    used: set[str] = set()
    for path in [*(REPO / "tests").glob("*.py"), REPO / "noxfile.py", REPO / "setup.py"]:
        # the process's environment (not a manifest's `env` the tests read)
        used.update(
            re.findall(
                r"(?:os\.environ|getenv|s\.env)(?:\.get\(|\[|\()\s*[\"']([A-Z][A-Z0-9_]+)", path.read_text()
            )
        )
    used = {name for name in used if not name.startswith(("PYTHON", "PYTEST_"))}  # Python's, pytest's
    assert {"SOAK_SECONDS", "HYPOTHESIS_PROFILE", "BTC_AGENTS_COMPILE", "CONTAINER_IMAGE"} <= used
    table = README.split("The variables the tests, the nox sessions and setup.py read", 1)[1].split(
        "\n\n", 2
    )[1]
    assert [name for name in sorted(used) if f"`{name}`" not in table] == []
    assert not _variables_read() & used  # none of them the program's


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


# --- every tool's flags, both ways ---------------------------------------------------------------

_FLAG = re.compile(r"(?<![\w./=-])(--?[a-zA-Z][a-zA-Z0-9-]*)")
DOCS = {
    "README.md": README,
    **{f"docs/{p.name}": p.read_text() for p in sorted((REPO / "docs").glob("*.md"))},
}


def _spans(text: str) -> list[str]:
    """The code spans of a markdown text; each line of a fenced block is one too."""
    spans: list[str] = []
    for i, part in enumerate(re.split(r"^ *```.*$", text, flags=re.M)):
        spans += part.splitlines() if i % 2 else re.findall(r"`([^`]+)`", part)
    return spans


def _invoked(span: str, program: str) -> list[str]:
    """The flags a code span gives `program` (a regex: `python -m tools\\.x`) after each call of it,
    up to the end of that shell command."""
    flags: list[str] = []
    for call in re.split(rf"{program}(?![\w.-])", span)[1:]:
        command = re.split(r"\||&&|;|#|\bpython -m\b", call)[0]
        flags += _FLAG.findall(command)
    return flags


def _documented(home: str, program: str) -> set[str]:
    """The flags a tool's home in the docs gives it: its lone flags' spans (`--once`, `--run-dir
    DIR`, a table's first column) and the flags of its calls there."""
    spans = _spans(home)
    lone = {flag for span in spans if span.lstrip().startswith("-") for flag in _FLAG.findall(span)}
    return lone | {flag for span in spans for flag in _invoked(span, program)}


def _parser_flags(parser: argparse.ArgumentParser) -> set[str]:
    """Every flag a parser takes (its subcommands' too), but help and the hidden ones."""
    flags: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= _parser_flags(sub)
        elif action.help != argparse.SUPPRESS:
            flags.update(action.option_strings)
    return flags - {"-h", "--help"}


def _after(text: str, start: str, end: str = "\n\n") -> str:
    """`text` from `start` to the first `end` after it; a paragraph that introduces a table (`| flag
    |` after its blank line) with the table."""
    assert start in text, start
    rest = text[text.index(start) :]
    block = rest.split(end, 1)[0]
    table = rest[len(block) :].lstrip("\n")
    if end == "\n\n" and table.startswith("| flag |"):
        block += "\n\n" + table.split("\n\n", 1)[0]
    return block


def _section(title: str) -> str:
    return README.split(f"\n## {title}", 1)[1].split("\n## ", 1)[0]


def _tools() -> dict[str, tuple[argparse.ArgumentParser, Callable[[], str]]]:
    """Each command-line tool: its parser, and where the docs give its flags (its home)."""
    from tools import archive, bench, bench_child, bench_feed, cleanup, healthcheck, monitor, report
    from tools import validate_session as validate
    from tools.fake_bitunix.server import _parser as fake_parser
    from tools.sweep.__main__ import parser as sweep_parser
    from tools.sweep.html import build_parser as sweep_html_parser

    def run_folder_tools(bullet: str) -> Callable[[], str]:
        return lambda: _after(_section("Run-folder tools"), f"- **{bullet}", "\n- ")

    performance = DOCS["docs/performance.md"]
    return {
        "tools.monitor": (monitor.build_parser(), run_folder_tools("Follow a session:**")),
        "tools.cleanup": (cleanup.build_parser(), run_folder_tools("Delete old runs:**")),
        "tools.archive": (archive.build_parser(), run_folder_tools("Archive and restore:**")),
        "tools.healthcheck": (healthcheck.build_parser(), lambda: _after(_section("Container"), "- **Health**", "\n- ")),
        "tools.report": (report.build_parser(), lambda: _after(README, "`python -m tools.report RUN` builds")),
        "tools.validate_session": (validate.build_parser(), lambda: _after(README, "- **Validate.**", "\n- **")),
        "tools.sweep": (sweep_parser(), lambda: _section("Sweeps and walk-forward")),
        "tools.sweep.html": (sweep_html_parser(), lambda: _after(DOCS["docs/sweeps.md"], "- `sweep.html`:", "\n- ")),
        "tools.fake_bitunix": (fake_parser(), lambda: _after(README, "The fake exchange's flags")),
        "tools.bench": (bench.build_parser(), lambda: _after(performance, "`python -m tools.bench` (`nox -s bench -- FLAGS`)")),
        "tools.bench_feed": (bench_feed._parser(), lambda: _after(performance, "`python -m tools.bench_feed` (the live feed;")),
        # the benchmark's own launcher, run by tools.bench only: its module docstring is its home
        "tools.bench_child": (
            bench_child.build_parser(),
            lambda: re.sub(r"^    (python -m .*)$", r"`\1`", str(bench_child.__doc__), flags=re.M),
        ),
    }  # fmt: skip


TOOLS_WITH_CLI = [
    "tools.archive", "tools.bench", "tools.bench_child", "tools.bench_feed", "tools.cleanup",
    "tools.fake_bitunix", "tools.healthcheck", "tools.monitor", "tools.report", "tools.sweep",
    "tools.sweep.html", "tools.validate_session",
]  # fmt: skip


def test_every_tool_is_in_the_list_of_tools_whose_flags_are_checked() -> None:
    """Every module of tools/ with a command line (an argparse parser) is checked below."""
    with_cli = {
        "tools." + ".".join(p.relative_to(REPO / "tools").with_suffix("").parts).removesuffix(".__main__")
        for p in (REPO / "tools").rglob("*.py")
        if "argparse.ArgumentParser(" in p.read_text()
    }
    with_cli = {"tools.fake_bitunix" if m == "tools.fake_bitunix.server" else m for m in with_cli}
    assert with_cli == set(TOOLS_WITH_CLI) == set(_tools())


@pytest.mark.parametrize("module", TOOLS_WITH_CLI)
def test_every_flag_of_each_tool_is_documented_and_every_flag_documented_is_its(module: str) -> None:
    """Both ways, as for `actors.main`'s table: every flag the tool's parser takes is in its home in
    the docs, and every flag its home gives it is one its parser takes (found by a CLI audit: the
    fake exchange's and the benchmarks' flags were checked one way or not at all, and most of the
    fake exchange's, `tools.bench`'s --latency-seconds and --work, `tools.bench_feed`'s all and
    `tools.bench_child count`'s --interval-s were written nowhere; `tools.sweep.html` nowhere at all)."""
    parser, home = _tools()[module]
    program = rf"python -m {re.escape(module)}"
    if module == "tools.bench":
        program = rf"(?:{program}|nox -s bench --)"
    assert re.search(program, home()), "its home does not name it"
    documented = _documented(home(), program)
    flags = _parser_flags(parser)
    assert sorted(flags - documented) == [], "undocumented"
    assert sorted(documented - flags - {"-h", "--help"}) == [], "stale"


def test_every_flag_the_docs_give_a_call_of_a_command_is_one_it_takes() -> None:
    """Wherever the README or docs/ write a call of a command (`python -m tools.x FLAGS`, `nox -s
    bench -- FLAGS`, `python -m actors.main FLAGS`, `btc-laptop-agents FLAGS`, `nox -s session --
    FLAGS`), its flags are the command's."""
    calls = {module: rf"python -m {re.escape(module)}" for module in _tools()}
    calls["tools.bench"] = r"(?:python -m tools\.bench|nox -s bench --)"
    calls["actors.main"] = r"(?:python -m actors\.main|btc-laptop-agents|nox -s session --)"
    parsers = {module: _parser_flags(parser) for module, (parser, _) in _tools().items()}
    parsers["actors.main"] = _parser_flags(build_parser())
    stale = [
        f"{doc}: {module} {flag}"
        for doc, text in DOCS.items()
        for span in _spans(text)
        for module, program in calls.items()
        for flag in _invoked(span, program)
        if flag not in parsers[module] | {"-h", "--help"}
    ]
    assert stale == []


# The exit codes each tool gives, from reading each one's code (its `main`, its commands, argparse's
# 2 for a flag it cannot use); tests/test_cli_tools.py and the tools' own tests give each of them.
EXIT_CODES = {
    "tools.monitor": {0, 1, 2},
    "tools.cleanup": {0, 1, 2},
    "tools.archive": {0, 1, 2},
    "tools.healthcheck": {0, 1, 2},
    "tools.report": {0, 2},
    "tools.validate_session": {0, 1, 2},
    "tools.sweep": {0, 1, 2, 4, 130},
    "tools.sweep.html": {0, 2},
    "tools.fake_bitunix": {0, 1, 2},
    "tools.bench": {0, 1, 2},
    "tools.bench_feed": {0, 2},
    # the session's (actors/main.py, its module docstring): the stops' 0 and 1, 2 a start refused,
    # 130 and 143 a Ctrl-C or SIGTERM during start-up; --preflight's 3 and 4
    "actors.main": {0, 1, 2, 3, 4, 130, 143},
}


def _exit_codes_said(text: str) -> set[int]:
    """The numbers in the sentences of `text` that speak of an exit (`Exit 0 when ..., 1 ...`)."""
    sentences = re.split(r"(?<=[.;])\s+(?=[A-Z(`])|\n\n", text)
    return {
        int(n)
        for sentence in sentences
        if re.search(r"\bexit", sentence, re.I)
        for n in re.findall(r"(?<![\w/-])(?<!\d[.,])(\d{1,3})(?![\w%/-]|[.,]\d)", sentence)
    }


@pytest.mark.parametrize("module", sorted(EXIT_CODES))
def test_the_docs_give_each_tools_exit_codes(module: str) -> None:
    """Found by a CLI audit: the validator's 2, the healthcheck's 2 and the sweep's 130 (a Ctrl-C)
    were written nowhere, nor the fake exchange's and the benchmarks' codes."""
    performance = DOCS["docs/performance.md"]
    homes = {  # where a tool's exit codes are said, when not in its flags' home
        "tools.fake_bitunix": lambda: _after(README, "`python -m tools.fake_bitunix --port 0` runs"),
        "tools.bench": lambda: _after(performance, "Exit 0, 1 when our CLI's fills"),
        "tools.bench_feed": lambda: _after(performance, "It prints a JSON line of every figure"),
        "actors.main": lambda: _section("Stopping a session") + _section("Command line"),
    }
    home = homes[module]() if module in homes else _tools()[module][1]()
    if module in ("tools.monitor", "tools.cleanup", "tools.archive"):  # and their common paragraph
        home = _section("Run-folder tools").split("\n\n", 2)[1] + "\n\n" + home
    assert sorted(EXIT_CODES[module] - _exit_codes_said(home)) == []
    assert set(EXIT_CODES) == {*TOOLS_WITH_CLI, "actors.main"} - {
        "tools.bench_child"
    }  # run by the bench only


def test_the_resume_commands_are_the_ones_the_quick_start_installs() -> None:
    """Found by a docs audit: after a crash, docs/START_HERE.md said to start `python -m
    actors.main --config config/live.toml` again; a user of the quick start has nox in `.venv` and
    no `python` with the project (the system's: `No module named 'loguru'`, or no `python` at
    all). Each command of its code blocks runs a program of `.venv`, as the quick start makes it,
    and the RUNBOOK says which `python` its commands mean."""
    quick = _section("Quick start")
    assert ".venv/bin/nox -s session" in quick and ".venv/bin/pip install -e '.[test]'" in quick
    blocks = re.findall(r"^```bash\n(.*?)^```", DOCS["docs/START_HERE.md"], flags=re.M | re.S)
    commands = [line.split("#", 1)[0].strip() for block in blocks for line in block.splitlines()]
    assert commands and all(c.startswith((".venv/bin/nox ", ".venv/bin/python ")) for c in commands if c)
    assert "`.venv/bin/python`" in DOCS["docs/RUNBOOK.md"].split("\n## ", 1)[0]


def test_the_instrument_table_of_the_fills_page_is_the_shipped_one() -> None:
    """docs/fills.md's table of the instruments mock sessions and backtests trade on, and its ladder
    of maintenance tiers, are protocols/instruments.py's (checked by hand only, before)."""
    from protocols.instruments import TABLE

    page = DOCS["docs/fills.md"]
    rows = re.findall(
        r"^\| ([A-Z]+USDT) \| ([\d.]+) \| ([\d.]+) \| (\d+) \| (\d+) / (\d+) \|", page, flags=re.M
    )
    assert {row[0] for row in rows} == set(TABLE)
    for symbol, tick, lot, leverage, market, limit in rows:
        shipped = TABLE[symbol]
        assert (float(tick), float(lot), float(lot)) == pytest.approx(
            (shipped.tick_size, shipped.lot_size, shipped.min_qty)
        ), symbol
        assert (float(leverage), float(market), float(limit)) == (
            shipped.max_leverage,
            shipped.max_market_qty,
            shipped.max_limit_qty,
        ), symbol
    ladder = re.search(r"position notional up to (.*?)\. Below", page, flags=re.S)
    assert ladder is not None
    said = re.findall(r"([\d,]+|beyond)(?: USDT)? ([\d.]+) % \((\d+)x\)", " ".join(ladder.group(1).split()))
    for symbol, shipped in TABLE.items():
        tiers = [
            (tier.max_notional, tier.maintenance_margin_rate * 100, tier.max_leverage)
            for tier in shipped.tiers
        ]
        written = [
            (float("inf") if n == "beyond" else float(n.replace(",", "")), float(rate), float(lev))
            for n, rate, lev in said
        ]
        assert len(written) == len(tiers), symbol
        for w, t in zip(written, tiers, strict=True):
            assert w == pytest.approx(t), symbol


def test_the_config_keys_the_docs_and_templates_name_exist() -> None:
    """Each `section.key` the docs/ pages and the templates' comments write (`feed.stale_after_s`,
    `broker.intrabar`, ...) is a key of the config (or a strategy parameter): the README's own are
    checked against the Keys table; these were read by hand only. Names of that shape that are no
    key are the events and files the README lists (`feed.stats`, `session.log`), file names
    (`alerts.py`), and one example of a key refused for carrying a secret."""
    from actors.config import strategy_kinds, strategy_param_fields

    keys = {f"{section}.{key}" for section, values in to_dict(Config()).items() for key in values}
    keys |= {f"strategy.{name}" for kind in strategy_kinds() for name in strategy_param_fields(kind)}
    sections = {key.split(".", 1)[0] for key in keys}
    texts = {doc: text for doc, text in DOCS.items() if doc != "README.md"}
    texts |= {f"config/templates/{p.name}": p.read_text() for p in (REPO / "config/templates").glob("*.toml")}
    named = {
        (doc, m.group(1))
        for doc, text in texts.items()
        for m in re.finditer(r"`([a-z_]+\.[a-z0-9_]+)(?=[ =`])", text)
        if m.group(1).split(".", 1)[0] in sections
        and m.group(1).split(".", 1)[1] not in ("py", "json", "jsonl", "csv", "html", "log", "lock", "toml")
    }
    assert len(named) >= 60
    listed = set(
        re.findall(r"`([a-z_]+\.[a-z_]+)`", _section("The run folder") + _section("Live market data"))
    )
    assert {"feed.stats", "session.resumed", "session.log", "alerts.jsonl"} <= listed
    unknown = sorted(f"{doc}: {name}" for doc, name in named if name not in keys | listed | {"feed.api_key"})
    assert unknown == []
