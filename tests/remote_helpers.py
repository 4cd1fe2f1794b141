"""Shared pieces for the remote and failover tests: brains that fail on cue, and a reply collector."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import trio
import trio.testing

from appliance.audio.base import AudioClip
from appliance.brains.remote import RemoteBrain
from appliance.errors import ProviderError
from appliance.settings.brains import RemoteConfig
from appliance.turns import Brain, BrainOutput, ReplyChunk, Transcript, TurnRequest, Utterance


def loopback_clock() -> trio.testing.MockClock:
    """Virtual time for tests with loopback sockets: client and server run in the same Trio loop, so when
    every task waits, no loopback byte is in flight and jumping to the next deadline is safe."""
    return trio.testing.MockClock(autojump_threshold=0)


def speech(seconds: float = 0.5, rate: int = 16_000) -> AudioClip:
    t = np.arange(int(seconds * rate)) / rate
    return AudioClip((np.sin(2 * math.pi * 220 * t) * 12000).astype(np.int16), rate)


def request(
    text: str | None = "hello robot",
    audio: AudioClip | None = None,
    turn: str = "t1",
    conversation: str = "conv1",
    history: tuple = (),
) -> TurnRequest:
    return TurnRequest(turn, Utterance(audio=audio, text=text), history, conversation)


def remote_config(url: str, **overrides: object) -> RemoteConfig:
    values: dict[str, object] = {
        "url": url,
        "api_key": "secret-key",
        "connect_timeout": 2.0,
        "heartbeat_interval": 1.0,
        "heartbeat_timeout": 1.0,
        "reply_timeout": 5.0,
        "frame_timeout": 5.0,
    }
    values.update(overrides)
    return RemoteConfig.model_validate(values)


def remote(url: str, **overrides: object) -> RemoteBrain:
    return RemoteBrain(remote_config(url, **overrides))


async def collect(brain: Brain, req: TurnRequest) -> list[BrainOutput]:
    """Everything ``brain`` sends for ``req`` (raises what it raises)."""
    send, receive = trio.open_memory_channel[BrainOutput](math.inf)
    await brain.reply(req, send)
    return [item async for item in receive]


def spoken(items: list[BrainOutput]) -> list[str]:
    return [item.voice_text for item in items if isinstance(item, ReplyChunk) and item.voice_text]


def heard(items: list[BrainOutput]) -> list[str]:
    return [item.text for item in items if isinstance(item, Transcript)]


class StubBrain:
    """A brain that answers with fixed sentences, or fails on cue before or after its first sentence."""

    def __init__(
        self,
        name: str,
        sentences: tuple[str, ...] = ("fine.",),
        *,
        fail: Callable[[], ProviderError] | None = None,
        fail_after: int = 0,
        hang: bool = False,
        transcript: bool = True,
        delay: float = 0.0,
    ) -> None:
        self.name = name
        self.sentences = sentences
        self.fail = fail
        self.fail_after = fail_after
        self.hang = hang
        self.transcript = transcript
        self.delay = delay
        self.requests: list[TurnRequest] = []
        self.probes = 0
        self.probe_error: Callable[[], ProviderError] | None = None

    async def reply(self, req: TurnRequest, out: trio.MemorySendChannel[BrainOutput]) -> None:
        async with out:
            self.requests.append(req)
            if self.delay:
                await trio.sleep(self.delay)
            if self.transcript:
                await out.send(Transcript(req.utterance.text or "(audio)"))
            if self.hang:
                await trio.sleep_forever()
            for index, sentence in enumerate(self.sentences):
                if self.fail is not None and index == self.fail_after:
                    raise self.fail()
                await out.send(ReplyChunk(f"{self.name}: {sentence}", sentence, (), AudioClip.silence(0.01)))
            if self.fail is not None and self.fail_after >= len(self.sentences):
                raise self.fail()

    async def probe(self) -> None:
        self.probes += 1
        if self.probe_error is not None:
            raise self.probe_error()

    async def aclose(self) -> None:
        return None
