"""A Server-Sent Events response whose producer runs in a nursery beside a watch for the client leaving.

Starlette's streaming responses drive an async generator; a turn, though, is a nursery of tasks (the brain,
synthesis), which must not be suspended inside a generator. Here the producer is an ordinary coroutine that
calls ``emit`` for every event, and a client that disconnects cancels it at once, so its turn is freed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from starlette.responses import Response

log = logging.getLogger(__name__)

Emit = Callable[..., Awaitable[None]]
Producer = Callable[[Emit], Awaitable[None]]


class ClientGone(Exception):
    """The client closed the connection while events were still being sent."""


def sse_frame(data: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\r\n" if event else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}\r\n\r\n".encode()


class SseResponse(Response):
    """A response answering ``text/event-stream``; ``producer(emit)`` sends events with ``await emit(dict)``."""

    def __init__(self, producer: Producer, *, event_names: bool = False) -> None:
        super().__init__(media_type="text/event-stream")
        self.producer = producer
        self.event_names = event_names  # Dify names each event (``event: message``) as well as in the data

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-store"),
                    (b"x-accel-buffering", b"no"),
                ],
            }
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_disconnect, receive, nursery.cancel_scope)
            await self._produce(send)
            nursery.cancel_scope.cancel()
        try:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except Exception:  # noqa: BLE001  (the client left meanwhile: nothing to tell it)
            log.debug("client left before the end of the stream")

    async def _produce(self, send: Any) -> None:
        async def emit(data: dict[str, Any]) -> None:
            event = data.get("event") if self.event_names else None
            try:
                await send({"type": "http.response.body", "body": sse_frame(data, event), "more_body": True})
            except OSError as exc:
                raise ClientGone from exc

        try:
            await self.producer(emit)
        except ClientGone:
            log.info("client left mid-stream; its turn was stopped")

    @staticmethod
    async def _watch_disconnect(receive: Any, scope: trio.CancelScope) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                log.info("client left mid-stream; stopping its turn")
                scope.cancel()
                return
