"""The alert webhook against a local HTTP receiver on 127.0.0.1 (real sockets, real time: slow):
one message per alert, including after the receiver fails twice; a receiver that never answers
does not delay the session's heartbeats."""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from actors import secrets
from actors.recording.recorder import Recorder
from actors.recording.webhook import Webhook
from actors.session import run_session
from protocols.messages import Event
from tests.conftest import make_config, read_events
from tests.test_feed_multi_symbol import TWO, feed_config
from tools.fake_bitunix import FakeBitunix, Faults
from tools.validate_session import validate

pytestmark = pytest.mark.slow


class Receiver:
    """A tiny HTTP/1.1 server: answers each request with the next status of `statuses` (then
    200), or never answers (`hang`). One request per connection."""

    def __init__(
        self,
        statuses: list[int] | None = None,
        *,
        hang: bool = False,
        trickle: bool = False,
        retry_after: str | None = None,
    ) -> None:
        self.statuses: Iterator[int] = iter(statuses or [])
        self.retry_after = retry_after  # a 429's Retry-After header
        self.times: list[float] = []  # when each request was answered (trio's clock)
        self.hang = hang
        self.trickle = trickle  # answer 200 with a header a byte every 20 ms, never ending (never idle long)
        self.requests: list[tuple[int, dict[str, Any]]] = []  # (status answered, body)
        self._answered = trio.Event()
        self._requested = trio.Event()

    async def wait_delivered(self, n: int) -> None:
        with trio.fail_after(10):
            while len(self.delivered) < n:
                await self._answered.wait()

    async def wait_requested(self, n: int) -> None:
        with trio.fail_after(10):
            while len(self.requests) < n:
                await self._requested.wait()

    @property
    def delivered(self) -> list[dict[str, Any]]:
        return [body for status, body in self.requests if status == 200]

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        task_status.started(f"http://127.0.0.1:{port}/hook")
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some()
                if not chunk:
                    return
                data += chunk
            head, body = data.split(b"\r\n\r\n", 1)
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            while len(body) < length:
                body += await stream.receive_some()
            if self.hang:
                self.requests.append((0, json.loads(body)))
                self._requested.set()
                self._requested = trio.Event()
                await trio.sleep_forever()
            if self.trickle:
                self.requests.append((0, json.loads(body)))
                with contextlib.suppress(trio.BrokenResourceError):  # until the client gives up
                    await stream.send_all(b"HTTP/1.1 200 OK\r\nX-Pad: ")  # a header without end
                    while True:
                        await stream.send_all(b"x")
                        await trio.sleep(0.02)
                return
            status = next(self.statuses, 200)
            self.requests.append((status, json.loads(body)))
            self.times.append(trio.current_time())
            self._answered.set()
            self._answered = trio.Event()
            wait = f"Retry-After: {self.retry_after}\r\n" if status == 429 and self.retry_after else ""
            await stream.send_all(
                f"HTTP/1.1 {status} X\r\n{wait}Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
            )


async def test_one_message_per_alert_even_after_the_receiver_fails_twice() -> None:
    receiver = Receiver([200, 500, 500])  # the second message: two 500s, then 200
    async with trio.open_nursery() as nursery:
        url = await nursery.start(receiver.serve)
        hook = Webhook(url, timeout_s=2, attempts=4, backoff_s=0.01)
        messages = [{"rule": "memory", "n": n} for n in range(3)]
        async with trio.open_nursery() as hooks:
            await hooks.start(hook.run)
            for message in messages:
                hook.notify(message)
            await receiver.wait_delivered(3)
            hook.close(2)  # the task ends once its last answer is in
        nursery.cancel_scope.cancel()
    assert receiver.delivered == messages  # each once, in order
    assert [status for status, _ in receiver.requests] == [200, 500, 500, 200, 200]
    assert (hook.sent, hook.failed, hook.dropped) == (3, 0, 0)


async def test_a_message_goes_out_scrubbed_of_the_secrets() -> None:
    """An alert quotes what the session saw (found by an audit: a fallback alert carried a feed
    URL's token to the receiver, masked in every file)."""
    receiver = Receiver()
    secrets.install({"FEED_TOKEN": "Zq9SECRETtok77"})
    try:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(receiver.serve)
            hook = Webhook(url, timeout_s=2, attempts=1)
            async with trio.open_nursery() as hooks:
                await hooks.start(hook.run)
                hook.notify({"rule": "fallback", "text": "no data from ws://h/public/?token=Zq9SECRETtok77"})
                await receiver.wait_delivered(1)
                hook.close(2)
            nursery.cancel_scope.cancel()
    finally:
        secrets.install({})
    assert receiver.delivered == [{"rule": "fallback", "text": "no data from ws://h/public/?token=***"}]


