"""OpenAI chat completions with streaming, and every server that speaks it (LiteLLM, Ollama, vLLM, LM Studio
via ``base_url``): text, tool calls (streamed in fragments, assembled here) and images."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from appliance.errors import ProviderBadReply
from appliance.providers.http_errors import StreamProgress, check_response, provider_errors
from appliance.providers.llm.base import Image, LLMEvent, ToolCall, ToolRound, ToolSpec
from appliance.providers.openai_raw import OpenAIHttp, drain, json_object, sse_data
from appliance.providers.sdk_errors import Warmth
from appliance.streams import closing
from appliance.turns import Message


def data_url(image: Image) -> str:
    return f"data:{image.mime_type};base64,{base64.b64encode(image.data).decode()}"


def openai_messages(
    system: str, messages: Sequence[Message], rounds: Sequence[ToolRound], images: Sequence[Image]
) -> list[dict[str, Any]]:
    payload: list[dict[str, Any]] = [{"role": "system", "content": system}]
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    for i, m in enumerate(messages):
        if i == last_user and images:
            parts: list[dict[str, Any]] = [{"type": "text", "text": m.content}]
            parts += [{"type": "image_url", "image_url": {"url": data_url(img)}} for img in images]
            payload.append({"role": "user", "content": parts})
        else:
            payload.append({"role": m.role, "content": m.content})
    for r in rounds:
        payload.append(
            {
                "role": "assistant",
                "content": r.text or None,
                "tool_calls": [
                    {
                        "id": res.call.id,
                        "type": "function",
                        "function": {"name": res.call.name, "arguments": json.dumps(res.call.arguments)},
                    }
                    for res in r.results
                ],
            }
        )
        payload += [{"role": "tool", "tool_call_id": res.call.id, "content": res.content} for res in r.results]
    return payload


def parse_arguments(provider: str, name: str, raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw.strip() else {}
    except ValueError:
        raise ProviderBadReply(provider, f"tool call {name!r} has malformed JSON arguments: {raw[:80]!r}") from None
    if not isinstance(value, dict):
        raise ProviderBadReply(provider, f"tool call {name!r} arguments are not an object")
    return value


class OpenAIChat:
    name = "openai-llm"

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
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.web_search = web_search  # OpenAI's search models search when asked through web_search_options
        self.warmth = Warmth()
        self._http = OpenAIHttp(api_key, base_url, timeout)

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
        payload = openai_messages(system, messages, rounds, images)
        finished = False
        calls: dict[int, dict[str, str]] = {}
        progress = StreamProgress()
        self.warmth.touch()
        body = {"model": self.model, "messages": payload, "stream": True, **self._options(tools)}
        with provider_errors(self.name, progress):
            async with self._http.stream("/chat/completions", body) as response:
                await check_response(self.name, response)
                async with closing(sse_data(self.name, response)) as events:
                    async for data in events:
                        if data.startswith(b"[DONE]"):
                            await drain(events)
                            break
                        progress.started = True
                        texts, ended = _read_chunk(self.name, data, calls)
                        for text in texts:
                            yield text
                        finished = finished or ended
        if not finished:
            raise ProviderBadReply(self.name, "stream ended before the reply was complete")
        for index in sorted(calls):
            slot = calls[index]
            if not slot["name"]:
                raise ProviderBadReply(self.name, "tool call without a name")
            yield ToolCall(
                slot["id"] or f"call_{index}", slot["name"], parse_arguments(self.name, slot["name"], slot["arguments"])
            )

    def _options(self, tools: Sequence[ToolSpec]) -> dict[str, Any]:
        extra: dict[str, Any] = {"max_tokens": self.max_tokens}
        if self.temperature is not None:
            extra["temperature"] = self.temperature
        if self.web_search:
            extra["web_search_options"] = {}
        if tools:
            extra["tools"] = [
                {
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
                }
                for t in tools
            ]
        return extra

    async def warm(self) -> None:
        await self._http.warm(self.warmth)

    async def aclose(self) -> None:
        await self._http.aclose()


def _read_chunk(provider: str, data: bytes, calls: dict[int, dict[str, str]]) -> tuple[list[str], bool]:
    """One streamed chunk: its text, and whether the reply finished; tool call fragments go into ``calls``.

    Read as plain JSON: the SDK's typed chunk objects cost more CPU than everything else in a turn.
    """
    texts: list[str] = []
    finished = False
    try:
        for choice in json_object(provider, data).get("choices") or ():
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content:
                texts.append(str(content))
            for fragment in delta.get("tool_calls") or ():
                _gather(calls, fragment)
            finished = finished or bool(choice.get("finish_reason"))
    except (AttributeError, TypeError):  # a field of the wrong shape
        raise ProviderBadReply(provider, f"malformed reply: {data[:120]!r}") from None
    return texts, finished


def _gather(calls: dict[int, dict[str, str]], fragment: dict[str, Any]) -> None:
    """One streamed piece of a tool call (as the wire has it), added to the call it belongs to."""
    index = fragment.get("index")
    if not isinstance(index, int):  # some compatible servers omit the index and send each call whole, with its id
        index = len(calls) if fragment.get("id") or not calls else max(calls)
    slot = calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
    if fragment.get("id"):
        slot["id"] = str(fragment["id"])
    function = fragment.get("function") or {}
    if function.get("name"):
        slot["name"] += str(function["name"])
    if function.get("arguments"):
        slot["arguments"] += str(function["arguments"])
