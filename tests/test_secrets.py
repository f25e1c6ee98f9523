"""Secrets stay out of everything the program writes; checkpoints signed with the state key; run
folders 0700 and files 0600 (actors/secrets.py, actors/recording/checkpoint.py)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors import secrets
from actors.config import ConfigError, load
from actors.recording import checkpoint
from tests.conftest import REPO, cli_env, run_cli

API_KEY = "ak-7f3e9c1b2a4d6e8f0a1b2c3d"
API_SECRET = "sk-0d9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a"
STATE_KEY = "state-key-5a4b3c2d1e0f9a8b"
HOOK_TOKEN = "hooktoken-q8w7e6r5t4y3"  # a secret-named variable's value, given in a config value too
SECRETS = (API_KEY, API_SECRET, STATE_KEY, HOOK_TOKEN)


def _env(**extra: str) -> dict[str, str]:
    return cli_env(
        BITUNIX_API_KEY=API_KEY,
        BITUNIX_API_SECRET=API_SECRET,
        LAPTOP_AGENTS_STATE_KEY=STATE_KEY,
        ALERTS_HOOK_TOKEN=HOOK_TOKEN,
        **extra,
    )


# --- components ------------------------------------------------------------------------------


def test_secrets_come_from_the_environment_or_a_file(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text(API_SECRET + "\n")
    env = {"BITUNIX_API_KEY": API_KEY, "BITUNIX_API_SECRET_FILE": str(tmp_path / "secret")}
    creds = secrets.credentials(env)
    assert (creds.api_key, creds.api_secret) == (API_KEY, API_SECRET)
    assert API_KEY not in repr(creds) and API_SECRET not in repr(creds)
    with pytest.raises(secrets.SecretError, match="BITUNIX_API_SECRET not set"):
        secrets.credentials({"BITUNIX_API_KEY": API_KEY})
    with pytest.raises(secrets.SecretError, match="both set"):
        secrets.credentials({**env, "BITUNIX_API_SECRET": "x"})
    missing = {"BITUNIX_API_KEY": API_KEY, "BITUNIX_API_SECRET_FILE": str(tmp_path / API_SECRET)}
    with pytest.raises(secrets.SecretError) as info:
        secrets.credentials(missing)
    assert "BITUNIX_API_SECRET_FILE" in str(info.value) and API_SECRET not in str(info.value)
    with pytest.raises(secrets.SecretError, match="too short"):
        secrets.state_key({"LAPTOP_AGENTS_STATE_KEY": "short"})
    assert secrets.state_key({}) is None


def test_the_scrubber_masks_each_form_of_a_secret() -> None:
    scrubber = secrets.Scrubber(
        secrets.secret_values({"X_TOKEN": 'a"b/c d', "PATH": "/usr/bin", "Y_KEY": "1"})
    )
    assert scrubber.scrub('raw a"b/c d, json a\\"b/c d, url a%22b%2Fc%20d') == "raw ***, json ***, url ***"
    assert scrubber.scrub("/usr/bin 1") == "/usr/bin 1"  # not secret-named; too short to be a secret
    assert secrets.child_env({"BITUNIX_API_SECRET": "s", "X_TOKEN_FILE": "f", "PATH": "p"}) == {"PATH": "p"}


@pytest.mark.parametrize(
    "setting", ["feed.api_key=abc", "exchange.secret=abc", "strategy.token=abc", "broker.password=abc"]
)
def test_a_secret_in_the_config_is_refused_naming_it(setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(None, {}, [setting])
    assert setting.split("=")[0] in str(info.value) and "BITUNIX_API_KEY" in str(info.value)
    assert "abc" not in str(info.value)


@pytest.fixture
def state_key() -> Iterator[bytes]:
    key = STATE_KEY.encode()
    checkpoint.use_key(key)
    try:
        yield key
    finally:
        checkpoint.use_key(None)


def _forge(path: Path, change: dict[str, object]) -> None:
    """Alter a checkpoint's state as an attacker would: the checksum recomputed, the HMAC kept."""
    doc = json.loads(path.read_bytes())
    doc["state"].update(change)
    body = {"format": doc["format"], "state": doc["state"]}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    doc["sha256"] = hashlib.sha256(canonical.encode()).hexdigest()
    path.write_text(json.dumps(doc))