async def test_bounded_attempts_and_no_retry_of_a_client_error() -> None:
    receiver = Receiver([500, 500, 500, 404])
    async with trio.open_nursery() as nursery:
        url = await nursery.start(receiver.serve)
        hook = Webhook(url, timeout_s=2, attempts=3, backoff_s=0.01)
        async with trio.open_nursery() as hooks:
            await hooks.start(hook.run)
            hook.notify({"rule": "disk"})  # three 500s: given up
            hook.notify({"rule": "breaker"})  # a 404: not retried
            hook.notify({"rule": "resume"})  # delivered
            await receiver.wait_delivered(1)
            hook.close(2)
        nursery.cancel_scope.cancel()
    assert [(s, b["rule"]) for s, b in receiver.requests] == [
        (500, "disk"), (500, "disk"), (500, "disk"), (404, "breaker"), (200, "resume"),
    ]  # fmt: skip
    assert (hook.sent, hook.failed) == (1, 2)


async def test_a_receiver_that_answers_a_byte_at_a_time_is_given_up_at_the_timeout() -> None:
    """Each try is bounded by `webhook_timeout_s` as a whole (found by the cockpit audit: httpx's
    timeout bounds each read, so an answer trickling a byte every 20 ms held one message, and the
    queue behind it, for as long as the receiver kept trickling)."""
    receiver = Receiver(trickle=True)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(receiver.serve)
        hook = Webhook(url, timeout_s=0.5, attempts=2, backoff_s=0.01)
        async with trio.open_nursery() as hooks:
            await hooks.start(hook.run)
            started = trio.current_time()
            hook.notify({"rule": "disk"})
            hook.close(10)  # the task ends once its message is given up (at the latest in 10 s)
        took = trio.current_time() - started
        nursery.cancel_scope.cancel()
    assert len(receiver.requests) == 2  # both tries, each given up at its timeout
    assert (hook.sent, hook.failed) == (0, 1)
    assert took < 2 * 0.5 + 0.01 + 1.5  # two timeouts and the backoff, room for a loaded machine


async def test_the_alerts_a_hung_receiver_never_got_are_counted_and_said_at_the_end() -> None:
    """Found by the cockpit audit: the messages still queued when the end's grace ran out were
    counted nowhere (not failed, not dropped) and the end said only 'alerts not delivered'."""
    from loguru import logger

    receiver = Receiver(hang=True)
    said: list[str] = []
    sink = logger.add(lambda m: said.append(m.record["message"]), level="WARNING")
    try:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(receiver.serve)
            hook = Webhook(url, timeout_s=5, attempts=1, queue_size=2)
            async with trio.open_nursery() as hooks:
                await hooks.start(hook.run)
                hook.notify({"rule": "memory", "n": 0})
                await receiver.wait_requested(1)  # at the receiver, which never answers
                for n in range(1, 4):  # two queued, the third dropped
                    hook.notify({"rule": "memory", "n": n})
                hook.close(0.5)
            nursery.cancel_scope.cancel()
    finally:
        logger.remove(sink)
    assert len(receiver.requests) == 1
    assert (hook.sent, hook.failed, hook.dropped, hook.unsent) == (0, 0, 1, 3)
    assert said[-1] == (
        f"webhook: 0 of 4 alerts delivered to {url}: 0 not delivered (refused or no answer), "
        "1 dropped (queue full), 3 not sent when the session ended (alerts.jsonl has them all)"
    )


@pytest.mark.parametrize("url", ["http://hooks..example.com/hook", "http://[v1.x]/hook"])
async def test_a_url_the_http_client_cannot_use_fails_its_message_never_the_task(url: str) -> None:
    """Found by the cockpit audit: a webhook URL with an empty host label (a typo, `..`) passed
    the config, and the first alert's POST raised UnicodeError (httpx.InvalidURL for a bad IPv6
    literal), not an httpx.HTTPError: out of the webhook's task into the session's nursery, which
    ended the session in a traceback, with no report; its resume did the same at its `resume`
    alert. No name is looked up: the URL fails before."""
    hook = Webhook(url, timeout_s=1, attempts=2, backoff_s=0.01)
    async with trio.open_nursery() as hooks:
        await hooks.start(hook.run)
        hook.notify({"rule": "memory"})
        hook.notify({"rule": "disk"})
        hook.close(5)
    assert (hook.sent, hook.failed, hook.unsent) == (0, 2, 0)


