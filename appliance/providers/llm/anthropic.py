"""Anthropic Messages API with streaming: text, tool use (input JSON streamed in fragments) and images."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Sequence
from typing import Any

from appliance.errors import ProviderBadReply
from appliance.providers.llm.base import Image, LLMEvent, ToolCall, ToolRound, ToolSpec
from appliance.providers.llm.openai import parse_arguments
from appliance.providers.sdk_errors import Warmth, http_client, map_sdk_error, warm_openai
from appliance.turns import Message


def anthropic_messages(
    messages: Sequence[Message], rounds: Sequence[ToolRound], images: Sequence[Image]
) -> list[dict[str, Any]]:
    payload: list[dict[str, Any]] = []
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    for i, m in enumerate(messages):
        if i == last_user and images:
            parts: list[dict[str, Any]] = [
                {
                    "type": "image",
                    "source": {
                        "type": "base64",
                        "media_type": img.mime_type,
                        "data": base64.b64encode(img.data).decode(),
                    },
                }
                for img in images
            ]
            parts.append({"type": "text", "text": m.content})
            payload.append({"role": "user", "content": parts})
        else:
            payload.append({"role": m.role, "content": m.content})
    for r in rounds:
        content: list[dict[str, Any]] = [{"type": "text", "text": r.text}] if r.text else []
        content += [
            {"type": "tool_use", "id": res.call.id, "name": res.call.name, "input": res.call.arguments}
            for res in r.results
        ]
        payload.append({"role": "assistant", "content": content})
        payload.append(
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": res.call.id,
                        "content": res.content,
                        "is_error": res.is_error,
                    }
                    for res in r.results
                ],
            }
        )
    return payload


WEB_SEARCH_TOOL = "web_search_20250305"


class AnthropicChat:
    name = "anthropic-llm"

    def __init__(
        self,
        model: str,
        api_key: str | None,
        base_url: str | None = None,
        timeout: float = 30.0,
        temperature: float | None = None,
        max_tokens: int = 512,
        *,
        web_search: bool = False,
    ) -> None:
        import anthropic  # costs 1-2 s to import: only when this provider is configured

        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.web_search = web_search
        self._client: Any = anthropic.AsyncAnthropic(
            api_key=api_key or "not-needed",
            base_url=base_url,
            timeout=anthropic.Timeout(timeout, connect=min(timeout, 5.0)),
            max_retries=0,
            http_client=http_client(anthropic.DefaultAsyncHttpxClient),
        )
        self.warmth = Warmth()

    async def stream(
        self,
        system: str,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec] = (),
        rounds: Sequence[ToolRound] = (),
        images: Sequence[Image] = (),
        conversation_id: str = "",
    ) -> AsyncIterator[LLMEvent]:
        finished = started = False
        blocks: dict[int, dict[str, str]] = {}
        calls: list[ToolCall] = []
        try:
            self.warmth.touch()
            # The raw event stream, not the ``messages.stream`` helper: that one also builds a snapshot of the
            # whole message after every event, which we never read.
            stream = await self._client.messages.create(
                model=self.model,
                system=system,
                max_tokens=self.max_tokens,
                messages=anthropic_messages(messages, rounds, images),
                stream=True,
                **self._options(tools),
            )
            async with stream:
                async for event in stream:
                    started = True
                    text = self._on_event(event, blocks, calls)
                    if text is not None:
                        yield text
                    elif getattr(event, "type", "") == "message_stop":
                        finished = True
        except Exception as exc:
            mapped = map_sdk_error(self.name, exc, mid_stream=started)
            if mapped is None:
                raise
            raise mapped from exc
        if not finished:
            raise ProviderBadReply(self.name, "stream ended before the reply was complete")
        for call in calls:
            yield call

    def _options(self, tools: Sequence[ToolSpec]) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.temperature is not None:
            extra["temperature"] = self.temperature
        declared: list[dict[str, Any]] = [
            {"name": t.name, "description": t.description, "input_schema": t.parameters} for t in tools
        ]
        if self.web_search:
            # A server tool: Anthropic searches and the reply goes on; its server_tool_use and result blocks
            # are not ours to run, so only tool_use blocks are ever collected.
            declared.append({"type": WEB_SEARCH_TOOL, "name": "web_search", "max_uses": 3})
        if declared:
            extra["tools"] = declared
        return extra

    def _on_event(self, event: Any, blocks: dict[int, dict[str, str]], calls: list[ToolCall]) -> str | None:
        """The text an event carries, if any; tool-use blocks are gathered into ``calls`` as they close."""
        kind = getattr(event, "type", "")
        if kind == "content_block_start" and getattr(event.content_block, "type", "") == "tool_use":
            blocks[event.index] = {"id": event.content_block.id, "name": event.content_block.name, "json": ""}
        elif kind == "content_block_delta":
            delta_kind = getattr(event.delta, "type", "")
            if delta_kind == "text_delta":
                return str(event.delta.text)
            if delta_kind == "input_json_delta" and event.index in blocks:
                blocks[event.index]["json"] += event.delta.partial_json
        elif kind == "content_block_stop" and event.index in blocks:
            block = blocks.pop(event.index)
            arguments = parse_arguments(self.name, block["name"], block["json"])
            calls.append(ToolCall(block["id"], block["name"], arguments))
        return None

    async def warm(self) -> None:
        await warm_openai(self._client, self.warmth)

    async def aclose(self) -> None:
        await self._client.close()
