"""The listening service on the bus: modes, mute, barge-in, the self-trigger guard, the text wake word."""

from __future__ import annotations

import numpy as np
import pytest
import trio
import trio.testing

from appliance.audio.base import BlockQueue, level_db
from appliance.bus import EventBus
from appliance.events import (
    ListenReleased,
    ListenRequested,
    MuteRequested,
    OutputLevel,
    SpeechStarted,
    State,
    StateChanged,
    TurnFinished,
    UtteranceCaptured,
    WakeWordDetected,
)
from appliance.listening.endpointer import Onset
from appliance.listening.service import ListeningService
from appliance.listening.textwake import TextWakeBrain, TextWakeGate
from appliance.settings.listening import ListeningConfig
from appliance.turns import BrainOutput, ReplyChunk, Transcript, TurnRequest, Utterance
from tests import listening_fixtures as F


class Harness:
    def __init__(self, config: ListeningConfig) -> None:
        self.bus = EventBus()
        self.queue = BlockQueue(max_blocks=1000)
        self.send, self.receive = trio.open_memory_channel[Utterance](16)
        self.service = ListeningService(self.bus, self.queue, self.send, config)
        self.events: list[object] = []

    async def start(self, nursery: trio.Nursery) -> None:
        async def record(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with self.bus.subscribe(name="test", size=4096) as sub:
                task_status.started()
                async for event in sub:
                    self.events.append(event)

        await nursery.start(record)
        await nursery.start(self.service.run)

    async def play(self, samples: np.ndarray) -> None:
        """Into the microphone at real-time pace (virtual clock)."""
        for block in F.blocks(samples):
            self.queue.put_nowait(block)
            await trio.sleep(0.02)
        await trio.testing.wait_all_tasks_blocked()

    def utterances(self) -> list[Utterance]:
        out = []
        while True:
            try:
                out.append(self.receive.receive_nowait())
            except trio.WouldBlock:
                return out

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


async def test_always_mode_sends_each_utterance(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(ListeningConfig(mode="always"))
    async with trio.open_nursery() as nursery:
        await h.start(nursery)
        await h.play(F.command_alone("en-us").samples)
        nursery.cancel_scope.cancel()
    got = h.utterances()
    assert len(got) == 1 and got[0].source == "voice" and got[0].audio is not None
    assert 1.0 < got[0].audio.duration < 2.5
    assert len(h.of(SpeechStarted)) == 1 and len(h.of(UtteranceCaptured)) == 1


async def test_push_to_talk_only_hears_while_the_button_is_held(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(ListeningConfig(mode="push_to_talk"))
    speech = F.command_alone("en-us").samples
    async with trio.open_nursery() as nursery:
        await h.start(nursery)
        await h.play(speech)
        assert h.utterances() == []
        h.bus.publish(ListenRequested("button"))
        await h.play(speech)
        h.bus.publish(ListenReleased("button"))
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    got = h.utterances()
    assert [u.source for u in got] == ["button"]
    assert got[0].audio is not None and got[0].audio.duration >= len(speech) / F.RATE - 0.05


async def test_a_tap_on_the_talk_button_listens_for_one_utterance(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(ListeningConfig(mode="push_to_talk"))
    scene = F.scene([0.5, F.speak("what time is it", "en-us", 160), 2.0])
    async with trio.open_nursery() as nursery:
        await h.start(nursery)
        await h.play(F.silence(1.0))
        h.bus.publish(ListenRequested("button"))
        await h.play(F.silence(0.1))
        h.bus.publish(ListenReleased("button"))
        await h.play(scene.samples)
        nursery.cancel_scope.cancel()
    got = h.utterances()
    assert [u.source for u in got] == ["button"]  # ended by silence, not by the release
    assert got[0].audio is not None and got[0].audio.duration >= 0.6 + scene.spans[0][1]


async def test_muted_mode_starts_closed_and_unmuting_opens_it(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(ListeningConfig(mode="muted"))
    speech = F.command_alone("en-us").samples
    async with trio.open_nursery() as nursery:
        await h.start(nursery)
        await trio.testing.wait_all_tasks_blocked()
        assert [e.muted for e in h.of(MuteRequested)] == [True]
        await h.play(speech)
        assert h.utterances() == []
        h.bus.publish(MuteRequested(False))
        await h.play(speech)
        nursery.cancel_scope.cancel()
    assert len(h.utterances()) == 1


async def test_early_endpoint_then_resumed_speech_supersedes(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(ListeningConfig(mode="always", early_endpoint=0.2, silence_duration=0.6))
    first, second = F.speak("turn on the", "en-us", 160), F.speak("kitchen lights", "en-us", 160)
    scene = F.scene([1.0, first, 0.35, second, 2.0])
    async with trio.open_nursery() as nursery:
        await h.start(nursery)
        await h.play(scene.samples)
        nursery.cancel_scope.cancel()
    got = h.utterances()
    assert len(got) == 2
    assert got[1].audio is not None and got[0].audio is not None
    assert got[1].audio.duration > got[0].audio.duration + len(second) / F.RATE - 0.05
    assert [e.barge_in for e in h.of(SpeechStarted)] == [False, True]  # the resumption cancels the early turn


async def test_conversation_window_after_a_finished_turn(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(ListeningConfig(mode="wake_word"))
    command = F.command_alone("en-us").samples
    async with trio.open_nursery() as nursery:
        await h.start(nursery)
        await h.play(command)
        assert h.utterances() == []
        h.bus.publish(TurnFinished("t1", "done"))
        await h.play(command)
        assert len(h.utterances()) == 1
        await h.play(F.silence(61.0))
        await h.play(command)
        assert h.utterances() == []
        await h.play(F.wake_and_command("en-us", pause=0.3).samples)
        nursery.cancel_scope.cancel()
    assert [u.source for u in h.utterances()] == ["wake_word"]
    assert [e.accepted for e in h.of(WakeWordDetected)] == [True]


# --- the robot's own voice ----------------------------------------------------------------------------------

ROBOT_SAYS = "Okay nabu. It is three o'clock, and okay nabu is my name. What time is it?"


def robot_echo(coupling_db: float, delay: float = 0.04) -> tuple[np.ndarray, np.ndarray]:
    """What the speaker plays, and what the mic hears of it (attenuated, delayed, with room noise)."""
    out = np.concatenate([F.silence(0.5), F.speak(ROBOT_SAYS, "en-us", 150), F.silence(1.0)])
    echo = np.concatenate([F.silence(delay), out[: len(out) - int(delay * F.RATE)]]).astype(np.float64)
    echo *= 10 ** (coupling_db / 20)
    rng = np.random.default_rng(1)
    mic = np.clip(echo + rng.normal(0, 30, len(echo)), -32768, 32767).astype(np.int16)
    return out, mic


def run_while_speaking(service: ListeningService, out: np.ndarray, mic: np.ndarray) -> list[object]:
    """Block by block: the sink reports its level, the mic block arrives, as in the appliance."""
    service.state = State.SPEAKING
    results = []
    for out_block, mic_block in zip(F.blocks(out), F.blocks(mic), strict=True):
        service.guard.on_output(level_db(out_block))
        results.append(service.process_block(mic_block))
    return [r for r in results if r is not None]


def _service(mode: str, guard: str) -> ListeningService:
    config = ListeningConfig(mode=mode, self_trigger_guard=guard)  # type: ignore[arg-type]
    service = ListeningService(EventBus(), BlockQueue(), None, config)  # type: ignore[arg-type]
    service._load()
    for block in F.blocks(F.silence(2.0)):  # the room before the robot speaks
        service.process_block(block)
    return service


@pytest.mark.parametrize("mode", ["wake_word", "always"])
@pytest.mark.parametrize("coupling_db", [-6.0, -15.0])
def test_robot_does_not_wake_or_interrupt_itself(mode: str, coupling_db: float) -> None:
    out, mic = robot_echo(coupling_db)
    service = _service(mode, "raise")
    results = run_while_speaking(service, out, mic)
    assert not any(isinstance(r, Onset) for r in results)
    assert service.wake_detections == 0 and service.barge_ins == 0


def test_without_the_guard_the_robot_would_wake_itself() -> None:
    out, mic = robot_echo(-6.0)
    service = _service("wake_word", "off")
    run_while_speaking(service, out, mic)
    assert service.wake_detections >= 1  # the fixture really is a self-trigger: the guard is what stops it


def test_user_louder_than_the_echo_barges_in() -> None:
    out, echo = robot_echo(-15.0)
    service = _service("always", "raise")
    user = F.speak("stop", "en-us+m3", 160).astype(np.float64)
    at = int(1.6 * F.RATE)
    mic = echo.astype(np.float64)
    mic[at : at + len(user)] += user
    results = run_while_speaking(service, out, np.clip(mic, -32768, 32767).astype(np.int16))
    onsets = [i for i, r in enumerate(results) if isinstance(r, Onset)]
    assert onsets and service.barge_ins == 0  # process_block reports; _handle counts and publishes
    assert service.guard.coupling_db < -8  # it learned the speaker is quieter at the mic than -6 dB


def test_user_saying_the_wake_word_over_the_robot_barges_in() -> None:
    out, echo = robot_echo(-15.0)
    service = _service("wake_word", "raise")
    mic = echo.astype(np.float64)
    user = F.speak("okay nabu", "en-us", 150).astype(np.float64)
    at = int(1.6 * F.RATE)
    mic[at : at + len(user)] += user
    run_while_speaking(service, out, np.clip(mic, -32768, 32767).astype(np.int16))
    assert service.wake_detections == 1 and service.barge_ins == 1


def test_gate_ignores_even_a_loud_user_while_speaking() -> None:
    out, echo = robot_echo(-15.0)
    service = _service("always", "gate")
    mic = echo.astype(np.float64)
    user = F.speak("stop", "en-us+m3", 160).astype(np.float64)
    mic[int(1.6 * F.RATE) : int(1.6 * F.RATE) + len(user)] += user
    results = run_while_speaking(service, out, np.clip(mic, -32768, 32767).astype(np.int16))
    assert not any(isinstance(r, Onset) for r in results)


async def test_barge_in_event_while_the_robot_speaks(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(ListeningConfig(mode="always"))
    async with trio.open_nursery() as nursery:
        await h.start(nursery)
        await h.play(F.silence(1.0))
        h.bus.publish(StateChanged(State.THINKING, State.SPEAKING))
        h.bus.publish(OutputLevel(-30.0))
        await h.play(F.command_alone("en-us").samples[: F.RATE * 2])
        nursery.cancel_scope.cancel()
    assert [e.barge_in for e in h.of(SpeechStarted)][:1] == [True]


# --- STT-text wake word -------------------------------------------------------------------------------------


class EchoBrain:
    """Says back what it 'heard' (the utterance's text stands in for STT)."""

    name = "echo"

    def __init__(self) -> None:
        self.replied = 0

    async def reply(self, request: TurnRequest, out: trio.MemorySendChannel[BrainOutput]) -> None:
        async with out:
            await out.send(Transcript(request.utterance.text or ""))
            await trio.sleep(0.5)  # the LLM thinking
            self.replied += 1
            await out.send(ReplyChunk("ok", "ok"))

    async def aclose(self) -> None:
        pass


async def ask(brain: TextWakeBrain, text: str, source: str = "voice") -> list[BrainOutput]:
    send, receive = trio.open_memory_channel[BrainOutput](10)
    await brain.reply(TurnRequest("t", Utterance(text=text, source=source)), send)
    return [item async for item in receive]


def test_gate_matches_phrases_loosely() -> None:
    gate = TextWakeGate(["Hey Robot"])
    assert gate.matches("hey, robot! what time is it?")
    assert gate.matches("ＨＥＹ　ＲＯＢＯＴ")
    assert not gate.matches("hey robotics team")
    with pytest.raises(ValueError):
        TextWakeGate(["  ", "!"])


async def test_text_wake_word_and_conversation_window(autojump_clock: trio.testing.MockClock) -> None:
    inner = EchoBrain()
    brain = TextWakeBrain(inner, TextWakeGate(["hey robot"], timeout=60))
    assert await ask(brain, "what time is it") == []
    assert inner.replied == 0 and brain.ignored == 1  # cancelled before the "LLM" answered
    assert len(await ask(brain, "hey robot, what time is it")) == 2
    assert len(await ask(brain, "and tomorrow?")) == 2  # the conversation is still open
    await trio.sleep(61)
    assert await ask(brain, "and the day after?") == []
    assert len(await ask(brain, "anything", source="button")) == 2  # the talk button needs no phrase
