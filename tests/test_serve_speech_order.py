"""Sentences are synthesized as soon as their text is known (bounded), and still leave in speaking order."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import trio
import trio.testing

from appliance.audio.base import AudioClip
from appliance.brains.cloud import CloudBrain
from appliance.server.avatar import TTS_CONCURRENCY, AvatarServer
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
