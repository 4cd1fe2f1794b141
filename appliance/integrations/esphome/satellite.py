"""The voice half: Assist pipelines, announcements, timers and wake word settings.

A pipeline starts the moment our wake word (or the talk button) fires: ``VoiceAssistantRequest`` goes out and
the microphone blocks captured since that decision are streamed as ``VoiceAssistantAudio`` while the user
speaks, so Home Assistant's speech-to-text runs alongside our endpointer instead of after it. When the
endpointer hands the utterance to the ``home_assistant`` brain, the brain claims the running pipeline, ends
its audio and turns the pipeline's events into a transcript and reply chunks. An utterance that arrives
without one (typed text is refused; a turn handed over by failover) gets a pipeline of its own.
"""

from __future__ import annotations

import logging
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import trio

from appliance.audio.base import BlockQueue
from appliance.bus import EventBus
from appliance.errors import ProviderError
from appliance.events import (
    FaceRequested,
    ListenRequested,
    MuteRequested,
    SpeechDiscarded,
    TurnFinished,
    TurnStarted,
    WakeWordDetected,
)
from appliance.integrations.esphome.media import chime, stream_url
from appliance.integrations.esphome.messages import event_data, pb
from appliance.integrations.esphome.pipeline import Peer, Pipeline, PipelineEvent
from appliance.settings.home_assistant import HomeAssistantConfig
from appliance.turns import BrainOutput, ReplyChunk, Tag

if TYPE_CHECKING:
    from appliance.integrations.esphome.robot import Robot

log = logging.getLogger(__name__)

_RING_BLOCKS = 25  # ~0.5 s of blocks kept while idle, so a pipeline starts from the wake word decision
NAME = "home_assistant"

# VoiceAssistantFeature bits for DeviceInfo: voice assistant, speaker, API audio, timers, announce, start conversation.
FEATURE_FLAGS = 1 | 2 | 4 | 8 | 16 | 32


class TappedBlockQueue(BlockQueue):
    """The capture queue, with a look at each block as listening takes it (the satellite streams from here)."""

    def __init__(self, max_blocks: int = 100) -> None:
        super().__init__(max_blocks)
        self.tap: Callable[[np.ndarray], None] | None = None

    async def get(self) -> np.ndarray:
        block = await super().get()
        if self.tap is not None:
            self.tap(block)
        return block


