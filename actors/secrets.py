"""Secrets: read from the environment only, never written anywhere (no trio).

- The exchange's API key and secret: `BITUNIX_API_KEY` and `BITUNIX_API_SECRET`, each also as a
  file (`BITUNIX_API_KEY_FILE`, `BITUNIX_API_SECRET_FILE`: container secrets). Only the key
  preflight (`--preflight`) reads them; paper sessions and backtests never do.
- The state key: `LAPTOP_AGENTS_STATE_KEY` (or `LAPTOP_AGENTS_STATE_KEY_FILE`): checkpoints carry an
  HMAC-SHA256 made with it, and a checkpoint that does not verify is refused.
- A variable's name marks it as secret when it contains KEY, SECRET, TOKEN, PASSWORD, PASSWD,
  PASSPHRASE, CREDENTIAL or AUTH (case-insensitive). Their values (at least `MIN_SCRUBBED`
  characters long, and not made of a number's characters only) are replaced by `***` in
  everything the program writes: logs, events, metrics,
  reports, checkpoints, `--check-config` and error messages (`install` once at start, then
  `scrub`). An error about such a variable names it and never echoes its value.
- A config key whose name marks it as secret (e.g. `feed.api_key`, `exchange.secret`) is refused:
  secrets do not belong in TOML files, `--set` or `LAPTOP_AGENTS__` variables.
- `child_env` is the environment for a child process: without any secret-named variable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote, urlsplit

import attrs

from actors.files import NotReadable, read_small_file

API_KEY = "BITUNIX_API_KEY"
API_SECRET = "BITUNIX_API_SECRET"
STATE_KEY = "LAPTOP_AGENTS_STATE_KEY"
FILE_SUFFIX = "_FILE"
# a state key shorter than this is refused (an HMAC key should not be guessable)
MIN_STATE_KEY = 16
# shorter values of secret-named variables are not scrubbed: replacing "1" or "true" everywhere
# would mangle every number in the run folder, and such values are no secret
MIN_SCRUBBED = 6
MASK = "***"
# a value made of a number's characters only is not scrubbed either: masked inside the records'
# numbers (an equity of 1234567 and a value 234567) it made lines that are no JSON, and the session
# crashed (found by an audit); a number is no secret (a TTL, a port, a PIN at most)
_NUMBER = re.compile(r"[0-9.eE+-]*[0-9][0-9.eE+-]*")

_SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|AUTH", re.IGNORECASE)
# config keys that would carry a secret (no config key of the schema has such a name)
_CONFIG_KEY_SECRET = re.compile(
    r"^key$|api_?key|private_?key|access_?key|state_?key|secret|token|password|passwd|passphrase|credential"
)
# the config's own variables: LAPTOP_AGENTS__SECTION__KEY (a secret-named key among them is refused)
_CONFIG_ENV_PREFIX = "LAPTOP_AGENTS__"


class SecretError(Exception):
    """A secret cannot be read; the message names the variable, never its value."""


def is_secret_name(name: str) -> bool:
    """True for an environment variable whose name marks it as secret."""
    return bool(_SECRET_NAME.search(name))


def is_secret_config_key(name: str) -> bool:
    """True for a config key (the part after `section.`) that would carry a secret."""
    return bool(_CONFIG_KEY_SECRET.search(name.lower()))


def read(env: Mapping[str, str], name: str) -> str | None:
    """The value of `name`, or the contents of the file named by `name_FILE` (one trailing newline
    removed); None when neither is set. SecretError when both are set or the file is unreadable."""
    file_var = name + FILE_SUFFIX
    if name in env and file_var in env:
        raise SecretError(f"{name} and {file_var} are both set; set one of them")
    if file_var in env:
        try:  # a regular file of at most 1 MiB: a FIFO hung, /dev/zero filled the memory
            text = read_small_file(env[file_var]).decode("utf-8")
        except NotReadable as exc:
            raise SecretError(
                f"{file_var}: {env[file_var]} is {exc}; expected the file holding the value"
            ) from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise SecretError(f"{file_var}: cannot read the file it names ({reason})") from None
        return text[:-1] if text.endswith("\n") else text
    return env.get(name)


@attrs.frozen
class Credentials:
    """The exchange's API key pair (repr never shows them)."""

    api_key: str = attrs.field(repr=False)
    api_secret: str = attrs.field(repr=False)


def credentials(env: Mapping[str, str]) -> Credentials:
    """The API key pair from the environment; SecretError names what is missing. An empty key is
    returned as it is (the exchange's answer to it is the preflight's to report)."""
    key = read(env, API_KEY)
    secret = read(env, API_SECRET)
    missing = [name for name, value in ((API_KEY, key), (API_SECRET, secret)) if value is None]
    if missing:
        raise SecretError(
            f"{' and '.join(missing)} not set: export the exchange's API key pair "
            f"({API_KEY}, {API_SECRET}; or {API_KEY}{FILE_SUFFIX}, {API_SECRET}{FILE_SUFFIX} naming files)"
        )
    assert key is not None and secret is not None
    return Credentials(key, secret)


