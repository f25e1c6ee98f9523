"""The recorder actor and its inbox: how the live actors hand events (and checkpoints) to the
recorder (actors/recording/recorder.py), which writes them from its own task."""

from __future__ import annotations

import contextlib
from collections import deque
from typing import Any, Self

import attrs
import trio

from actors.recording.recorder import CRITICAL_PREFIXES, FLUSH_EVERY_S, Recorder
from protocols.messages import Event, StopSession


@attrs.frozen
class CheckpointRequest:
    """Into the recorder's inbox, between two steps: checkpoint this state (taken at that instant,
    so it matches exactly the events before it in the inbox)."""

    state: dict[str, Any]


class EventSink:
    """The recorder's inbox: every actor's way to record an event.

    `send` appends and returns without a checkpoint, so an actor's state change and the events
    describing it happen in one scheduler step: whenever the recorder runs, the actors' state
    matches exactly the events it has been given, which is what makes its checkpoints consistent
    with `events.jsonl`. It quacks like a trio send channel (`send`, `clone`, `with`), so actors
    stay written as channel senders. It is unbounded on purpose: the recorder drains it on every
    scheduler turn, and a stalled disk must not stall trading. (Backtests and replays on the
    kernel do not use it: they call the recorder directly.)
    """

    def __init__(self) -> None:
        self._queue: deque[Event | CheckpointRequest] = deque()
        self._wakeup = trio.Event()
        self._open = 1
        # an event that changes orders, fills or positions was sent since the last checkpoint
        self.critical = False

    async def send(self, event: Event) -> None:  # no checkpoint, by design
        self.send_nowait(event)

    def send_nowait(self, event: Event) -> None:
        if self._open <= 0:
            raise trio.ClosedResourceError("the recorder's inbox is closed")
        self._queue.append(event)
        if not self.critical and event.kind.startswith(CRITICAL_PREFIXES):
            self.critical = True
        self._wakeup.set()

    def checkpoint(self, state: dict[str, Any]) -> None:
        """Checkpoint `state` once every event sent before it is written."""
        self._queue.append(CheckpointRequest(state))
        self.critical = False
        self._wakeup.set()

    def clone(self) -> EventSink:
        self._open += 1
        return self

    def close(self) -> None:
        self._open -= 1
        self._wakeup.set()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._open <= 0

    @property
    def pending(self) -> int:
        return len(self._queue)

    def drain(self) -> list[Event | CheckpointRequest]:
        batch = list(self._queue)
        self._queue.clear()
        return batch

    async def wait(self) -> None:
        """Until there is something to drain or every sender has closed."""
        if not self._queue and not self.closed:
            await self._wakeup.wait()
            self._wakeup = trio.Event()


async def run_recorder(
    recorder: Recorder,
    inbox: EventSink,
    *,
    stops: trio.MemorySendChannel[StopSession] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Actor: writes until every sender is closed, then finishes the run folder. A checkpoint
    request is written (in a worker thread) after the events before it, with their last seq; of
    several waiting at once only the newest is written (it covers the events before the others
    too), so a slow disk makes checkpoints rarer, never a backlog. A storage fault or low space
    (`Recorder.take_stop`) is a `StopSession("storage")` on `stops`, the watchdog's channel; after
    a fault no checkpoint is written (the last one matches the events on disk)."""
    task_status.started()
    next_flush = trio.current_time()
    with stops if stops is not None else contextlib.nullcontext():
        while True:
            await inbox.wait()
            batch = inbox.drain()
            newest = max(
                (i for i, item in enumerate(batch) if isinstance(item, CheckpointRequest)), default=-1
            )
            for i, item in enumerate(batch):
                if isinstance(item, CheckpointRequest):
                    if i != newest or recorder.fault is not None:
                        continue
                    state = {"seq": recorder.seq, **item.state}
                    await trio.to_thread.run_sync(recorder.write_checkpoint, state)
                    next_flush = trio.current_time() + FLUSH_EVERY_S
                else:
                    recorder.write(item)
            if inbox.closed and not inbox.pending:
                break
            now = trio.current_time()
            if now >= next_flush:
                recorder.flush()
                next_flush = now + FLUSH_EVERY_S
            await _tell(recorder, stops)
    recorder.finish()


async def _tell(recorder: Recorder, stops: trio.MemorySendChannel[StopSession] | None) -> None:
    """The storage stop, once, to the watchdog (gone already when the session is stopping)."""
    stop = recorder.take_stop()
    if stop is None or stops is None:
        return
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stops.send(StopSession(recorder.last_event_ts or 0.0, "storage", stop.detail()))
