"""A turn's frames on their way to its robot: the first audio at once, everything else at an idle moment.

Ten robots talking at once share one event loop. What a robot waits for is its first audio; ``accepted``, the
transcript (``start``), the sentences after the first and ``final`` are read by nobody in a hurry. Written the
moment they were ready, each was a send (on one machine, the kernel's delivery in the sender's time) and a
wake-up of its robot, between the other robots' cloud requests and first audio: bench serve --load's p95 was
mostly such work queued in front of it. Trio has no priorities, so these frames wait for an idle moment (no task
runnable, no socket ready: ``wait_all_tasks_blocked``, public API, used here outside tests for exactly that), at
most ``LATER_WITHIN``; what is ready by then leaves in one write.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import trio
import trio.testing
from trio_websocket import WebSocketConnection

from appliance.server.frames import Session, frame_text, send_texts

T = TypeVar("T")

# The longest a frame nobody hurries for waits for an idle moment: on a server never idle (more robots than it
# can serve), everything still leaves, this much later.
LATER_WITHIN = 0.01
# While other turns are in flight, an idle moment is a pause, not a gap: ten robots' invokes and the cloud's
# answers to them come over a few milliseconds, the loop idle for a fraction of one between two of them. What
# was done in such a gap went before the robots still on their way: a turn's frames nobody hurries for (a send
# and a robot woken), and a later sentence's speech request, whose answer then came back (the synthesizer's
# wait being the same for every sentence) in the middle of the other robots' first audio.
PAUSE = 0.002


async def when_idle(limit: float = LATER_WITHIN, pause: float = 0.0) -> None:
    """Return once this event loop has had nothing else to do (no task runnable, no socket ready) for ``pause``
    seconds, or after ``limit`` seconds."""
    with trio.move_on_after(limit):
        await trio.testing.wait_all_tasks_blocked(pause)


class InFlight:
    """The turns a server runs now: while there are several, an idle moment is a ``PAUSE``."""

    def __init__(self) -> None:
        self.count = 0

    def pause(self) -> float:
        return PAUSE if self.count > 1 else 0.0

    @contextmanager
    def turn(self) -> Iterator[None]:
        self.count += 1
        try:
            yield
        finally:
            self.count -= 1


class Outbox:
    """One turn's frames, in order. ``add`` queues a frame; ``urgent`` writes what is queued at once (the first
    audio); ``take`` gets the next item of a channel, and when it is not there yet lets the queued frames wait
    for an idle moment, during which it may come (and join them), else they leave before waiting for it;
    ``flush`` writes the rest. Queued frames wait at most ``LATER_WITHIN`` from the first of them."""

    def __init__(self, ws: WebSocketConnection, session: Session, pause: Callable[[], float] = float) -> None:
        self.ws = ws
        self.session = session
        self.pause = pause  # how long an idle moment lasts now (``InFlight.pause``)
        self.first_sent = False  # the turn's first chunk has left: nothing after it is urgent
        self._frames: list[str] = []
        self._queued_at = 0.0  # when the first frame now queued was queued

    def add(self, kind: str, **fields: Any) -> None:
        self.extend([frame_text(self.session, kind, **fields)])

    def extend(self, frames: list[str]) -> None:
        if not self._frames:
            self._queued_at = trio.current_time()
        self._frames += frames

    async def urgent(self) -> None:
        self.first_sent = True
        await self._write()

    async def take(self, receive_nowait: Callable[[], T], receive: Callable[[], Awaitable[T]]) -> T:
        """The next item: at once when it is there; else after an idle moment if it came meanwhile, else the
        queued frames leave and it is waited for."""
        try:
            return receive_nowait()
        except trio.WouldBlock:
            pass
        if self._frames:
            await when_idle(self._left(), self.pause())
            try:
                return receive_nowait()
            except trio.WouldBlock:
                pass
            await self._write()
        return await receive()

    async def flush(self, *, at_once: bool = False) -> None:
        """Write what is queued: after an idle moment, or ``at_once`` (a cancelled turn)."""
        if self._frames and not at_once:
            await when_idle(self._left())
        await self._write()

    def _left(self) -> float:
        return max(0.0, self._queued_at + LATER_WITHIN - trio.current_time())

    async def _write(self) -> None:
        frames, self._frames = self._frames, []
        if frames:
            await send_texts(self.ws, frames)