def test_a_checkpoint_copied_from_another_run_is_not_used(tmp_path: Path, state_key: bytes) -> None:
    """Found by an audit: the signed body named no run, so another run's checkpoint (same key)
    resumed this one with its timeline, and the validator passed."""
    one, two = tmp_path / "20260101T000000Z-s1", tmp_path / "20260101T000000Z-s2"
    for run, seq in ((one, 1), (two, 7)):
        run.mkdir()
        checkpoint.write(run, {"seq": seq})
    (one / checkpoint.NEWEST).write_bytes((two / checkpoint.NEWEST).read_bytes())
    with pytest.raises(checkpoint.CheckpointError, match="written for run '20260101T000000Z-s2'"):
        checkpoint.load(one)
    checkpoint.use_key(None)  # unsigned: not used either; the previous generation, if any, is
    for run in (one, two):
        for name in (checkpoint.NEWEST, checkpoint.PREVIOUS):
            (run / name).unlink(missing_ok=True)
        checkpoint.write(run, {"seq": 1 if run is one else 7})
    checkpoint.write(one, {"seq": 2})
    (one / checkpoint.NEWEST).write_bytes((two / checkpoint.NEWEST).read_bytes())
    loaded = checkpoint.load(one)
    assert loaded.state == {"seq": 1} and "written for run" in loaded.problems[0]


def test_a_signed_checkpoint_resumes_and_a_tampered_one_is_refused(tmp_path: Path, state_key: bytes) -> None:
    checkpoint.write(tmp_path, {"seq": 1, "cash": 100.0})
    checkpoint.write(tmp_path, {"seq": 2, "cash": 90.0})
    assert checkpoint.load(tmp_path).state == {"seq": 2, "cash": 90.0}
    _forge(tmp_path / checkpoint.NEWEST, {"cash": 1e9})
    with pytest.raises(checkpoint.CheckpointError, match="HMAC mismatch"):
        checkpoint.load(tmp_path)  # loudly, not read around: the previous generation is not used
    checkpoint.use_key(b"another-key-0123456789")
    with pytest.raises(checkpoint.CheckpointError, match="integrity"):
        checkpoint.load(tmp_path)
    checkpoint.use_key(None)
    with pytest.raises(checkpoint.CheckpointError, match="LAPTOP_AGENTS_STATE_KEY is not set"):
        checkpoint.load(tmp_path)
    unsigned = tmp_path / "unsigned"
    unsigned.mkdir()
    checkpoint.write(unsigned, {"seq": 1})
    checkpoint.use_key(state_key)
    with pytest.raises(checkpoint.CheckpointError, match="not signed"):
        checkpoint.load(unsigned)


def test_credentials_in_configured_urls_and_values_with_stray_whitespace_are_scrubbed() -> None:
    """Found by an audit: a chat service's webhook URL (its path is its token) and a `?token=`
    query were written in clear unless exported under a secret name too; a secret exported with
    a stray `\r` was not masked where it was used without it."""
    hook = "https://hooks.example.com/services/T0/B0/XXXXsecret"
    extra = secrets.url_secrets(hook, ["wss://fapi.example.com/public/?token=abc123xyz", "https://h/api"])
    try:
        secrets.install({"ALERT_WEBHOOK_TOKEN": "TOKxyz12345\r"}, extra)
        assert secrets.scrub(f"url {hook}") == "url https://hooks.example.com***"
        assert (
            secrets.scrub("wss://fapi.example.com/public/?token=abc123xyz")
            == "wss://fapi.example.com/public/?***"
        )
        assert (
            secrets.scrub("http://127.0.0.1/hook/TOKxyz12345 https://h/api")
            == "http://127.0.0.1/hook/*** https://h/api"
        )
    finally:
        secrets.install({})
    assert secrets.url_secrets("http://127.0.0.1:8080/hook", ["wss://h/public/"]) == []  # nothing to hide