async def test_a_rate_limited_message_waits_as_long_as_the_receiver_asks() -> None:
    """Found by the cockpit audit: a 429's Retry-After was not read, and the tries came again
    after the backoff alone (10 ms here; 0.5, 1, 2 s by default), all refused within a rate
    limit's window (a chat service asks for a second or more). It is waited for, at most
    BACKOFF_MAX_S."""
    receiver = Receiver([429, 429], retry_after="1")
    async with trio.open_nursery() as nursery:
        url = await nursery.start(receiver.serve)
        hook = Webhook(url, timeout_s=2, attempts=4, backoff_s=0.01)
        async with trio.open_nursery() as hooks:
            await hooks.start(hook.run)
            hook.notify({"rule": "breaker"})
            await receiver.wait_delivered(1)
            hook.close(2)
        nursery.cancel_scope.cancel()
    assert [status for status, _ in receiver.requests] == [429, 429, 200]
    gaps = [b - a for a, b in itertools.pairwise(receiver.times)]
    assert min(gaps) >= 1.0, gaps
    assert (hook.sent, hook.failed) == (1, 0)


async def test_a_live_session_posts_each_alert_of_alerts_jsonl_once(tmp_path: Path) -> None:
    receiver = Receiver([500, 500])  # the first alert's message fails twice
    async with trio.open_nursery() as nursery:
        url = await nursery.start(receiver.serve)
        config = make_config(
            tmp_path,
            "feed.source=mock",
            "alerts.max_rss_mb=1",  # a memory alert ...
            "alerts.min_free_disk_mb=1000000000",  # ... and a disk alert at the first sample
            f"observability.webhook_url={url}",
            "observability.webhook_attempts=4",
            duration_min=3 / 60,
        )
        result = await run_session(config, handle_signals=False, progress_mode="off")
        nursery.cancel_scope.cancel()
    logged = [json.loads(line) for line in (result.run_path / "alerts.jsonl").read_text().splitlines()]
    assert sorted(a["rule"] for a in logged) == ["disk", "memory"]
    assert [{k: v for k, v in m.items() if k != "text"} for m in receiver.delivered] == logged
    assert len(receiver.requests) == len(logged) + 2


async def test_a_feed_outage_is_paged_and_its_end_said_once(tmp_path: Path) -> None:
    """Found by an audit: `feed_down` paged the operator, and nothing said the feed came back. The
    fake exchange refuses the first 5 handshakes (by count; the seeded backoff waits 1.58 s in all
    before the 6th), with `alerts.feed_down_s` = 1: one `feed_down` alert, then, at the connect,
    one resolved alert (info): both in events.jsonl and alerts.jsonl and POSTed, in order."""
    fake = FakeBitunix(seed=12, faults=Faults(refuse_handshakes=5))
    receiver = Receiver()
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.run)
        url = await nursery.start(receiver.serve)
        config = make_config(
            tmp_path,
            "feed.source=bitunix",
            f"feed.ws_url={fake.ws_url}",
            f"feed.rest_url={fake.rest_url}",
            "feed.connect_timeout_s=1",
            "feed.fallback=none",
            "feed.backoff_max_s=1",
            "session.seed=42",  # the feed's backoff delays: 0.32, 0.03, 0.28, 0.22, 0.74 s
            "strategy.history=30",
            "alerts.feed_down_s=1",
            f"observability.webhook_url={url}",
            duration_min=4 / 60,
        )
        with trio.fail_after(60):
            result = await run_session(config, handle_signals=False, progress_mode="off")
        nursery.cancel_scope.cancel()
    assert fake.stats.handshakes_refused == 5 and fake.stats.connections == 1
    events = read_events(result.run_path)
    alerts = [e for e in events if e["kind"] == "alert"]
    assert [(a["rule"], a["severity"]) for a in alerts] == [("feed_down", "critical"), ("feed_down", "info")]
    (connected,) = [e for e in events if e["kind"] == "feed.connected"]
    back = alerts[1]
    assert back["seq"] == connected["seq"] + 1 and back["ts"] == connected["ts"]
    down = connected["downtime_s"]
    assert back["message"] == f"resolved: the market data feed is back after {down:.0f} s down"
    assert back["details"]["resolved"] is True and back["details"]["lasted_s"] >= 1.58
    logged = [json.loads(line) for line in (result.run_path / "alerts.jsonl").read_text().splitlines()]
    assert [(a["seq"], a["rule"], a["severity"]) for a in logged] == [
        (a["seq"], a["rule"], a["severity"]) for a in alerts
    ]
    assert [{k: v for k, v in m.items() if k != "text"} for m in receiver.delivered] == logged
    assert receiver.delivered[1]["text"] == f"[info] {result.run_path.name}: {back['message']}"
    assert validate(result.run_path) == []


