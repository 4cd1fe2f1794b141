"""``appliance serve``'s AvatarServer: our RemoteBrain against our own server, and raw protocol checks."""

from __future__ import annotations

import base64
import json

import pytest
import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from appliance.conversation.tags import extract_tags
from appliance.errors import ProviderRejected, ProviderUnavailable
from appliance.server.avatar import AvatarServer
from appliance.settings.brains import ServerConfig
from appliance.turns import BrainOutput, ReplyChunk, Transcript, TurnRequest
from tests.fakes.aiavatar import tone
from tests.remote_helpers import collect, heard, remote, request, speech, spoken


class EchoBrain:
    """Says back what it heard, with a face, and remembers the history it was given."""

    name = "echo"

    def __init__(self, fail: bool = False, delay: float = 0.0) -> None:
        self.fail = fail
        self.delay = delay
        self.histories: list[tuple] = []

    async def reply(self, req: TurnRequest, out: trio.MemorySendChannel[BrainOutput]) -> None:
        async with out:
            self.histories.append(req.history)
            if self.fail:
                from appliance.errors import ProviderUnavailable as Down

                raise Down("openai-llm", "HTTP 500")
            text = req.utterance.text or f"audio of {req.utterance.audio.duration:.1f} s"
            await out.send(Transcript(text))
            for sentence in (f"[face:joy] Echo: {text}.", f"[animation:wave] Turn {len(req.history) // 2 + 1}."):
                await trio.sleep(self.delay)
                voice, tags = extract_tags(sentence)
                await out.send(ReplyChunk(sentence, voice, tags, tone(0.1)))

    async def aclose(self) -> None:
        return None


async def serve(nursery: trio.Nursery, brain: EchoBrain | None = None, **config: object) -> AvatarServer:
    values: dict[str, object] = {"host": "127.0.0.1", "port": 0, "api_key": "secret-key"}
    values.update(config)
    server = AvatarServer(brain or EchoBrain(), ServerConfig.model_validate(values))
    await nursery.start(server.run)
    return server


def url(server: AvatarServer) -> str:
    return f"ws://127.0.0.1:{server.port}/ws"


async def test_our_client_against_our_server(nursery: trio.Nursery) -> None:
    echo = EchoBrain()
    server = await serve(nursery, echo)
    brain = remote(url(server))
    items = await collect(brain, request("hello"))
    assert heard(items) == ["hello"]
    chunks = [i for i in items if isinstance(i, ReplyChunk)]
    assert [c.voice_text for c in chunks] == ["Echo: hello.", "Turn 1."]
    assert [(t.name, t.value) for c in chunks for t in c.tags] == [("face", "joy"), ("animation", "wave")]
    assert chunks[0].audio is not None and chunks[0].audio.sample_rate == 24_000
    items = await collect(brain, request("again", turn="t2"))
    assert spoken(items)[-1] == "Turn 2."  # the server kept the context
    assert [m.content for m in echo.histories[1]] == ["hello", "[face:joy] Echo: hello. [animation:wave] Turn 1."]


async def test_pcm_mode_and_audio_utterance(nursery: trio.Nursery) -> None:
    server = await serve(nursery, pcm=True)
    items = await collect(remote(url(server)), request(None, audio=speech(0.5)))
    assert heard(items) == ["audio of 0.5 s"]
    chunks = [i for i in items if isinstance(i, ReplyChunk)]
    assert len(chunks) == 2
    assert [len((await c.audio.read_all()).samples) for c in chunks] == [2400, 2400]


async def test_streamed_mic_is_endpointed_by_the_server(nursery: trio.Nursery) -> None:
    server = await serve(nursery)
    items = await collect(remote(url(server), input="stream"), request(None, audio=speech(0.6)))
    assert heard(items)[0].startswith("audio of")
    assert spoken(items)[0].startswith("Echo: audio of")


async def test_history_seed_from_a_robot_that_failed_over(nursery: trio.Nursery) -> None:
    from appliance.turns import Message

    echo = EchoBrain()
    server = await serve(nursery, echo)
    history = (Message("user", "my name is Ann"), Message("assistant", "Hi Ann"))
    items = await collect(remote(url(server)), request("who am I", history=history))
    assert spoken(items)[-1] == "Turn 2."
    assert [m.content for m in echo.histories[0]] == ["my name is Ann", "Hi Ann"]


