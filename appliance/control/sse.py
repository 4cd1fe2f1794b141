"""Server-Sent Events as an ASGI response that can never hold the appliance up.

Every stream counts against a cap (503 when full). A stream is fed from a bounded channel; a client that
reads too slowly loses nothing silently: it gets an ``overflow`` event and is disconnected. Each write has
a deadline, a keep-alive comment goes out when nothing happened for a while (so a vanished client is
noticed), and the stream ends at once when the client disconnects or the server shuts down.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

log = logging.getLogger(__name__)

WRITE_TIMEOUT = 5.0

Producer = Callable[[trio.MemorySendChannel[tuple[str, Any]]], Awaitable[None]]


def format_event(kind: str, data: Any, event_id: int | None = None) -> bytes:
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"event: {kind}")
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
    lines.extend(f"data: {line}" for line in payload.splitlines() or [""])
    return ("\n".join(lines) + "\n\n").encode("utf-8")


class Slots:
    """Counts open streams against a cap."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def take(self) -> bool:
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def give_back(self) -> None:
        self.open = max(0, self.open - 1)


class EventStream(Response):
    """Runs ``producer`` (which sends ``(event, data)`` pairs, then returns to end the stream) for one client.

    The slot taken for this stream is given back when it ends, however it ends.
    """

    media_type = "text/event-stream"

    def __init__(self, producer: Producer, slots: Slots, *, buffer: int = 256, heartbeat: float = 15.0) -> None:
        super().__init__(status_code=200, media_type=self.media_type)
        self.producer = producer
        self.slots = slots
        self.buffer = buffer
        self.heartbeat = heartbeat
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._stream(receive, send)
        finally:
            self.slots.give_back()

    async def _stream(self, receive: Receive, send: Send) -> None:
        events_in, events_out = trio.open_memory_channel[tuple[str, Any]](self.buffer)
        with trio.move_on_after(WRITE_TIMEOUT) as start:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        if start.cancelled_caught:
            return
        gone = False
        async with trio.open_nursery() as nursery:

            async def watch_disconnect() -> None:
                nonlocal gone
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        gone = True
                        nursery.cancel_scope.cancel()
                        return

            async def produce() -> None:
                async with events_in:
                    await self.producer(events_in)

            nursery.start_soon(watch_disconnect)
            nursery.start_soon(produce)
            gone = not await self._pump(events_out, send)
            nursery.cancel_scope.cancel()
        if not gone:
            with trio.move_on_after(WRITE_TIMEOUT):
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _pump(self, events: trio.MemoryReceiveChannel[tuple[str, Any]], send: Send) -> bool:
        """Write events until the producer is done; False when the client could not keep up."""
        event_id = 0
        async with events:
            while True:
                item: tuple[str, Any] | None = None
                with trio.move_on_after(self.heartbeat):
                    try:
                        item = await events.receive()
                    except trio.EndOfChannel:
                        return True
                body = b": keep-alive\n\n" if item is None else format_event(item[0], item[1], event_id)
                if item is not None:
                    event_id += 1
                with trio.move_on_after(WRITE_TIMEOUT) as write:
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                if write.cancelled_caught:
                    log.info("event stream client too slow; disconnecting")
                    return False
