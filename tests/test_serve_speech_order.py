"""Sentences are synthesized as soon as their text is known (bounded), and still leave in speaking order."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import trio
import trio.testing

from appliance.audio.base import AudioClip
from appliance.brains.cloud import CloudBrain
from appliance.brains.speech_queue import SpeechQueue, later_sentences
from appliance.server.avatar import TTS_CONCURRENCY, AvatarServer
from appliance.server.priority import after_first_sentences
from appliance.settings.brains import ServerConfig
from appliance.turns import BrainOutput, ReplyChunk, TurnRequest, Utterance

SENTENCES = ["One is first.", "Two is second.", "Three is third."]


class ScriptedLLM:
    name = "scripted-llm"

    def __init__(self, token_delay: float) -> None:
        self.token_delay = token_delay
        self.written: dict[str, float] = {}

    async def stream(self, system: str, messages: Any, **kwargs: Any) -> AsyncIterator[str]:
        for sentence in SENTENCES:
            for word in sentence.split(" "):
                await trio.sleep(self.token_delay)
                yield word + " "
            self.written[sentence] = trio.current_time()

    async def aclose(self) -> None:
        return None


class SlowTTS:
    """The first sentence takes longest, so a later one finishes before it."""

    name = "slow-tts"

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.running = 0
        self.most = 0

    async def synthesize(self, text: str) -> AudioClip:
        self.started[text] = trio.current_time()
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await trio.sleep(3.0 if text == SENTENCES[0] else 1.0)
        finally:
            self.running -= 1
        return AudioClip.from_pcm(b"\x00\x01" * 160, 16_000)

    async def aclose(self) -> None:
        return None


class NoSTT:
    name = "no-stt"

    async def transcribe(self, audio: Any, language: Any) -> str:
        raise AssertionError("text requests need no STT")

    async def aclose(self) -> None:
        return None


def brain(llm: ScriptedLLM, tts: SlowTTS, prefetch: int) -> CloudBrain:
    return CloudBrain.build(NoSTT(), llm, tts, "system", prefetch=prefetch)  # type: ignore[arg-type]


async def reply(cloud: CloudBrain) -> list[tuple[str, float]]:
    send, receive = trio.open_memory_channel[BrainOutput](0)
    got: list[tuple[str, float]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cloud.reply, TurnRequest("t", Utterance(text="hi"), (), "c", {}), send)
        async with receive:
            async for item in receive:
                if isinstance(item, ReplyChunk):
                    got.append((item.text, trio.current_time()))
    return got


def test_serve_lets_the_brain_synthesize_every_finished_sentence() -> None:
    cloud = brain(ScriptedLLM(0.1), SlowTTS(), prefetch=2)
    AvatarServer(cloud, ServerConfig.model_validate({"host": "127.0.0.1", "port": 0}))
    assert cloud.prefetch == TTS_CONCURRENCY > 2


async def test_each_sentence_is_synthesized_once_written_and_sent_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    llm, tts = ScriptedLLM(0.1), SlowTTS()
    got = await reply(brain(llm, tts, prefetch=TTS_CONCURRENCY))
    assert [text for text, _ in got] == SENTENCES  # in speaking order although 2 and 3 were ready first
    for sentence in SENTENCES[1:]:
        # not held back until the first sentence's (slow) speech came back
        assert tts.started[sentence] - llm.written[sentence] < 0.01, (sentence, tts.started, llm.written)
    assert tts.most == 3
    # the turn ends when the first sentence's slow speech is back: the others were done meanwhile
    assert got[-1][1] - got[0][1] < 0.01


async def test_synthesis_ahead_stays_bounded(autojump_clock: trio.testing.MockClock) -> None:
    llm, tts = ScriptedLLM(0.1), SlowTTS()
    got = await reply(brain(llm, tts, prefetch=2))
    assert [text for text, _ in got] == SENTENCES
    assert tts.most == 2  # the third waits for a slot
    assert tts.started[SENTENCES[2]] >= got[0][1]


class GateSeen:
    """A brain that notes the wait its speech queue would use for later sentences."""

    name = "gate-seen"

    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def reply(self, req: TurnRequest, out: trio.MemorySendChannel[BrainOutput]) -> None:
        async with out:
            self.seen.append(later_sentences.get())
            await out.send(ReplyChunk("Hello.", "Hello.", (), None))

    async def aclose(self) -> None:
        return None


async def test_serve_puts_first_sentences_first_and_a_robot_does_not(nursery: trio.Nursery) -> None:
    from tests.remote_helpers import collect, remote, request

    seen = GateSeen()
    server = AvatarServer(seen, ServerConfig.model_validate({"host": "127.0.0.1", "port": 0, "api_key": "secret-key"}))
    await nursery.start(server.run)
    await collect(remote(f"ws://127.0.0.1:{server.port}/ws"), request("hi"))
    assert seen.seen == [after_first_sentences]
    await collect(seen, request("hi"))  # a robot's own turn: no server around it
    assert seen.seen[-1] is None


class RecordingTTS:
    name = "recording-tts"

    def __init__(self) -> None:
        self.requested: list[str] = []

    async def synthesize(self, text: str) -> AudioClip:
        self.requested.append(text)
        await trio.sleep(0.01)
        return AudioClip.from_pcm(b"\x00\x01" * 160, 16_000)


async def _reply(name: str, reading: int, tts: RecordingTTS, later: Any, said: list[str]) -> None:
    """One reply of three sentences whose text is known after ``reading`` scheduler passes (its stream being
    read while other replies' work is ready too)."""
    async with trio.open_nursery() as nursery:
        queue = SpeechQueue(nursery, TTS_CONCURRENCY, later)
        async with queue:
            for _ in range(reading):
                await trio.lowlevel.checkpoint()
            for n in (1, 2, 3):
                await queue.add(f"{name}{n}", f"{name}{n}", (), tts)
        send, receive = trio.open_memory_channel[BrainOutput](10)
        async with send:
            await queue.deliver(send, lambda chunk: None)
        said += [chunk.text async for chunk in receive]  # type: ignore[union-attr]


async def test_every_reply_s_first_sentence_is_requested_before_any_later_one() -> None:
    """Robot a's sentences are all known at once, robot b's first one a few scheduler passes later: a's second and
    third wait until b's first has been requested. Without the gate a's three go first (checked too)."""
    for later, first_two in ((after_first_sentences, {"a1", "b1"}), (None, {"a1", "a2"})):
        tts = RecordingTTS()
        said: dict[str, list[str]] = {"a": [], "b": []}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_reply, "a", 0, tts, later, said["a"])
            nursery.start_soon(_reply, "b", 20, tts, later, said["b"])
        assert set(tts.requested[:2]) == first_two
        assert sorted(tts.requested) == ["a1", "a2", "a3", "b1", "b2", "b3"]
        assert said == {"a": ["a1", "a2", "a3"], "b": ["b1", "b2", "b3"]}  # each reply still in speaking order
