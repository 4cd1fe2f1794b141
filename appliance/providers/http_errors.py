"""The boundary for providers we talk to with plain HTTP (OpenAI, Gemini, Dify, VOICEVOX, Azure, Google, AmiVoice,
HTTP template): one place that turns HTTP statuses, httpx errors and broken bodies into our error tree.

Their client is httpx2, httpx's successor (the OpenAI SDK's own): httpx 0.28's connection pool (httpcore 1.0.9)
walks every connection once per idle connection on each request and each release, and closes idle ones as soon
as it holds more than ``max_keepalive_connections`` in any state. One robot keeps two or three connections, but
``appliance serve`` shares one pool per service among its robots: with 10 robots at once the speech pool holds
about 30, and that bookkeeping was a quarter of the server's CPU (13.0-14.2 → 9.2-11.3 ms a turn, measured).
httpx2's pool is linear. Errors of both libraries are mapped, so a caller's own httpx client is understood too.

``sdk_errors`` does the same for the OpenAI and Anthropic SDKs; both end in the same four errors, so
failover treats every provider alike.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import httpx2

from appliance.errors import (
    ProviderBadReply,
    ProviderError,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)

_TIMEOUT_STATUS = {408, 504}


def http_client(timeout: float, **kwargs: Any) -> httpx2.AsyncClient:
    """A client with a short connect timeout (a dead service must fail over in about a second) and long
    keep-alive (so the next turn finds its connection open)."""
    from appliance.providers.sdk_errors import KEEPALIVE_SECONDS

    # Caps, not reservations: a robot uses two or three connections. `appliance serve` shares one client per
    # service among its robots, up to 4 syntheses each at once: 10 robots need 30 TTS connections, and one
    # closed after a burst is a new handshake in the next.
    limits = httpx2.Limits(max_connections=64, max_keepalive_connections=32, keepalive_expiry=KEEPALIVE_SECONDS)
    return httpx2.AsyncClient(timeout=httpx2.Timeout(timeout, connect=min(timeout, 5.0)), limits=limits, **kwargs)


async def warm_http(client: httpx2.AsyncClient, url: str, warmth: Any) -> None:
    """Open (TCP + TLS) a connection before the turn needs it, with a cheap request whose answer does not
    matter; skipped while the last one is surely still open."""
    if not warmth.cold():
        return
    warmth.touch()
    try:
        await client.head(url)
    except httpx2.HTTPError:
        pass  # warming is a bet: a failure here costs nothing, the real request reports the real error


def _retry_after(response: httpx.Response | httpx2.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def error_detail(body: bytes) -> str:
    """The human part of an error body, whatever the provider's shape (``{"error": {"message"}}``,
    ``{"message"}``, ``{"error": "..."}``, plain text)."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:200]
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            for key in ("message", "detail", "msg", "code"):
                if err.get(key):
                    return str(err[key])[:200]
        elif err:
            return str(err)[:200]
        if data.get("detail"):
            return str(data["detail"])[:200]
    return text[:200]


def status_error(provider: str, status: int, detail: str, retry_after: float | None = None) -> ProviderError:
    message = f"HTTP {status}: {detail}" if detail else f"HTTP {status}"
    if status in _TIMEOUT_STATUS:
        return ProviderTimeout(provider, message)
    if status == 429 or status >= 500:
        return ProviderUnavailable(provider, message, retry_after=retry_after)
    if 400 <= status < 500:
        return ProviderRejected(provider, message)
    return ProviderBadReply(provider, f"unexpected {message}")


async def check_response(provider: str, response: httpx.Response | httpx2.Response) -> None:
    """Raise our error for a non-2xx response (reading its body for the reason, streamed or not)."""
    if response.is_success:
        return
    body = await response.aread()
    raise status_error(provider, response.status_code, error_detail(body), _retry_after(response))


def map_http_error(provider: str, exc: BaseException, *, mid_stream: bool = False) -> ProviderError | None:
    """Our error for an httpx failure; None when ``exc`` is not one (then it is our bug: let it raise)."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, httpx.TimeoutException | httpx2.TimeoutException):
        return ProviderTimeout(provider, "timed out" + (" mid-reply" if mid_stream else ""))
    cut_body = "message body" in str(exc) or "incomplete" in str(exc)  # the answer began, then stopped
    cut = httpx.RemoteProtocolError | httpx.ReadError | httpx2.RemoteProtocolError | httpx2.ReadError
    if isinstance(exc, cut) and (mid_stream or cut_body):
        return ProviderBadReply(provider, f"stream cut short: {exc}"[:300])
    if isinstance(exc, httpx.HTTPError | httpx2.HTTPError):
        return ProviderUnavailable(provider, f"{type(exc).__name__}: {exc}"[:300])
    if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError):
        return ProviderBadReply(provider, f"malformed reply: {exc}"[:300])
    return None


@dataclass
class StreamProgress:
    """Tells the boundary whether a failure happened before or after the reply began."""

    started: bool = False


@contextmanager
def provider_errors(provider: str, progress: StreamProgress | None = None) -> Iterator[None]:
    """Map every library failure inside the block into our tree, once, at the edge."""
    try:
        yield
    except Exception as exc:
        mapped = map_http_error(provider, exc, mid_stream=bool(progress and progress.started))
        if mapped is None or mapped is exc:
            raise
        raise mapped from exc


async def sse_events(response: httpx.Response | httpx2.Response) -> AsyncIterator[tuple[str, str]]:
    """Server-sent events as ``(event, data)``; ``event`` is "message" when the server names none."""
    event, data = "message", list[str]()
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    if data:
        yield event, "\n".join(data)


def parse_json(provider: str, data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise ProviderBadReply(provider, f"malformed event: {data[:120]!r}") from None
