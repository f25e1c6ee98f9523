"""Asks between actors: a bounded request channel and its reply channel.

An actor *asks* another (sends a request and waits for the reply) when what it does next depends on
the other having finished: the broker asks the risk gate about each account update and each
market event it publishes, and the gate asks each strategy. A step of the session is then one
chain of asks, so its events reach the recorder in one order whatever the scheduler does, the
order in which the kernel (actors/kernel.py) takes the same step. Asks only go one way (broker
-> risk gate -> strategies), so they cannot deadlock; what goes back to the broker (orders,
commands) travels in a channel of its own, drained after each ask.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import attrs
import trio

Req = TypeVar("Req")
Rep = TypeVar("Rep")


@attrs.define
class Asker(Generic[Req, Rep]):
    """The caller's end: `await ask(request)` -> reply. Closing it ends the callee's loop."""

    requests: trio.MemorySendChannel[Req]
    replies: trio.MemoryReceiveChannel[Rep]

    async def ask(self, request: Req) -> Rep:
        await self.requests.send(request)
        return await self.replies.receive()

    def close(self) -> None:
        self.requests.close()
        self.replies.close()

    def __enter__(self) -> Asker[Req, Rep]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@attrs.define
class Answerer(Generic[Req, Rep]):
    """The callee's end: iterate the requests, `await reply(value)` once for each."""

    requests: trio.MemoryReceiveChannel[Req]
    replies: trio.MemorySendChannel[Rep]

    async def reply(self, value: Rep) -> None:
        await self.replies.send(value)

    def close(self) -> None:
        self.requests.close()
        self.replies.close()

    def __enter__(self) -> Answerer[Req, Rep]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_mailbox() -> tuple[Asker[Any, Any], Answerer[Any, Any]]:
    """A caller's and a callee's end of one ask channel (one caller at a time); annotate the
    variables with the request and reply types."""
    req_tx, req_rx = trio.open_memory_channel[Any](0)
    rep_tx, rep_rx = trio.open_memory_channel[Any](1)
    return Asker(req_tx, rep_rx), Answerer(req_rx, rep_tx)
