"""Failover figures: extra delay when the primary brain is dead, time to notice a frozen remote, and what the
FailoverBrain wrapper costs when nothing fails.

Everything runs on 127.0.0.1 in one Trio loop: the fake cloud (real HTTP, real OpenAI SDK), the fake
AIAvatarKit server (real WebSocket), the real CloudBrain, RemoteBrain and FailoverBrain. "Latency" is the time
from handing the brain an utterance to the first reply chunk with speech, i.e. what the user waits for.

Each dead-primary case reports two figures with the default timeouts: the FIRST turn after the outage (what
one user waits before the circuit opens) and the steady state after it, each turn paired with the backup
alone measured just before it (median of the differences, not a best of runs). Figures: README.
"""

from __future__ import annotations

import math
import time
from typing import Any

import trio

from appliance.audio.base import AudioClip
from appliance.brains.failover import FailoverBrain
from appliance.brains.remote import RemoteBrain
from appliance.settings.brains import FailoverConfig, RemoteConfig
from appliance.settings.conversation import STTConfig
from appliance.turns import BrainOutput, ReplyChunk, Transcript, TurnRequest, Utterance
from bench.common import Figure, median, percentile

TURNS = 12


def _speech() -> AudioClip:
    import numpy as np

    t = np.arange(8000) / 16000
    return AudioClip((np.sin(2 * math.pi * 220 * t) * 12000).astype(np.int16), 16000)


async def first_speech(brain: Any, n: int) -> float:
    """Seconds from the request to the first chunk with audio (the rest of the reply is drained)."""
    send, receive = trio.open_memory_channel[BrainOutput](0)
    request = TurnRequest(f"t{n}", Utterance(audio=_speech()), (), f"c{n}")
    first: float | None = None
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(brain.reply, request, send)
        async with receive:
            async for item in receive:
                if first is None and isinstance(item, ReplyChunk) and item.audio is not None:
                    first = time.perf_counter() - start
    assert first is not None, "no speech"
    return first


def _cloud_brain(base_url: str) -> Any:
    from appliance.assembly.brains import cloud_brain_factory
    from appliance.config import AppConfig
    from appliance.conversation.local_voice import LocalVoice

    section = {"base_url": base_url, "api_key": "bench-key"}
    config = AppConfig.model_validate(
        {"stt": section, "llm": {**section, "model": "fake"}, "tts": section, "conversation": {"brain": "cloud"}}
    )
    brain = cloud_brain_factory(config, LocalVoice())()
    brain.name = "cloud"
    return brain


async def _failover_delay(figures: list[Figure]) -> None:
    from tests.fakes.aiavatar import FakeAvatarServer
    from tests.fakes.cloud import fake_cloud
    from tests.fakes.tcp import refused_port

    async with trio.open_nursery() as nursery, fake_cloud() as hung_cloud:
        hung_cloud.stt.hang = True
        avatar = FakeAvatarServer(api_key=None)
        await nursery.start(avatar.run)
        backup = RemoteBrain(RemoteConfig(url=avatar.url))
        await nursery.start(backup.run)
        while not backup.connected:
            await trio.sleep(0.01)
        await first_speech(backup, 0)  # warm up
        alone = [await first_speech(backup, n) for n in range(TURNS)]
        figures.append(Figure("remote backup alone: first speech (median)", median(alone) * 1000, "ms"))
        threshold = FailoverConfig().failure_threshold
        for label, url in (
            ("connect refused", f"http://127.0.0.1:{refused_port()}/v1"),
            ("hung", f"{hung_cloud.url}/v1"),
        ):
            cloud = _cloud_brain(url)  # the default timeouts: what a user with a dead cloud waits
            chain = FailoverBrain([cloud, backup], FailoverConfig())
            extra = await _paired(chain, backup)
            _first_and_steady(figures, f"cloud {label}", extra, threshold)
            await cloud.aclose()
        nursery.cancel_scope.cancel()


async def _paired(chain: Any, backup: Any) -> list[float]:
    """Per turn: the chain's first speech minus the backup's own, measured right before (pairs, not bests)."""
    extra = []
    for n in range(TURNS):
        alone = await first_speech(backup, 1000 + n)
        extra.append(await first_speech(chain, n) - alone)
    return extra


def _first_and_steady(figures: list[Figure], label: str, extra: list[float], threshold: int) -> None:
    defaults = FailoverConfig()
    figures.append(
        Figure(
            f"failover extra delay, {label}: FIRST turn (default timeouts)",
            extra[0],
            "s",
            "<= 1",
            f"what the first user after the outage waits; first_audio_timeout {defaults.first_audio_timeout:g} s, "
            + (
                f"stt timeout {STTConfig().timeout:g} s"
                if label.startswith("cloud")
                else f"ping with the request, reply_timeout {RemoteConfig().reply_timeout:g} s"
            ),
        )
    )
    steady = extra[threshold:]  # once the circuit is open (a timeout opens it at once)
    figures.append(
        Figure(
            f"failover extra delay, {label}: steady state, median of paired differences",
            median(steady),
            "s",
            "<= 1",
            f"turns {threshold + 1}..{len(extra)}, each minus the backup alone just before; p95 "
            f"{percentile(steady, 95):.3f} s",
        )
    )


