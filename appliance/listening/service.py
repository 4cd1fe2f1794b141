"""Turns the microphone's blocks into utterances, honouring mode, mute, wake word, barge-in and echo.

Per block: the voice activity decision (energy gate with noise floor, optional neural VAD, thresholds raised
by the self-trigger guard while the robot speaks), the wake word models (always fed, so their streaming
state stays current), then the endpointer. Commands and the robot's output level arrive on the bus and are
handled by a second task, so unmuting works while the microphone is closed and delivers no blocks.
"""

from __future__ import annotations

import logging
from collections import deque

import numpy as np
import trio

from appliance.audio.base import CAPTURE_RATE, AudioClip, BlockQueue, level_db
from appliance.bus import EventBus
from appliance.events import (
    Event,
    InputLevel,
    ListenReleased,
    ListenRequested,
    MuteRequested,
    OutputLevel,
    ServiceStatus,
    SpeechDiscarded,
    SpeechStarted,
    State,
    StateChanged,
    TurnFinished,
    UtteranceCaptured,
    WakeWordDetected,
)
from appliance.listening.endpointer import Discarded, Endpointer, Onset, Segment
from appliance.listening.guard import EchoGuard, guard_margin
from appliance.listening.vad import (
    REACTION_SECONDS,
    SpeechDetector,
    VADUnavailable,
    VoiceActivity,
    make_detector,
)
from appliance.listening.wake_phrase import wake_phrase_back, wake_refusal
from appliance.listening.wakeword import MicroWakeWordDetector, WakeDetection, WakeWordDetector
from appliance.settings.listening import ListeningConfig
from appliance.turns import Utterance

log = logging.getLogger(__name__)

_LEVEL_EVERY = 5  # publish the input level every Nth block: enough for a meter, cheap for the bus
_TAP = 0.4  # s: the talk button released sooner than this was tapped (listen once), not held (push-to-talk)
_WAKE_EVIDENCE = 1.2  # s: during playback a wake word needs the user's own voice (above the echo) this recently
_NOISY_EARLY_EXTRA = 0.1  # s: the early endpoint waits this much longer in a noisy room
_WAKE_LOOKBACK = 3.0  # s of audio kept to find where the wake phrase started (detections come 0.2-0.8 s after it)


