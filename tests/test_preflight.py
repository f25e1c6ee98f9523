"""The key preflight (`python -m actors.main --preflight`, actors/preflight.py) and the fake
exchange's signed account endpoint: the signature's known-answer vectors, then the CLI against the
fake on 127.0.0.1 for each answer it can get (one line, the exit code, no secret echoed)."""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import trio

from actors.preflight import _envelope, _reason, origin, run_preflight, sign
from tests.conftest import make_config
from tests.test_fake_bitunix import serving
from tools.fake_bitunix import FakeBitunix, Faults

REPO = Path(__file__).resolve().parents[1]
ACCOUNT = "/api/v1/futures/account"
KEY = "pf-key-4d1c9a7e03b2"
SECRET = "pf-secret-8b5e2f6a91c7"


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def expected_sign(key: str, secret: str, nonce: str, ts: str, query: str, body: str) -> str:
    """§1.4 written out in the test, apart from the code under test; `query` already concatenated."""
    return sha256_hex(sha256_hex(nonce + ts + key + query + body) + secret)


# --- the signature: known answers -------------------------------------------------------------------


def test_official_known_answer_vector() -> None:
    args = ("11111111111111111", "22222222222222222", "33333333333333333")
    got = sign(*args, 1747104711262, {"marginCoin": "USDT"}, "")
    assert got == "40e87256554e263e39201a3979469b7fbb640d1c7c41759abf5c6a18f937f922"
    digest = sha256_hex("33333333333333333" + "1747104711262" + "11111111111111111" + "marginCoinUSDT")
    assert digest == "ea0f6d6bc37d102c41ccbd820f4cfbb10663f3675a75aea80a353e0e317fcdcc"
    assert got == sha256_hex(digest + "22222222222222222")


def test_doc_example_vector_sorts_the_query_keys() -> None:
    body = '{"uid":"2899","arr":[{"id":1,"name":"maple"},{"id":2,"name":"lily"}]}'
    want = "00397cd1e52c7dce3258067324363b6361fabc9178a0912b330c138db8745655"
    assert (
        sign("yourApiKey", "yourSecretKey", "123456", "20241120123045", {"uid": "200", "id": "1"}, body)
        == want
    )
    assert expected_sign("yourApiKey", "yourSecretKey", "123456", "20241120123045", "id1uid200", body) == want


def test_post_vector_signs_the_body_and_no_query() -> None:
    body = (
        '{"symbol":"BTCUSDT","side":"BUY","orderType":"LIMIT","qty":"0.5","price":"60000",'
        '"effect":"GTC","clientId":"c1"}'
    )
    want = "71ea8cb9bfe5aee31d806129e298be951474b562f56c4c9bee064b5d3e172876"
    args = ("11111111111111111", "22222222222222222", "33333333333333333")
    assert sign(*args, "1747104711262", {}, body) == want
    assert expected_sign(*args, "1747104711262", "", body) == want


# values that need escaping in a URL, signed raw (§1.4: the demos sign the raw values; the fake
# checks the percent-decoded ones), an empty one, and keys whose ASCII order is not their
# alphabetical one (uppercase first)
SPECIAL_QUERY = {"marginCoin": "USDT", "b": "a+b&c=d e%2F/\u00e9", "B": "", "a": '"{}[]:,'}


def test_query_values_with_special_characters_are_signed_raw_and_sorted_by_ascii() -> None:
    concatenated = "B" + "" + "a" + '"{}[]:,' + "b" + "a+b&c=d e%2F/\u00e9" + "marginCoin" + "USDT"
    args = ("11111111111111111", "22222222222222222", "33333333333333333", "1747104711262")
    assert sign(*args, SPECIAL_QUERY, "") == expected_sign(*args, concatenated, "")
    assert sign(*args, {}, "") == expected_sign(*args, "", "")  # nothing at all: still signed