async def test_bad_key_refused_and_browser_subprotocol_accepted(nursery: trio.Nursery) -> None:
    server = await serve(nursery)
    with pytest.raises(ProviderRejected, match="403"):
        await collect(remote(url(server), api_key="nope"), request())
    token = "Authorization." + base64.b64encode(b"secret-key").decode()
    async with open_websocket_url(url(server), subprotocols=[token]) as ws:
        assert ws.subprotocol == token
        await ws.send_message(json.dumps({"type": "start", "session_id": "s1"}))
        assert json.loads(await ws.get_message())["type"] == "connected"
    with pytest.raises(ConnectionRejected):
        async with open_websocket_url(url(server)):
            pass


async def test_protocol_errors_are_answered(nursery: trio.Nursery) -> None:
    server = await serve(nursery, api_key=None)
    async with open_websocket_url(url(server)) as ws:
        await ws.send_message("{not json")
        frame = json.loads(await ws.get_message())
        assert frame["type"] == "error" and "malformed JSON" in frame["metadata"]["error"]
        await ws.send_message(json.dumps({"type": "invoke", "session_id": "nope", "text": "hi"}))
        assert "not started" in json.loads(await ws.get_message())["metadata"]["error"]
        await ws.send_message(json.dumps({"type": "start", "session_id": "s"}))
        assert json.loads(await ws.get_message())["type"] == "connected"
        await ws.send_message(json.dumps({"type": "invoke", "session_id": "s", "audio_data": "@@"}))
        assert "base64" in json.loads(await ws.get_message())["metadata"]["error"]
        await ws.send_message(json.dumps({"type": "invoke", "text": "no session"}))
        frame = json.loads(await ws.get_message())
        assert frame["type"] == "final" and frame["metadata"]["error"] == "session_id is required"


async def test_new_request_interrupts_the_running_one(nursery: trio.Nursery) -> None:
    server = await serve(nursery, EchoBrain(delay=5), api_key=None)
    async with open_websocket_url(url(server)) as ws:
        await ws.send_message(json.dumps({"type": "start", "session_id": "s"}))
        await ws.get_message()
        await ws.send_message(json.dumps({"type": "invoke", "session_id": "s", "text": "one"}))
        first = [json.loads(await ws.get_message()) for _ in range(2)]
        assert [f["type"] for f in first] == ["accepted", "start"]
        await ws.send_message(json.dumps({"type": "invoke", "session_id": "s", "text": "two"}))
        frame = json.loads(await ws.get_message())
        assert frame["type"] == "final" and frame["metadata"]["interrupted"] is True
        assert frame["transaction_id"] == first[0]["transaction_id"]


async def test_brain_failure_becomes_error_frame(nursery: trio.Nursery) -> None:
    server = await serve(nursery, EchoBrain(fail=True))
    with pytest.raises(ProviderUnavailable, match="HTTP 500"):
        await collect(remote(url(server)), request())
    assert server.turns == 1


async def test_serve_the_real_cloud_brain(nursery: trio.Nursery) -> None:
    """What ``appliance serve`` runs: the CloudBrain (on the fake cloud) behind our server, our client in front."""
    from appliance.assembly.brains import cloud_brain_factory
    from appliance.conversation.local_voice import LocalVoice
    from tests.fakes.cloud import fake_cloud
    from tests.harness import cloud_config

    async with fake_cloud() as cloud:
        cloud_brain = cloud_brain_factory(cloud_config(cloud.url), LocalVoice())()
        server = AvatarServer(cloud_brain, ServerConfig(host="127.0.0.1", port=0, api_key="secret-key"))
        port = await nursery.start(server.run)
        brain = remote(f"ws://127.0.0.1:{port}/ws")
        items = await collect(brain, request(None, audio=speech(0.5)))
        assert heard(items) == ["What time is it?"]
        chunks = [i for i in items if isinstance(i, ReplyChunk)]
        assert [c.voice_text for c in chunks] == ["It is nine o'clock.", "Time for breakfast!", "Have a nice day."]
        assert [(t.name, t.value) for t in chunks[0].tags + chunks[2].tags] == [("face", "joy"), ("animation", "wave")]
        assert all(c.audio is not None and c.audio.duration > 0.05 for c in chunks)
        await collect(brain, request("and tomorrow?", turn="t2"))
        second = cloud.bodies("/v1/chat/completions")[1]["messages"]
        assert [(m["role"], m["content"]) for m in second[1:]] == [  # the server kept the conversation
            ("user", "What time is it?"),
            ("assistant", cloud.reply),
            ("user", "and tomorrow?"),
        ]
        await cloud_brain.aclose()


