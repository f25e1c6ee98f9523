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


def test_environment_variables_are_documented() -> None:
    assert f"{ENV_PREFIX}SECTION__KEY" in README
    assert f"{ENV_PREFIX}STRATEGIES__ID__KEY" in README and "`--set strategies.ID.KEY=VALUE`" in README
    source = "\n".join(p.read_text() for p in (REPO / "actors").glob("*.py"))
    used = set(re.findall(r"os\.environ(?:\.get)?\[?\(?[\"']([A-Z_]+)", source))
    assert all(var in README for var in used), used


def test_every_config_key_is_documented() -> None:
    for section, keys in to_dict(Config()).items():
        for key in keys:
            assert f"`{section}.{key}`" in README, f"{section}.{key} missing from README"


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
    assert {
        "order.filled",
        "signal",
        "signal.skipped",
        "feed.fallback",
    } <= kinds  # the patterns still find them
    row = next(line for line in README.splitlines() if line.startswith("| `events.jsonl`"))
    feed = README.split("## Live market data", 1)[1].split("\n## ", 1)[0]
    missing = [k for k in sorted(kinds) if f"`{k}`" not in (feed if k.startswith("feed.") else row)]
    assert missing == []
