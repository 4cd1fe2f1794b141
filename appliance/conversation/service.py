"""The turn loop: one turn at a time, each in its own cancel scope.

A new utterance, a barge-in or a cancel request cancels the running turn's scope: playback stops within a
block, the brain's HTTP streams close, and history keeps only what the user actually heard.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field

import numpy as np
import trio

from appliance.audio.base import AudioClip, AudioSink, AudioStream
from appliance.bus import EventBus
from appliance.conversation.history import ConversationHistory
from appliance.conversation.journal import TurnJournal
from appliance.conversation.local_voice import LocalVoice
from appliance.errors import ProviderError
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
from appliance.groups import single_error
from appliance.settings.conversation import ConversationConfig
from appliance.turns import Brain, BrainOutput, ReplyChunk, Transcript, TurnRequest, Utterance

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ActiveTurn:
    turn_id: str
    scope: trio.CancelScope
    done: trio.Event = field(default_factory=trio.Event)


# A stuck disk may delay a turn by this much at its start and at its end, never silence the robot.
JOURNAL_WAIT = 2.0
# Characters spoken per second before a turn has measured its voice's own pace (a typical TTS voice).
DEFAULT_PACE = 14.0


class _Counted(AudioStream):
    """A speech stream passed on to the sink, counting what the sink took of it."""

    def __init__(self, stream: AudioStream) -> None:  # a view of ``stream``: no channel of its own
        self.stream = stream
        self.sample_rate = stream.sample_rate
        self.samples = 0

    @property
    def seconds(self) -> float:
        return self.samples / self.sample_rate

    async def __aiter__(self) -> AsyncIterator[np.ndarray]:
        async for piece in self.stream:
            self.samples += len(piece)
            yield piece


@dataclass
class _Pace:
    """How fast this turn's voice speaks, from the sentences played whole."""

    chars: int = 0
    seconds: float = 0.0

    def add(self, text: str, seconds: float) -> None:
        if text and seconds > 0.2:
            self.chars += len(text)
            self.seconds += seconds

    def heard_part(self, text: str, seconds: float) -> str:
        """The words of ``text`` spoken in its first ``seconds``, at a word boundary, marked as cut off."""
        pace = self.chars / self.seconds if self.seconds else DEFAULT_PACE
        count = int(seconds * pace)
        if count <= 0:
            return ""
        if count >= len(text):
            return text
        cut = text[:count].rsplit(" ", 1)[0] if " " in text[:count] else text[:count]
        return cut.rstrip(" ,;:") + "…"


