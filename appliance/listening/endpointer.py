"""Endpointing: where an utterance starts and ends, from a per-block speech decision.

Pure and synchronous so it can be tested block by block and benchmarked without Trio.

* Pre-roll: the blocks before the onset are kept, so the first syllable (quiet, below the threshold) is in
  the utterance.
* Early endpoint: after ``early_endpoint`` seconds of silence the utterance is handed out already (the cloud
  STT can start), but it stays open until ``silence_duration``. If speech resumes in between, the endpointer
  reports ``Onset(resumed=True)`` and later hands out the whole utterance again, which supersedes the first.
  This takes ~250 ms off every turn at the price of a wasted STT call when somebody pauses mid-sentence.
* Armed start (after a wake word): the utterance starts from the audio before the detection, and is given
  up when no speech follows within ``command_timeout``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from appliance.audio.base import level_db


@dataclass(frozen=True)
class Onset:
    """Speech started; ``level`` is the block's dBFS. ``resumed``: it continues an utterance handed out early."""

    level: float
    resumed: bool = False


@dataclass(frozen=True, eq=False)
class Segment:
    """A finished utterance: pre-roll + speech + the silence that ended it (16 kHz int16).

    ``reason``: "silence", "early" (handed out before the full silence; may be superseded), "max_duration",
    or "button". ``levels`` are the block levels, for the noise floor.
    """

    samples: np.ndarray
    forced: bool = False
    reason: str = "silence"
    levels: tuple[float, ...] = ()

    @property
    def early(self) -> bool:
        return self.reason == "early"


@dataclass(frozen=True)
class Discarded:
    reason: str


EndpointResult = Onset | Segment | Discarded


