"""The turn loop: one turn at a time, each in its own cancel scope.

A new utterance, a barge-in or a cancel request cancels the running turn's scope: playback stops within a
block, the brain's HTTP streams close, and history keeps only what the user actually heard.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

import trio

from appliance.audio.base import AudioSink
from appliance.brains._groups import single_error
from appliance.brains.base import Brain, BrainOutput, ReplyChunk, Transcript, TurnRequest, Utterance
from appliance.bus import EventBus
from appliance.conversation.history import ConversationHistory
from appliance.conversation.local_voice import LocalVoice
from appliance.events import (
    AnimationRequested,
    CancelTurnRequested,
    FaceRequested,
    Heard,
    OutputLevel,
    SentenceStarted,
    SpeechStarted,
    TurnFinished,
    TurnStarted,
    TurnTimings,
)
from appliance.errors import ProviderError

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ActiveTurn:
    turn_id: str
    scope: trio.CancelScope
    done: trio.Event = field(default_factory=trio.Event)


@dataclass
class _Record:
    heard: str | None
    started: float
    spoken: list[str] = field(default_factory=list)
    outcome: str | None = None
    error: str | None = None
    error_kind: str | None = None
    heard_at: float | None = None
    first_text_at: float | None = None
    first_audio_at: float | None = None

    def timings(self, now: float) -> TurnTimings:
        def rel(t: float | None) -> float | None:
            return None if t is None else round(t - self.started, 4)

        return TurnTimings(rel(self.heard_at), rel(self.first_text_at), rel(self.first_audio_at), rel(now))


class ConversationService:
    name = "conversation"

    def __init__(
        self,
        bus: EventBus,
        brain: Brain,
        sink: AudioSink,
        utterances: trio.MemoryReceiveChannel[Utterance],
        history: ConversationHistory,
        error_voice: LocalVoice | None = None,
        error_message: str = "",
        prompt_params: dict[str, str] | None = None,
    ) -> None:
        self.bus = bus
        self.brain = brain
        self.sink = sink
        self.utterances = utterances
        self.history = history
        self.error_voice = error_voice
        self.error_message = error_message
        self.prompt_params = dict(prompt_params or {})
        self.current: ActiveTurn | None = None
        self.turns = 0
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with self.sink.open(), trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._follow_commands)
            task_status.started()
            try:
                async for utterance in self.utterances:
                    await self.start_turn(utterance)
            finally:
                self._nursery = None
                nursery.cancel_scope.cancel()

    async def start_turn(self, utterance: Utterance, brain: Brain | None = None) -> ActiveTurn:
        """Interrupt whatever is running, then start answering ``utterance``."""
        if self._nursery is None:
            raise RuntimeError("conversation service is not running")
        await self.cancel_turn("new turn")
        turn_id = uuid.uuid4().hex[:10]
        return await self._nursery.start(self._turn, turn_id, utterance, brain or self.brain)

    async def cancel_turn(self, reason: str) -> bool:
        """Cancel the running turn and wait until it has cleaned up; False when nothing was running."""
        active = self.current
        if active is None or active.done.is_set():
            return False
        log.info("turn %s interrupted: %s", active.turn_id, reason)
        active.scope.cancel()
        await active.done.wait()
        return True

    async def _follow_commands(self) -> None:
        with self.bus.subscribe(SpeechStarted, CancelTurnRequested, name="conversation") as sub:
            async for event in sub:
                if isinstance(event, SpeechStarted) and self._nursery is not None:
                    # Someone is talking to us: open the cloud connections while they speak.
                    self._nursery.start_soon(self._warm)
                if isinstance(event, SpeechStarted) and event.barge_in:
                    await self.cancel_turn("barge-in")
                elif isinstance(event, CancelTurnRequested):
                    await self.cancel_turn(f"cancel from {event.source}")

    async def _warm(self) -> None:
        warm = getattr(self.brain, "warm", None)
        if warm is not None:
            await warm()

    async def _turn(
        self, turn_id: str, utterance: Utterance, brain: Brain, *, task_status: trio.TaskStatus[ActiveTurn]
    ) -> None:
        active = ActiveTurn(turn_id, trio.CancelScope())
        self.current = active
        self.turns += 1
        record = _Record(heard=None if utterance.announce else utterance.text, started=trio.current_time())
        task_status.started(active)
        self.bus.publish(TurnStarted(turn_id, brain.name))
        try:
            with active.scope:
                try:
                    await self._converse(turn_id, utterance, brain, record)
                    record.outcome = "done" if record.spoken or record.heard else "empty"
                except ProviderError as exc:
                    record.outcome, record.error, record.error_kind = "failed", str(exc), type(exc).__name__
                    log.warning("turn %s failed: %s", turn_id, exc, extra={"turn_id": turn_id, "brain": brain.name})
                    self._finish(turn_id, record)
                    await self._say_error()
        finally:
            if record.outcome is None:
                record.outcome = "interrupted"
            if record.outcome != "failed":
                self._finish(turn_id, record)
            active.done.set()

    async def _say_error(self) -> None:
        if self.error_voice is None or not self.error_message:
            return
        clip = await self.error_voice.say(self.error_message)
        if clip is not None:
            await self.sink.play(clip, self._level)

    def _finish(self, turn_id: str, record: _Record) -> None:
        assert record.outcome is not None
        if record.heard or record.spoken:
            self.history.add_turn(record.heard, " ".join(record.spoken))
        timings = record.timings(trio.current_time())
        self.bus.publish(TurnFinished(turn_id, record.outcome, " ".join(record.spoken), record.error, record.error_kind, timings))
        log.info(
            "turn %s %s (transcript after %s s, first audio after %s s)",
            turn_id,
            record.outcome,
            "-" if timings.heard is None else timings.heard,
            "-" if timings.first_audio is None else timings.first_audio,
            extra={"turn_id": turn_id},
        )
        if record.spoken:  # what the robot said, next to what it heard
            log.info("said: %s", " ".join(record.spoken), extra={"turn_id": turn_id})

    async def _converse(self, turn_id: str, utterance: Utterance, brain: Brain, record: _Record) -> None:
        request = TurnRequest(
            turn_id, utterance, self.history.messages(), self.history.conversation_id, self.prompt_params
        )
        # One slot: the brain hands over the transcript and goes straight on to the LLM request, instead of
        # waiting while we publish and log it.
        send, receive = trio.open_memory_channel[BrainOutput](1)
        with single_error():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(brain.reply, request, send)
                async with receive:
                    index = 0
                    async for item in receive:
                        if isinstance(item, Transcript):
                            record.heard, record.heard_at = item.text, trio.current_time()
                            self.bus.publish(Heard(turn_id, item.text))
                            log.info("heard: %s", item.text, extra={"turn_id": turn_id})
                        else:
                            await self._speak(turn_id, index, item, record)
                            index += 1

    async def _speak(self, turn_id: str, index: int, chunk: ReplyChunk, record: _Record) -> None:
        if record.first_text_at is None:
            record.first_text_at = trio.current_time()
        self.bus.publish(SentenceStarted(turn_id, index, chunk.voice_text))
        for tag in chunk.tags:
            duration = _float(tag.attribute("duration"))
            if tag.name == "face":
                self.bus.publish(FaceRequested(tag.value, duration, turn_id))
            elif tag.name == "animation":
                self.bus.publish(AnimationRequested(tag.value, duration, turn_id))
        # Counted as spoken the moment it starts: the user heard it begin, and a history without it would
        # make the model repeat itself after a barge-in.
        record.spoken.append(chunk.text)
        if chunk.audio is not None:
            if record.first_audio_at is None:
                record.first_audio_at = trio.current_time()
            await self.sink.play(chunk.audio, self._level)

    def _level(self, db: float) -> None:
        self.bus.publish(OutputLevel(db))


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