async def test_one_symbol_stale_while_the_others_flow_is_paged_and_its_end_said(tmp_path: Path) -> None:
    """Found by an audit: one symbol gone stale while the others flowed (its entries refused,
    its stops blind) never alerted, and nothing recorded that it was fresh again. The fake serves
    BTCUSDT and ETHUSDT and stops ETHUSDT's pushes for 6 s from its 30th data frame (by count; no
    REST failover): `feed.stale` then `feed.fresh` name ETHUSDT; with `alerts.feed_down_s` = 1.5, one
    `symbol_stale` alert and its resolved alert, in events.jsonl and alerts.jsonl and POSTed."""
    faults = Faults(stall_symbol="ETHUSDT", stall_once_after_frames=30, stall_for_s=6)
    fake = FakeBitunix(seed=63, symbols=TWO, faults=faults)
    receiver = Receiver()
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.run)
        url = await nursery.start(receiver.serve)
        config = feed_config(
            tmp_path,
            fake,
            TWO,
            "session.duration_min=0.22",
            "feed.stale_after_s=1",
            "feed.failover_after_s=600",
            "alerts.feed_down_s=1.5",
            "observability.heartbeat_s=0.25",
            f"observability.webhook_url={url}",
        )
        with trio.fail_after(60):
            result = await run_session(config, handle_signals=False, progress_mode="off")
        nursery.cancel_scope.cancel()
    assert fake.stats.faults_log == [("stall", 30, "ETHUSDT")] and fake.stats.connections == 1
    events = read_events(result.run_path)
    (stale,) = [e for e in events if e["kind"] == "feed.stale"]
    (fresh,) = [e for e in events if e["kind"] == "feed.fresh"]
    assert (stale["symbols"], fresh["symbols"], fresh["reason"]) == (
        ["ETHUSDT"],
        ["ETHUSDT"],
        "websocket data",
    )
    alerts = [e for e in events if e["kind"] == "alert"]
    assert [(a["rule"], a["severity"], a["details"]["symbol"]) for a in alerts] == [
        ("symbol_stale", "critical", "ETHUSDT"),
        ("symbol_stale", "info", "ETHUSDT"),
    ]
    alert, back = alerts
    assert stale["seq"] < alert["seq"] < fresh["seq"] < back["seq"]
    assert back["seq"] == fresh["seq"] + 1 and back["ts"] == fresh["ts"]
    assert alert["details"]["stale_s"] >= 1.5 and alert["details"]["reason"] == "no data for 1 s"
    assert alert["message"].startswith("ETHUSDT market data stale for ")
    assert back["message"].startswith("resolved: ETHUSDT market data fresh again (websocket data) after ")
    logged = [json.loads(line) for line in (result.run_path / "alerts.jsonl").read_text().splitlines()]
    assert [(a["seq"], a["message"]) for a in logged] == [(a["seq"], a["message"]) for a in alerts]
    assert [{k: v for k, v in m.items() if k != "text"} for m in receiver.delivered] == logged
    assert result.report["status"] == "ok" and validate(result.run_path) == []


async def test_a_receiver_that_never_answers_does_not_delay_the_heartbeats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (monotonic time the recorder got it, the heartbeat's time): a step of the system clock
    # during the test moves neither (found: a wall-time reading once lagged by the step, 35 s)
    seen: list[tuple[float, float]] = []
    write = Recorder.write

    def timed_write(self: Recorder, event: Event) -> None:
        if event.kind == "heartbeat":
            seen.append((time.monotonic(), event.ts))
        write(self, event)

    monkeypatch.setattr(Recorder, "write", timed_write)
    receiver = Receiver(hang=True)
    duration_s, timeout_s = 6.0, 5.0  # a heartbeat waiting on the receiver would lag by >= 5 s
    async with trio.open_nursery() as nursery:
        url = await nursery.start(receiver.serve)
        config = make_config(
            tmp_path,
            "feed.source=mock",
            "observability.heartbeat_s=0.5",
            "alerts.max_rss_mb=1",
            "alerts.min_free_disk_mb=1000000000",
            f"observability.webhook_url={url}",
            f"observability.webhook_timeout_s={timeout_s}",
            "observability.webhook_attempts=10",
            duration_min=duration_s / 60,
        )
        started = time.monotonic()
        result = await run_session(config, handle_signals=False, progress_mode="off")
        took = time.monotonic() - started
        nursery.cancel_scope.cancel()
    assert receiver.requests, "the webhook should have tried"
    assert receiver.delivered == []
    # each heartbeat's delay beyond the first's (the session clock is the monotonic one too)
    got0, due0 = seen[0]
    lags = [(got - got0) - (due - due0) for got, due in seen]
    assert len(seen) >= duration_s / 0.5  # every heartbeat of the session, on schedule
    assert max(lags) < 1.5, lags  # room for a loaded test machine, well under one request's timeout
    assert result.report["status"] == "ok" and result.report["elapsed_s"] < duration_s + 2
    # the exit waits at most webhook_timeout_s for the queued alerts, not attempts x timeout
    assert took < duration_s + timeout_s + 4
