"""Cheap health probes for brains that have none of their own.

The cloud brain is probed with ``GET {base_url}/models``: free, needs the network, DNS, TLS and a valid key,
and spends no tokens. A 404 (a compatible server without that route) still proves the server is up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from appliance.errors import ProviderRejected, ProviderTimeout, ProviderUnavailable

_DEFAULT_BASE = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com/v1"}


def models_probe(
    provider: str, base_url: str | None, api_key: str | None, timeout: float = 5.0
) -> Callable[[], Awaitable[None]]:
    base = (base_url or _DEFAULT_BASE.get(provider, _DEFAULT_BASE["openai"])).rstrip("/")
    headers = (
        {"x-api-key": api_key or "", "anthropic-version": "2023-06-01"}
        if provider == "anthropic"
        else ({"Authorization": f"Bearer {api_key}"} if api_key else {})
    )
    name = f"{provider}-probe"

    async def probe() -> None:
        import httpx

        try:
            async with httpx.AsyncClient(timeout=timeout) as client:
                response = await client.get(f"{base}/models", headers=headers)
        except httpx.TimeoutException:
            raise ProviderTimeout(name, f"{base} did not answer in {timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(name, f"cannot reach {base}: {exc}") from None
        if response.status_code in (401, 403):
            raise ProviderRejected(name, f"{base} refused the key (HTTP {response.status_code})")
        if response.status_code == 429 or response.status_code >= 500:
            retry = response.headers.get("retry-after")
            try:
                seconds = float(retry) if retry else None
            except ValueError:
                seconds = None
            raise ProviderUnavailable(name, f"HTTP {response.status_code}", retry_after=seconds)

    return probe