@pytest.mark.slow
async def test_the_fake_accepts_the_preflights_signature_of_special_query_values() -> None:
    with trio.fail_after(5):
        async with serving(fake()) as f, httpx.AsyncClient(base_url=f.rest_url) as http:
            nonce, ts = "n" * 32, str(int(time.time() * 1000))
            headers = {"api-key": KEY, "nonce": nonce, "timestamp": ts}
            headers["sign"] = sign(KEY, SECRET, nonce, ts, SPECIAL_QUERY, "")
            response = await http.get(ACCOUNT, params=SPECIAL_QUERY, headers=headers)
            assert response.json()["code"] == 0
            headers["sign"] = sign(KEY, SECRET, nonce, ts, {**SPECIAL_QUERY, "b": "a+b"}, "")
            response = await http.get(ACCOUNT, params=SPECIAL_QUERY, headers=headers)
            assert response.json()["code"] == 10007


def test_printed_url_is_scheme_host_port_only() -> None:
    assert origin("https://fapi.bitunix.com") == "https://fapi.bitunix.com"
    assert origin("http://u:pw@127.0.0.1:8080/prefix/?q=1") == "http://127.0.0.1:8080"
    assert origin("http://[::1]:9000/x") == "http://[::1]:9000"


def test_an_answer_nested_too_deeply_is_not_the_envelope() -> None:
    """Found by an audit: json's RecursionError on an answer of arrays nested by the thousand (a
    proxy's or a broken server's) escaped as a traceback; it is 'not the exchange's JSON envelope'
    (exit 4) as any other answer that is not."""
    nested = b'{"code":0,"data":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert _envelope(httpx.Response(200, content=nested)) is None


@pytest.mark.parametrize(
    ("code", "skew", "want"),
    [
        (10007, 0.4, "signature rejected (wrong secret?) (code 10007: m)"),
        (
            10007,
            -7.0,
            "clock skew: this machine's clock is 7 s behind the exchange's (sync it, e.g. NTP) (code 10007: m)",
        ),
        (
            10007,
            None,
            "signature rejected (wrong secret?) (code 10007: m); the clocks could not be compared (no Date header)",
        ),
        (20011, 0.0, "exchange refused: code 20011: m"),
        (
            20011,
            9.0,
            "clock skew: this machine's clock is 9 s ahead of the exchange's (sync it, e.g. NTP) (code 20011: m)",
        ),
        (
            403,
            0.0,
            "the key lacks permission for this operation (enable futures reading/trading on the key) (code 403: m)",
        ),
        (
            10004,
            60.0,
            "this machine's IP is not in the key's whitelist (code 10004: m); also this machine's clock is 60 s ahead of the exchange's (sync it, e.g. NTP)",
        ),
    ],
)
def test_refusal_reasons(code: int, skew: float | None, want: str) -> None:
    assert _reason(code, "m", skew) == want


# --- the fake exchange's private endpoint ------------------------------------------------------------


def fake(**kw: Any) -> FakeBitunix:
    kw.setdefault("api_keys", {KEY: SECRET})
    return FakeBitunix(seed=1, history_candles=5, **kw)


def signed_headers(query: str, body: str, *, ts: str | None = None, nonce: str = "n" * 32) -> dict[str, str]:
    ts = str(int(time.time() * 1000)) if ts is None else ts
    return {
        "api-key": KEY,
        "nonce": nonce,
        "timestamp": ts,
        "sign": expected_sign(KEY, SECRET, nonce, ts, query, body),
        "Content-Type": "application/json",
    }


async def get_account(
    http: httpx.AsyncClient, params: Mapping[str, str], headers: Mapping[str, str], body: str = ""
) -> Any:
    url = ACCOUNT + ("?" + urlencode(params) if params else "")
    response = await http.request("GET", url, headers=dict(headers), content=body.encode())
    assert response.status_code == 200
    return response.json()


