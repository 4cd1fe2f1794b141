"""The OpenAI providers read their answers raw (``appliance/providers/openai_raw.py``): server-sent events cut
anywhere, odd line endings, chunks of the wrong shape, an error put in the stream, a line without end, a
server that keeps talking after ``[DONE]``. The providers' behaviour against the fake cloud is in
``test_providers_llm.py`` and ``test_providers_speech.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from appliance.errors import ProviderBadReply
from appliance.providers.llm.openai import _read_chunk
from appliance.providers.openai_raw import MAX_LINE, drain, json_object, sse_data


class Pieces:
    """A response whose body arrives in the given pieces, then (``endless``) never ends."""

    def __init__(self, *pieces: bytes, endless: bool = False) -> None:
        self.pieces = pieces
        self.endless = endless

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece
        while self.endless:
            await trio.sleep(1)
            yield b": keep-alive\n\n"


async def events(*pieces: bytes) -> list[bytes]:
    return [data async for data in sse_data("test", Pieces(*pieces))]


STREAM = b'data: {"a": 1}\n\ndata: {"b": 2}\n\n: a comment\n\nevent: x\ndata: [DONE]\n\n'


async def test_events_are_the_same_however_the_bytes_are_cut() -> None:
    whole = await events(STREAM)
    assert whole == [b'{"a": 1}', b'{"b": 2}', b"[DONE]"]
    for cut in range(1, len(STREAM)):
        assert await events(STREAM[:cut], STREAM[cut:]) == whole
    assert await events(*(STREAM[i : i + 1] for i in range(len(STREAM)))) == whole


async def test_crlf_lines_multi_line_data_and_a_last_event_without_blank_line() -> None:
    assert await events(b'data:{"a":\r\ndata: 1}\r\n\r\ndata: {"b": 2}') == [b'{"a":\n1}', b'{"b": 2}']


async def test_a_line_without_end_is_refused_not_buffered_forever() -> None:
    with pytest.raises(ProviderBadReply, match="longer than"):
        await events(b"data: " + b"x" * (MAX_LINE + 10))


@pytest.mark.parametrize(
    "data",
    [
        b"{not json",
        b"[1, 2]",
        b'"text"',
        b'{"choices": [1]}',
        b'{"choices": [{"delta": "text"}]}',
        b'{"choices": 5}',
        b'{"choices": [{"delta": {"tool_calls": [7]}}]}',
        b'{"choices": [{"delta": {"tool_calls": [{"function": "f"}]}}]}',
    ],
)
def test_a_chunk_of_the_wrong_shape_is_a_bad_reply(data: bytes) -> None:
    with pytest.raises(ProviderBadReply):
        _read_chunk("test", data, {})


def test_an_error_in_the_stream_is_a_bad_reply_with_its_message() -> None:
    with pytest.raises(ProviderBadReply, match="overloaded"):
        json_object("test", b'{"error": {"message": "overloaded", "type": "server_error"}}')


def test_text_tool_fragments_and_the_end_are_read() -> None:
    calls: dict[int, dict[str, str]] = {}
    first = b'{"choices": [{"delta": {"content": "Hi", "tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{\\"a\\""}}]}}]}'
    second = b'{"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}, "finish_reason": "tool_calls"}]}'
    assert _read_chunk("test", first, calls) == (["Hi"], False)
    assert _read_chunk("test", second, calls) == ([], True)
    assert calls == {0: {"id": "c1", "name": "f", "arguments": '{"a": 1}'}}


async def test_draining_after_done_is_bounded_for_a_server_that_keeps_talking(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stream = sse_data("test", Pieces(b"data: [DONE]\n\n", endless=True))
    assert await anext(stream) == b"[DONE]"
    began = trio.current_time()
    await drain(stream)
    await stream.aclose()
    assert trio.current_time() - began == pytest.approx(0.1)


async def test_one_connection_serves_turn_after_turn() -> None:
    """Each reply read to the end of its body leaves the connection to the pool: a new one each turn cost more
    CPU than the reply's parsing (and a TCP + TLS handshake from a real network)."""
    from starlette.types import ASGIApp, Receive, Scope, Send

    from appliance.providers.llm.openai import OpenAIChat
    from appliance.providers.tts.openai import OpenAISynthesizer
    from appliance.turns import Message
    from tests.fakes.cloud import fake_cloud

    ports: list[int] = []

    class Ports:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and scope.get("client"):
                ports.append(scope["client"][1])
            await self.app(scope, receive, send)

    async with fake_cloud() as cloud:
        cloud.app.middleware_stack = Ports(cloud.app.middleware_stack or cloud.app.build_middleware_stack())
        llm = OpenAIChat("fake", "key", f"{cloud.url}/v1", timeout=5)
        tts = OpenAISynthesizer("tts-1", "alloy", "key", f"{cloud.url}/v1", timeout=5)
        tts._http = llm._http  # one pool, as for one server
        for _ in range(3):
            assert "".join([t async for t in llm.stream("sys", (Message("user", "hi"),))]) == cloud.reply  # type: ignore[misc]
            assert len((await tts.synthesize("Hello there.")).samples) > 0
        await llm.aclose()
    assert len(ports) == 6 and len(set(ports)) == 1, ports


