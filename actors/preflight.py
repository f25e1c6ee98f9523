"""The key preflight: `python -m actors.main --preflight` (one httpx request, in a trio run of its own).

It reads the exchange's API key pair from the environment (`BITUNIX_API_KEY`, `BITUNIX_API_SECRET`,
or the `_FILE` forms naming files: see actors/secrets.py) and sends one signed
`GET {feed.rest_url}/api/v1/futures/account?marginCoin=USDT` (../shared/docs/bitunix-private-api.md
§1.3, §1.4, §2.9). It changes nothing on the exchange and never places an order.

It prints exactly one line and exits with:

- 0: the exchange accepts the key; stdout `preflight ok: <url> accepts the key; USDT available=...
  frozen=... margin=...`.
- 2: setup: the key pair is not set, its file cannot be read, or a value has whitespace or
  non-ASCII characters (a copy-and-paste slip), or `feed.rest_url` is http:// to another machine
  (the key would cross the network unencrypted: http:// only to a loopback address, the fake
  exchange's); stderr `preflight: <what is wrong>`.
- 3: the exchange refused the request; stderr `preflight failed: <url>: <reason>`:
  an empty api key (10003), this machine's IP not in the key's whitelist (10004), a rejected
  signature (10007, a wrong secret), a key without permission (403), any other code with the
  exchange's message, or a clock skew. The REST timestamp window is undocumented (§1.3, §9.8), so a
  skew is diagnosed from the HTTP `Date` header of the answer: a refusal while this machine's clock
  is more than `SKEW_TOLERANCE_S` away from it is reported as the clock's fault.
- 4: the exchange cannot be reached: a network error, no whole answer within `TIMEOUT_S` (5 s for
  the whole request: connect, send, the answer's headers and body), an answer larger than
  `MAX_ANSWER_BYTES`, an HTTP status other than 200, an
  answer that is not the exchange's JSON envelope, or a rate limit (codes 10005/10006, HTTP 429:
  the key was not checked; the line says when to try again); stderr `preflight failed: cannot reach
  <url>: ...`.

The URL printed is only scheme://host[:port] of `feed.rest_url`, and every printed line goes
through `actors.secrets.scrub` (and a scrubber of the environment's secrets): the key and the
secret are never echoed, not even when the exchange's message would quote them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import secrets as random_secrets
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit

import httpx
import trio

from actors import secrets
from protocols import bitunix

if TYPE_CHECKING:
    from actors.config import Config

EXIT_OK = 0
EXIT_SETUP = 2
EXIT_REFUSED = 3
EXIT_UNREACHABLE = 4

ACCOUNT_PATH = "/api/v1/futures/account"
MARGIN_COIN = "USDT"
TIMEOUT_S = 5.0  # the whole request, not each of its reads
MAX_ANSWER_BYTES = 1 << 20  # an account's answer is a few hundred bytes
# a refusal while the clocks differ by more than this is put down to the clock (the exchange's
# own window is undocumented; its Date header has whole seconds)
SKEW_TOLERANCE_S = 5.0

REASONS = {
    10003: "api key empty",
    10004: "this machine's IP is not in the key's whitelist",
    10007: "signature rejected (wrong secret?)",
    403: "the key lacks permission for this operation (enable futures reading/trading on the key)",
}
RATE_LIMIT_CODES = (10005, 10006)  # "Too many requests", "Request too frequently": exit 4, not a refusal
# the codes whose reason does not depend on the clock (a skew is then only mentioned)
_CLOCK_INDEPENDENT = (10003, 10004, 403)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_PRINTABLE = re.compile(r"[\x21-\x7e]*")  # what a key and a secret are made of (an HTTP header can carry it)


def _sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sign(
    api_key: str, secret: str, nonce: str, timestamp_ms: int | str, query: Mapping[str, str], body: str
) -> str:
    """The `sign` header of a private REST request (§1.4): the query's keys sorted ascending, each
    followed by its raw value (no `=` or `&`); digest = sha256_hex(nonce + timestamp + apiKey +
    queryParams + body); sign = sha256_hex(digest + secret), lowercase hex. `body` is the exact text
    sent ("" for a GET)."""
    params = "".join(k + query[k] for k in sorted(query))
    digest = _sha256_hex(f"{nonce}{timestamp_ms}{api_key}{params}{body}")
    return _sha256_hex(digest + secret)


def origin(url: str) -> str:
    """scheme://host[:port] of `url`: never a user:password@ part, a path or a query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def _encrypted_or_local(url: str) -> bool:
    """True for an https:// URL, or an http:// one to this machine (localhost, a loopback address).
    Found by an audit: an http:// rest_url had the key and a signed request sent in clear."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return True
    host = (parts.hostname or "").rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Out:
    """Writes the one line: scrubbed of every secret, on one line."""

    def __init__(self, env: Mapping[str, str], extra: list[str]) -> None:
        # the key pair masked whatever it looks like (digits only, as the official vector's)
        self.scrubber = secrets.Scrubber(secrets.secret_values(env), known=extra)

    def line(self, text: str, stream: TextIO) -> None:
        text = self.scrubber.scrub(secrets.scrub(text))
        print(_CONTROL.sub(" ", text).strip(), file=stream, flush=True)


def run_preflight(config: Config, env: Mapping[str, str]) -> int:
    """Check the key pair of `env` against `config.feed.rest_url`; one line printed, the exit code
    returned (see the module docstring)."""
    out = _Out(env, [])
    base = config.feed.rest_url
    where = origin(base)
    if not _encrypted_or_local(base):
        out.line(
            f"preflight: feed.rest_url {where} is not https://: the key would cross the network "
            "unencrypted; use https:// (http:// only to a loopback address, such as the fake "
            "exchange's 127.0.0.1)",
            sys.stderr,
        )
        return EXIT_SETUP
    try:
        creds = secrets.credentials(env)
    except secrets.SecretError as exc:
        out.line(f"preflight: {exc}", sys.stderr)
        return EXIT_SETUP
    out = _Out(env, [creds.api_key, creds.api_secret])
    for name, value in ((secrets.API_KEY, creds.api_key), (secrets.API_SECRET, creds.api_secret)):
        if not _PRINTABLE.fullmatch(value):
            out.line(
                f"preflight: {name}: has whitespace or characters other than printable ASCII, which "
                "an API key pair never has (a stray space or newline?)",
                sys.stderr,
            )
            return EXIT_SETUP
    query = {"marginCoin": MARGIN_COIN}
    nonce = random_secrets.token_hex(16)
    timestamp = str(int(time.time() * 1000))
    headers = {
        "api-key": creds.api_key,
        "nonce": nonce,
        "timestamp": timestamp,
        "sign": sign(creds.api_key, creds.api_secret, nonce, timestamp, query, ""),
        "Content-Type": "application/json",
        "language": "en-US",
    }
    sent = time.time()
    try:
        response = trio.run(_fetch, base.rstrip("/") + ACCOUNT_PATH, query, headers)
    except httpx.TimeoutException:
        response = None
    except (httpx.HTTPError, httpx.InvalidURL, _TooLarge) as exc:
        reason = str(exc) or type(exc).__name__
        out.line(f"preflight failed: cannot reach {where}: {reason}", sys.stderr)
        return EXIT_UNREACHABLE
    if response is None:
        out.line(
            f"preflight failed: cannot reach {where}: no whole answer within {TIMEOUT_S:g} s", sys.stderr
        )
        return EXIT_UNREACHABLE
    received = time.time()
    limited = _rate_limited(response)
    if limited is not None:
        out.line(f"preflight failed: cannot reach {where}: {limited}", sys.stderr)
        return EXIT_UNREACHABLE
    if response.status_code != 200:
        phrase = response.reason_phrase or httpx.codes.get_reason_phrase(response.status_code)
        phrase = f" {phrase}" if phrase else ""
        out.line(f"preflight failed: cannot reach {where}: HTTP {response.status_code}{phrase}", sys.stderr)
        return EXIT_UNREACHABLE
    envelope = _envelope(response)
    if envelope is None:
        out.line(
            f"preflight failed: cannot reach {where}: the answer is not the exchange's JSON envelope "
            f"(content-type {response.headers.get('content-type', 'none')})",
            sys.stderr,
        )
        return EXIT_UNREACHABLE
    code, msg, data = envelope
    if code == 0:
        out.line(f"preflight ok: {where} accepts the key; {_balance(data)}", sys.stdout)
        return EXIT_OK
    skew = _skew(response.headers.get("date"), (sent + received) / 2)
    out.line(f"preflight failed: {where}: {_reason(code, msg, skew)}", sys.stderr)
    return EXIT_REFUSED


class _TooLarge(Exception):
    """An answer longer than MAX_ANSWER_BYTES (its reading stopped there)."""


async def _fetch(url: str, query: Mapping[str, str], headers: Mapping[str, str]) -> httpx.Response | None:
    """The answer to one GET, read whole (at most MAX_ANSWER_BYTES of body) within TIMEOUT_S in
    total; None when the time ran out. Found by an audit: httpx's timeout bounds each connect, read
    and write, and a server answering a byte at a time held the preflight for as long as it lasted
    (the webhook's fix: the whole try under one deadline)."""
    with trio.move_on_after(TIMEOUT_S):
        async with (
            httpx.AsyncClient(timeout=TIMEOUT_S) as http,
            http.stream("GET", url, params=query, headers=headers) as response,
        ):
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_ANSWER_BYTES:
                    raise _TooLarge(f"the answer is larger than {MAX_ANSWER_BYTES // (1 << 20)} MiB")
            # the answer as read (decoded already: its headers without the encoding)
            kept = [(k, v) for k, v in response.headers.multi_items() if k not in _BODY_HEADERS]
            phrase = {"reason_phrase": response.extensions.get("reason_phrase", b"")}
            return httpx.Response(response.status_code, headers=kept, content=bytes(body), extensions=phrase)
    return None


_BODY_HEADERS = ("content-encoding", "content-length", "transfer-encoding")


def _rate_limited(response: httpx.Response) -> str | None:
    """Why the answer is a rate limit (the exchange's codes 10005/10006, in any HTTP status, or an
    HTTP 429), with when to try again; None for any other answer. Found by an audit: the
    exchange's own form (code 10005 in an HTTP 200) was exit 3, a key to fix, though the key was
    not looked at; its HTTP 429 form was exit 4."""
    envelope = _envelope(response)
    code = envelope[0] if envelope is not None else None
    if code not in RATE_LIMIT_CODES and response.status_code != 429:
        return None
    told = [f"HTTP {response.status_code}"] if response.status_code != 200 else []
    if envelope is not None and code is not None:
        told.append(f"code {code}: {envelope[1]}" if envelope[1] else f"code {code}")
    wait = bitunix.retry_after_s(
        response.headers.get("retry-after"), bitunix.http_date_s(response.headers.get("date")), time.time()
    )
    when = "in a few seconds" if wait is None else f"in {wait:g} s"
    return f"rate limited ({', '.join(told)}): the key was not checked; try again {when}"


def _envelope(response: httpx.Response) -> tuple[int, str, Any] | None:
    """(code, msg, data) of a `{"code", "msg", "data"}` answer; None for anything else."""
    try:
        body = response.json()
    except (ValueError, RecursionError):  # RecursionError: nested by the thousand (an audit)
        return None
    if not isinstance(body, dict) or "code" not in body:
        return None
    code = body["code"]
    if isinstance(code, str) and code.strip().lstrip("-").isdigit():
        code = int(code)
    if not isinstance(code, int) or isinstance(code, bool):
        return None
    msg = body.get("msg")
    return code, msg if isinstance(msg, str) else "", body.get("data")


def _balance(data: Any) -> str:
    """`USDT available=.. frozen=.. margin=..` of the account data: an object or a list of them."""
    rows = data if isinstance(data, list) else [data]
    for row in rows:
        if isinstance(row, dict) and row.get("marginCoin") == MARGIN_COIN:
            fields = " ".join(f"{name}={_field(row.get(name))}" for name in ("available", "frozen", "margin"))
            return f"{MARGIN_COIN} {fields}"
    return f"no {MARGIN_COIN} account in its answer"


def _field(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return "?"
    text = str(value)
    return text if len(text) <= 40 else "?"


def _skew(date: str | None, local: float) -> float | None:
    """This machine's clock minus the exchange's (s), from the answer's `Date` header (whole
    seconds: its middle is taken); None without a readable header."""
    server = bitunix.http_date_s(date)
    return None if server is None else local - (server + 0.5)


def _clock(skew: float) -> str:
    side = "ahead of" if skew > 0 else "behind"
    return f"this machine's clock is {abs(skew):.0f} s {side} the exchange's (sync it, e.g. NTP)"


def _reason(code: int, msg: str, skew: float | None) -> str:
    """The one-line reason of a refusal with `code` and the exchange's `msg`."""
    told = f"code {code}: {msg}" if msg else f"code {code}"
    skewed = skew is not None and abs(skew) > SKEW_TOLERANCE_S
    if code in _CLOCK_INDEPENDENT:
        also = f"; also {_clock(skew)}" if skewed and skew is not None else ""
        return f"{REASONS[code]} ({told}){also}"
    if skewed and skew is not None:
        return f"clock skew: {_clock(skew)} ({told})"
    if code == 10007:
        checked = "" if skew is not None else "; the clocks could not be compared (no Date header)"
        return f"{REASONS[code]} ({told}){checked}"
    return f"exchange refused: {told}"