@pytest.mark.slow
async def test_fake_refuses_a_request_altered_after_signing() -> None:
    with trio.fail_after(5):
        async with serving(fake()) as f, httpx.AsyncClient(base_url=f.rest_url) as http:
            good = signed_headers("marginCoinUSDT", "")
            answer = await get_account(http, {"marginCoin": "USDT"}, good)
            assert answer["code"] == 0 and answer["data"]["marginCoin"] == "USDT"
            # a parameter added after signing
            answer = await get_account(http, {"marginCoin": "USDT", "x": "1"}, good)
            assert (answer["code"], answer["msg"]) == (10007, "Sign signature error")
            # a value changed after signing
            answer = await get_account(http, {"marginCoin": "BTC"}, good)
            assert answer["code"] == 10007
            # the body changed after signing (the raw bytes are signed, spaces included)
            headers = signed_headers("marginCoinUSDT", '{"a":1}')
            assert (await get_account(http, {"marginCoin": "USDT"}, headers, '{"a":1}'))["code"] == 0
            assert (await get_account(http, {"marginCoin": "USDT"}, headers, '{"a":2}'))["code"] == 10007
            assert (await get_account(http, {"marginCoin": "USDT"}, headers, '{"a": 1}'))["code"] == 10007
            # query values are signed decoded: a value that needs escaping
            headers = signed_headers("marginCoinUSDT" + "zza&b=c d", "")
            answer = await get_account(http, {"marginCoin": "USDT", "zz": "a&b=c d"}, headers)
            assert answer["code"] == 0


@pytest.mark.slow
async def test_fake_auth_checks_and_codes() -> None:
    with trio.fail_after(5):
        async with serving(fake()) as f, httpx.AsyncClient(base_url=f.rest_url) as http:
            no_key = {**signed_headers("marginCoinUSDT", ""), "api-key": ""}
            assert (await get_account(http, {"marginCoin": "USDT"}, no_key))["code"] == 10003
            headers = signed_headers("marginCoinUSDT", "")
            del headers["api-key"]
            assert (await get_account(http, {"marginCoin": "USDT"}, headers))["code"] == 10003
            unknown = {**signed_headers("marginCoinUSDT", ""), "api-key": "someone-else-key"}
            assert (await get_account(http, {"marginCoin": "USDT"}, unknown))["code"] == 10007
            bad_ts = signed_headers("marginCoinUSDT", "", ts="soon")
            assert (await get_account(http, {"marginCoin": "USDT"}, bad_ts))["code"] == 10007
            old = signed_headers("marginCoinUSDT", "", ts=str(int(time.time() * 1000) - 60_000))
            assert (await get_account(http, {"marginCoin": "USDT"}, old))["code"] == 10007
            # signed, but without the required marginCoin
            answer = await get_account(http, {}, signed_headers("", ""))
            assert (answer["code"], answer["msg"], answer["data"]) == (10002, "Parameter Error", None)


@pytest.mark.slow
async def test_fake_account_fields_and_list_form() -> None:
    with trio.fail_after(5):
        async with serving(fake(account_as_list=True)) as f, httpx.AsyncClient(base_url=f.rest_url) as http:
            answer = await get_account(http, {"marginCoin": "USDT"}, signed_headers("marginCoinUSDT", ""))
    assert answer["code"] == 0 and answer["msg"] == "Success"
    (row,) = answer["data"]
    assert set(row) == {
        "marginCoin",
        "available",
        "frozen",
        "margin",
        "transfer",
        "positionMode",
        "crossUnrealizedPNL",
        "isolationUnrealizedPNL",
        "bonus",
    }
    assert all(isinstance(v, str) for v in row.values())


