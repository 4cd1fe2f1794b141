"""Turns the microphone's blocks into utterances, honouring mode, mute and barge-in."""

from __future__ import annotations

import logging

import trio

from appliance.audio.base import CAPTURE_RATE, AudioClip, BlockQueue
from appliance.brains.base import Utterance
from appliance.bus import EventBus
from appliance.events import (
    Event,
    InputLevel,
    ListenReleased,
    ListenRequested,
    MuteRequested,
    SpeechDiscarded,
    SpeechStarted,
    State,
    StateChanged,
    UtteranceCaptured,
)
from appliance.listening.config import ListeningConfig
from appliance.listening.endpointer import Discarded, EnergyEndpointer, Onset, Segment

log = logging.getLogger(__name__)

_LEVEL_EVERY = 5  # publish the input level every Nth block: enough for a meter, cheap for the bus


class ListeningService:
    name = "listening"

    def __init__(
        self,
        bus: EventBus,
        blocks: BlockQueue,
        utterances: trio.MemorySendChannel[Utterance],
        config: ListeningConfig,
        block_ms: int = 20,
    ) -> None:
        self.bus = bus
        self.blocks = blocks
        self.utterances = utterances
        self.config = config
        self.block_seconds = block_ms / 1000
        self.state = State.IDLE
        self.muted = False

    def _endpointer(self) -> EnergyEndpointer:
        c = self.config
        return EnergyEndpointer(
            self.block_seconds, c.volume_db_threshold, c.silence_duration, c.min_duration, c.max_duration, c.preroll
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        endpointer = self._endpointer()
        with self.bus.subscribe(StateChanged, MuteRequested, ListenRequested, ListenReleased, name=self.name) as sub:
            self.blocks.clear()  # audio that queued up while we were down is stale
            task_status.started()
            count = 0
            while True:
                block = await self.blocks.get()
                while True:
                    try:
                        event = sub.receive.receive_nowait()
                    except trio.WouldBlock:
                        break
                    await self._command(event, endpointer)
                if self.muted:
                    continue
                count += 1
                busy = self.state in (State.THINKING, State.SPEAKING)
                if busy and not self.config.barge_in and not endpointer.in_speech:
                    continue
                extra = self.config.barge_in_margin_db if self.state is State.SPEAKING else 0.0
                if self.config.mode == "push_to_talk" and not endpointer.in_speech:
                    endpointer.process(block, extra_threshold_db=float("inf"))  # keep the pre-roll filling
                    continue
                result = endpointer.process(block, extra_threshold_db=extra)
                if count % _LEVEL_EVERY == 0:
                    self.bus.publish(InputLevel(endpointer.last_level))
                await self._handle(result, busy)

    async def _handle(self, result: Onset | Segment | Discarded | None, busy: bool) -> None:
        if isinstance(result, Onset):
            self.bus.publish(SpeechStarted(barge_in=busy))
        elif isinstance(result, Discarded):
            self.bus.publish(SpeechDiscarded(result.reason))
        elif isinstance(result, Segment):
            await self._emit(result, "button" if result.forced else "voice")

    async def _emit(self, segment: Segment, source: str) -> None:
        clip = AudioClip(segment.samples, CAPTURE_RATE)
        self.bus.publish(UtteranceCaptured(clip.duration, source))
        log.info("utterance captured: %.2f s (%s)", clip.duration, source)
        await self.utterances.send(Utterance(audio=clip, source=source))

    async def _command(self, event: Event, endpointer: EnergyEndpointer) -> None:
        if isinstance(event, StateChanged):
            self.state = event.new
        elif isinstance(event, MuteRequested):
            self.muted = event.muted
            endpointer.reset()
        elif isinstance(event, ListenRequested) and not self.muted:
            endpointer.start()
            self.bus.publish(SpeechStarted(barge_in=self.state in (State.THINKING, State.SPEAKING)))
        elif isinstance(event, ListenReleased):
            segment = endpointer.finish()
            if segment is not None:
                await self._emit(segment, event.source)
