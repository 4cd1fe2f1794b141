"""``llm.web_search``: each provider's own search switched on in the request it expects, and the blocks a
searching model streams back (Anthropic's server tool use and results, citations) never mistaken for our
tool calls or spoken."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from appliance.config import AppConfig
from appliance.providers.factory import build_llm
from appliance.providers.llm.anthropic import AnthropicChat
from tests.fakes.providers import KEY, fake_providers
from tests.test_providers_llm import WEATHER, collect, make_llm


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
async def test_web_search_is_asked_for_in_each_providers_own_words(kind: str) -> None:
    async with fake_providers() as fake:
        plain = make_llm(kind, fake.url)
        searching = make_llm(kind, fake.url)
        searching.web_search = True
        assert "".join(await collect(plain)) == fake.reply
        assert "".join(await collect(searching, tools=(WEATHER,))) == fake.reply
        await plain.aclose()
        await searching.aclose()
    path = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}.get(kind)
    bodies = fake.bodies(path) if path else [r.body for r in fake.requests if "streamGenerateContent" in r.path]
    without, with_search = bodies[0], bodies[1]
    if kind == "openai":
        assert "web_search_options" not in without and with_search["web_search_options"] == {}
        assert with_search["tools"][0]["function"]["name"] == "get_weather"  # our own tools still offered
    elif kind == "anthropic":
        assert "tools" not in without
        assert with_search["tools"][0]["name"] == "get_weather"
        assert with_search["tools"][1] == {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}
    else:
        assert "tools" not in without
        assert with_search["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"
        assert with_search["tools"][1] == {"google_search": {}}


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
def test_the_setting_reaches_the_built_provider(provider: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY", "gemini": "GEMINI_API_KEY"}[provider], "k"
    )
    config = AppConfig.model_validate({"llm": {"provider": provider, "web_search": True}})
    assert build_llm(config.llm).web_search is True


def test_dify_refuses_web_search_with_a_reason() -> None:
    with pytest.raises(ValueError, match="llm.web_search: a Dify app searches"):
        AppConfig.model_validate({"llm": {"provider": "dify", "base_url": "http://127.0.0.1:1/v1", "web_search": True}})


def _sse(events: list[dict[str, Any]]) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


# What Anthropic streams when its web search tool ran: a server tool use, its results, then text with citations.
SEARCHED = [
    {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-fake",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": 1},
        },
    },
    {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "server_tool_use", "id": "srvtoolu_01", "name": "web_search", "input": {}},
    },
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "input_json_delta", "partial_json": '{"query": "weather in Tokyo"}'},
    },
    {"type": "content_block_stop", "index": 0},
    {
        "type": "content_block_start",
        "index": 1,
        "content_block": {
            "type": "web_search_tool_result",
            "tool_use_id": "srvtoolu_01",
            "content": [
                {
                    "type": "web_search_result",
                    "title": "Tokyo weather",
                    "url": "https://example.com/w",
                    "encrypted_content": "abc",
                    "page_age": None,
                }
            ],
        },
    },
    {"type": "content_block_stop", "index": 1},
    {"type": "content_block_start", "index": 2, "content_block": {"type": "text", "text": "", "citations": []}},
    {
        "type": "content_block_delta",
        "index": 2,
        "delta": {
            "type": "citations_delta",
            "citation": {
                "type": "web_search_result_location",
                "cited_text": "Sunny",
                "url": "https://example.com/w",
                "title": "Tokyo weather",
                "encrypted_index": "xyz",
            },
        },
    },
    {"type": "content_block_delta", "index": 2, "delta": {"type": "text_delta", "text": "It is sunny in Tokyo."}},
    {"type": "content_block_stop", "index": 2},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 9},
    },
    {"type": "message_stop"},
]


@asynccontextmanager
async def anthropic_that_searched() -> AsyncIterator[str]:
    async def messages(request: Request) -> Response:
        return Response(_sse(SEARCHED), media_type="text/event-stream")

    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = config.errorlog = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            serve, Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])]), config
        )  # type: ignore[arg-type]
        yield binds[0]
        nursery.cancel_scope.cancel()


async def test_anthropics_search_blocks_are_neither_tool_calls_nor_speech() -> None:
    async with anthropic_that_searched() as url:
        llm = AnthropicChat("claude-fake", KEY, url, timeout=5, web_search=True)
        events = await collect(llm, tools=(WEATHER,))
        await llm.aclose()
    assert events == ["It is sunny in Tokyo."]