@pytest.mark.slow
async def test_fake_date_header_is_one_and_of_its_offset_clock() -> None:
    with trio.fail_after(5):
        async with serving(fake(clock_offset_s=-300)) as f, httpx.AsyncClient(base_url=f.rest_url) as http:
            for path in ("/api/v1/futures/market/tickers", ACCOUNT, "/nowhere"):
                response = await http.get(path)
                dates = response.headers.get_list("date")
                assert len(dates) == 1, (path, dates)
                seen = email.utils.parsedate_to_datetime(dates[0]).timestamp()
                assert abs(seen - (time.time() - 300)) < 3, path
            public = await http.get("/api/v1/futures/market/kline", params={"symbol": "BTCUSDT"})
            assert public.json()["code"] == 0  # the public endpoints need no key


# --- the CLI against the fake ----------------------------------------------------------------------


def preflight_env(**extra: str) -> dict[str, str]:
    drop = ("BITUNIX_", "LAPTOP_AGENTS_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop) and not k.lower().endswith("_proxy")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


async def run_preflight_cli(rest_url: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "actors.main", "--preflight", "--set", f"feed.rest_url={rest_url}"]
    run = partial(
        subprocess.run, cmd, cwd=cwd, env=preflight_env(**env), capture_output=True, text=True, timeout=30
    )
    return await trio.to_thread.run_sync(run)


def one_line(done: subprocess.CompletedProcess[str], code: int, *secrets: str) -> str:
    """The only line printed (on stdout for exit 0, else on stderr), checked for what must not be."""
    lines = (done.stdout + done.stderr).splitlines()
    assert len(lines) == 1, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert done.returncode == code, lines[0]
    assert (done.stdout if code == 0 else done.stderr).strip() == lines[0]
    for value in (KEY, SECRET, *secrets):
        if value:
            assert value not in done.stdout and value not in done.stderr
    return lines[0]


@pytest.mark.slow
async def test_good_key(tmp_path: Path) -> None:
    async with serving(fake()) as f:
        done = await run_preflight_cli(f.rest_url, tmp_path, BITUNIX_API_KEY=KEY, BITUNIX_API_SECRET=SECRET)
    line = one_line(done, 0)
    assert line == f"preflight ok: {f.rest_url} accepts the key; USDT available=1000 frozen=0 margin=10"
    assert list(await trio.Path(tmp_path).iterdir()) == []  # no run folder, no log


@pytest.mark.slow
async def test_good_key_account_as_list(tmp_path: Path) -> None:
    account = {"available": "1234.5", "frozen": "6.7", "margin": "89"}
    async with serving(fake(account_as_list=True, account=account)) as f:
        done = await run_preflight_cli(f.rest_url, tmp_path, BITUNIX_API_KEY=KEY, BITUNIX_API_SECRET=SECRET)
    assert one_line(done, 0).endswith("accepts the key; USDT available=1234.5 frozen=6.7 margin=89")


@pytest.mark.slow
async def test_secret_file_form(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    async with serving(fake()) as f:
        done = await run_preflight_cli(
            f.rest_url, tmp_path, BITUNIX_API_KEY=KEY, BITUNIX_API_SECRET_FILE=str(secret_file)
        )
    assert one_line(done, 0).startswith("preflight ok:")


@pytest.mark.slow
async def test_empty_key(tmp_path: Path) -> None:
    async with serving(fake()) as f:
        done = await run_preflight_cli(f.rest_url, tmp_path, BITUNIX_API_KEY="", BITUNIX_API_SECRET=SECRET)
    line = one_line(done, 3)
    assert line.startswith(f"preflight failed: {f.rest_url}: api key empty")
    assert "10003" in line


@pytest.mark.slow
async def test_wrong_secret(tmp_path: Path) -> None:
    wrong = "pf-not-the-secret-5531"
    async with serving(fake()) as f:
        done = await run_preflight_cli(f.rest_url, tmp_path, BITUNIX_API_KEY=KEY, BITUNIX_API_SECRET=wrong)
    line = one_line(done, 3, wrong)
    assert line.startswith("preflight failed:")
    assert "signature rejected (wrong secret?)" in line and "10007" in line and "clock" not in line


@pytest.mark.slow
async def test_skewed_clock(tmp_path: Path) -> None:
    async with serving(fake(clock_offset_s=120)) as f:
        done = await run_preflight_cli(f.rest_url, tmp_path, BITUNIX_API_KEY=KEY, BITUNIX_API_SECRET=SECRET)
    line = one_line(done, 3)
    assert line.startswith(f"preflight failed: {f.rest_url}: clock skew: this machine's clock is ")
    assert "s behind the exchange's (sync it, e.g. NTP)" in line
    seconds = int(line.split("clock is ")[1].split(" s ")[0])
    assert 118 <= seconds <= 122


@pytest.mark.slow
async def test_ip_not_whitelisted(tmp_path: Path) -> None:
    async with serving(fake(api_ip_whitelist={KEY: ("203.0.113.7",)})) as f:
        done = await run_preflight_cli(f.rest_url, tmp_path, BITUNIX_API_KEY=KEY, BITUNIX_API_SECRET=SECRET)
    line = one_line(done, 3)
    assert "this machine's IP is not in the key's whitelist" in line and "10004" in line


@pytest.mark.slow
async def test_whitelisted_ip_passes(tmp_path: Path) -> None:
    async with serving(fake(api_ip_whitelist={KEY: ("127.0.0.1",)})) as f:
        done = await run_preflight_cli(f.rest_url, tmp_path, BITUNIX_API_KEY=KEY, BITUNIX_API_SECRET=SECRET)
    one_line(done, 0)


@pytest.mark.slow
async def test_a_key_without_the_permission_is_told_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 403 "This API key does not support this operation" (bitunix-private-api.md §1.4, §6): a key
    # the exchange knows, signed right, without the futures permission; the fake could not say it
    async with serving(fake(api_key_forbidden=(KEY,))) as f:
        config = make_config(tmp_path, f"feed.rest_url={f.rest_url}")
        env = {"BITUNIX_API_KEY": KEY, "BITUNIX_API_SECRET": SECRET}
        code = await trio.to_thread.run_sync(run_preflight, config, env)
    out = capsys.readouterr()
    assert (code, out.out) == (3, "")
    assert out.err.strip() == (
        f"preflight failed: {f.rest_url}: the key lacks permission for this operation (enable futures "
        "reading/trading on the key) (code 403: This API key does not support this operation)"
    )


@pytest.mark.slow
async def test_keys_missing(tmp_path: Path) -> None:
    done = await run_preflight_cli("http://127.0.0.1:9", tmp_path, BITUNIX_API_SECRET=SECRET)
    line = one_line(done, 2)
    assert line.startswith("preflight: BITUNIX_API_KEY not set")


@pytest.mark.slow
async def test_key_with_a_stray_space(tmp_path: Path) -> None:
    done = await run_preflight_cli(
        "http://127.0.0.1:9", tmp_path, BITUNIX_API_KEY=KEY + " ", BITUNIX_API_SECRET=SECRET
    )
    assert one_line(done, 2).startswith("preflight: BITUNIX_API_KEY: has whitespace")


@pytest.mark.slow
async def test_http_error_is_cannot_reach(tmp_path: Path) -> None:
    async with serving(fake(faults=Faults(rest_error_fraction=1.0))) as f:  # first: an HTTP 500
        done = await run_preflight_cli(f.rest_url, tmp_path, BITUNIX_API_KEY=KEY, BITUNIX_API_SECRET=SECRET)
    assert one_line(done, 4) == f"preflight failed: cannot reach {f.rest_url}: HTTP 500 Internal Server Error"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("status", "retry_after", "told", "when"),
    [
        (200, "", "code 10005: Too many requests, please try again later", "in a few seconds"),
        (429, "7", "HTTP 429, code 10005: Too many requests, please try again later", "in 7 s"),
    ],
)
async def test_a_rate_limit_is_not_a_refused_key(
    tmp_path: Path, status: int, retry_after: str, told: str, when: str
) -> None:
    """Found by a start-up audit: the exchange's rate-limit reply (code 10005 in an HTTP 200) was
    exit 3, `exchange refused: code 10005: ...`, the exit of a key to fix, though the key was not
    looked at; the same limit as an HTTP 429 was exit 4. Both are now exit 4 (try again later),
    saying the key was not checked and when to try again (a Retry-After's seconds when given)."""
    limited = Faults(rest_rate_limited_first=1, rest_rate_limit_status=status, rest_retry_after=retry_after)
    async with serving(fake(faults=limited)) as f:
        done = await run_preflight_cli(f.rest_url, tmp_path, BITUNIX_API_KEY=KEY, BITUNIX_API_SECRET=SECRET)
    assert one_line(done, 4) == (
        f"preflight failed: cannot reach {f.rest_url}: rate limited ({told}): the key was not checked; "
        f"try again {when}"
    )


@pytest.mark.slow
async def test_unreachable_port(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nobody listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = await run_preflight_cli(
        f"http://127.0.0.1:{port}", tmp_path, BITUNIX_API_KEY=KEY, BITUNIX_API_SECRET=SECRET
    )
    assert one_line(done, 4).startswith(f"preflight failed: cannot reach http://127.0.0.1:{port}: ")


@pytest.mark.parametrize(
    "flags",
    [
        ["--mode", "backtest", "--data", "d.csv"],
        ["--replay", "runs/latest"],
        ["--fresh"],
        ["--duration", "5"],
        ["--from", "2024-01-01"],
        ["--runtime", "kernel"],  # the default, given (found by an audit: it passed)
    ],
)
def test_a_session_flag_with_preflight_is_refused(tmp_path: Path, flags: list[str]) -> None:
    """Found by an audit: they were taken and ignored (a --replay's recording chose the URL the
    preflight checked); with --preflight only the config (--config, --set, the environment) applies."""
    from tests.conftest import run_main

    result = run_main("--preflight", *flags, cwd=tmp_path, BITUNIX_API_KEY="k", BITUNIX_API_SECRET="s")
    assert result.returncode == 2, result.stderr
    assert "not for --preflight" in result.stderr and flags[0] in result.stderr
    assert "--from-" not in result.stderr  # (found by a review: `from_` was named --from-)
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("url", ["http://fapi.bitunix.com", "http://example.invalid:8080", "http://10.0.0.1"])
def test_the_key_is_never_sent_over_plain_http_off_this_machine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    """Found by an audit: with feed.rest_url = http://... the preflight sent the `api-key` header
    and a signed request unencrypted across the network (anyone on the path had the key and a
    request to replay within the exchange's window). Refused before any request, exit 2; http://
    stays allowed to a loopback address (the fake exchange)."""
    config = make_config(tmp_path, f"feed.rest_url={url}")
    env = {"BITUNIX_API_KEY": KEY, "BITUNIX_API_SECRET": SECRET}
    assert run_preflight(config, env) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.startswith(f"preflight: feed.rest_url {origin(url)} is not https://: "), out.err
    assert KEY not in out.err and SECRET not in out.err


@pytest.mark.slow
async def test_a_key_pair_of_digits_is_masked_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The official vector's key and secret are digits only (§1.4): values the scrubber leaves alone
    elsewhere (a number is no secret there) are masked here, where they are the key pair, even
    when the exchange's answer quotes them."""
    key, secret = "11111111111111111", "22222222222222222"
    account = {"available": key, "frozen": secret}
    async with serving(fake(api_keys={key: secret}, account=account)) as f:
        config = make_config(tmp_path, f"feed.rest_url={f.rest_url}")
        env = {"BITUNIX_API_KEY": key, "BITUNIX_API_SECRET": secret}
        code = await trio.to_thread.run_sync(run_preflight, config, env)
    out = capsys.readouterr()
    assert code == 0
    assert (
        out.out.strip()
        == f"preflight ok: {f.rest_url} accepts the key; USDT available=*** frozen=*** margin=10"
    )


# a raw HTTP server on 127.0.0.1 whose answer never ends in time: its status line and a header, or
# its body, one byte every TRICKLE_S (each read gets a byte, so no per-read timeout ever fires)
TRICKLE_S = 0.2
TRICKLES = {
    "headers": (b"HTTP/1.1 200 OK\r\nX-Pad: ", b"a"),
    "body": (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n", b" "),
}


async def _trickle(head: bytes, byte: bytes, stream: trio.SocketStream) -> None:
    # the server's own bound, whatever the client does; the client hanging up (as the preflight
    # does at its deadline) ends it too, whichever comes first of that and the test's cancel
    with trio.move_on_after(30), contextlib.suppress(trio.BrokenResourceError):
        await stream.receive_some(65536)  # the request (a GET: one read holds it)
        await stream.send_all(head)
        while True:
            await trio.sleep(TRICKLE_S)
            await stream.send_all(byte)


@pytest.mark.slow
@pytest.mark.parametrize("part", sorted(TRICKLES))
async def test_an_answer_trickling_in_is_cut_at_the_whole_requests_timeout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], part: str
) -> None:
    """Found by an audit: httpx's 5 s timeout bounds each connect, read and write, not the request:
    a server answering one byte at a time (its headers or its body) held the preflight for as long
    as it went on. The whole request now has TIMEOUT_S (5 s, the figure documented), then exit 4.
    The test's own wait is bounded (12 s): the old code's hang is a failure here, not a hung suite."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, partial(_trickle, *TRICKLES[part]), 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        config = make_config(tmp_path, f"feed.rest_url=http://127.0.0.1:{port}")
        env = {"BITUNIX_API_KEY": KEY, "BITUNIX_API_SECRET": SECRET}
        start = time.monotonic()
        with trio.fail_after(12):
            code = await trio.to_thread.run_sync(run_preflight, config, env, abandon_on_cancel=True)
        took = time.monotonic() - start
        nursery.cancel_scope.cancel()
    out = capsys.readouterr()
    assert (code, out.out) == (4, "")
    assert (
        out.err.strip()
        == f"preflight failed: cannot reach http://127.0.0.1:{port}: no whole answer within 5 s"
    )
    assert 4.5 < took < 9, took


async def _huge(stream: trio.SocketStream) -> None:
    # the client hangs up after its 1 MiB: a reset while this still sends (found by CI under load)
    with trio.move_on_after(30), contextlib.suppress(trio.BrokenResourceError):
        await stream.receive_some(65536)
        size = 2 << 20  # 2 MiB of a JSON string's inside, sent as fast as the client reads
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        await stream.send_all(b"Content-Length: %d\r\n\r\n" % (size + 2) + b'"' + b"a" * size + b'"')


@pytest.mark.slow
async def test_an_answer_larger_than_a_mib_is_not_read_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the whole request under one deadline, a fast server could fill the memory within it:
    the body is read up to MAX_ANSWER_BYTES (1 MiB; an account's answer is a few hundred bytes)."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, _huge, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        config = make_config(tmp_path, f"feed.rest_url=http://127.0.0.1:{port}")
        env = {"BITUNIX_API_KEY": KEY, "BITUNIX_API_SECRET": SECRET}
        with trio.fail_after(12):
            code = await trio.to_thread.run_sync(run_preflight, config, env, abandon_on_cancel=True)
        nursery.cancel_scope.cancel()
    out = capsys.readouterr()
    assert (code, out.out) == (4, "")
    assert (
        out.err.strip()
        == f"preflight failed: cannot reach http://127.0.0.1:{port}: the answer is larger than 1 MiB"
    )
