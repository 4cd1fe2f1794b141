"""Map the OpenAI and Anthropic SDK errors (and the HTTP library under them) into our exception tree.

Both SDKs share one generated error hierarchy, so we match on class names and avoid importing either SDK
just to classify an error.
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


def openai_client(api_key: str | None, base_url: str | None, timeout: float):  # type: ignore[no-untyped-def]
    """An AsyncOpenAI client; a compatible server without auth still needs a placeholder key."""
    import openai

    return openai.AsyncOpenAI(
        api_key=api_key or "not-needed",
        base_url=base_url,
        timeout=openai.Timeout(timeout, connect=min(timeout, 5.0)),
        max_retries=0,  # failing over beats retrying: a dead cloud must cost under a second
    )
