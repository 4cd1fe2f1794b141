"""Work that outlives a turn, such as an on-finish hook storing a long-term memory.

A turn must end (and a barge-in must cancel it) without waiting for that; the jobs run in this service's
nursery instead, one at a time, each bounded by a timeout. When the queue is full a job is dropped with a
warning rather than slowing the conversation down.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

log = logging.getLogger(__name__)

Job = Callable[[], Awaitable[Any]]


class BackgroundJobs:
    name = "background"

    def __init__(self, timeout: float = 30.0, queue: int = 16) -> None:
        self.timeout = timeout
        self._send, self._receive = trio.open_memory_channel[tuple[str, Job]](queue)
        self.done = 0

    def submit(self, label: str, job: Job) -> bool:
        try:
            self._send.send_nowait((label, job))
        except trio.WouldBlock:
            log.warning("background queue full: dropping %s", label)
            return False
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for label, job in self._receive:
            with trio.move_on_after(self.timeout) as waited:
                try:
                    await job()
                except Exception:
                    log.warning("background job %s failed", label, exc_info=True)
            if waited.cancelled_caught:
                log.warning("background job %s gave up after %g s", label, self.timeout)
            self.done += 1
