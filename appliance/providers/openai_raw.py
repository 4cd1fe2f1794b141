"""OpenAI requests through the SDK, answers read raw: the SDK's transport, auth and error classes without its
per-chunk models.

The SDK builds a pydantic model for every streamed chunk and wraps every answer in its response classes: for
a reply streamed token by token that was a third of ``appliance serve``'s CPU per turn (profiled). The
SDK's documented way out is ``client.post(path, cast_to=<its HTTP library's Response>)``: the request is
still the SDK's (base URL, key, timeouts, status errors as ``APIStatusError``…), the answer is the bare HTTP
response, read here as bytes. Whatever fails after that is the HTTP library's error, which
:func:`~appliance.providers.sdk_errors.map_sdk_error` maps too.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import cache
from typing import Any

import trio

from appliance.errors import ProviderBadReply
from appliance.providers.sdk_errors import http_library, map_sdk_error

MAX_LINE = 1 << 20  # an event line longer than this is not a chat stream
DRAIN_SECONDS = 0.1


@cache
def response_type() -> type:
    """The Response class of the HTTP library under the OpenAI SDK (httpx, or httpx2 in newer SDKs)."""
    import openai

    return http_library(openai.DefaultAsyncHttpxClient).Response


async def post_raw(
    client: Any,
    path: str,
    body: dict[str, Any],
    *,
    stream: bool = False,
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    """``client.post`` answering the bare HTTP response (unread when ``stream``: close it)."""
    options: dict[str, Any] = {"headers": dict(headers or {})}
    if files is not None:
        options["headers"]["Content-Type"] = "multipart/form-data"  # the SDK then lets httpx set the boundary
    return await client.post(path, body=body, files=files, cast_to=response_type(), stream=stream, options=options)


async def sse_data(provider: str, response: Any) -> AsyncIterator[bytes]:
    """The ``data`` of each server-sent event, as bytes (split here, not by the HTTP library's text decoder)."""
    pending = b""
    data: list[bytes] = []
    async for piece in response.aiter_bytes():
        pending += piece
        *lines, pending = pending.split(b"\n")
        if len(pending) > MAX_LINE:
            raise ProviderBadReply(provider, f"an event line longer than {MAX_LINE} bytes")
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:  # an event ends at a blank line
                if data:
                    yield b"\n".join(data)
                    data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
    if pending.startswith(b"data:"):
        value = pending[5:]
        data.append(value[1:] if value.startswith(b" ") else value)
    if data:
        yield b"\n".join(data)


async def drain(events: AsyncIterator[bytes]) -> None:
    """Read what follows ``[DONE]`` (the end of the HTTP body), so the connection goes back to the pool
    instead of being closed: a new connection, every turn, costs more CPU than the whole reply's parsing. A
    server that keeps sending after it is cut off after ``DRAIN_SECONDS``; a failure here spoils nothing."""
    try:
        with trio.move_on_after(DRAIN_SECONDS):
            async for _ in events:
                pass
    except Exception as exc:
        if map_sdk_error("drain", exc) is None:
            raise


def json_object(provider: str, data: bytes) -> dict[str, Any]:
    """One event's JSON object; a malformed one, or an ``error`` the server put in the stream, is a bad reply."""
    try:
        value = json.loads(data)
    except ValueError:
        raise ProviderBadReply(provider, f"malformed reply: {data[:120]!r}") from None
    if not isinstance(value, dict):
        raise ProviderBadReply(provider, f"malformed reply: {data[:120]!r}")
    if value.get("error"):
        error = value["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise ProviderBadReply(provider, f"error in the stream: {message}"[:300])
    return value