async def _remote_dead_first(figures: list[Figure]) -> None:
    """Remote-first order: a dead remote (refused, frozen) in front of a healthy second brain."""
    from tests.fakes.aiavatar import FakeAvatarServer
    from tests.fakes.tcp import FreezableProxy, refused_port

    async with trio.open_nursery() as nursery:
        avatar = FakeAvatarServer(api_key=None)
        await nursery.start(avatar.run)
        backup = RemoteBrain(RemoteConfig(url=avatar.url), name="backup")
        await nursery.start(backup.run)
        while not backup.connected:
            await trio.sleep(0.01)
        await first_speech(backup, 0)  # warm up
        proxy = FreezableProxy(avatar.port)
        port = await nursery.start(proxy.run)
        threshold = FailoverConfig().failure_threshold
        for label, url in (("refused", f"ws://127.0.0.1:{refused_port()}/ws"), ("frozen", f"ws://127.0.0.1:{port}/ws")):
            primary = RemoteBrain(RemoteConfig(url=url))
            chain = FailoverBrain([primary, backup], FailoverConfig())
            if label == "frozen":
                await nursery.start(primary.run)
                while not primary.connected:
                    await trio.sleep(0.01)
                proxy.freeze()
            _first_and_steady(figures, f"remote {label}", await _paired(chain, backup), threshold)
        proxy.thaw()
        nursery.cancel_scope.cancel()


async def _freeze_detection(figures: list[Figure]) -> None:
    from tests.fakes.aiavatar import FakeAvatarServer
    from tests.fakes.tcp import FreezableProxy

    config = RemoteConfig()
    detect: list[float] = []
    async with trio.open_nursery() as nursery:
        avatar = FakeAvatarServer(api_key=None)
        await nursery.start(avatar.run)
        proxy = FreezableProxy(avatar.port)
        port = await nursery.start(proxy.run)
        brain = RemoteBrain(config.model_copy(update={"url": f"ws://127.0.0.1:{port}/ws"}))
        await nursery.start(brain.run)
        for round_ in range(3):
            while not brain.connected:
                await trio.sleep(0.01)
            await trio.sleep(0.37 * (round_ + 1))  # freeze at different points of the heartbeat cycle
            proxy.freeze()
            start = time.perf_counter()
            while brain.connected:
                await trio.sleep(0.005)
            detect.append(time.perf_counter() - start)
            proxy.thaw()
        nursery.cancel_scope.cancel()
    bound = config.heartbeat_interval + config.heartbeat_timeout
    figures.append(
        Figure(
            "frozen remote detected after (median)",
            median(detect),
            "s",
            f"<= {bound:g}",
            f"heartbeat {config.heartbeat_interval:g} s + pong timeout {config.heartbeat_timeout:g} s",
        )
    )
    figures.append(Figure("frozen remote detected after (max of 3)", max(detect), "s", f"<= {bound:g}"))


class _Instant:
    """A brain that answers at once: whatever a turn costs beyond it is the wrapper's."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.clip = AudioClip.silence(0.01)

    async def reply(self, request: TurnRequest, out: trio.MemorySendChannel[BrainOutput]) -> None:
        async with out:
            await out.send(Transcript("hello"))
            for text in ("One.", "Two.", "Three."):
                await out.send(ReplyChunk(text, text, (), self.clip))

    async def aclose(self) -> None:
        return None


async def _overhead(figures: list[Figure]) -> None:
    inner = _Instant("instant")
    wrapped = FailoverBrain([_Instant("primary"), _Instant("backup")], FailoverConfig())

    async def turn(brain: Any) -> float:
        send, receive = trio.open_memory_channel[BrainOutput](0)
        request = TurnRequest("t", Utterance(text="hello"))
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(brain.reply, request, send)
            async with receive:
                async for _ in receive:
                    pass
        return time.perf_counter() - start

    for _ in range(200):  # warm up
        await turn(inner)
        await turn(wrapped)
    differences = []
    for _ in range(2000):
        plain = await turn(inner)
        differences.append((await turn(wrapped) - plain) * 1000)
    figures.append(
        Figure(
            "FailoverBrain steady-state overhead per turn, median of paired differences",
            median(differences),
            "ms",
            "<= 1",
            f"p95 {percentile(differences, 95):.3f} ms",
        )
    )


def main() -> list[Figure]:
    import logging

    logging.getLogger("appliance").setLevel(logging.ERROR)
    figures: list[Figure] = []
    trio.run(_overhead, figures)
    trio.run(_failover_delay, figures)
    trio.run(_remote_dead_first, figures)
    trio.run(_freeze_detection, figures)
    return figures


if __name__ == "__main__":
    from bench.common import print_figures

    print_figures(main())