class Endpointer:
    def __init__(
        self,
        block_seconds: float,
        silence_duration: float = 0.5,
        min_duration: float = 0.2,
        max_duration: float = 10.0,
        preroll: float = 0.3,
        early_endpoint: float | None = None,
        longest_preroll: float | None = None,
        confirm_blocks: int = 1,
    ) -> None:
        self.block_seconds = block_seconds
        # Speech must last this many blocks in a row to start an utterance or to break a silence: a single loud
        # block of noise (a fan's flutter just over an adaptive threshold) neither starts nor prolongs one.
        self.confirm_blocks = max(1, confirm_blocks)
        self._run = 0
        # Set by the caller per block: in noise the last syllable fades under it, wait this much longer.
        self.early_extra_blocks = 0
        self.max_hold_blocks = max(1, round(1.0 / block_seconds))  # a bridge keeps an utterance open this long
        self._held = 0
        self._heard = 0  # quiet blocks of this utterance the second opinion took for speech
        self.silence_blocks = max(1, round(silence_duration / block_seconds))
        self.early_blocks = (
            max(1, round(early_endpoint / block_seconds))
            if early_endpoint and early_endpoint < silence_duration
            else None
        )
        self.min_blocks = max(1, round(min_duration / block_seconds))
        self.max_blocks = max(1, round(max_duration / block_seconds))
        self.preroll_blocks = round(preroll / block_seconds)
        keep = max(preroll, longest_preroll or 0.0)
        self._history: deque[tuple[np.ndarray, float]] = deque(maxlen=max(1, round(keep / block_seconds)))
        self._speech: list[np.ndarray] = []
        self._levels: list[float] = []
        self._voiced = 0
        self._quiet = 0
        self._forced = False
        self._sent_early = False
        self._armed_blocks: int | None = None  # blocks left to wait for speech after a wake word
        self._command = False  # opened by a wake word or a tap: the user asked to be heard, never "too short"
        self.last_level = -100.0

    @property
    def in_speech(self) -> bool:
        return bool(self._speech)

    @property
    def forced(self) -> bool:
        return self._forced

    def abandon(self, reason: str) -> Discarded | None:
        """Drop the open utterance (it was noise after all)."""
        if not self._speech:
            return None
        self._clear()
        return Discarded(reason)

    @property
    def armed(self) -> bool:
        return self._armed_blocks is not None

    def reset(self) -> None:
        self._history.clear()
        self._clear()

    def _clear(self) -> None:
        self._speech = []
        self._levels = []
        self._voiced = self._quiet = 0
        self._forced = False
        self._sent_early = False
        self._armed_blocks = None
        self._command = False
        self._held = 0
        self._heard = 0

    @property
    def kept_blocks(self) -> list[np.ndarray]:
        """The open utterance's blocks so far (pre-roll included)."""
        return self._speech

    @property
    def history_levels(self) -> list[float]:
        """Levels (dBFS) of the blocks kept before an onset, oldest first (for finding a wake phrase)."""
        return [lv for _, lv in self._history]

    def _open(self, preroll_blocks: int) -> None:
        kept = list(self._history)[-preroll_blocks:] if preroll_blocks else []
        self._speech = [b for b, _ in kept]
        self._levels = [lv for _, lv in kept]
        self._history.clear()

    def start(self) -> None:
        """Open an utterance now, whatever the level (push-to-talk)."""
        if not self._speech:
            self._open(self.preroll_blocks)
        self._forced = True
        self._armed_blocks = None

    def arm(self, preroll: float, timeout: float) -> None:
        """The wake word was heard (or the talk button tapped): the utterance starts ``preroll`` s back (or
        where the open one started); speech must follow within ``timeout``. What follows belongs to the user:
        it is never dropped as too short."""
        if self._speech:
            speech, levels = self._speech, self._levels
            self._clear()
            self._speech, self._levels = speech, levels
        else:
            self._clear()
            self._open(round(preroll / self.block_seconds))
        if not self._speech:  # nothing kept yet: still mark the utterance open
            self._speech = [np.zeros(0, dtype=np.int16)]
            self._levels = [-100.0]
        self._armed_blocks = max(1, round(timeout / self.block_seconds))
        self._command = True

    def finish(self) -> Segment | None:
        """Close the open utterance now (push-to-talk released)."""
        if not self._speech:
            self._forced = False
            return None
        return self._close("button")

    def process(
        self, block: np.ndarray, speech: bool, level: float | None = None, hold: bool = False
    ) -> EndpointResult | None:
        """One block. ``hold``: a second opinion (a neural VAD) hears speech in this quiet block: the utterance
        is not closed on it (up to ``max_hold_blocks`` in a row), though an early hand-out still happens."""
        level = self.last_level = level_db(block) if level is None else level
        self._run = self._run + 1 if speech else 0
        confirmed = self._run >= self.confirm_blocks
        if not self._speech:
            return self._maybe_open(block, level, confirmed)
        self._speech.append(block)
        self._levels.append(level)
        if speech and not confirmed and (self._quiet > 0 or self._armed_blocks is not None):
            speech = False  # not (yet) a resumption: a blip
        if self._armed_blocks is not None:
            # After a wake word, a second opinion hearing speech is enough to start.
            return self._after_wake_word(speech or hold, level)
        if self._count(speech, hold):
            return Onset(level, resumed=True)
        return self._decide(hold)

    def _maybe_open(self, block: np.ndarray, level: float, confirmed: bool) -> Onset | None:
        if not confirmed:
            self._history.append((block, level))
            return None
        self._open(self.preroll_blocks + self.confirm_blocks - 1)
        self._speech.append(block)
        self._levels.append(level)
        self._voiced, self._quiet = 1, 0
        return Onset(level)

    def _after_wake_word(self, speech: bool, level: float) -> EndpointResult | None:
        assert self._armed_blocks is not None
        if not speech:
            self._armed_blocks -= 1
            if self._armed_blocks <= 0:
                self._clear()
                return Discarded("no speech after the wake word")
            return None
        self._armed_blocks = None
        self._voiced, self._quiet = 1, 0
        return Onset(level)

    def _count(self, speech: bool, hold: bool) -> bool:
        """Count one block of the open utterance as voiced, held or quiet; True when speech resumed after an
        early hand-out (what was handed out is now incomplete: the whole is handed out again)."""
        if speech:
            self._voiced += 1
            self._held = 0
            resumed = self._sent_early and self._quiet > 0
            self._quiet = 0
            if resumed:
                self._sent_early = False
            return resumed
        if hold and self._command and self._held < self.max_hold_blocks:
            self._heard += 1
            self._held += 1  # a command the second opinion still hears goes on under the noise: not quiet yet
        else:
            self._quiet += 1
            self._heard += hold
        return False

    def _decide(self, hold: bool) -> EndpointResult | None:
        """Whether the open utterance ends here: too long, silent long enough, or ready to hand out early."""
        if len(self._speech) >= self.max_blocks:
            return self._close("max_duration")
        if self._forced:
            return None
        if self._quiet >= self.silence_blocks and hold and self._long_enough() and self._held < self.max_hold_blocks:
            self._held += 1
            self._quiet = self.silence_blocks - 1  # a word under the noise: not the end yet
        if self._quiet >= self.silence_blocks:
            if not self._command and not self._long_enough():
                self._clear()
                return Discarded("too short")
            if self._sent_early:
                self._clear()  # already handed out, and nothing was added since
                return None
            return self._close("silence")
        if (
            self.early_blocks is not None
            and not self._sent_early
            and self._quiet >= self.early_blocks + self.early_extra_blocks
            and (self._long_enough() or self._command)
        ):
            self._sent_early = True
            return self._segment("early")
        return None

    def _long_enough(self) -> bool:
        """At least ``min_duration`` of speech, counting the words a second opinion heard that the energy gate
        lost in noise, as long as the gate itself heard half of it (babble is "speech" to any neural VAD)."""
        return self._voiced + self._heard >= self.min_blocks and 2 * self._voiced >= self.min_blocks

    def _segment(self, reason: str) -> Segment:
        return Segment(np.concatenate(self._speech), forced=self._forced, reason=reason, levels=tuple(self._levels))

    def _close(self, reason: str) -> Segment:
        segment = self._segment(reason)
        self._clear()
        return segment


class EnergyEndpointer(Endpointer):
    """The plain energy endpointer: a block is speech when its level reaches ``threshold_db`` (+ extra)."""

    def __init__(
        self,
        block_seconds: float,
        threshold_db: float = -40.0,
        silence_duration: float = 0.5,
        min_duration: float = 0.2,
        max_duration: float = 10.0,
        preroll: float = 0.3,
    ) -> None:
        super().__init__(block_seconds, silence_duration, min_duration, max_duration, preroll)
        self.threshold_db = threshold_db

    def process(  # type: ignore[override]
        self, block: np.ndarray, extra_threshold_db: float = 0.0
    ) -> EndpointResult | None:
        level = level_db(block)
        return super().process(block, level >= self.threshold_db + extra_threshold_db, level)
