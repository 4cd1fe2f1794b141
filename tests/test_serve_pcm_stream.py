"""``appliance serve`` in PCM mode sends a sentence's speech as it arrives from the synthesizer, under a
descriptor without a frame count; our remote brain reads such a sentence to its end (the next frame that is
not its audio). AIAvatarKit's own client against it: interop-tests/test_aiavatarkit_client_vs_serve.py."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import trio
from trio_websocket import open_websocket_url

from appliance.audio.base import AudioStream
from appliance.brains.avatar_protocol import ProtocolError
from appliance.brains.remote_frames import ReplyReader
from appliance.errors import ProviderError, ProviderUnavailable
from appliance.server.avatar import AvatarServer
from appliance.settings.brains import ServerConfig
from appliance.turns import BrainOutput, ReplyChunk, Transcript, TurnRequest
from tests.fakes.aiavatar import tone
from tests.remote_helpers import collect, remote, request

RATE = 24_000


class StreamingBrain:
    """Each sentence's speech is an AudioStream the test (or a script of pieces) feeds while the reply runs."""

    name = "streaming"

    def __init__(self, sentences: Sequence[tuple[str, Sequence[np.ndarray | BaseException]]], *, by_hand: bool = False):
        self.sentences = sentences
        self.by_hand = by_hand  # the test sends the pieces itself through ``feeds``
        self.feeds: list[trio.MemorySendChannel[Any]] = []

    async def reply(self, req: TurnRequest, out: trio.MemorySendChannel[BrainOutput]) -> None:
        async with out:
            await out.send(Transcript(req.utterance.text or ""))
            for text, pieces in self.sentences:
                send, stream = AudioStream.open(RATE)
                self.feeds.append(send)
                if not self.by_hand:
                    for piece in pieces:
                        send.send_nowait(piece)
                    send.close()
                await out.send(ReplyChunk(text, text, (), stream))

    async def aclose(self) -> None:
        return None


async def serve(nursery: trio.Nursery, brain: StreamingBrain) -> str:
    config = ServerConfig.model_validate({"host": "127.0.0.1", "port": 0, "api_key": None, "pcm": True})
    server = AvatarServer(brain, config)
    await nursery.start(server.run)
    return f"ws://127.0.0.1:{server.port}/ws"


async def next_frame(ws: Any, kind: str = "chunk") -> dict[str, Any]:
    with trio.fail_after(5):
        while True:
            frame = json.loads(await ws.get_message())
            if frame["type"] == kind or frame["type"] in ("error", "final"):
                return frame


