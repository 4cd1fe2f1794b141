"""Energy endpointing: where an utterance starts and ends, from block levels alone.

Pure and synchronous so it can be tested block by block and benchmarked without Trio.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from appliance.audio.base import level_db


@dataclass(frozen=True)
class Onset:
    """Speech started; ``level`` is the block's dBFS."""

    level: float


@dataclass(frozen=True, eq=False)
class Segment:
    """A finished utterance: pre-roll + speech + the silence that ended it (16 kHz int16)."""

    samples: np.ndarray
    forced: bool = False


@dataclass(frozen=True)
class Discarded:
    reason: str


EndpointResult = Onset | Segment | Discarded


class EnergyEndpointer:
    def __init__(
        self,
        block_seconds: float,
        threshold_db: float = -40.0,
        silence_duration: float = 0.5,
        min_duration: float = 0.2,
        max_duration: float = 10.0,
        preroll: float = 0.3,
    ) -> None:
        self.block_seconds = block_seconds
        self.threshold_db = threshold_db
        self.silence_blocks = max(1, round(silence_duration / block_seconds))
        self.min_blocks = max(1, round(min_duration / block_seconds))
        self.max_blocks = max(1, round(max_duration / block_seconds))
        self._preroll: deque[np.ndarray] = deque(maxlen=max(1, round(preroll / block_seconds)))
        self._speech: list[np.ndarray] = []
        self._voiced = 0
        self._quiet = 0
        self._forced = False
        self.last_level = -100.0

    @property
    def in_speech(self) -> bool:
        return bool(self._speech)

    def reset(self) -> None:
        self._preroll.clear()
        self._speech = []
        self._voiced = self._quiet = 0
        self._forced = False

    def start(self) -> None:
        """Open an utterance now, whatever the level (push-to-talk)."""
        if not self._speech:
            self._speech = list(self._preroll)
        self._forced = True

    def finish(self) -> Segment | None:
        """Close the open utterance now (push-to-talk released)."""
        if not self._speech:
            self._forced = False
            return None
        segment = Segment(np.concatenate(self._speech), forced=True)
        self.reset()
        return segment

    def process(self, block: np.ndarray, extra_threshold_db: float = 0.0) -> EndpointResult | None:
        level = self.last_level = level_db(block)
        loud = level >= self.threshold_db + extra_threshold_db
        if not self._speech:
            if not loud:
                self._preroll.append(block)
                return None
            self._speech = [*self._preroll, block]
            self._preroll.clear()
            self._voiced, self._quiet = 1, 0
            return Onset(level)
        self._speech.append(block)
        if loud:
            self._voiced += 1
            self._quiet = 0
        else:
            self._quiet += 1
        spoken = len(self._speech)
        if spoken >= self.max_blocks:
            return self._close("too long")
        if self._quiet >= self.silence_blocks and not self._forced:
            if self._voiced < self.min_blocks:
                self.reset()
                return Discarded("too short")
            return self._close(None)
        return None

    def _close(self, reason: str | None) -> Segment:
        segment = Segment(np.concatenate(self._speech), forced=self._forced)
        self.reset()
        return segment