@dataclass
class _Record:
    heard: str | None
    started: float
    conversation_id: str = ""
    brain: str = ""  # the brain whose reply was spoken
    spoken: list[str] = field(default_factory=list)
    pace: _Pace = field(default_factory=_Pace)
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
        journal: TurnJournal | None = None,
        mid_reply_message: str = "",
    ) -> None:
        self.bus = bus
        self.brain = brain
        self.sink = sink
        self.utterances = utterances
        self.history = history
        self.error_voice = error_voice
        self.error_message = error_message  # said when a turn fails before a word of the reply was heard
        self.mid_reply_message = mid_reply_message  # said when it fails after part of the reply was heard
        self.prompt_params = dict(prompt_params or {})
        self.journal = journal  # the write-ahead history, when histories are kept
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

    def busy(self) -> bool:
        """A turn is running (answering, or speaking its reply)."""
        return self.current is not None and not self.current.done.is_set()

    async def wait_idle(self) -> None:
        """Return once no turn is running (at once when none is)."""
        while (turn := self.current) is not None and not turn.done.is_set():
            await turn.done.wait()

    def update_settings(self, config: ConversationConfig) -> None:
        """New history limits and error message: they apply from the next turn, no restart needed."""
        self.history.limit = config.history_limit
        self.history.idle_timeout = config.idle_timeout
        self.error_message = config.error_message

    def use_brain(self, brain: Brain) -> None:
        """Answer the next turns with ``brain`` (a running turn keeps the brain it started with)."""
        self.brain = brain

    def use_sink(self, sink: AudioSink) -> None:
        """Speak through ``sink`` from this service's next start on (restart it to switch now)."""
        self.sink = sink

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
                request = TurnRequest(
                    turn_id, utterance, self.history.messages(), self.history.conversation_id, self.prompt_params
                )
                record.conversation_id = request.conversation_id
                await self._write_ahead(request, brain)
                try:
                    await self._converse(request, brain, record)
                    record.outcome = "done" if record.spoken or record.heard else "empty"
                except ProviderError as exc:
                    record.outcome, record.error, record.error_kind = "failed", str(exc), type(exc).__name__
                    log.warning("turn %s failed: %s", turn_id, exc, extra={"turn_id": turn_id, "brain": brain.name})
                    await self._say_error(turn_id, record)
        finally:
            if record.outcome is None:
                record.outcome = "interrupted"
            with trio.CancelScope(shield=True):  # an interrupted turn is still recorded before it is over
                await self._finish(turn_id, record, brain)
            active.done.set()

    async def _write_ahead(self, request: TurnRequest, brain: Brain) -> None:
        """The user's words (or, before STT, how long they spoke) on disk before any brain hears them."""
        if self.journal is None:
            return
        utterance = request.utterance
        with trio.move_on_after(JOURNAL_WAIT):
            await self.journal.begin(
                request.conversation_id,
                request.turn_id,
                brain=brain.name,
                source=utterance.source,
                heard=utterance.text,
                announce=utterance.announce,
                audio_seconds=round(utterance.audio.duration, 2) if utterance.audio is not None else None,
            )

    async def _say_error(self, turn_id: str, record: _Record) -> None:
        """Say why the reply stopped, in the local voice (the cloud's may be what failed), and count it as said."""
        line = self.mid_reply_message if record.spoken and self.mid_reply_message else self.error_message
        if self.error_voice is None or not line:
            return
        clip = await self.error_voice.say(line)
        if clip is None:
            return
        if self.journal is not None:
            with trio.move_on_after(JOURNAL_WAIT):
                await self.journal.said(record.conversation_id, turn_id, line)
        self.bus.publish(SentenceStarted(turn_id, len(record.spoken), line))
        record.spoken.append(line)
        await self.sink.play(clip, self._level)

    async def _finish(self, turn_id: str, record: _Record, brain: Brain) -> None:
        """Record the turn (durably, when histories are kept), then report it finished."""
        assert record.outcome is not None
        spoken = " ".join(record.spoken)
        if record.heard or record.spoken:
            self.history.add_turn(record.heard, spoken)
        timings = record.timings(trio.current_time())
        answered = record.brain or brain.name
        if self.journal is not None and record.conversation_id:
            with trio.move_on_after(JOURNAL_WAIT):
                await self.journal.end(
                    record.conversation_id,
                    turn_id,
                    outcome=record.outcome,
                    brain=answered,
                    heard=record.heard,
                    spoken=spoken,
                    error=record.error,
                    timings=asdict(timings),
                )
        self.bus.publish(
            TurnFinished(
                turn_id,
                record.outcome,
                spoken,
                record.error,
                record.error_kind,
                timings,
                answered,
                record.conversation_id,
            )
        )
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

    async def _converse(self, request: TurnRequest, brain: Brain, record: _Record) -> None:
        turn_id = request.turn_id
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
                            if self.journal is not None:
                                with trio.move_on_after(JOURNAL_WAIT):
                                    await self.journal.heard(record.conversation_id, turn_id, item.text)
                            self.bus.publish(Heard(turn_id, item.text))
                            log.info("heard: %s", item.text, extra={"turn_id": turn_id})
                        else:
                            await self._speak(turn_id, index, item, record)
                            index += 1

    async def _speak(self, turn_id: str, index: int, chunk: ReplyChunk, record: _Record) -> None:
        if record.first_text_at is None:
            record.first_text_at = trio.current_time()
        if self.journal is not None:  # on disk before anyone is told the sentence started
            with trio.move_on_after(JOURNAL_WAIT):
                await self.journal.said(record.conversation_id, turn_id, chunk.text)
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
        if not record.brain and chunk.voice_text:
            record.brain = chunk.brain or ""
        if chunk.audio is None:
            return
        if record.first_audio_at is None:
            record.first_audio_at = trio.current_time()
        if isinstance(chunk.audio, AudioClip):
            await self.sink.play(chunk.audio, self._level)
            record.pace.add(chunk.voice_text, chunk.audio.duration)
            return
        heard = _Counted(chunk.audio)
        try:
            await self.sink.play(heard, self._level)
        except ProviderError:
            # The speech broke off mid-sentence: the history keeps the part that was played, not all of it.
            part = record.pace.heard_part(chunk.voice_text, heard.seconds)
            if part:
                record.spoken[-1] = part
            else:
                record.spoken.pop()
            if self.journal is not None:
                with trio.move_on_after(JOURNAL_WAIT):
                    await self.journal.cut(record.conversation_id, turn_id, part)
            raise
        record.pace.add(chunk.voice_text, heard.seconds)

    def _level(self, db: float) -> None:
        self.bus.publish(OutputLevel(db))


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