class Satellite:
    def __init__(self, bus: EventBus, config: HomeAssistantConfig) -> None:
        self.bus = bus
        self.config = config
        self.peer: Peer | None = None
        self.pipeline: Pipeline | None = None
        self.brain_present = False  # a ``home_assistant`` brain is configured
        self.prefer: Callable[[], bool] = lambda: True  # is it the brain the next turn will use?
        self.robot: Robot | None = None
        self.wake_words: Any = None  # the listening service (its wake word models), when there is one
        self.wake_word_catalogue: list[tuple[str, str]] = []  # (id, phrase) of every configured model
        self.timers: dict[str, dict[str, Any]] = {}
        self.continue_after: str | None = None  # the turn after which Assist wants to hear the user again
        self.pipelines = 0
        self._ring: deque[tuple[float, np.ndarray]] = deque(maxlen=_RING_BLOCKS)
        self._all_models: list[Any] | None = None
        self._nursery: trio.Nursery | None = None
        self._conversation_id = ""

    # --- who is listening ---------------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        return self.peer is not None

    def attach(self, peer: Peer) -> None:
        if self.peer is not None and self.peer is not peer:
            log.info("voice moves from %s to %s", self.peer.name, peer.name)
            self.detach(self.peer)
        self.peer = peer

    def detach(self, peer: Peer) -> None:
        if self.peer is not peer:
            return
        self.peer = None
        self._ring.clear()
        if self.pipeline is not None and not self.pipeline.finished:
            self.pipeline.fail("Home Assistant disconnected")
        self.pipeline = None

    # --- audio --------------------------------------------------------------------------------------------

    def tap(self, block: np.ndarray) -> None:
        if self.peer is None:
            return
        pipeline = self.pipeline
        if pipeline is not None and pipeline.streaming:
            pipeline.feed(block.astype("<i2", copy=False).tobytes())
        else:
            self._ring.append((trio.current_time(), block))

    def start_pipeline(self, wake_word: str = "", since: float | None = None) -> Pipeline:
        """Ask Home Assistant for a run; with ``since``, stream the blocks captured from then on at once."""
        if self.peer is None:
            raise RuntimeError("no Home Assistant connection")
        if self.pipeline is not None and not self.pipeline.finished:
            self.pipeline.abort("a new pipeline starts")
        pipeline = Pipeline(self.peer, wake_word, self._conversation_id)
        self.pipeline = pipeline
        self.pipelines += 1
        self.peer.send(
            pb.VoiceAssistantRequest(
                start=True,
                conversation_id=self._conversation_id,
                wake_word_phrase=wake_word,
                flags=0,
                audio_settings=pb.VoiceAssistantAudioSettings(volume_multiplier=1.0),
            )
        )
        log.info("pipeline %s started (%s)", pipeline.id, wake_word or "button")
        if since is not None:
            for at, block in self._ring:
                if at >= since:
                    pipeline.feed(block.astype("<i2", copy=False).tobytes())
        self._ring.clear()
        return pipeline

    def claim(self) -> Pipeline | None:
        """The pipeline already streaming this utterance, if there is one."""
        pipeline = self.pipeline
        if pipeline is None or pipeline.claimed:
            return None
        if pipeline.finished and pipeline.events.statistics().current_buffer_used == 0:
            return None  # over, with nothing left to read
        pipeline.claimed = True
        return pipeline

    def remember_conversation(self, conversation_id: str) -> None:
        self._conversation_id = conversation_id

    # --- messages from Home Assistant ---------------------------------------------------------------------

    def on_response(self, message: Any) -> None:
        if message.error and self.pipeline is not None:
            self.pipeline.fail("Home Assistant could not start a pipeline")

    def on_event(self, message: Any) -> None:
        event = PipelineEvent(message.event_type, event_data(message))
        log.debug("pipeline event %s %s", event.name, {k: v[:60] for k, v in event.data.items()})
        if self.pipeline is not None:
            self.pipeline.deliver(event)

    def on_timer(self, message: Any) -> None:
        kind = pb.VoiceAssistantTimerEvent.Name(message.event_type).removeprefix("VOICE_ASSISTANT_TIMER_")
        timer = {
            "id": message.timer_id,
            "name": message.name,
            "total_seconds": message.total_seconds,
            "seconds_left": message.seconds_left,
            "active": message.is_active,
            "state": kind.lower(),
        }
        log.info("timer %s %s (%s s left)", message.name or message.timer_id[:12], kind.lower(), message.seconds_left)
        if kind in ("STARTED", "UPDATED"):
            self.timers[message.timer_id] = timer
            if kind == "STARTED":
                self.bus.publish(FaceRequested("joy", 2.0))
        else:
            self.timers.pop(message.timer_id, None)
        if kind == "FINISHED" and self._nursery is not None and self.robot is not None:
            self._nursery.start_soon(self._ring_timer, message.name)

    async def _ring_timer(self, name: str) -> None:
        assert self.robot is not None
        seconds = self.config.timer_ring_seconds
        beep = chime(1.0)
        ring = type(beep)(np.tile(beep.samples, max(1, round(seconds))), beep.sample_rate)
        text = f"{name} timer finished" if name else "timer finished"

        async def produce(out: trio.MemorySendChannel[BrainOutput]) -> None:
            await out.send(ReplyChunk(text, "", (Tag("face", "surprised"),), ring))

        stopped = not await self.robot.run_turn(text, produce)
        log.info("timer %s %s", name or "", "stopped" if stopped else "rang out")

    # --- announcements and media --------------------------------------------------------------------------

    async def play_urls(self, urls: list[str], text: str) -> bool:
        """Play each URL in turn as one reply; the first ones (a pre-announce chime) may fail quietly."""
        assert self.robot is not None
        delivered = False

        async def produce(out: trio.MemorySendChannel[BrainOutput]) -> None:
            nonlocal delivered
            for index, url in enumerate(urls):
                last = index == len(urls) - 1
                async with trio.open_nursery() as nursery:
                    try:
                        stream = await nursery.start(stream_url, url, self.config.tts_timeout)
                    except ProviderError as exc:
                        if last:
                            raise
                        log.info("pre-announcement skipped: %s", exc)
                        continue
                    spoken = text if last else ""
                    await out.send(ReplyChunk(spoken, spoken, (), stream))
            delivered = True

        finished = await self.robot.run_turn(text or "(announcement)", produce)
        return finished and delivered

    async def announce(self, peer: Peer, message: Any) -> None:
        urls = [u for u in (message.preannounce_media_id, message.media_id) if u]
        ok = await self.play_urls(urls, message.text) if urls else False
        peer.send(pb.VoiceAssistantAnnounceFinished(success=ok))
        if ok and message.start_conversation and self.robot is not None:
            self.robot.listen()

    # --- wake word settings -------------------------------------------------------------------------------

    def configuration(self) -> Any:
        available = [
            pb.VoiceAssistantWakeWord(id=i, wake_word=phrase, trained_languages=["en"])
            for i, phrase in self.wake_word_catalogue
        ]
        return pb.VoiceAssistantConfigurationResponse(
            available_wake_words=available,
            active_wake_words=self.active_wake_words(),
            max_active_wake_words=max(1, len(available)),
        )

    def _detector(self) -> Any:
        return getattr(self.wake_words, "wake", None)

    def active_wake_words(self) -> list[str]:
        detector = self._detector()
        if detector is None:
            return [i for i, _ in self.wake_word_catalogue]
        return [model.spec.id for model in detector.models]

    def set_configuration(self, ids: list[str]) -> None:
        """Home Assistant chose the active wake words: keep only those of our loaded models."""
        detector = self._detector()
        if detector is None:
            log.info("wake word choice from Home Assistant ignored: no wake word models are loaded")
            return
        if self._all_models is None:
            self._all_models = list(detector.models)
        wanted = set(ids)
        chosen = [m for m in self._all_models if m.spec.id in wanted]
        unknown = wanted - {m.spec.id for m in self._all_models}
        if unknown:
            log.info("Home Assistant asked for wake words we do not have: %s", ", ".join(sorted(unknown))[:200])
        detector.models = chosen
        log.info("active wake words: %s", ", ".join(m.spec.id for m in chosen) or "none")

    # --- following the robot ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        types = (WakeWordDetected, ListenRequested, SpeechDiscarded, TurnStarted, TurnFinished, MuteRequested)
        with self.bus.subscribe(*types, name="esphome", size=256) as sub:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                try:
                    async for event in sub:
                        self._follow(event)
                finally:
                    self._nursery = None

    def _follow(self, event: Any) -> None:
        if isinstance(event, WakeWordDetected | ListenRequested):
            if isinstance(event, WakeWordDetected) and not event.accepted:
                return
            if self.available and self.brain_present and self.prefer():
                phrase = event.wake_word if isinstance(event, WakeWordDetected) else ""
                self.start_pipeline(phrase, since=event.at)
        elif isinstance(event, MuteRequested):
            if event.muted:
                self._ring.clear()
                if self.pipeline is not None and not self.pipeline.claimed:
                    self.pipeline.abort("microphone muted")
        elif isinstance(event, SpeechDiscarded):
            if self.pipeline is not None and not self.pipeline.claimed:
                self.pipeline.abort(f"speech discarded ({event.reason})")
        elif isinstance(event, TurnFinished):
            if event.turn_id == self.continue_after:
                self.continue_after = None
                if event.outcome == "done" and self.robot is not None:
                    log.info("Assist continues the conversation: listening")
                    self.robot.listen()
        elif isinstance(event, TurnStarted):
            pipeline = self.pipeline
            if pipeline is not None and not pipeline.claimed and event.brain != NAME and not pipeline.finished:
                pipeline.abort(f"the turn went to {event.brain}")


_SATELLITES: weakref.WeakKeyDictionary[EventBus, Satellite] = weakref.WeakKeyDictionary()


def satellite_for(bus: EventBus, config: HomeAssistantConfig) -> Satellite:
    """The one satellite of an appliance: the server and the ``home_assistant`` brain meet here."""
    satellite = _SATELLITES.get(bus)
    if satellite is None:
        satellite = _SATELLITES[bus] = Satellite(bus, config)
    return satellite
