"""Anthropic Messages API with streaming."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from appliance.brains.base import Message
from appliance.conversation.sdk_errors import map_sdk_error
from appliance.errors import ProviderBadReply


class AnthropicChat:
    name = "anthropic-llm"

    def __init__(self, model: str, api_key: str | None, base_url: str | None = None, timeout: float = 30.0,
                 temperature: float | None = None, max_tokens: int = 512) -> None:
        import anthropic  # costs 1-2 s to import: only when this provider is configured

        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self._client: Any = anthropic.AsyncAnthropic(
            api_key=api_key or "not-needed",
            base_url=base_url,
            timeout=anthropic.Timeout(timeout, connect=min(timeout, 5.0)),
            max_retries=0,
        )

    async def stream(self, system: str, messages: Sequence[Message]) -> AsyncIterator[str]:
        extra: dict[str, Any] = {}
        if self.temperature is not None:
            extra["temperature"] = self.temperature
        finished = started = False
        try:
            async with self._client.messages.stream(
                model=self.model,
                system=system,
                max_tokens=self.max_tokens,
                messages=[{"role": m.role, "content": m.content} for m in messages],
                **extra,
            ) as stream:
                async for event in stream:
                    started = True
                    kind = getattr(event, "type", "")
                    if kind == "content_block_delta" and getattr(event.delta, "type", "") == "text_delta":
                        yield event.delta.text
                    elif kind == "message_stop":
                        finished = True
        except Exception as exc:
            mapped = map_sdk_error(self.name, exc, mid_stream=started)
            if mapped is None:
                raise
            raise mapped from exc
        if not finished:
            raise ProviderBadReply(self.name, "stream ended before the reply was complete")

    async def aclose(self) -> None:
        await self._client.close()