def test_a_secret_named_variable_holding_a_number_does_not_mangle_the_records(tmp_path: Path) -> None:
    """Found by an audit: a secret-named variable whose value was a number (`ALERTS_TOKEN=234567`,
    a TTL, a PIN) was masked inside the records' numbers: the equity 1234567 became `1***`, the
    recorder's line was no JSON any more, and the session crashed with a traceback (exit 1)
    leaving an events.jsonl the validator refused. A value made of a number's characters only is
    not masked (as a value under 6 characters is not): it would mangle every record."""
    args = ("--source", "mock", "--duration", "0.02", "--set", "broker.starting_equity=1234567")
    done = run_cli(*args, cwd=tmp_path, ALERTS_TOKEN="234567", OTHER_SECRET="2.5e-05")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    run = tmp_path / "runs" / "latest"
    first = json.loads((run / "events.jsonl").read_text().splitlines()[0])
    assert first["kind"] == "session.started"
    assert first["config"]["broker"]["starting_equity"] == 1234567
    check = subprocess.run(
        [sys.executable, "-m", "tools.validate_session", str(run)],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    scrubber = secrets.Scrubber(secrets.secret_values({"A_TOKEN": "234567", "B_KEY": "abc234567"}))
    assert scrubber.scrub("1234567 abc234567") == "1234567 ***"


def test_a_secret_with_a_quote_and_a_non_ascii_character_is_masked_in_every_file(tmp_path: Path) -> None:
    """Found by an audit: a password such as `pä"ss1234` (a quote and a letter beyond ASCII) used as
    a config value was written in clear in events.jsonl: orjson escapes the quote and keeps the
    `ä`, a form the scrubber did not know (it had json.dumps's, which writes `\\u00e4`)."""
    value = 'pä"ss1234'
    done = run_cli(
        "--source", "mock", "--duration", "0.02", "--set", f"session.kill_switch={value}",
        cwd=tmp_path, MY_PASSWORD=value,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ss1234" not in done.stdout + done.stderr
    files = list(_written(tmp_path / "runs"))
    assert any(p.name == "events.jsonl" for p in files)
    for path in files:
        assert b"ss1234" not in path.read_bytes(), path


def test_a_traceback_in_the_session_log_is_scrubbed_too(tmp_path: Path) -> None:
    """Found by an audit: the log's patcher scrubbed each message, not the traceback loguru adds to
    it (`logger.opt(exception=...)`: the report page's failure, at DEBUG in session.log), nor
    the serialized line's exception value: an error naming a path that held a secret wrote it."""
    from loguru import logger

    from actors import logs
    from actors.recording.html_report import write_report_html

    value = "tok-5e1f0a9b3c7d"
    run = tmp_path / "run"
    run.mkdir()
    try:
        secrets.install({"MY_TOKEN": value})
        logs.configure("CRITICAL")
        sink_id = logs.open_run_log(run)
        try:
            assert write_report_html(tmp_path / value / "missing") is None  # logged, not raised
        finally:
            logger.remove(sink_id)
    finally:
        secrets.install({})
        logs.configure()
    text = (run / "session.log").read_text()
    assert "NotARunFolder" in text and "Traceback" in text and "***" in text  # there, masked
    assert value not in text


def test_log_lines_escape_control_characters_from_outside(capsys: pytest.CaptureFixture[str]) -> None:
    """An exchange's error text (found by an audit: raw escape sequences and a forged log line
    reached the console) is escaped where it is read and again by every log line."""
    from loguru import logger

    from actors import logs
    from protocols.bitunix import RestError, rest_data

    body = json.dumps({"code": 10005, "msg": "\x1b[2J\x1b[31mEVIL\nFAKE 12:00:00 | INFO | session ok"})
    with pytest.raises(RestError) as refused:
        rest_data(200, body.encode())
    assert str(refused.value).startswith("\\x1b[2J\\x1b[31mEVIL\\nFAKE")
    logs.configure("INFO")
    try:
        logger.warning("feed: REST failed ({})", "raw \x1b]0;PWNED\x07 and\na forged line")
        logger.bind(lines=True).error("session failed:\n{}", "Traceback\n  line")
    finally:
        logs.configure()
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err
    assert "raw \\x1b]0;PWNED\\x07 and\\na forged line" in err
    assert "session failed:\nTraceback\n  line" in err  # a traceback keeps its lines


# --- the CLI -----------------------------------------------------------------------------------

SETS = [
    "--set", "session.interval=1s", "--set", "strategy.fast_period=1", "--set", "strategy.slow_period=2",
    "--set", "risk.max_orders_per_minute=600", "--set", "feed.tick_interval_s=0.1",
    "--set", "feed.mock_volatility_pct=300", "--set", "observability.progress=off",
    "--set", "state.checkpoint_interval_s=0.2",
]  # fmt: skip


def _written(folder: Path) -> Iterator[Path]:
    for root, _, files in os.walk(folder):
        for name in files:
            yield Path(root) / name


@pytest.mark.slow
def test_a_session_with_secrets_set_writes_none_of_them(tmp_path: Path) -> None:
    # the webhook URL carries the token (a secret-named variable's value): it is recorded in the
    # config of events.jsonl and the report, logged when the webhook fails, all scrubbed
    hook = f"http://127.0.0.1:9/hooks/{HOOK_TOKEN}"
    args = ["--source", "mock", "--duration", "0.1", "--run-dir", "runs", *SETS,
            "--set", f"observability.webhook_url={hook}", "--set", "alerts.max_rss_mb=1"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "actors.main", *args],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    check = subprocess.run(
        [sys.executable, "-m", "actors.main", "--check-config", *args],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert check.returncode == 0 and 'webhook_url = "http://127.0.0.1:9***"' in check.stdout
    files = list(_written(tmp_path / "runs"))
    names = {p.name for p in files}
    assert {"events.jsonl", "final_report.json", "session.log", "checkpoint.json", "metrics.csv",
            "report.html", "alerts.jsonl"} <= names  # fmt: skip
    masked = 0
    for path in files:
        data = path.read_bytes()
        masked += data.count(b"***")
        for secret in SECRETS:
            assert secret.encode() not in data, f"{secret} in {path}"
    for text in (proc.stdout, proc.stderr, check.stdout, check.stderr):
        assert not any(secret in text for secret in SECRETS)
    assert masked > 0  # the token was there to be scrubbed (the config, the failed webhook's log)
    # state at rest: the run dir and run folder 0700, every file 0600
    run = (tmp_path / "runs" / "latest").resolve()
    for folder in (tmp_path / "runs", run):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for path in files:
        assert stat.S_IMODE(path.lstat().st_mode) == 0o600 or path.is_symlink(), path


def _start(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "actors.main", "--source", "mock", "--duration", "0.05", "--run-dir", "runs", *SETS, *args],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def _kill_after_checkpoints(tmp_path: Path, env: dict[str, str]) -> Path:
    proc = _start(tmp_path, env)
    run = tmp_path / "runs" / "latest"
    deadline = time.monotonic() + 30
    while not ((run / checkpoint.PREVIOUS).exists() and (run / checkpoint.NEWEST).exists()):
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoints written"
        time.sleep(0.01)
    time.sleep(0.3)
    proc.send_signal(signal.SIGSTOP)
    for _ in range(100):  # not between the two renames of a checkpoint write
        if (run / checkpoint.NEWEST).exists():
            break
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.01)
        proc.send_signal(signal.SIGSTOP)
    proc.kill()
    proc.communicate()
    return run.resolve()


@pytest.mark.slow
def test_a_tampered_checkpoint_is_refused_loudly_never_resumed(tmp_path: Path) -> None:
    env = _env()
    run = _kill_after_checkpoints(tmp_path, env)
    newest = run / checkpoint.NEWEST
    original = newest.read_bytes()
    doc = json.loads(original)
    assert "hmac" in doc
    _forge(newest, {"seq": doc["state"]["seq"] - 1})  # checksum recomputed: only the HMAC tells
    state_files = lambda: {p.name: p.read_bytes() for p in run.iterdir() if p.name != "session.lock"}  # noqa: E731
    before = state_files()
    for env_case in (env, {k: v for k, v in env.items() if k != "LAPTOP_AGENTS_STATE_KEY"}):
        # --check-config refuses it as the start does (found by an audit: it said 0, the resume
        # being the unfinished latest's, not --resume's)
        for check in (["--check-config"], []):
            proc = _start(tmp_path, env_case, *check)
            _, err = proc.communicate(timeout=60)
            text = err.decode()
            assert proc.returncode == 2, text[-2000:]
            assert "refusing to resume" in text and "integrity" in text and "Traceback" not in text
            assert ("HMAC mismatch" if "LAPTOP_AGENTS_STATE_KEY" in env_case else "is not set") in text
            assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(["latest", run.name])
            assert state_files() == before  # untouched (the lock file aside: its pid)
    newest.write_bytes(original)  # the genuine checkpoint, with its key: resumed
    proc = _start(tmp_path, env)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in events].count("session.resumed") == 1


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "big"])
def test_a_state_key_file_that_is_not_a_small_regular_file_is_refused(tmp_path: Path, kind: str) -> None:
    """Found by an audit: `LAPTOP_AGENTS_STATE_KEY_FILE=/dev/zero` filled the memory (a
    MemoryError traceback), a FIFO hung the start."""
    if kind == "fifo":
        path = tmp_path / "key"
        os.mkfifo(path)
        what = "not a regular file (a FIFO, a device or a socket)"
    elif kind == "dev_zero":
        path, what = Path("/dev/zero"), "not a regular file (a FIFO, a device or a socket)"
    else:
        path = tmp_path / "key"
        path.write_text("k" * (1024 * 1024 + 1))
        what = "larger than 1024 KiB"
    runs = tmp_path / "runs"
    result = run_cli(
        "--source", "mock", "--duration", "0.05", "--run-dir", str(runs), cwd=tmp_path, timeout=30,
        LAPTOP_AGENTS_STATE_KEY_FILE=str(path),
    )  # fmt: skip
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line]
    assert (
        line == f"error: LAPTOP_AGENTS_STATE_KEY_FILE: {path} is {what}; expected the file holding the value"
    )
    assert not runs.exists()


def test_overlapping_secrets_are_masked_whole_whatever_the_hash_seed() -> None:
    """Found by the determinism audit: two secrets of one length where one's end is the other's
    start, written side by side as they overlap, were masked one after the other in the order of
    a set (PYTHONHASHSEED's), and the text kept 'f' of one or 'a' of the other, from run to run.
    The whole stretch the two cover is masked, in every process."""
    code = (
        "from actors.secrets import Scrubber\n"
        "s = Scrubber(['abcdefgh1', 'defgh1234'])\n"
        "print(s.scrub('key=abcdefgh1234 and again abcdefgh1, defgh1234.'))\n"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            cwd=REPO,
        ).stdout
        for seed in range(6)
    }
    assert outputs == {"key=*** and again ***, ***.\n"}
