"""``appliance serve`` over HTTP: AIAvatarKit's /chat and /start, Dify's /chat-messages, /stt and /tts."""

from __future__ import annotations

import base64
import io
import json
import wave

import httpx
import pytest
import trio

from appliance.audio.convert import decode_wav, encode_wav
from appliance.server.http_api import HttpAvatarServer
from appliance.settings.brains import ServerConfig
from appliance.settings_base import ConfigError
from tests.fakes.aiavatar import tone
from tests.http_serve_helpers import AUTH, EchoBrain, base, events, serve_http


async def test_chat_streams_aiavatarkit_frames_with_faces_and_wav(nursery: trio.Nursery) -> None:
    server = await serve_http(nursery)
    async with httpx.AsyncClient(base_url=base(server)) as client:
        frames = await events(client, "/chat", {"type": "start", "session_id": "s1", "text": "hello"})
    assert [f["type"] for f in frames] == ["start", "chunk", "chunk", "final"]
    start, first, second, final = frames
    assert start["metadata"]["request_text"] == "hello"
    assert first["voice_text"] == "Echo: hello." and first["text"] == "[face:joy] Echo: hello."
    assert first["avatar_control_request"]["face_name"] == "joy"
    assert second["avatar_control_request"]["animation_name"] == "wave"
    assert first["control_tags"] == [{"name": "face", "attributes": {"name": "joy"}}]
    assert decode_wav(base64.b64decode(first["audio_data"])).sample_rate == 24_000
    assert final["text"] == "[face:joy] Echo: hello. [animation:wave] Turn 1."
    assert len({f["transaction_id"] for f in frames}) == 1 and frames[0]["session_id"] == "s1"
    assert set(first) == set(final)  # AIAvatarKit's envelope: every field in every frame


async def test_chat_keeps_the_conversation_by_context_id(nursery: trio.Nursery) -> None:
    brain = EchoBrain()
    server = await serve_http(nursery, brain)
    async with httpx.AsyncClient(base_url=base(server)) as client:
        first = await events(client, "/chat", {"type": "start", "session_id": "s", "text": "one"})
        context = first[0]["context_id"]
        assert context
        again = await events(client, "/chat", {"type": "start", "session_id": "s", "context_id": context, "text": "2"})
    assert again[-2]["voice_text"] == "Turn 2."
    assert brain.histories[1][0].content == "one"


@pytest.mark.parametrize("as_wav", [False, True])
async def test_chat_with_audio_pcm_or_wav(nursery: trio.Nursery, as_wav: bool) -> None:
    server = await serve_http(nursery)
    clip = tone(0.5, rate=16_000)
    data = encode_wav(tone(0.5, rate=48_000)) if as_wav else clip.pcm()
    body = {"type": "start", "session_id": "s", "audio_data": base64.b64encode(data).decode()}
    async with httpx.AsyncClient(base_url=base(server)) as client:
        frames = await events(client, "/chat", body)
    assert frames[0]["metadata"]["request_text"] == "audio of 0.5 s"


async def test_start_answers_connected(nursery: trio.Nursery) -> None:
    server = await serve_http(nursery)
    async with httpx.AsyncClient(base_url=base(server)) as client:
        frames = await events(client, "/start", {"type": "start", "session_id": "s", "user_id": "u"})
    assert [(f["type"], f["session_id"], f["user_id"]) for f in frames] == [("connected", "s", "u")]


async def test_a_failing_brain_sends_an_error_frame(nursery: trio.Nursery) -> None:
    server = await serve_http(nursery, EchoBrain(fail=True))
    async with httpx.AsyncClient(base_url=base(server)) as client:
        frames = await events(client, "/chat", {"type": "start", "session_id": "s", "text": "hi"})
    assert [f["type"] for f in frames] == ["error"]
    assert "HTTP 500" in frames[0]["metadata"]["error"]


async def test_dify_chat_messages_streams_and_keeps_the_conversation(nursery: trio.Nursery) -> None:
    brain = EchoBrain()
    server = await serve_http(nursery, brain)
    body = {"query": "hello", "user": "abc", "inputs": {}, "response_mode": "streaming"}
    async with httpx.AsyncClient(base_url=base(server)) as client:
        async with client.stream("POST", "/chat-messages", json=body, headers=AUTH) as response:
            assert response.status_code == 200
            lines = [line async for line in response.aiter_lines() if line]
        kinds = [line.split(": ", 1)[1] for line in lines if line.startswith("event:")]
        assert kinds == ["message", "message", "message_end"]
        conversation = None
        answers = []
        for line in lines:
            if line.startswith("data:"):
                event = json.loads(line[5:])
                conversation = event["conversation_id"]
                answers += [event["answer"]] if event["event"] == "message" else []
        assert answers == ["[face:joy] Echo: hello.", "[animation:wave] Turn 1."]
        again = await events(client, "/chat-messages", {**body, "query": "more", "conversation_id": conversation})
    assert [e["event"] for e in again] == ["message", "message", "message_end"]
    assert again[1]["answer"].endswith("Turn 2.") and {e["conversation_id"] for e in again} == {conversation}


async def test_stt_and_tts(nursery: trio.Nursery) -> None:
    server = await serve_http(nursery)
    wav = encode_wav(tone(1.0, rate=16_000))
    async with httpx.AsyncClient(base_url=base(server), headers=AUTH) as client:
        stt = await client.post("/stt", content=wav, headers={"Content-Type": "audio/wav"})
        assert stt.status_code == 200 and stt.json() == {"text": "audio of 1.0 s"}
        form = await client.post("/transcribe", files={"audio": ("a.wav", wav, "audio/wav")})
        assert form.status_code == 200 and form.json()["text"] == "audio of 1.0 s"
        for path in ("/tts", "/synthesize"):
            tts = await client.post(path, json={"text": "Hello there."})
            assert tts.status_code == 200 and tts.headers["content-type"] == "audio/wav"
            with wave.open(io.BytesIO(tts.content)) as reader:
                assert reader.getframerate() == 24_000 and reader.getnframes() == 2400
        failed = await client.post("/tts", json={"text": "please fail"})
        assert failed.status_code == 502 and "HTTP 500" in failed.json()["error"]


def test_binding_beyond_loopback_needs_a_key() -> None:
    with pytest.raises(ConfigError):
        HttpAvatarServer(EchoBrain(), ServerConfig(host="0.0.0.0", http_port=0))


def test_http_is_off_unless_a_port_is_set() -> None:
    assert ServerConfig().http_port is None