class ListeningService:
    name = "listening"

    def __init__(
        self,
        bus: EventBus,
        blocks: BlockQueue,
        utterances: trio.MemorySendChannel[Utterance],
        config: ListeningConfig,
        block_ms: int = 20,
        *,
        wake_detector: WakeWordDetector | None = None,
        speech_detector: SpeechDetector | None = None,
        echo_cancelled: bool = False,
    ) -> None:
        self.bus = bus
        self.blocks = blocks
        self.utterances = utterances
        self.config = config
        self.block_seconds = block_ms / 1000
        self.state = State.IDLE
        self.muted = config.mode == "muted"
        self.mode = "always" if config.mode == "muted" else config.mode
        self.wake_engine = config.wake_word.engine if self.mode == "wake_word" else None
        self._wake_detector = wake_detector
        self._speech_detector = speech_detector
        self.wake: WakeWordDetector | None = None
        self.vad: VoiceActivity | None = None
        self.bridge: SpeechDetector | None = None  # a neural second opinion inside utterances (energy VAD)
        c = config
        # A detector that decides late would start the utterance after the first syllable: keep that much more.
        late = getattr(speech_detector, "reaction", None) if speech_detector is not None else None
        late = REACTION_SECONDS.get(c.vad, 0.0) if late is None else late
        self.endpointer = Endpointer(
            self.block_seconds,
            c.silence_duration,
            c.min_duration,
            c.max_duration,
            c.preroll + late,
            c.early_endpoint,
            longest_preroll=max(c.wake_word.preroll, _WAKE_LOOKBACK) if self.wake_engine == "micro" else None,
            confirm_blocks=2,
        )
        self.guard = EchoGuard(
            c.self_trigger_guard,
            self.block_seconds,
            c.barge_in_margin_db,
            c.echo_tail,
            cancelled_margin_db=guard_margin(c.barge_in_margin_db, echo_cancelled, c.echo_cancel_margin_db),
        )
        self.conversation_open_until = float("-inf")  # audio clock
        self._evidence: deque[bool] = deque(maxlen=max(1, round(_WAKE_EVIDENCE / self.block_seconds)))
        self._source = "voice"
        self._listen_pressed_at = float("-inf")
        self.wake_detections = 0
        self.wake_rejected = 0
        self.barge_ins = 0
        self.utterances_sent = 0
        self._noisy_extra = round(_NOISY_EARLY_EXTRA / self.block_seconds)
        self.command_level: float | None = None  # dBFS the wake phrase was spoken at, while its command is open
        self.learning = True  # the room's noise floor is not learned from non-speech yet (status "learning")

    # --- setup ------------------------------------------------------------------------------------------

    def _load(self) -> None:
        """Build the detectors (loads model files: run in a worker thread)."""
        c = self.config
        detector = self._speech_detector or make_detector(c.vad, c.silero_model)
        self.vad = VoiceActivity(
            self.block_seconds,
            c.volume_db_threshold,
            c.noise_floor,
            c.noise_margin_db,
            c.noise_window,
            detector,
            c.vad_threshold,
            c.neural_margin_db,
        )
        if c.vad == "energy" and c.bridge_vad == "micro_vad" and self._speech_detector is None:
            try:
                self.bridge = make_detector("micro_vad")
            except VADUnavailable as exc:
                log.warning("listening: no bridge VAD (%s); the energy gate alone ends utterances", exc)
        if self.wake_engine == "micro":
            self.wake = self._wake_detector or MicroWakeWordDetector.from_config(
                c.wake_word.models, c.wake_word.runtime, c.wake_word.refractory
            )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self.vad is None:
            await trio.to_thread.run_sync(self._load)
        types = (StateChanged, MuteRequested, ListenRequested, ListenReleased, OutputLevel, TurnFinished)
        with self.bus.subscribe(*types, name=self.name, size=1024) as sub:
            self.blocks.clear()  # audio that queued up while we were down is stale
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._follow_events, sub)
                task_status.started()
                self._publish_learning()
                if self.config.mode == "muted":
                    self.bus.publish(MuteRequested(True, source="config"))
                log.info(
                    "listening: mode=%s vad=%s wake=%s guard=%s",
                    self.config.mode,
                    self.config.vad,
                    self.wake_engine or "-",
                    self.config.self_trigger_guard,
                )
                await self._follow_blocks()

    # --- blocks -----------------------------------------------------------------------------------------

    async def _follow_blocks(self) -> None:
        count = 0
        while True:
            block = await self.blocks.get()
            if self.muted:
                continue
            count += 1
            result = self.process_block(block)
            if self.vad is not None and self.learning == self.vad.noise_learned:
                self._publish_learning()
            if count % _LEVEL_EVERY == 0:
                self.bus.publish(InputLevel(self.endpointer.last_level))
            if result is not None:
                await self._handle(result)
            self._relax()

    def _publish_learning(self) -> None:
        """Say in the service status whether the noise floor is still being learned (cold start, unmute):
        until then the floor is a guess from the quietest tenth of what was heard."""
        assert self.vad is not None
        self.learning = not self.vad.noise_learned
        if self.learning:
            self.bus.publish(ServiceStatus(self.name, "learning", error="learning the room's noise from non-speech"))
        else:
            self.bus.publish(ServiceStatus(self.name, "running"))
        log.info("listening: %s", "learning the room's noise" if self.learning else "noise floor learned")

    def _relax(self) -> None:
        """Let the capture hand audio over in batches while idle: an onset may be seen ``audio.idle_handover_ms``
        late (the pre-roll still holds it); the end of speech, barge-in and push-to-talk happen outside idle."""
        self.blocks.relaxed = (
            self.state == State.IDLE and not self.endpointer.in_speech and not self.guard.playing and not self.muted
        )

    @property
    def conversation_open(self) -> bool:
        return self.guard.now < self.conversation_open_until

    def process_block(self, block: np.ndarray) -> Onset | Segment | Discarded | None:
        """Everything one block does, synchronously; returns the endpointer's verdict for the caller to send."""
        assert self.vad is not None
        guard, vad, endpointer = self.guard, self.vad, self.endpointer
        guard.tick()
        playing = guard.playing
        speech, level = self._judge(block, playing)
        if self.wake is not None:
            detection = self.wake.process(block)
            if detection is not None:
                self._on_wake(detection, playing)
        if not endpointer.in_speech and not self._may_start():
            speech = False  # keep the pre-roll filling, start nothing
        if self._steady_noise(playing):
            vad.relearn()
            return endpointer.abandon("steady noise")
        # In noise (the floor, not the fixed threshold, sets the bar) the energy gate loses quiet words and a
        # word's fading end: the bridge VAD may hold the utterance open, and the early hand-out waits a little
        # longer (bench listening_accuracy, 5 dB). In a quiet room the energy gate alone is exact and faster.
        noisy = vad.threshold_db > vad.volume_db_threshold
        bridge = self.bridge
        hold = False
        if bridge is not None and noisy and endpointer.in_speech and not endpointer.forced and not playing:
            hold = bridge.probability(block) >= self.config.vad_threshold
        endpointer.early_extra_blocks = self._noisy_extra if noisy else 0
        result = endpointer.process(block, speech, level, hold)
        self._after(result)
        return result

    def _judge(self, block: np.ndarray, playing: bool) -> tuple[bool, float]:
        """Is this block the user's speech, and how loud is it; the room's floor learns from it when it is not."""
        guard, vad, endpointer = self.guard, self.vad, self.endpointer
        assert vad is not None
        if playing and guard.mode == "gate":
            speech = False
            vad.last_level = level = level_db(block)
        else:
            echo = guard.expected_echo_db() if playing else None
            extra = guard.margin_db if playing else 0.0
            open_ = endpointer.in_speech and not endpointer.armed
            # A command is judged against its wake phrase (below), not by the sustained level.
            speech = vad.is_speech(block, extra, echo, open_, room=not playing, sustain=self.command_level is None)
            level = vad.last_level
            if self.command_level is not None and endpointer.in_speech and not playing and not speech:
                # The command after a wake word belongs to the user: judged against how loud they said the
                # wake phrase, not against the absolute gate (a quiet command in noise is still a command).
                speech = level >= vad.command_threshold_db(self.command_level)
        if playing:
            guard.learn(level)
        elif not endpointer.in_speech and (not speech or not vad.gate_heard):
            # A block only the sustained level called speech is still the room's (music's beats): learn it.
            vad.learn(level)
        self._evidence.append(speech)
        return speech, level

    def _may_start(self) -> bool:
        """Whether speech may open an utterance now (the mode, a learned floor, barge-in allowed)."""
        assert self.vad is not None
        busy = self.state in (State.THINKING, State.SPEAKING)
        may_start = self.mode == "always" or (
            self.mode == "wake_word" and (self.wake_engine == "text" or self.conversation_open)
        )
        return may_start and self.vad.ready and (not busy or self.config.barge_in)

    def _steady_noise(self, playing: bool) -> bool:
        """An utterance that is really a new steady noise (only the energy VAD needs telling; a neural one can)."""
        vad, endpointer = self.vad, self.endpointer
        assert vad is not None
        return bool(
            endpointer.in_speech
            and not endpointer.forced
            and not playing
            and vad.noise_floor
            and self.command_level is None
            and vad.detector.name == "energy"
            and vad.steady_noise()
        )

    def _after(self, result: Onset | Segment | Discarded | None) -> None:
        assert self.vad is not None
        endpointer, bridge = self.endpointer, self.bridge
        if bridge is not None and isinstance(result, Onset) and not result.resumed:
            bridge.reset()  # it only hears utterances: give it the pre-roll so it knows what came before
            for kept in endpointer.kept_blocks:
                bridge.probability(kept)
        endless = isinstance(result, Segment) and result.reason == "max_duration"
        if isinstance(result, Segment) and endless and self.vad.noise_floor and self.command_level is None:
            self.vad.relearn(list(result.levels))  # endless "speech" is most likely a new steady noise
        if not endpointer.in_speech:
            self.command_level = None

    def _on_wake(self, detection: WakeDetection, playing: bool) -> None:
        reason = wake_refusal(self.muted, playing, self.guard.mode, any(self._evidence))
        accepted = reason == ""
        self.bus.publish(WakeWordDetected(detection.phrase, detection.probability, accepted, reason))
        if not accepted:
            self.wake_rejected += 1
            assert self.wake is not None
            self.wake.refuse()
            log.info("wake word %s ignored: %s", detection.phrase, reason)
            return
        self.wake_detections += 1
        busy = self.state in (State.THINKING, State.SPEAKING) or playing
        log.info("wake word %s (p=%.2f)%s", detection.phrase, detection.probability, " barge-in" if busy else "")
        if busy and not self.config.barge_in:
            return
        ww = self.config.wake_word
        # Where the wake phrase started (s back, pre-roll included) and how loud it was said.
        assert self.vad is not None
        levels = [] if self.endpointer.in_speech else self.endpointer.history_levels
        floor, margin = self.vad.floor_db, self.vad.min_noise_margin_db
        back, level = wake_phrase_back(levels, self.block_seconds, floor, margin, self.config.preroll, ww.preroll)
        self.endpointer.arm(back, ww.command_timeout)
        self.command_level = level
        if self.bridge is not None:
            self.bridge.reset()
            for kept in self.endpointer.kept_blocks:
                self.bridge.probability(kept)
        self._source = "wake_word"
        if busy:
            self.barge_ins += 1
        self.bus.publish(SpeechStarted(barge_in=busy))

    async def _handle(self, result: Onset | Segment | Discarded) -> None:
        if isinstance(result, Onset):
            busy = self.state in (State.THINKING, State.SPEAKING) or self.guard.playing
            barge_in = busy or result.resumed
            if barge_in:
                self.barge_ins += 1
            self.bus.publish(SpeechStarted(barge_in=barge_in))
        elif isinstance(result, Discarded):
            self._source = "voice"
            self.bus.publish(SpeechDiscarded(result.reason))
        elif isinstance(result, Segment):
            source = "button" if result.forced else self._source
            if not result.early:
                self._source = "voice"
            await self._emit(result, source)

    async def _emit(self, segment: Segment, source: str) -> None:
        clip = AudioClip(segment.samples, CAPTURE_RATE)
        self.bus.publish(UtteranceCaptured(clip.duration, source))
        log.info("utterance captured: %.2f s (%s, %s)", clip.duration, source, segment.reason)
        self.utterances_sent += 1
        await self.utterances.send(Utterance(audio=clip, source=source))

    # --- commands and the robot's own output --------------------------------------------------------------

    async def _follow_events(self, sub) -> None:
        async for event in sub:
            await self._command(event)

    async def _command(self, event: Event) -> None:
        if isinstance(event, OutputLevel):
            self.guard.on_output(event.db)
        elif isinstance(event, StateChanged):
            self.state = event.new
            self._relax()
        elif isinstance(event, TurnFinished):
            if event.outcome == "done" and self.mode == "wake_word":
                self.conversation_open_until = self.guard.now + self.config.wake_word.wakeword_timeout
        elif isinstance(event, MuteRequested):
            if event.muted != self.muted:
                log.info("microphone %s (%s)", "muted" if event.muted else "open", event.source)
            was_muted, self.muted = self.muted, event.muted
            self.endpointer.reset()
            self.command_level = None
            if self.vad is not None:
                self.vad.reset()
                if was_muted and not event.muted:
                    self.vad.forget_room()  # the room may have changed while the mic was closed
            if self.wake is not None and event.muted:
                self.wake.reset()
        elif isinstance(event, ListenRequested) and not self.muted:
            self.endpointer.start()
            self._listen_pressed_at = self.guard.now
            self.bus.publish(SpeechStarted(barge_in=self.state in (State.THINKING, State.SPEAKING)))
        elif isinstance(event, ListenReleased):
            if self.endpointer.forced and self.guard.now - self._listen_pressed_at < _TAP:
                # A tap, not a hold: listen for one utterance that ends on silence, like after a wake word.
                self.endpointer.arm(self.config.preroll, self.config.wake_word.command_timeout)
                self._source = event.source
                return
            segment = self.endpointer.finish()
            if segment is not None:
                await self._emit(segment, event.source)
