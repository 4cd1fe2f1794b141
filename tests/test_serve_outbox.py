"""A turn's frames (``server/outbox.py``): its first audio at once, everything else at an idle moment in one write.

Robots here are turns of one ``AvatarServer`` writing to fake connections that record each write (what
``frames.send_texts`` uses of trio-websocket's connection: its encoder, lock and stream)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from appliance.audio.base import AudioStream
from appliance.server.avatar import AvatarServer
from appliance.server.frames import Session
from appliance.server.outbox import PAUSE, InFlight, Outbox, when_idle
from appliance.settings.brains import ServerConfig
from appliance.turns import BrainOutput, ReplyChunk, Transcript, TurnRequest, Utterance
from tests.fakes.aiavatar import tone

RATE = 24_000
SENTENCES = ["It is nine o'clock.", "Time for breakfast now!", "Have a very nice day."]


class Encoder:
    def send(self, event: Any) -> bytes:
        return event.data.encode() + b"\n"


class Stream:
    def __init__(self, robot: str, writes: list[tuple[str, list[dict[str, Any]]]]) -> None:
        self.robot, self.writes = robot, writes

    async def send_all(self, data: bytes) -> None:
        self.writes.append((self.robot, [json.loads(line) for line in data.decode().splitlines()]))
        await trio.lowlevel.checkpoint()


class Joined:
    """A connection as ``send_texts`` uses it; ``writes`` gets (robot, the frames of one write)."""

    closed = None

    def __init__(self, robot: str, writes: list[tuple[str, list[dict[str, Any]]]]) -> None:
        self._wsproto, self._stream_lock, self._stream = Encoder(), trio.Lock(), Stream(robot, writes)

    async def send_message(self, text: str) -> None:  # a single frame
        await self._stream.send_all(text.encode() + b"\n")


def speech(seconds: float) -> AudioStream:
    send, stream = AudioStream.open(RATE)
    send.send_nowait(tone(seconds, RATE).samples)
    send.close()
    return stream


class ReadyBrain:
    """Answers at once: the transcript, then three sentences whose speech is all there."""

    name = "ready"

    def __init__(self, log: list[str] | None = None) -> None:
        self.log = log

    async def reply(self, request: TurnRequest, out: trio.MemorySendChannel[BrainOutput]) -> None:
        if self.log is not None:
            self.log.append("brain")
        async with out:
            await out.send(Transcript("hello"))
            for text in ("One.", "Two.", "Three."):
                await out.send(ReplyChunk(text, text, (), speech(0.1)))

    async def aclose(self) -> None:
        return None


async def run_turns(brain: Any, robots: list[str], writes: list[tuple[str, list[dict[str, Any]]]]) -> None:
    server = AvatarServer(brain, ServerConfig.model_validate({"host": "127.0.0.1", "port": 0, "pcm": True}))
    async with trio.open_nursery() as nursery:
        for name in robots:
            session = Session(name, "user", f"ctx-{name}", transaction_id=name)
            history = server.histories.open(f"ctx-{name}")
            utterance = Utterance(text="hi", source="remote")
            args = (Joined(name, writes), session, utterance, {}, history, trio.CancelScope(), trio.Event())
            nursery.start_soon(server._turn, *args)


def kinds(frames: list[dict[str, Any]]) -> list[str]:
    return [f["type"] + ("+audio" if f.get("audio_data") else "") for f in frames]


async def test_a_robot_is_accepted_after_its_brain_has_started() -> None:
    """The brain's first cloud request (speech recognition) leaves before this robot's ``accepted``."""
    writes: list[tuple[str, list[dict[str, Any]]]] = []
    log: list[str] = []

    class Noting(ReadyBrain):
        async def reply(self, request: TurnRequest, out: trio.MemorySendChannel[BrainOutput]) -> None:
            log.append(f"brain started after {len(writes)} writes")
            await super().reply(request, out)

    await run_turns(Noting(), ["a"], writes)
    assert log == ["brain started after 0 writes"]
    assert kinds(writes[0][1])[0] == "accepted"


async def test_every_robots_first_audio_leaves_before_anyones_later_frames() -> None:
    """Three robots whose replies are ready at once: each one's first sentence (descriptor and first audio)
    leaves before any robot's second sentence; the second, the third and ``final`` leave in one write."""
    writes: list[tuple[str, list[dict[str, Any]]]] = []
    await run_turns(ReadyBrain(), ["a", "b", "c"], writes)

    def sentence(frames: list[dict[str, Any]], text: str) -> bool:
        return any(f["type"] == "chunk" and f.get("text") == text for f in frames)

    first_audio = [i for i, (_, frames) in enumerate(writes) if sentence(frames, "One.")]
    later = [i for i, (_, frames) in enumerate(writes) if sentence(frames, "Two.")]
    assert len(first_audio) == 3 and len(later) == 3, writes
    assert max(first_audio) < min(later), [(robot, kinds(frames)) for robot, frames in writes]
    for robot in "abc":
        mine = [kinds(frames) for who, frames in writes if who == robot]
        assert mine[-1] == ["chunk", "chunk+audio"] * 2 + ["final"], mine
        assert [kind for write in mine for kind in write][:2] == ["accepted", "start"]


