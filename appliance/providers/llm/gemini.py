"""Google Gemini ``streamGenerateContent`` (SSE) over plain httpx: text, function calls and images.

The REST API is small and stable; the google-genai SDK would add a large dependency tree for the same bytes.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from appliance.errors import ProviderBadReply, ProviderRejected
from appliance.providers.http_errors import (
    StreamProgress,
    check_response,
    http_client,
    parse_json,
    provider_errors,
    sse_events,
    warm_http,
)
from appliance.providers.llm.base import Image, LLMEvent, ToolCall, ToolRound, ToolSpec
from appliance.providers.sdk_errors import Warmth
from appliance.turns import Message

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
_DONE = {"STOP", "MAX_TOKENS"}
_BLOCKED = {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII"}
# JSON-schema keys Gemini's OpenAPI subset rejects.
_UNSUPPORTED_SCHEMA_KEYS = {"title", "additionalProperties", "$schema", "default"}


def gemini_schema(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: gemini_schema(v) for k, v in schema.items() if k not in _UNSUPPORTED_SCHEMA_KEYS}
    if isinstance(schema, list):
        return [gemini_schema(v) for v in schema]
    return schema


def gemini_contents(
    messages: Sequence[Message], rounds: Sequence[ToolRound], images: Sequence[Image]
) -> list[dict[str, Any]]:
    contents: list[dict[str, Any]] = []
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    for i, m in enumerate(messages):
        parts: list[dict[str, Any]] = [{"text": m.content}]
        if i == last_user:
            parts += [
                {"inlineData": {"mimeType": img.mime_type, "data": base64.b64encode(img.data).decode()}}
                for img in images
            ]
        contents.append({"role": "model" if m.role == "assistant" else "user", "parts": parts})
    for r in rounds:
        model_parts: list[dict[str, Any]] = [{"text": r.text}] if r.text else []
        model_parts += [{"functionCall": {"name": res.call.name, "args": res.call.arguments}} for res in r.results]
        contents.append({"role": "model", "parts": model_parts})
        contents.append(
            {
                "role": "user",
                "parts": [
                    {
                        "functionResponse": {
                            "name": res.call.name,
                            "response": {"error": res.content} if res.is_error else {"result": res.content},
                        }
                    }
                    for res in r.results
                ],
            }
        )
    return contents


class GeminiChat:
    name = "gemini-llm"

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
        self.web_search = web_search  # grounding with Google Search
        self.api_key = api_key or ""
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.temperature = temperature
        self.max_tokens = max_tokens
        self._client = http_client(timeout)
        self.warmth = Warmth()

    def _body(
        self,
        system: str,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        rounds: Sequence[ToolRound],
        images: Sequence[Image],
    ) -> dict[str, Any]:
        config: dict[str, Any] = {"maxOutputTokens": self.max_tokens}
        if self.temperature is not None:
            config["temperature"] = self.temperature
        body: dict[str, Any] = {
            "contents": gemini_contents(messages, rounds, images),
            "systemInstruction": {"parts": [{"text": system}]},
            "generationConfig": config,
        }
        declared: list[dict[str, Any]] = []
        if tools:
            declared.append(
                {
                    "functionDeclarations": [
                        {"name": t.name, "description": t.description, "parameters": gemini_schema(t.parameters)}
                        for t in tools
                    ]
                }
            )
        if self.web_search:
            declared.append({"google_search": {}})
        if declared:
            body["tools"] = declared
        return body

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
        url = f"{self.base_url}/v1beta/models/{self.model}:streamGenerateContent"
        progress = StreamProgress()
        finished = False
        calls: list[ToolCall] = []
        self.warmth.touch()
        with provider_errors(self.name, progress):
            async with self._client.stream(
                "POST",
                url,
                params={"alt": "sse"},
                headers={"x-goog-api-key": self.api_key},
                json=self._body(system, messages, tools, rounds, images),
            ) as response:
                await check_response(self.name, response)
                async for _, data in sse_events(response):
                    progress.started = True
                    chunk = parse_json(self.name, data)
                    if "error" in chunk:
                        raise ProviderBadReply(self.name, f"error mid-stream: {chunk['error']}"[:300])
                    feedback = chunk.get("promptFeedback") or {}
                    if feedback.get("blockReason"):
                        raise ProviderRejected(self.name, f"prompt blocked: {feedback['blockReason']}")
                    for candidate in chunk.get("candidates") or ():
                        for part in (candidate.get("content") or {}).get("parts") or ():
                            if part.get("text") and not part.get("thought"):
                                yield part["text"]
                            elif "functionCall" in part:
                                fc = part["functionCall"]
                                args = fc.get("args") or {}
                                if not isinstance(args, dict) or not fc.get("name"):
                                    raise ProviderBadReply(
                                        self.name, f"malformed function call: {json.dumps(fc)[:120]}"
                                    )
                                calls.append(ToolCall(fc.get("id") or f"call_{uuid.uuid4().hex[:8]}", fc["name"], args))
                        reason = candidate.get("finishReason")
                        if reason in _BLOCKED:
                            raise ProviderRejected(self.name, f"reply blocked: {reason}")
                        if reason == "MALFORMED_FUNCTION_CALL":
                            raise ProviderBadReply(self.name, "the model wrote a malformed function call")
                        if reason:
                            finished = True
        if not finished:
            raise ProviderBadReply(self.name, "stream ended before the reply was complete")
        for call in calls:
            yield call

    async def warm(self) -> None:
        await warm_http(self._client, self.base_url, self.warmth)

    async def aclose(self) -> None:
        await self._client.aclose()
