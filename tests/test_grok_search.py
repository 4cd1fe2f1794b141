"""Built-in ``grok_search``: a fake of xAI's Responses API on 127.0.0.1 checks what we send (the Agent Tools
API's ``web_search``/``x_search`` tools, the key, no Live Search ``search_parameters``), and every bad, huge
or slow reply becomes a reason for the model, never a crash or a hung turn."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pydantic
import pytest
import trio
import trio.lowlevel
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from appliance.agent.factory import build_tools
from appliance.agent.grok_search import GrokSearch, answer_from_reply, grok_search_tool
from appliance.agent.tools import ToolRegistry
from appliance.events import SentenceStarted, TurnFinished
from appliance.providers.llm.base import ToolCall
from appliance.settings.conversation import LLMConfig, ToolConfig
from tests.fakes.providers import fake_providers
from tests.harness import cloud_config, running_appliance, serve_routes
from tests.test_providers_agent import ASK

XAI_KEY = "xai-test-key-0123456789"


def answer(text: str, *urls: str, citations: list[Any] | None = None) -> dict[str, Any]:
    """A Responses API reply as xAI sends it: the search calls it made, then the message with its citations."""
    return {
        "id": "resp_1",
        "object": "response",
        "status": "completed",
        "model": "grok-4.3",
        "output": [
            {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"query": "q"}},
            {
                "type": "message",
                "role": "assistant",
                "content": [
                    {
                        "type": "output_text",
                        "text": text,
                        "annotations": [{"type": "url_citation", "url": u, "title": "t"} for u in urls],
                    }
                ],
            },
        ],
        "citations": citations if citations is not None else list(urls),
    }


@dataclass
class XAIService:
    reply: Any = field(default_factory=lambda: answer("Tokyo is sunny, 21 degrees.", "https://weather.example/tokyo"))
    status: int = 200
    hang: bool = False  # never answer
    endless: bool = False  # answer 200 with a body that never ends
    requests: list[tuple[dict[str, str], Any]] = field(default_factory=list)


@asynccontextmanager
async def xai_service() -> AsyncIterator[tuple[str, XAIService]]:
    service = XAIService()

    async def responses(request: Request) -> Response:
        service.requests.append((dict(request.headers), await request.json()))
        if service.hang:
            await trio.sleep_forever()
        if service.endless:

            async def forever() -> AsyncIterator[bytes]:
                yield b'{"output": ['
                while True:
                    yield b'{"type": "message", "content": []},' * 1000
                    await trio.lowlevel.checkpoint()

            return StreamingResponse(forever(), media_type="application/json")
        if isinstance(service.reply, bytes):
            return Response(service.reply, status_code=service.status, media_type="application/json")
        return Response(json.dumps(service.reply), status_code=service.status, media_type="application/json")

    async with serve_routes([Route("/v1/responses", responses, methods=["POST"])]) as url:
        yield f"{url}/v1", service


async def test_the_model_searches_with_grok_in_a_turn_and_says_the_progress_sentence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XAI_API_KEY", XAI_KEY)
    tool = {
        "builtin": "grok_search",
        "sources": ["web", "x"],
        "allowed_domains": ["weather.example", "jma.go.jp"],
        "excluded_x_handles": ["@spam_bot"],
        "progress": "Let me look that up.",
        "model": "grok-test",
    }
    async with (
        xai_service() as (base, service),
        fake_providers(tool_call=("grok_search", {"query": "weather in Tokyo today"}), tool_reply="{result}") as fake,
    ):
        tool["base_url"] = base
        config = cloud_config(fake.url, llm__tools=[tool], llm__progress_after=0.0)
        async with running_appliance(config) as (app, log):
            await app.conversation.start_turn(ASK)
            done = await log.wait_for(TurnFinished)
            spoken = [e.text for e in log.of(SentenceStarted)]
    assert done.outcome == "done"
    headers, body = service.requests[0]
    assert headers["authorization"] == f"Bearer {XAI_KEY}" and headers["accept-encoding"] == "identity"
    assert body["model"] == "grok-test" and body["store"] is False and "search_parameters" not in body
    assert body["input"][-1] == {"role": "user", "content": "weather in Tokyo today"}
    assert body["tools"] == [
        {"type": "web_search", "allowed_domains": ["weather.example", "jma.go.jp"]},
        {"type": "x_search", "excluded_x_handles": ["spam_bot"]},
    ]
    offered = fake.bodies("/v1/chat/completions")[0]["tools"][0]["function"]
    assert offered["name"] == "grok_search" and offered["parameters"]["required"] == ["query"]
    assert "the web and posts on X" in offered["description"]
    tool_message = fake.bodies("/v1/chat/completions")[1]["messages"][-1]
    assert tool_message["content"] == "Tokyo is sunny, 21 degrees.\n\nSources: https://weather.example/tokyo"
    assert spoken[0] == "Let me look that up." and any("sunny" in s for s in spoken[1:])


def _tool(base: str) -> Any:
    return grok_search_tool(GrokSearch(XAI_KEY, base_url=base), timeout=5.0)


async def _run(tool: Any, arguments: dict[str, Any] | None = None) -> Any:
    registry = ToolRegistry()
    registry.add(tool)
    return await registry.run(ToolCall("c1", tool.name, {"query": "news"} if arguments is None else arguments))


@pytest.mark.parametrize(
    ("reply", "status", "message"),
    [
        (b"<html>oops</html>", 200, "not JSON"),
        (b"[1, 2]", 200, "not a response"),
        (b'{"output": "text"}', 200, "no answer"),
        (b'{"output": [{"type": "message", "content": [{"type": "output_text", "text": 42}]}]}', 200, "no answer"),
        (b'{"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}', 200, "max_output_tokens"),
        (b'{"status": "failed", "error": {"code": "server_error", "message": "x"}}', 200, "failed (server_error)"),
        (f'{{"error": "bad key {XAI_KEY}"}}'.encode(), 401, "refused the API key (HTTP 401)"),
        (b'{"code": "Live search is deprecated"}', 410, "no longer offers"),
        (b"{}", 429, "busy or out of credit"),
        (b"{}", 502, "failed (HTTP 502)"),
    ],
)
async def test_bad_replies_become_reasons_for_the_model(reply: bytes, status: int, message: str) -> None:
    async with xai_service() as (base, service):
        service.reply, service.status = reply, status
        result = await _run(_tool(base))
    assert result.is_error and message in result.content
    assert XAI_KEY not in result.content


async def test_a_huge_or_endless_reply_is_cut_off_unread() -> None:
    async with xai_service() as (base, service):
        service.endless = True
        result = await _run(_tool(base))
    assert result.is_error and "too large" in result.content


async def test_a_silent_service_is_cut_off_at_the_tool_timeout() -> None:
    async with xai_service() as (base, service):
        service.hang = True
        with trio.fail_after(10):  # the tool's own limit (0.3 s) must end it, not this guard
            result = await _run(grok_search_tool(GrokSearch(XAI_KEY, base_url=base), timeout=0.3))
    assert result.is_error and "0.3 seconds" in result.content


async def test_concurrent_searches_each_get_their_answer() -> None:
    async with xai_service() as (base, service):
        tool = _tool(base)
        results: list[Any] = []

        async def one(query: str) -> None:
            results.append(await _run(tool, {"query": query}))

        async with trio.open_nursery() as nursery:
            for n in range(5):
                nursery.start_soon(one, f"question {n}")
    assert len(results) == 5 and not any(r.is_error for r in results)
    assert sorted(body["input"][-1]["content"] for _, body in service.requests) == [f"question {n}" for n in range(5)]


async def test_an_unreachable_service_and_a_missing_query_are_reasons() -> None:
    result = await _run(_tool("http://127.0.0.1:9/v1"))
    assert result.is_error and "cannot reach the search service" in result.content
    result = await _run(_tool("http://127.0.0.1:9/v1"), {"query": "  "})
    assert result.is_error and "'query'" in result.content


def test_answers_keep_only_web_links_once_and_are_cut_to_max_chars() -> None:
    reply = answer(
        "word " * 100,
        "https://a.example/1",
        "javascript:alert(1)",
        "https://a.example/1",
        citations=["https://b.example/2", 42, None, "file:///etc/passwd", "https://c.example/" + "x" * 1000],
    )
    text = answer_from_reply(reply, 120)
    body, sources = text.split("\n\nSources: ")
    assert body.endswith("… (cut)") and len(body) < 140
    links = sources.split(" ")
    assert links[:2] == ["https://a.example/1", "https://b.example/2"] and len(links) == 3
    assert len(links[2]) == 300


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"builtin": "grok_search", "allowed_domains": ["a.com"] * 6}, "allowed_domains: at most 5"),
        ({"builtin": "grok_search", "allowed_domains": ["a.com"], "excluded_domains": ["b.com"]}, "cannot both"),
        ({"builtin": "grok_search", "allowed_domains": ["https://a.com/x"]}, "not a domain"),
        ({"builtin": "grok_search", "excluded_x_handles": ["@a"]}, "needs 'x' in sources"),
        ({"builtin": "grok_search", "sources": ["x"], "allowed_x_handles": ["not a handle"]}, "not an X handle"),
        ({"builtin": "grok_search", "sources": ["x"], "allowed_x_handles": ["a"] * 11}, "at most 10"),
        ({"builtin": "grok_search", "sources": []}, "at least one"),
        ({"builtin": "grok_search", "sources": ["news"]}, "sources"),
        ({"builtin": "read_web_page", "allowed_domains": ["a.com"]}, "for builtin = 'grok_search' only"),
    ],
)
def test_config_mistakes_are_refused_with_their_reason(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        ToolConfig.model_validate(settings)


def test_without_a_key_the_tool_is_a_config_error_that_names_its_place(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XAI_API_KEY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    llm = LLMConfig(tools=[ToolConfig(builtin="read_web_page"), ToolConfig(builtin="grok_search")])
    with pytest.raises(ValueError, match=r"llm\.tools\[1\]: grok_search needs an xAI API key \(set XAI_API_KEY"):
        build_tools(llm)
    monkeypatch.setenv("XAI_API_KEY", XAI_KEY)
    built = build_tools(llm).get("grok_search")
    assert built is not None and XAI_KEY not in repr(built)


async def test_through_a_gateway_without_a_key_no_empty_bearer_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XAI_API_KEY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    async with xai_service() as (base, service):
        tool = ToolConfig(builtin="grok_search", base_url=base, headers={"X-Gateway-Key": "g-123"})
        built = build_tools(LLMConfig(tools=[tool])).get("grok_search")
        result = await _run(built)
    assert not result.is_error and "sunny" in result.content
    headers, _body = service.requests[0]
    assert "authorization" not in headers and headers["x-gateway-key"] == "g-123"