async def _frames_until_end(ws: object, limit: int = 200) -> list[dict]:
    frames = []
    for _ in range(limit):
        frame = json.loads(await ws.get_message())  # type: ignore[attr-defined]
        frames.append(frame)
        if frame["type"] in ("final", "canceled", "error"):
            break
    return frames


async def test_frames_have_aiavatarkits_envelope_and_nulls(nursery: trio.Nursery) -> None:
    """Checked against frames recorded from AIAvatarKit 0.9.2 (tests/fixtures/aiavatar), not our own models."""
    from tests.fakes.aiavatar import RESPONSE_FIELDS, replayed_frames

    server = await serve(nursery, api_key=None, pcm=True)
    async with open_websocket_url(url(server)) as ws:
        await ws.send_message(json.dumps({"type": "start", "session_id": "s"}))
        await ws.get_message()
        await ws.send_message(json.dumps({"type": "invoke", "session_id": "s", "text": "hi"}))
        frames = await _frames_until_end(ws)
    assert all(tuple(f) == RESPONSE_FIELDS for f in frames)

    def nulls(frame: dict) -> set[str]:
        return {k for k, v in frame.items() if v is None}

    recorded = replayed_frames("pcm_text_invoke")
    real_sentence = next(f for f in recorded if (f["metadata"] or {}).get("audio_frame_count") and f["control_tags"])
    real_audio = next(f for f in recorded if f["audio_data"] and "audio_frame_count" not in f["metadata"])
    sentence = next(f for f in frames if f["metadata"].get("audio_frame_count") and f["control_tags"])
    audio = [f for f in frames if f["type"] == "chunk" and f["audio_data"]]
    assert nulls(sentence) - {"language"} == nulls(real_sentence) - {"language"}
    assert set(sentence["avatar_control_request"]) == set(real_sentence["avatar_control_request"])
    assert audio and all(nulls(f) == nulls(real_audio) for f in audio)
    assert all(f["metadata"]["pcm_format"] == sentence["metadata"]["pcm_format"] for f in audio)


class DeafBrain:
    """Fails in speech recognition for audio (nothing understood), in the LLM for text."""

    name = "deaf"

    async def reply(self, req: TurnRequest, out: trio.MemorySendChannel[BrainOutput]) -> None:
        async with out:
            if req.utterance.text is None:
                raise ProviderUnavailable("openai-stt", "HTTP 500")
            await out.send(Transcript(req.utterance.text))
            raise ProviderUnavailable("openai-llm", "HTTP 500")

    async def aclose(self) -> None:
        return None


async def test_failed_speech_recognition_is_canceled_like_aiavatarkit(nursery: trio.Nursery) -> None:
    server = await serve(nursery, DeafBrain(), api_key=None)  # type: ignore[arg-type]
    async with open_websocket_url(url(server)) as ws:
        await ws.send_message(json.dumps({"type": "start", "session_id": "s"}))
        await ws.get_message()
        pcm = base64.b64encode(speech(0.3).pcm()).decode()
        await ws.send_message(json.dumps({"type": "invoke", "session_id": "s", "audio_data": pcm}))
        assert [f["type"] for f in await _frames_until_end(ws)] == ["accepted", "canceled"]
        await ws.send_message(json.dumps({"type": "invoke", "session_id": "s", "text": "hi"}))
        kinds = [f["type"] for f in await _frames_until_end(ws)]
        assert kinds[0] == "accepted" and kinds[-1] == "error"  # heard, then failed: an error, not canceled
