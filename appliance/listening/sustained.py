"""The sustained level: speech a few dB over a fluttering noise, heard by its 300 ms mean.

A voice 5 dB over babble, music or a fan's flutter loses most of its 20 ms blocks to the per-block gate (its
blocks sit inside the noise's own spread), yet its mean over SUSTAIN_WINDOW stands above every such mean of the
noise alone: at 5 dB SNR, 90% of the speech's 300 ms means are >= 3.6 dB over the noise's median, while the
noise's own means reach 3.0-4.2 dB at their highest (bench listening_accuracy's corpus: fan, pink, brown,
babble, music). Averaging is what tells them apart: six voices of babble or a chord average out over 300 ms, a
near talker adds his whole power.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import numpy as np

SUSTAIN_WINDOW = 0.3  # s
# The window's mean must clear the highest mean of the last non-speech seconds by this much ...
SUSTAIN_CLEARANCE_DB = 1.0
# ... and never be less than this over the floor (pink noise's means hardly move) ...
SUSTAIN_MIN_MARGIN_DB = 3.0
# ... and the block itself must be this far over the floor (a quiet block of noise after the last word does
# not extend the utterance by the window's length).
SUSTAIN_BLOCK_DB = 3.0
# Only for a speaker this close to the noise: once the open utterance's loudest mean is this far over the floor,
# the per-block gate hears every word, and the sustained mean would only hold the end open longer.
SUSTAIN_CLEAR_DB = 10.0
# The highest mean is held and falls back this much per block of non-speech: a window of the noise louder than
# the last seconds held keeps counting for a while (a fan's slow surges come back).
SUSTAIN_RELEASE_DB = 0.002
# The margin is worked out again every this many updates (each is ~40 us of numpy; the room changes slowly).
RELEARN_EVERY = 10


class SustainedLevel:
    """The mean power of the room's last SUSTAIN_WINDOW, and whether it makes the current block speech."""

    def __init__(self, block_seconds: float) -> None:
        self.blocks = max(2, round(SUSTAIN_WINDOW / block_seconds))
        self._powers: deque[float] = deque(maxlen=self.blocks)
        self.margin_db: float | None = None  # None: the room's noise is not learned yet, the path is off
        self._peak = -100.0  # the open utterance's loudest mean so far
        self._guessing = False
        self._since = 0  # updates since the margin was last worked out

    def add(self, level_db: float) -> None:
        self._powers.append(10 ** (level_db / 10))

    def mean_db(self) -> float:
        if len(self._powers) < self.blocks:
            return -100.0
        return 10 * float(np.log10(max(sum(self._powers) / self.blocks, 1e-12)))

    def learn(self, quiet_levels: Iterable[float], floor_db: float, ceiling_db: float, guess: bool = False) -> None:
        """Set the margin from the room's non-speech levels (in order): its highest windowed mean over the
        floor + SUSTAIN_CLEARANCE_DB, between SUSTAIN_MIN_MARGIN_DB and ``ceiling_db`` (the per-block margin).
        Called once per update of the floor; works only every RELEARN_EVERY calls once it has a margin.
        ``guess``: the levels are everything heard while the floor is still being learned; that margin is not
        held (the first margin from non-speech alone replaces it)."""
        self._since += 1
        if self.margin_db is not None and self._since < RELEARN_EVERY and not (guess or self._guessing):
            return
        release, self._since = SUSTAIN_RELEASE_DB * self._since, 0
        powers = np.power(10.0, np.fromiter(quiet_levels, dtype=np.float64) / 10)
        if len(powers) < self.blocks:
            self.margin_db = None
            return
        means = np.convolve(powers, np.full(self.blocks, 1 / self.blocks), mode="valid")
        highest = 10 * np.log10(max(float(means.max()), 1e-12)) - floor_db
        if self.margin_db is not None and not (guess or self._guessing):
            highest = max(highest, self.margin_db - SUSTAIN_CLEARANCE_DB - release)
        self.margin_db = min(ceiling_db, max(SUSTAIN_MIN_MARGIN_DB, highest + SUSTAIN_CLEARANCE_DB))
        self._guessing = guess

    def forget(self) -> None:
        self._powers.clear()
        self.margin_db = None
        self._guessing = False
        self._since = 0

    def new_utterance(self) -> None:
        self._peak = -100.0

    def judge(self, level_db: float, floor_db: float, in_speech: bool, lowest_db: float) -> bool:
        """Is this block speech by the sustained level (the per-block gate may have said no)? ``lowest_db``: the
        absolute bar (``volume_db_threshold``) the mean must reach too, as any block must."""
        mean = self.mean_db()
        if in_speech:
            self._peak = max(self._peak, mean)
        return (
            self.margin_db is not None
            and (in_speech or not self._guessing)  # a guessed margin never opens an utterance by itself
            and mean >= max(lowest_db, floor_db + self.margin_db)
            and level_db >= floor_db + SUSTAIN_BLOCK_DB
            and self._peak < floor_db + SUSTAIN_CLEAR_DB
        )
