"""Map the OpenAI and Anthropic SDK errors (and the HTTP library under them) into our exception tree.

Both SDKs share one generated error hierarchy, so we match on class names and avoid importing either SDK
just to classify an error. (The OpenAI providers now speak HTTP directly, ``openai_raw``; the Anthropic one
still goes through its SDK.)
"""

from __future__ import annotations

from appliance.errors import (
    ProviderBadReply,
    ProviderError,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)

_REJECTED_STATUS = {400, 401, 403, 404, 413, 415, 422}


def _names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def map_sdk_error(provider: str, exc: BaseException, *, mid_stream: bool = False) -> ProviderError | None:
    """Our error for ``exc``, or None when it is not a provider failure (then it is our bug: let it raise).

    ``mid_stream``: the reply had already started, so a dropped connection is a reply cut short.
    """
    if isinstance(exc, ProviderError):
        return exc
    mapped = _map(provider, exc)
    if mid_stream and isinstance(mapped, ProviderUnavailable) and "APIStatusError" not in _names(exc):
        return ProviderBadReply(provider, f"stream cut short: {exc.__cause__ or exc}"[:300])
    return mapped


def _map(provider: str, exc: BaseException) -> ProviderError | None:
    names = _names(exc)
    module = type(exc).__module__
    if "APITimeoutError" in names or "TimeoutException" in names:
        return ProviderTimeout(provider, "timed out")
    if "APIConnectionError" in names:
        return ProviderUnavailable(provider, f"cannot connect: {exc.__cause__ or exc}")
    if "APIStatusError" in names:
        status = getattr(exc, "status_code", 0)
        detail = f"HTTP {status}: {getattr(exc, 'message', '') or exc}"[:300]
        if status in _REJECTED_STATUS:
            return ProviderRejected(provider, detail)
        return ProviderUnavailable(provider, detail, retry_after=_retry_after(exc))
    if "APIResponseValidationError" in names or "JSONDecodeError" in names:
        return ProviderBadReply(provider, f"malformed reply: {exc}"[:300])
    if module.startswith(("httpx", "httpcore", "h11", "h2")):
        if "ReadTimeout" in names or "TimeoutException" in names or "PoolTimeout" in names:
            return ProviderTimeout(provider, "timed out")
        if "RemoteProtocolError" in names or "ReadError" in names:
            return ProviderBadReply(provider, f"stream cut short: {exc}"[:300])
        return ProviderUnavailable(provider, f"{type(exc).__name__}: {exc}"[:300])
    if "APIError" in names:
        return ProviderBadReply(provider, f"{exc}"[:300])
    return None


# Connections stay open this long when idle. httpx's default of 5 s means a new TCP+TLS handshake
# (100-200 ms from a home network) on nearly every turn, since people listen longer than that.
KEEPALIVE_SECONDS = 90.0


def http_client(factory):
    """The SDK's own default HTTP client, with long-lived keep-alive connections."""
    import importlib

    # The SDKs are built on httpx or its successor httpx2: take Limits from whichever this one uses.
    http = importlib.import_module(factory.__mro__[1].__module__.split(".")[0])
    limits = http.Limits(max_connections=20, max_keepalive_connections=10, keepalive_expiry=KEEPALIVE_SECONDS)
    return factory(limits=limits)


class Warmth:
    """Remembers when a provider last talked to its server, to know whether its connection is still open."""

    def __init__(self) -> None:
        self.last_used = float("-inf")

    def touch(self) -> None:
        import trio

        self.last_used = trio.current_time()

    def cold(self) -> bool:
        import trio

        return trio.current_time() - self.last_used > KEEPALIVE_SECONDS / 2


async def warm_openai(client, warmth: Warmth) -> None:
    """Open a connection before it is needed (cheap ``GET /models``, same in both SDKs); failures do not matter."""
    if not warmth.cold():
        return
    warmth.touch()
    try:
        await client.models.list()
    except Exception:  # noqa: BLE001  a compatible server without /models is still warmed by the connection
        pass