async def test_the_fake_cloud_speaks_what_the_official_sdk_reads() -> None:
    """Our OpenAI providers no longer go through the SDK: the SDK itself keeps the fake they are tested
    against honest (streamed chat, speech, transcription), so the two cannot agree only with each other."""
    import openai

    from appliance.audio.base import AudioClip
    from appliance.audio.convert import encode_wav
    from tests.fakes.cloud import fake_cloud, tone

    async with fake_cloud() as cloud:
        client = openai.AsyncOpenAI(api_key="key", base_url=f"{cloud.url}/v1", max_retries=0)
        stream = await client.chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
        speech = await client.audio.speech.create(model="tts-1", voice="alloy", input="Hello.", response_format="pcm")
        heard = await client.audio.transcriptions.create(
            model="whisper-1",
            file=("a.wav", encode_wav(AudioClip.from_pcm(tone(0.5, rate=16_000), 16_000)), "audio/wav"),
        )
        await client.close()
    assert text == cloud.reply
    assert len(speech.content) > 0 and len(speech.content) % 2 == 0
    assert heard.text == cloud.transcript


async def test_a_form_value_cannot_break_out_of_its_part() -> None:
    """The upload form is built here: a quote or a line break in a configured value stays inside its field."""
    from appliance.audio.base import AudioClip
    from appliance.providers.stt.openai import OpenAIRecognizer
    from tests.fakes.cloud import fake_cloud, tone

    async with fake_cloud() as cloud:
        stt = OpenAIRecognizer('whisper"-1', "key", f"{cloud.url}/v1", timeout=5)
        text = await stt.transcribe(AudioClip.from_pcm(tone(0.5, rate=16_000), 16_000), 'en"\r\n\r\nmodel')
        await stt.aclose()
    assert text == cloud.transcript
    body = cloud.bodies("/v1/audio/transcriptions")[-1]
    assert body["model"] == 'whisper"-1' and body["language"] == 'en"\r\n\r\nmodel', body


def test_behind_a_proxy_the_providers_keep_httpx2(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lean client speaks only to the origin: where a proxy is configured for it, httpx2 (which honours
    ``HTTPS_PROXY``/``NO_PROXY``, as the SDK did) carries the requests."""
    import httpx2

    from appliance.providers.lean_http import LeanClient
    from appliance.providers.openai_raw import OpenAIHttp

    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "")
    assert isinstance(OpenAIHttp("k", "https://api.example.com/v1", 5).client, LeanClient)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example.com:3128")
    assert isinstance(OpenAIHttp("k", "https://api.example.com/v1", 5).client, httpx2.AsyncClient)
    monkeypatch.setenv("NO_PROXY", "api.example.com")
    assert isinstance(OpenAIHttp("k", "https://api.example.com/v1", 5).client, LeanClient)
