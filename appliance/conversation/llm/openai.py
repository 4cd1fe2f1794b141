"""OpenAI chat completions with streaming, and every server that speaks it (LiteLLM, Ollama, vLLM, ...)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from appliance.brains.base import Message
from appliance.conversation.sdk_errors import map_sdk_error, openai_client
from appliance.errors import ProviderBadReply


class OpenAIChat:
    name = "openai-llm"

    def __init__(self, model: str, api_key: str | None, base_url: str | None = None, timeout: float = 30.0,
                 temperature: float | None = None, max_tokens: int = 512) -> None:
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self._client: Any = openai_client(api_key, base_url, timeout)

    async def stream(self, system: str, messages: Sequence[Message]) -> AsyncIterator[str]:
        payload = [{"role": "system", "content": system}] + [{"role": m.role, "content": m.content} for m in messages]
        extra: dict[str, Any] = {"max_tokens": self.max_tokens}
        if self.temperature is not None:
            extra["temperature"] = self.temperature
        finished = started = False
        try:
            stream = await self._client.chat.completions.create(
                model=self.model, messages=payload, stream=True, **extra
            )
            async with stream:
                async for chunk in stream:
                    started = True
                    for choice in chunk.choices or ():
                        if choice.delta and choice.delta.content:
                            yield choice.delta.content
                        if choice.finish_reason:
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
