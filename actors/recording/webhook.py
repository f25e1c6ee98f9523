"""The alert webhook: POSTs each alert's message as JSON to `observability.webhook_url` (live sessions).

Trading never waits on it. The recorder hands a message over with `notify`, which never blocks:
a bounded queue (`QUEUE_SIZE` messages) in front of the webhook's own task; when the queue is full
the message is dropped, counted (`dropped`) and logged. The task sends one message at a time:
up to `observability.webhook_attempts` tries, each bounded as a whole (connect, send, the answer's
status line and headers; its body is not read) by `observability.webhook_timeout_s`, retried
after network errors, HTTP 429 and 5xx with exponential backoff (`backoff_s`, doubling, at most
`BACKOFF_MAX_S`; at least the answer's Retry-After seconds, up to the same bound); any other answer (a 4xx: the URL or the message is wrong) is not retried.
At the end of the session the messages still queued get `webhook_timeout_s` more to go out,
then the task is cancelled (`close`): a receiver that never answers delays the exit by that
much, never the session. No failure of a try (a network error, an answer it cannot read, a URL
the client cannot use) leaves the task: each is a try that failed. When any alert did not reach the receiver, the end says in one line
how many were delivered, not delivered, dropped and left unsent.
"""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import trio
from loguru import logger

from actors import secrets
from actors.config import ObservabilityConfig

QUEUE_SIZE = 64
BACKOFF_S = 0.5
BACKOFF_MAX_S = 8.0


class Webhook:
    def __init__(
        self,
        url: str,
        *,
        timeout_s: float,
        attempts: int,
        queue_size: int = QUEUE_SIZE,
        backoff_s: float = BACKOFF_S,
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.sent = self.failed = self.dropped = 0
        self.unsent = 0  # queued (or being sent) when the end's grace ran out
        self._sending = False
        self._tx, self._rx = trio.open_memory_channel[dict[str, Any]](queue_size)
        self._scope = trio.CancelScope()

    @classmethod
    def from_config(cls, config: ObservabilityConfig) -> Webhook | None:
        if not config.webhook_url:
            return None
        return cls(config.webhook_url, timeout_s=config.webhook_timeout_s, attempts=config.webhook_attempts)

    def notify(self, message: dict[str, Any]) -> None:
        """Queue `message` without waiting: dropped (and counted) when the queue is full."""
        try:
            self._tx.send_nowait(message)
        except (trio.WouldBlock, trio.ClosedResourceError):
            self.dropped += 1
            logger.warning(
                "webhook: queue full, alert {} not sent ({} dropped so far)",
                message.get("rule"),
                self.dropped,
            )

    def close(self, grace_s: float) -> None:
        """No more messages; those queued have `grace_s` seconds to go out, then the task ends."""
        self._tx.close()
        self._scope.deadline = min(self._scope.deadline, trio.current_time() + grace_s)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The webhook's task: sends the queued messages in order until `close`."""
        with self._scope, self._rx:
            try:
                async with httpx.AsyncClient(timeout=self.timeout_s) as client:
                    task_status.started()
                    async for message in self._rx:
                        self._sending = True
                        await self._post(client, message)
                        self._sending = False
            finally:  # (the queue's messages are gone once it is closed)
                self.unsent = self._rx.statistics().current_buffer_used + int(self._sending)
        if self.failed or self.dropped or self.unsent:
            # one line that counts them all (found by the cockpit audit: those queued at the end
            # were counted nowhere, and the line said only that some were not delivered)
            total = self.sent + self.failed + self.dropped + self.unsent
            logger.warning(
                "webhook: {} of {} alerts delivered to {}: {} not delivered (refused or no answer), "
                "{} dropped (queue full), {} not sent when the session ended (alerts.jsonl has them all)",
                self.sent,
                total,
                self.url,
                self.failed,
                self.dropped,
                self.unsent,
            )

    async def _post(self, client: httpx.AsyncClient, message: dict[str, Any]) -> None:
        problem = ""
        # the body scrubbed as every file is: an alert quotes what the session saw (a feed URL
        # with a token, an exchange's message), and the receiver is a third party
        body = secrets.scrub(json.dumps(message, separators=(",", ":"))).encode()
        headers = {"Content-Type": "application/json"}
        for attempt in range(1, self.attempts + 1):
            retry = True
            status: int | None = None
            asked_s = 0.0  # a rate limit's Retry-After, seconds
            # the whole try within the timeout (found by the cockpit audit: httpx's bounds each read,
            # and an answer trickling a byte at a time held the message for as long as it lasted);
            # the answer's body is never read (a receiver's page of any size costs nothing)
            with trio.move_on_after(self.timeout_s):
                try:
                    async with client.stream("POST", self.url, content=body, headers=headers) as response:
                        status = response.status_code
                        asked_s = _retry_after_s(response.headers.get("Retry-After"))
                except Exception as exc:
                    # any failure is this try's, never the session's (found by the cockpit audit: a
                    # URL httpx could not use raised UnicodeError or httpx.InvalidURL, not an
                    # httpx.HTTPError, out of this task, and the session ended in a traceback)
                    problem = f"{type(exc).__name__}: {exc}"
            if status is None:
                problem = problem or f"no answer within {self.timeout_s:g} s"
            elif 200 <= status < 300:
                self.sent += 1
                return
            else:
                problem = f"HTTP {status}"
                retry = status == 429 or status >= 500
            if not retry or attempt == self.attempts:
                break
            # at least as long as a 429 or 503 asks (found by the cockpit audit: not read, the
            # tries came again within the rate limit's window), at most BACKOFF_MAX_S
            await trio.sleep(min(BACKOFF_MAX_S, max(asked_s, self.backoff_s * 2 ** (attempt - 1))))
        self.failed += 1
        logger.warning("webhook: alert {} not delivered to {} ({})", message.get("rule"), self.url, problem)


def _retry_after_s(value: str | None) -> float:
    """A Retry-After header's delay in seconds (0: none, or an HTTP date, not read)."""
    try:
        seconds = float(value) if value is not None else 0.0
    except ValueError:
        return 0.0
    return seconds if math.isfinite(seconds) and seconds > 0 else 0.0
