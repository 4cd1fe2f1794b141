"""The OpenAI REST API (and every server that speaks it) over the lean HTTP client (``lean_http``; httpx2 behind a
proxy), answers read raw.

The OpenAI providers used the official SDK; profiled in ``appliance serve`` (five requests and a streamed
reply per turn), the SDK was most of the server's CPU: a pydantic model per streamed chunk, and per request
its option models, header merging and retry wrappers (≈0.5 ms a request over httpx's own). The three
endpoints we call are small and stable, so they are spoken here directly, through the same error boundary
as the other HTTP providers (``http_errors``: statuses, httpx failures, cut streams). What the SDK read from
the environment is read the same way: ``OPENAI_BASE_URL``, ``OPENAI_ORG_ID``, ``OPENAI_PROJECT_ID``, and the
proxy variables (``HTTPS_PROXY``...), for which httpx2 is kept.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import trio

from appliance.errors import ProviderBadReply
from appliance.providers.http_errors import http_client, map_http_error, warm_http
from appliance.providers.lean_http import LeanClient

DEFAULT_BASE_URL = "https://api.openai.com/v1"
MAX_LINE = 1 << 20  # an event line longer than this is not a chat stream
DRAIN_SECONDS = 0.1
_JSON = {"Content-Type": "application/json"}


class OpenAIHttp:
    """One OpenAI-compatible server: its URL, its key and a pool of kept-alive connections."""

    def __init__(self, api_key: str | None, base_url: str | None, timeout: float) -> None:
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        # A compatible server without auth still gets a placeholder key, as the SDK required one.
        headers = {"Authorization": f"Bearer {api_key or 'not-needed'}"}
        for header, variable in (("OpenAI-Organization", "OPENAI_ORG_ID"), ("OpenAI-Project", "OPENAI_PROJECT_ID")):
            if os.environ.get(variable):
                headers[header] = os.environ[variable]
        self.client: Any = _client(self.base_url, headers, timeout)

    def stream(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
        """``async with`` the response to a JSON POST, its body not read yet."""
        content = json.dumps(body, ensure_ascii=False).encode()
        return self.client.stream("POST", self.base_url + path, content=content, headers={**_JSON, **(headers or {})})

    async def post_form(self, path: str, fields: dict[str, str], file: tuple[str, bytes, str]) -> Any:
        """A multipart form with one file, built as one body: httpx's multipart encoder streams it in pieces
        (≈0.3 ms more CPU for a one-second utterance, measured) and this form is always this simple."""
        boundary = uuid.uuid4().hex
        parts = [_form_part(boundary, f'name="{_quoted(name)}"', value.encode()) for name, value in fields.items()]
        filename, data, mime = file
        disposition = f'name="file"; filename="{_quoted(filename)}"\r\nContent-Type: {_quoted(mime)}'
        body = b"".join([*parts, _form_part(boundary, disposition, data), f"--{boundary}--\r\n".encode()])
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        return await self.client.post(self.base_url + path, content=body, headers=headers)

    async def warm(self, warmth: Any) -> None:
        """Open a connection before it is needed (``/models`` is cheap); failures do not matter."""
        await warm_http(self.client, self.base_url + "/models", warmth)

    async def aclose(self) -> None:
        await self.client.aclose()


def _client(base_url: str, headers: dict[str, str], timeout: float) -> Any:
    """The lean client (``lean_http``), or httpx2 where a proxy is configured for the URL: httpx2 honours
    ``HTTPS_PROXY``/``ALL_PROXY``/``NO_PROXY`` as the SDK did; the lean client speaks only to the origin."""
    from urllib.parse import urlsplit
    from urllib.request import getproxies, proxy_bypass

    from appliance.providers.sdk_errors import KEEPALIVE_SECONDS

    url = urlsplit(base_url)
    proxies = getproxies()
    if url.scheme not in ("http", "https") or (
        (proxies.get(url.scheme) or proxies.get("all")) and not proxy_bypass(url.hostname or "")
    ):
        return http_client(timeout, headers=headers)
    connect = min(timeout, 5.0)
    return LeanClient(base_url, headers, timeout=timeout, connect_timeout=connect, keepalive=KEEPALIVE_SECONDS)


def _form_part(boundary: str, disposition: str, data: bytes) -> bytes:
    return f"--{boundary}\r\nContent-Disposition: form-data; {disposition}\r\n\r\n".encode() + data + b"\r\n"


def _quoted(text: str) -> str:
    """A value inside a multipart header, escaped as browsers (and httpx) do."""
    return text.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


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
        if map_http_error("drain", exc) is None:
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
