"""Every language model provider against its fake: streaming, auth error, rate limit, malformed and cut
replies, tool calls, images — through the official SDK where there is one (OpenAI, Anthropic)."""

from __future__ import annotations

from contextlib import aclosing
from typing import Any

import pytest

from appliance.errors import ProviderBadReply, ProviderRejected, ProviderUnavailable
from appliance.providers.llm.anthropic import AnthropicChat
from appliance.providers.llm.base import Image, ToolCall, ToolResult, ToolRound, ToolSpec
from appliance.providers.llm.dify import DifyChat
from appliance.providers.llm.gemini import GeminiChat
from appliance.providers.llm.openai import OpenAIChat
from appliance.turns import Message
from tests.fakes.providers import KEY, FakeProviders, fake_providers

PROVIDERS = ["openai", "anthropic", "gemini", "dify"]
HELLO = (Message("user", "What time is it?"),)
WEATHER = ToolSpec(
    "get_weather",
    "Weather for a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def make_llm(kind: str, url: str, key: str = KEY) -> Any:
    if kind == "openai":
        return OpenAIChat("fake-model", key, f"{url}/v1", timeout=5)
    if kind == "anthropic":
        return AnthropicChat("claude-fake", key, url, timeout=5)
    if kind == "gemini":
        return GeminiChat("gemini-2.5-flash", key, url, timeout=5)
    return DifyChat(key, f"{url}/v1", timeout=5)


def behaviour(fake: FakeProviders, kind: str) -> Any:
    return {"openai": fake.llm, "anthropic": fake.anthropic}.get(kind) or fake.behaviours[kind]


async def collect(llm: Any, messages: tuple[Message, ...] = HELLO, **kwargs: Any) -> list[Any]:
    events = []
    async with aclosing(llm.stream("You are a robot.", messages, **kwargs)) as stream:
        async for event in stream:
            events.append(event)
    return events


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_streams_the_reply_in_pieces(kind: str) -> None:
    async with fake_providers() as fake:
        llm = make_llm(kind, fake.url)
        events = await collect(llm, conversation_id="conv-1")
        await llm.aclose()
    assert len(events) > 5  # streamed as deltas, not one blob
    assert "".join(events) == fake.reply


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_bad_key_is_rejected(kind: str) -> None:
    async with fake_providers() as fake:
        llm = make_llm(kind, fake.url, key="wrong-key")
        if kind in ("openai", "anthropic"):  # these fakes check nothing; make them answer like the real 401
            behaviour(fake, kind).status = 401
        with pytest.raises(ProviderRejected) as info:
            await collect(llm)
        await llm.aclose()
    assert info.value.provider == llm.name
    assert not info.value.retryable and ("HTTP 401" in str(info.value) or "HTTP 400" in str(info.value))


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_rate_limit_is_unavailable_with_retry_after(kind: str) -> None:
    async with fake_providers() as fake:
        b = behaviour(fake, kind)
        b.status, b.retry_after = 429, 7
        llm = make_llm(kind, fake.url)
        with pytest.raises(ProviderUnavailable) as info:
            await collect(llm)
        await llm.aclose()
    assert info.value.retryable and info.value.retry_after == 7


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_malformed_stream_is_a_bad_reply(kind: str) -> None:
    async with fake_providers() as fake:
        behaviour(fake, kind).malformed = True
        llm = make_llm(kind, fake.url)
        with pytest.raises(ProviderBadReply):
            await collect(llm)
        await llm.aclose()


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("cut", ["truncate", "abort"])
async def test_stream_cut_short_is_a_bad_reply(kind: str, cut: str) -> None:
    async with fake_providers() as fake:
        behaviour(fake, kind).cut = cut
        llm = make_llm(kind, fake.url)
        with pytest.raises(ProviderBadReply):
            await collect(llm)
        await llm.aclose()


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
async def test_tool_call_round_trip_in_each_wire_format(kind: str) -> None:
    async with fake_providers(tool_call=("get_weather", {"city": "Tokyo"})) as fake:
        llm = make_llm(kind, fake.url)
        first = await collect(llm, tools=[WEATHER])
        calls = [e for e in first if isinstance(e, ToolCall)]
        assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Tokyo"})]
        result = ToolResult(calls[0], "sunny, 21 degrees")
        second = await collect(llm, tools=[WEATHER], rounds=[ToolRound("", (result,))])
        await llm.aclose()
    assert "".join(e for e in second if isinstance(e, str)) == "The tool says sunny, 21 degrees."
    # The second request carried the call and its result, linked the way the provider links them.
    path = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}.get(
        kind, "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    )
    body = fake.bodies(path)[-1]
    assert "sunny, 21 degrees" in str(body) and "get_weather" in str(body)


async def test_dify_keeps_its_conversation_id_per_conversation() -> None:
    async with fake_providers() as fake:
        llm = make_llm("dify", fake.url)
        await collect(llm, conversation_id="ours-1")
        await collect(
            llm, (*HELLO, Message("assistant", "Nine."), Message("user", "And tomorrow?")), conversation_id="ours-1"
        )
        await collect(llm, conversation_id="ours-2")
        await llm.aclose()
    bodies = fake.bodies("/v1/chat-messages")
    assert bodies[0]["conversation_id"] == ""
    assert bodies[1]["conversation_id"] == fake.dify_conversation and bodies[1]["query"] == "And tomorrow?"
    assert bodies[2]["conversation_id"] in ("", fake.dify_conversation) and bodies[2]["user"] == "appliance"


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
async def test_image_is_attached_to_the_last_user_message(kind: str) -> None:
    picture = Image(b"\xff\xd8\xff\xe0fake-jpeg", "image/jpeg")
    async with fake_providers() as fake:
        llm = make_llm(kind, fake.url)
        await collect(llm, images=[picture])
        await llm.aclose()
    body = str(fake.requests[-1].body)
    assert "/9j/4GZha2UtanBlZw" in body  # the base64 of the picture went up with the question


async def test_dify_uploads_the_image_and_refers_to_it() -> None:
    picture = Image(b"\xff\xd8\xff\xe0fake-jpeg", "image/jpeg")
    async with fake_providers() as fake:
        llm = make_llm("dify", fake.url)
        await collect(llm, images=[picture])
        await llm.aclose()
    assert fake.dify_files == [picture.data]
    assert fake.bodies("/v1/chat-messages")[-1]["files"] == [
        {"type": "image", "transfer_method": "local_file", "upload_file_id": "file-1"}
    ]


async def test_katakana_fallback_asks_the_language_model() -> None:
    from appliance.providers.tts.preprocess import KatakanaConverter, llm_katakana

    async with fake_providers(reply='{"Kubernetes": "クバネティス"}') as fake:
        llm = make_llm("openai", fake.url)
        kana = KatakanaConverter(fallback=llm_katakana(llm))
        said = await kana.process("Kubernetes を使います")
        await llm.aclose()
    assert said == "クバネティス を使います"
    assert "Kubernetes" in fake.bodies("/v1/chat/completions")[0]["messages"][-1]["content"]


@pytest.mark.parametrize("kind", ["gemini", "dify"])
async def test_a_silent_service_times_out(kind: str) -> None:
    from appliance.errors import ProviderTimeout

    async with fake_providers() as fake:
        fake.behaviours[kind].hang = True
        llm = (
            GeminiChat("m", KEY, fake.url, timeout=0.3)
            if kind == "gemini"
            else DifyChat(KEY, f"{fake.url}/v1", timeout=0.3)
        )
        with pytest.raises(ProviderTimeout):
            await collect(llm)
        await llm.aclose()


async def test_a_stream_that_goes_silent_mid_reply_times_out() -> None:
    from appliance.errors import ProviderTimeout

    async with fake_providers() as fake:
        fake.behaviours["gemini"].hang_mid_stream = True
        llm = GeminiChat("m", KEY, fake.url, timeout=0.3)
        with pytest.raises(ProviderTimeout, match="mid-reply"):
            await collect(llm)
        await llm.aclose()


async def test_nothing_listening_is_unavailable() -> None:
    async with fake_providers() as fake:
        url = fake.url
    llm = GeminiChat("m", KEY, url, timeout=2)  # the server is gone: connection refused
    with pytest.raises(ProviderUnavailable):
        await collect(llm)
    await llm.aclose()