def state_key(env: Mapping[str, str]) -> bytes | None:
    """The checkpoint HMAC key, or None when `LAPTOP_AGENTS_STATE_KEY` is not set."""
    value = read(env, STATE_KEY)
    if value is None:
        return None
    if len(value) < MIN_STATE_KEY:
        raise SecretError(f"{STATE_KEY}: too short; expected at least {MIN_STATE_KEY} characters")
    return value.encode("utf-8")


def secret_values(env: Mapping[str, str]) -> list[str]:
    """Every value to scrub: of secret-named variables and of the files the known `_FILE` ones name."""
    values: set[str] = set()
    for name, value in env.items():
        if name.startswith(_CONFIG_ENV_PREFIX):
            continue  # config keys: a secret-named one is refused by the config, never used
        if name.endswith(FILE_SUFFIX) and name[: -len(FILE_SUFFIX)] in (API_KEY, API_SECRET, STATE_KEY):
            try:
                value = read(env, name[: -len(FILE_SUFFIX)]) or ""
            except SecretError:
                continue
        elif not is_secret_name(name):
            continue
        # as given, and without the whitespace around it (a value from an env file with a stray
        # `\r`, used without it in a URL)
        for form in (value, value.strip()):
            if len(form) >= MIN_SCRUBBED:
                values.add(form)
    return sorted(values, key=len, reverse=True)  # longest first: a secret containing another


def url_secrets(webhook_url: str, other_urls: Iterable[str] = ()) -> list[str]:
    """The parts of the configured URLs that are credentials by their nature, to scrub wherever
    they would be written: the webhook URL's path and query (a chat service's hook URL is its
    token: `https://hooks.example.com/services/T0/B0/XXXX`), and any URL's query (`?token=...`).
    The host stays readable."""
    values: list[str] = []
    if webhook_url:
        parts = urlsplit(webhook_url)
        values.append(parts.path + (f"?{parts.query}" if parts.query else ""))
        values.append(parts.query)
    values += [urlsplit(url).query for url in other_urls if url]
    return [v for v in values if len(v) >= MIN_SCRUBBED]


def _forms(values: Iterable[str]) -> set[str]:
    """Each value as it is, JSON-escaped (as json writes it, non-ASCII as `\\u00e4`; and as orjson
    does, keeping it: found by an audit, `pä"ss1234` was written in clear) and URL-quoted."""
    return {
        form
        for v in values
        for form in (v, json.dumps(v)[1:-1], json.dumps(v, ensure_ascii=False)[1:-1], quote(v, safe=""))
    }


class Scrubber:
    """Replaces each secret (and its JSON-escaped and URL-quoted forms) by `***`: of `values`
    those of at least MIN_SCRUBBED characters that are not a number; of `known` (secrets for sure:
    the preflight's key pair) every one that is not empty."""

    def __init__(self, values: list[str], known: Iterable[str] = ()) -> None:
        kept = {f for f in _forms(values) if len(f) >= MIN_SCRUBBED and not _NUMBER.fullmatch(f)}
        kept |= {f for f in _forms(known) if f}
        self.forms = sorted(kept, key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self.forms)

    def scrub(self, text: str) -> str:
        """Each stretch of `text` that some form covers becomes one `***`: where two secrets
        overlap (the end of one the start of another), both are masked whole, whichever was
        found first (found by the determinism audit: replaced one form after the other, longest
        first and those of a length in the order of a set, which PYTHONHASHSEED sets, the text
        kept the end of one secret or the start of the other, from run to run)."""
        spans: list[tuple[int, int]] = []
        for form in self.forms:
            at = text.find(form)
            while at != -1:
                spans.append((at, at + len(form)))
                at = text.find(form, at + 1)
        if not spans:
            return text
        spans.sort()
        parts: list[str] = []
        done = 0  # text[:done] is in parts
        start, end = spans[0]
        for a, b in spans[1:]:
            if a < end:  # overlapping: one stretch
                end = max(end, b)
                continue
            parts += (text[done:start], MASK)
            done, (start, end) = end, (a, b)
        parts += (text[done:start], MASK, text[end:])
        return "".join(parts)


_scrubber = Scrubber([])


def install(env: Mapping[str, str], extra: Iterable[str] = ()) -> Scrubber:
    """Make `scrub` replace the secrets of `env`, and the `extra` values (`url_secrets`: called
    again with them once the config is read)."""
    global _scrubber
    _scrubber = Scrubber(sorted({*secret_values(env), *extra}, key=len, reverse=True))
    return _scrubber


def active() -> bool:
    """True when some secret is to be scrubbed (writers skip the work otherwise)."""
    return bool(_scrubber)


def scrub(text: str) -> str:
    """`text` without any installed secret."""
    return _scrubber.scrub(text) if _scrubber else text


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` for a child process: every secret-named variable (and the `_FILE` forms) left out."""
    return {name: value for name, value in env.items() if not is_secret_name(name)}