async def test_each_piece_leaves_as_it_arrives_under_a_descriptor_without_a_count(nursery: trio.Nursery) -> None:
    brain = StreamingBrain([("Hello there.", [])], by_hand=True)
    url = await serve(nursery, brain)
    first, second = tone(0.1).samples, tone(0.5).samples  # the second is more than one 200 ms frame
    async with open_websocket_url(url) as ws:
        await ws.send_message(json.dumps({"type": "start", "session_id": "s"}))
        await ws.send_message(json.dumps({"type": "invoke", "session_id": "s", "text": "hi"}))
        with trio.fail_after(5):
            while not brain.feeds:
                await trio.sleep(0.01)
        brain.feeds[0].send_nowait(first)  # the synthesis has made its first piece, and no more yet
        descriptor = await next_frame(ws)
        assert descriptor["voice_text"] == "Hello there." and descriptor["audio_data"] is None
        meta = descriptor["metadata"]
        assert meta["pcm_format"] == {"sample_rate": RATE, "channels": 1, "sample_width": 2}
        assert "audio_frame_count" not in meta  # not known until the synthesis ends
        audio = await next_frame(ws)  # arrives while the synthesis is still running
        assert base64.b64decode(audio["audio_data"]) == first.astype("<i2").tobytes()
        assert audio["metadata"] == {"pcm_format": meta["pcm_format"], "audio_id": meta["audio_id"]}
        brain.feeds[0].send_nowait(second)
        brain.feeds[0].close()
        rest = [await next_frame(ws) for _ in range(3)]
        assert [len(base64.b64decode(f["audio_data"])) for f in rest] == [RATE // 5 * 2] * 2 + [RATE // 10 * 2]
        assert (await next_frame(ws, "final"))["type"] == "final"


async def test_our_remote_brain_plays_streamed_sentences_whole_and_in_order(nursery: trio.Nursery) -> None:
    pieces = [[tone(0.05, freq=f).samples for f in (300, 400, 500)], [tone(0.3).samples, tone(0.01).samples]]
    url = await serve(nursery, StreamingBrain([("One.", pieces[0]), ("Two.", pieces[1])]))
    items = await collect(remote(url, api_key=None), request("hi"))
    chunks = [i for i in items if isinstance(i, ReplyChunk)]
    assert [c.voice_text for c in chunks] == ["One.", "Two."]
    for chunk, sent in zip(chunks, pieces, strict=True):
        assert isinstance(chunk.audio, AudioStream)
        clip = await chunk.audio.read_all()
        assert clip.sample_rate == RATE and clip.samples.tolist() == np.concatenate(sent).tolist()


async def test_a_synthesis_failing_midway_ends_in_an_error_after_what_was_sent(nursery: trio.Nursery) -> None:
    failure = ProviderUnavailable("openai-tts", "stream cut")
    url = await serve(nursery, StreamingBrain([("One.", [tone(0.1).samples, failure])]))
    async with open_websocket_url(url) as ws:
        await ws.send_message(json.dumps({"type": "start", "session_id": "s"}))
        await ws.send_message(json.dumps({"type": "invoke", "session_id": "s", "text": "hi"}))
        frames = [await next_frame(ws) for _ in range(3)]
    assert [f["type"] for f in frames] == ["chunk", "chunk", "error"]
    assert frames[1]["audio_data"] and "stream cut" in frames[2]["metadata"]["error"]
    with pytest.raises(ProviderError):  # and our robot hears the failure, after the audio that came
        await collect(remote(url, api_key=None), request("hi"))


def pcm_meta(**extra: Any) -> dict[str, Any]:
    return {"pcm_format": {"sample_rate": 16_000, "channels": 1, "sample_width": 2}, "audio_id": "a", **extra}


def drain(stream: AudioStream) -> list[int]:
    samples: list[int] = []
    while True:
        try:
            samples += stream._pieces.receive_nowait().tolist()  # type: ignore[union-attr]
        except (trio.EndOfChannel, trio.WouldBlock):
            return samples


def audio_frame(samples: list[int], audio_id: str = "a") -> dict[str, Any]:
    data = base64.b64encode(np.array(samples, dtype="<i2").tobytes()).decode()
    return {"type": "chunk", "audio_data": data, "metadata": {"audio_id": audio_id}}


@pytest.mark.parametrize("count", ["absent", None])
def test_reader_a_sentence_without_a_count_ends_at_the_next_sentence(count: Any) -> None:
    reader = ReplyReader("remote")
    meta = pcm_meta() if count == "absent" else pcm_meta(audio_frame_count=None)
    assert reader.chunk({"type": "chunk", "text": "Hi.", "voice_text": "Hi.", "metadata": meta}) == []
    [first] = reader.chunk(audio_frame([1, 2]))
    assert reader.chunk(audio_frame([3])) == [] and reader.pcm is not None  # still open: its length is unknown
    second_meta = {**pcm_meta(), "audio_id": "b"}
    assert reader.chunk({"type": "chunk", "text": "Bye.", "voice_text": "Bye.", "metadata": second_meta}) == []
    assert isinstance(first.audio, AudioStream) and drain(first.audio) == [1, 2, 3]  # and closed
    [second] = reader.chunk(audio_frame([4], "b"))
    assert reader.finish() == [] and isinstance(second.audio, AudioStream) and drain(second.audio) == [4]


@pytest.mark.parametrize("count", [-1, "many", [3]])
def test_reader_refuses_a_bad_frame_count(count: Any) -> None:
    with pytest.raises(ProtocolError):
        ReplyReader("remote").chunk({"type": "chunk", "metadata": pcm_meta(audio_frame_count=count)})


async def test_frames_sent_together_arrive_one_by_one_in_order_and_a_closed_connection_drops_them() -> None:
    """A sentence's descriptor and first audio leave in one write (``frames._send``); a client still reads them
    as separate messages, in order. Without trio-websocket's encoder (another release) they go one by one; a
    connection already closed takes nothing and raises nothing."""
    from trio_websocket import CloseReason, ConnectionClosed, serve_websocket

    from appliance.server.frames import send_texts as _send

    got: list[str] = []

    async def handler(request: Any) -> None:
        ws = await request.accept()
        await _send(ws, ["one", "two", "three"])
        await ws.aclose()
        await _send(ws, ["after", "close"])

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        async with open_websocket_url(f"ws://127.0.0.1:{server.port}/") as client:
            try:
                while True:
                    got.append(await client.get_message())
            except ConnectionClosed:
                pass
        nursery.cancel_scope.cancel()
    assert got == ["one", "two", "three"]

    class Plain:  # only the public API
        closed: CloseReason | None = None

        def __init__(self) -> None:
            self.sent: list[str] = []

        async def send_message(self, text: str) -> None:
            self.sent.append(text)

    plain = Plain()
    await _send(plain, ["a", "b"])  # type: ignore[arg-type]
    assert plain.sent == ["a", "b"]


async def test_robots_whose_speech_arrives_together_each_get_their_first_audio_before_anyones_rest() -> None:
    """Ten robots' syntheses answer at the same moment in a burst: each sentence's descriptor and first 200 ms
    leave, then the server lets the other robots' first audio out before the rest of this one's sentence (sent
    whole, the last robot waited for nine sentences' worth of frames: bench serve --load, p95)."""
    from appliance.server.chunks import _stream_pcm
    from appliance.server.frames import Session
    from appliance.server.outbox import Outbox

    writes: list[tuple[str, int]] = []  # (robot, frames in the write)

    class Encoder:
        def send(self, event: Any) -> bytes:
            return event.data.encode() + b"\n"

    class Stream:
        def __init__(self, robot: str) -> None:
            self.robot = robot

        async def send_all(self, data: bytes) -> None:
            writes.append((self.robot, data.count(b"\n")))
            await trio.lowlevel.checkpoint()

    class Joined:  # what frames._send uses of trio-websocket's connection: its encoder, lock and stream
        closed = None

        def __init__(self, robot: str) -> None:
            self._wsproto, self._stream_lock, self._stream = Encoder(), trio.Lock(), Stream(robot)

    async def robot(name: str) -> None:
        send, stream = AudioStream.open(RATE)
        send.send_nowait(tone(1.0, RATE).samples)  # a whole sentence's speech in one piece: five 200 ms frames
        send.close()
        outbox = Outbox(Joined(name), Session(name, "user", None))  # type: ignore[arg-type]
        await _stream_pcm(outbox, {"text": name}, stream)
        await outbox.flush()

    async with trio.open_nursery() as nursery:
        for name in ("a", "b", "c"):
            nursery.start_soon(robot, name)
    firsts = [i for i, (_, frames) in enumerate(writes) if frames == 2]  # the descriptor and the first audio
    rests = [i for i, (_, frames) in enumerate(writes) if frames == 4]
    assert len(firsts) == 3 and len(rests) == 3, writes
    assert max(firsts) < min(rests), writes