async def test_a_turn_cancelled_before_its_frames_left_still_sends_them() -> None:
    """A barge-in right after a request: the robot still gets that request's ``accepted`` (our remote brain
    pairs each request with one) before the interrupted ``final``."""
    writes: list[tuple[str, list[dict[str, Any]]]] = []

    class Silent(ReadyBrain):
        async def reply(self, request: TurnRequest, out: trio.MemorySendChannel[BrainOutput]) -> None:
            await trio.sleep_forever()

    server = AvatarServer(Silent(), ServerConfig.model_validate({"host": "127.0.0.1", "port": 0, "pcm": True}))
    scope, done = trio.CancelScope(), trio.Event()
    session = Session("a", "user", "ctx", transaction_id="t")
    async with trio.open_nursery() as nursery:
        args = (Joined("a", writes), session, Utterance(text="hi", source="remote"), {}, server.histories.open("ctx"))
        nursery.start_soon(server._turn, *args, scope, done)
        await trio.lowlevel.checkpoint()
        scope.cancel()
        await done.wait()
    assert [kinds(frames) for _, frames in writes] == [["accepted"]]


async def test_when_idle_returns_on_a_loop_that_is_never_idle() -> None:
    """More work than the server can do: a frame waiting for an idle moment still leaves, ``limit`` later."""
    spins = 0

    async def busy() -> None:
        nonlocal spins
        while True:
            spins += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(busy)
        with trio.fail_after(5):
            await when_idle(0.01)
        assert spins > 0  # the other task ran all along: it was not an idle moment
        nursery.cancel_scope.cancel()


async def test_outbox_take_writes_what_waits_before_waiting_and_takes_what_came_meanwhile() -> None:
    writes: list[tuple[str, list[dict[str, Any]]]] = []
    outbox = Outbox(Joined("a", writes), Session("a", "user", None))  # type: ignore[arg-type]
    send, receive = trio.open_memory_channel[int](10)
    send.send_nowait(1)
    outbox.add("accepted")
    assert await outbox.take(receive.receive_nowait, receive.receive) == 1 and writes == []  # it was there
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send.send, 2)  # comes during the idle moment: joins what waits
        assert await outbox.take(receive.receive_nowait, receive.receive) == 2 and writes == []
    outbox.add("start")

    async def late() -> None:
        await trio.sleep(0.05)
        await send.send(3)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(late)
        assert await outbox.take(receive.receive_nowait, receive.receive) == 3
    assert [kinds(frames) for _, frames in writes] == [["accepted", "start"]]  # written before the wait


async def test_audio_stream_pieces_without_waiting() -> None:
    send, stream = AudioStream.open(RATE)
    with pytest.raises(trio.WouldBlock):
        stream.receive_nowait()
    send.send_nowait(tone(0.01, RATE).samples)
    send.send_nowait(RuntimeError("cut"))
    assert len(stream.receive_nowait()) == RATE // 100
    with pytest.raises(RuntimeError, match="cut"):
        await stream.receive()
    send.close()
    with pytest.raises(trio.EndOfChannel):
        stream.receive_nowait()
    again, closed = AudioStream.open(RATE)
    closed.close()
    with pytest.raises(trio.BrokenResourceError):  # a reader gone: the producer hears it
        again.send_nowait(tone(0.01, RATE).samples)


