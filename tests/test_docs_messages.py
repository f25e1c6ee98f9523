"""The docs quote the messages and name the stop reasons the program really has."""

from __future__ import annotations

import ast
import errno
import os
import re
from pathlib import Path

import pytest

from actors.lock import SessionLock, SessionLocked
from actors.session import DATA_DRIVEN_STOPS
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


@pytest.mark.parametrize("doc", ["docs/START_HERE.md", "docs/troubleshooting.md"])
def test_the_lock_message_quoted_is_the_real_one(tmp_path: Path, doc: str) -> None:
    run = tmp_path / "20240101T000000Z-s42"
    run.mkdir()
    with SessionLock(run), pytest.raises(SessionLocked) as raised:
        SessionLock(run).acquire()
    quoted = re.search(r"`error: (session RUN is already running[^`]*)`", (REPO / doc).read_text())
    assert quoted is not None, f"{doc} does not quote the lock message"
    pid = re.search(r"process (\d+)", str(raised.value))
    assert pid is not None
    expected = quoted.group(1).replace("RUN", run.name).replace("PID", pid.group(1))
    assert str(raised.value) == expected


def test_every_stop_reason_is_in_the_readme_table() -> None:
    table = README[README.index("## Stopping a session") : README.index("## Command line")]
    for reason in {*DATA_DRIVEN_STOPS, "duration", "kill_switch", "signal", "error"}:
        assert f"`{reason}`" in table, reason


def test_the_console_script_is_documented() -> None:
    assert "btc-laptop-agents = " in (REPO / "pyproject.toml").read_text()
    assert "btc-laptop-agents --config config/live.toml" in README


def _rejection_reasons() -> set[str]:
    """Every `order.rejected` reason the code can give, found in its source: the risk gate's
    `Rejection("...")` and caps (the `room` it sizes against, by name), the broker's `_refuse(..., "...")`
    and the exchange's refusals (`return "..."` of `_margin_refusal` and `Instrument.refusal`),
    and the reasons in-flight orders are abandoned with."""
    gate = (REPO / "actors/risk/gate.py").read_text()
    broker = (REPO / "actors/broker/paper.py").read_text()
    instruments = (REPO / "protocols/instruments.py").read_text()
    session = (REPO / "actors/session.py").read_text()
    reasons = set(re.findall(r'Rejection\(\s*"([a-z_]+)"', gate))
    reasons |= set(re.findall(r'\("(max_[a-z_]+)", ', gate))  # the caps the gate sizes against (its `room`)
    reasons |= set(re.findall(r'_refuse\([^()]*?"([a-z_]+)"', broker))
    margin = broker[broker.index("def _margin_refusal") :]
    reasons |= set(re.findall(r'return "([a-z_]+)"', margin[: margin.index("\n    def ")]))
    refusal = instruments[instruments.index("def refusal") :]
    reasons |= set(re.findall(r'return "([a-z_]+)"', refusal[: refusal.index("\n    def ")]))
    reasons |= set(re.findall(r'abandon_in_flight\(self, now: float, reason: str = "([a-z_]+)"', broker))
    reasons |= set(re.findall(r'abandon_in_flight\([a-z_]+, "([a-z_]+)"\)', session))
    return reasons


def test_every_rejection_reason_is_in_the_troubleshooting_table() -> None:
    reasons = _rejection_reasons()
    # the scan finds them where they are (a change of shape would empty it, not pass it)
    assert {
        "max_notional",
        "below_min_size",
        "insufficient_margin",
        "qty_off_grid",
        "lost_at_restart",
    } <= reasons
    assert len(reasons) >= 20
    doc = (REPO / "docs/troubleshooting.md").read_text()
    table = doc[doc.index("## Order rejection reasons") :]
    missing = sorted(r for r in reasons if f"`{r}`" not in table)
    assert not missing, f"rejection reasons not in docs/troubleshooting.md: {missing}"


# A message the docs quote, as the program builds it: its literal text with a hole where it fills
# in a value (an f-string's `{...}`, a `{}` of str.format or loguru's formatting)
HOLE = "\0"


