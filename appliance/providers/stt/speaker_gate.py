"""An optional speaker gate: drop utterances whose voice does not match an enrolled speaker.

It runs before speech-to-text (as the STT pre-process step), so a stranger or the television costs no cloud
request. Embeddings come from a small ONNX speaker model through sherpa-onnx (no PyTorch; e.g. the 3D-Speaker
ERes2Net or WeSpeaker ResNet34 exports, 7-30 MB), run in a worker thread. The model file is not bundled:
download one of sherpa-onnx's speaker-recognition models and point ``stt.speaker_gate_model`` at it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import trio

from appliance.audio.base import CAPTURE_RATE, AudioClip
from appliance.audio.convert import read_wav, resample

log = logging.getLogger(__name__)


class Embedder(Protocol):
    def embed(self, clip: AudioClip) -> np.ndarray:
        """A fixed-length voice embedding (blocking: called in a worker thread)."""
        ...


class SherpaEmbedder:
    def __init__(self, model: Path, threads: int = 1) -> None:
        try:
            import sherpa_onnx
        except ImportError:
            raise ValueError("the speaker gate needs sherpa-onnx (pip install 'appliance[speaker]')") from None
        if not model.is_file():
            raise ValueError(f"speaker model {model} does not exist")
        config = sherpa_onnx.SpeakerEmbeddingExtractorConfig(model=str(model), num_threads=threads)
        self._extractor = sherpa_onnx.SpeakerEmbeddingExtractor(config)

    def embed(self, clip: AudioClip) -> np.ndarray:
        samples = resample(clip.samples, clip.sample_rate, CAPTURE_RATE).astype(np.float32) / 32768.0
        stream = self._extractor.create_stream()
        stream.accept_waveform(sample_rate=CAPTURE_RATE, waveform=samples)
        stream.input_finished()
        return np.asarray(self._extractor.compute(stream), dtype=np.float32)


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


class SpeakerGate:
    """Passes an utterance when its voice is at least ``threshold`` (cosine) close to an enrolled one."""

    def __init__(
        self, embedder: Embedder, enrolled: Sequence[np.ndarray], threshold: float = 0.5, min_seconds: float = 0.5
    ) -> None:
        if not enrolled:
            raise ValueError("the speaker gate needs at least one enrolled recording")
        self.embedder = embedder
        self.enrolled = [_unit(np.asarray(e, dtype=np.float32)) for e in enrolled]
        self.threshold = threshold
        self.min_seconds = min_seconds

    @classmethod
    def enroll(cls, embedder: Embedder, recordings: Sequence[Path], threshold: float = 0.5) -> SpeakerGate:
        """Blocking (reads and embeds the recordings): build it in a worker thread."""
        return cls(embedder, [embedder.embed(read_wav(path)) for path in recordings], threshold)

    def score(self, clip: AudioClip) -> float:
        embedding = _unit(self.embedder.embed(clip))
        return max(float(np.dot(embedding, e)) for e in self.enrolled)

    async def __call__(self, clip: AudioClip) -> AudioClip | None:
        if clip.duration < self.min_seconds:
            return clip  # too short to judge a voice by ("yes", "stop"): let it through
        score = await trio.to_thread.run_sync(self.score, clip)
        if score < self.threshold:
            log.info("speaker gate: not the enrolled speaker (score %.2f < %.2f)", score, self.threshold)
            return None
        return clip