async def test_every_robots_first_sentence_is_synthesized_before_anyones_next() -> None:
    """One cloud brain serving three robots whose replies come one after the other while the server is busy (no
    idle moment between): every robot's first sentence's speech is asked for before any robot's second."""
    from collections.abc import AsyncIterator

    from appliance.audio.base import AudioClip
    from appliance.brains.cloud import CloudBrain

    asked: list[str] = []

    class AtOnceLLM:
        name = "at-once"
        calls = 0

        async def stream(self, system: str, messages: Any, **kwargs: Any) -> AsyncIterator[str]:
            self.calls += 1
            for _ in range(3 * self.calls):  # the next robot's answer is read a few steps later
                await trio.lowlevel.checkpoint()
            yield " ".join(SENTENCES)

        async def aclose(self) -> None:
            return None

    class TTS:
        name = "tts"

        async def synthesize(self, text: str) -> AudioClip:
            asked.append(text)
            await trio.sleep(0.01)
            return tone(0.05, RATE)

        async def aclose(self) -> None:
            return None

    class STT:
        name = "stt"

        async def transcribe(self, audio: Any, language: str | None = None) -> str:
            return "hi"

    brain = CloudBrain.build(STT(), AtOnceLLM(), TTS(), "system")  # type: ignore[arg-type]
    writes: list[tuple[str, list[dict[str, Any]]]] = []
    await run_turns(brain, ["a", "b", "c"], writes)
    assert asked[:3] == [SENTENCES[0]] * 3, asked
    assert sorted(asked) == sorted(SENTENCES * 3)


async def test_with_other_turns_in_flight_an_idle_moment_is_a_pause_not_a_gap_between_arrivals() -> None:
    """Ten robots' answers from the cloud come a fraction of a millisecond apart, the loop idle between two of
    them: a later sentence's speech request made in such a gap went ahead of the robots still on their way (and
    its answer came back among their first audio). With a ``pause`` the idle moment comes after the last."""
    arrived = 0

    async def arrivals() -> None:
        nonlocal arrived
        for _ in range(20):
            await trio.sleep(0.0003)
            arrived += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(arrivals)
        await when_idle(1.0)
        assert arrived < 20  # a gap was enough
        await when_idle(1.0, pause=PAUSE)
        assert arrived == 20  # not a pause until the last


def test_the_pause_applies_while_several_turns_are_in_flight() -> None:
    """One robot alone loses nothing: its later sentences ask for speech at the first idle moment, as before."""
    flights = InFlight()
    with flights.turn():
        assert flights.pause() == 0.0
        with flights.turn():
            assert flights.pause() == PAUSE
    assert flights.count == 0


async def test_with_other_turns_in_flight_queued_frames_wait_for_a_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    """A turn's ``accepted`` (nobody waits for it) is not written between two robots' invokes arriving."""
    from appliance.server import outbox as outbox_module

    monkeypatch.setattr(outbox_module, "LATER_WITHIN", 5.0)  # however slow this machine: the pause decides
    writes: list[tuple[str, list[dict[str, Any]]]] = []
    outbox = Outbox(Joined("a", writes), Session("a", "user", None), lambda: PAUSE)  # type: ignore[arg-type]
    send, receive = trio.open_memory_channel[int](1)
    seen: list[int] = []

    async def arrivals() -> None:
        for _ in range(10):
            await trio.sleep(0.0003)
            seen.append(len(writes))
        await trio.sleep(0.1)  # then a pause: what waited leaves in it
        seen.append(len(writes))
        await send.send(1)

    outbox.add("accepted")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(arrivals)
        assert await outbox.take(receive.receive_nowait, receive.receive) == 1
    assert seen == [0] * 10 + [1]