def _message_templates() -> list[str]:
    """Every string constant and f-string of the program and its tools, values as holes."""
    found: set[str] = set()
    for folder in ("actors", "protocols", "tools"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    found.add(re.sub(r"\{[^{}]*\}", HOLE, node.value))
                elif isinstance(node, ast.JoinedStr):
                    found.add(
                        "".join(
                            re.sub(r"\{[^{}]*\}", HOLE, part.value)
                            if isinstance(part, ast.Constant) and isinstance(part.value, str)
                            else HOLE
                            for part in node.values
                        )
                    )
    return [t for t in found if len(t) >= 4]


def _hole_chars(quote: str, template: str) -> int | None:
    """The fewest characters of `quote` that `template`'s holes must give for `quote` to be a
    stretch of the template's text with its holes filled, each with a value of at most two words
    (`RUN`, `--fresh start`, `15`); None when it cannot be."""
    n, never = len(template), 1 << 30

    def empty_holes(cost: list[list[int]]) -> list[list[int]]:  # a hole may take nothing
        for i in range(n):
            if template[i] == HOLE:
                cost[0][i + 1] = min(cost[0][i + 1], cost[0][i], cost[1][i])
        return cost

    # cost[s][i]: at template[i], with s spaces in the value the hole there takes so far
    cost = empty_holes([[0] * (n + 1), [never] * (n + 1)])  # the quote may begin anywhere
    for char in quote:
        step = [[never] * (n + 1), [never] * (n + 1)]
        for spaces in (0, 1):
            for i in range(n):
                if cost[spaces][i] == never:
                    continue
                if template[i] == HOLE and spaces + (char == " ") <= 1:
                    more = spaces + (char == " ")
                    step[more][i] = min(step[more][i], cost[spaces][i] + 1)
                elif template[i] == char and spaces == 0:
                    step[0][i + 1] = min(step[0][i + 1], cost[0][i])
        cost = empty_holes(step)
    best = min(min(cost[0]), min(cost[1]))
    return None if best == never else best


def _is_quoted_right(piece: str, templates: list[str]) -> bool:
    """`piece` is a stretch of a message the code builds: some template matches it with its
    values filled in, and at least 6 of its characters (all of a shorter piece) are the template's."""
    words = set(re.findall(r"[A-Za-z_]{3,}", piece))
    for template in templates:
        if sum(word in template for word in words) * 2 < len(words):
            continue
        holes = _hole_chars(piece, template)
        if holes is not None and len(piece) - holes >= min(6, len(piece)):
            return True
    return False


def _pieces(quote: str) -> list[str]:
    """A quoted message cut where the docs leave text out (`...`, an error the OS words) and where
    the program joins messages (`: `): each piece is one message's text."""
    for text in (os.strerror(errno.ENOSPC), os.strerror(errno.EACCES)):
        quote = quote.replace(text, "...")
    pieces = re.split(r"\(\.\.\.\)|\.\.\.|: ", quote)
    return [p.strip(" ,;.") for p in pieces if len(re.findall(r"[A-Za-z]", p)) >= 4]


def _quoted_messages() -> list[tuple[str, str]]:
    """The program's messages the docs' symptom tables quote: each code span of a row's first
    column that is a phrase (not an event kind, a reason, a `key = value` or a command), outside the
    tables of the container's own messages (podman's)."""
    quotes = []
    for doc in ("docs/troubleshooting.md", "docs/START_HERE.md"):
        text = (REPO / doc).read_text().split("\n## Container", 1)[0]
        for row in re.findall(r"^\| (.*?) \| ", text, flags=re.M):
            for span in re.findall(r"`([^`]+)`", row):
                command = span.split(" ", 1)[0] in ("podman", "pip", "python", "nox", "kill", "touch")
                if " " in span and not command and not re.match(r'[a-z_.]+(?: = |: )"', span):
                    quotes.append((doc, span))
    return quotes


def test_the_messages_the_symptom_tables_quote_are_the_programs() -> None:
    """Found by a docs audit: the tables' messages were checked by hand only (the lock's aside); a
    quote that no longer matches what the program prints is a symptom no one finds."""
    templates = _message_templates()
    quotes = _quoted_messages()
    assert len(quotes) >= 30
    wrong = [
        f"{doc}: `{quote}`: {piece!r}"
        for doc, quote in quotes
        for piece in _pieces(quote)
        if not _is_quoted_right(piece, templates)
    ]
    assert wrong == []
    # and the check tells a misquote: a word changed, a value where the program has text
    for quote in (
        "storage fault: cannot writes PATH",
        "no live data within 15 s of",
        "session RUN is running in other process",
        "webhook: alert ... not sent to ...",
    ):
        assert not all(_is_quoted_right(piece, templates) for piece in _pieces(quote)), quote
