"""AEC3 cancels best when the echo lags its reference by about 10 ms: its linear filter (about 50 ms) then
spends itself on the room instead of on the devices' latency. The tap pairs each microphone block with the
reference as it was played, so the echo lags by the whole round trip (60 to 250 ms); once the delay estimate
knows it, the reference is held back by the difference.

Holding it back is a jump AEC3 takes seconds to follow, and a reset starts its convergence over; both cost
several seconds of poor cancellation. So a :class:`Lane` with the new hold is tried next to the running one
(twice the CPU for a few seconds) and takes over once it cleans better (bench echo, hall: about 30 dB against
25 dB once converged).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

_SMOOTH = 0.05  # per processed chunk (usually 20 ms): a second or so of memory
TRIAL_MIN = 50  # active chunks before a trial lane may take over (about 1 s of robot speech)
TRIAL_MAX = 300  # active chunks after which a trial lane that is not better is dropped


class Lane:
    """One AEC3 instance fed with the reference held back by ``hold`` samples."""

    def __init__(self, aec: Any, hold: int, recent_far: np.ndarray) -> None:
        self.aec = aec
        self.hold = hold
        past = recent_far[-hold:] if hold else recent_far[:0]
        self._line = np.concatenate([np.zeros(hold - len(past), dtype=np.int16), past]).astype(np.int16)
        self.out_power = 0.0
        self.active = 0

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        if self.hold:
            line = np.concatenate([self._line, far])
            far, self._line = line[: len(far)], line[len(far) :]
        return np.asarray(self.aec.process(near, far), dtype=np.int16)

    def count(self, cleaned: np.ndarray) -> None:
        """A chunk processed while the robot spoke: how much is left of it."""
        power = float(np.mean(np.square(cleaned, dtype=np.float64))) if cleaned.size else 0.0
        self.out_power = power if not self.active else self.out_power + _SMOOTH * (power - self.out_power)
        self.active += 1


class Lanes:
    """The lane in use and, while a new hold is tried, its challenger."""

    def __init__(self, make_aec: Callable[[], Any], max_hold: int) -> None:
        self.make_aec = make_aec
        self.max_hold = max_hold
        self.current = Lane(make_aec(), 0, np.zeros(0, dtype=np.int16))
        self.trial: Lane | None = None
        self._recent = np.zeros(0, dtype=np.int16)  # the latest raw reference, to prime a trial's delay line
        self.switches = 0

    @property
    def hold(self) -> int:
        return self.current.hold

    def try_hold(self, hold: int) -> None:
        """Try ``hold`` in a fresh lane next to the running one (unless one is being tried already)."""
        if self.trial is None and 0 <= hold <= self.max_hold and hold != self.current.hold:
            self.trial = Lane(self.make_aec(), hold, self._recent)

    def process(self, near: np.ndarray, far: np.ndarray, active: bool) -> tuple[np.ndarray, bool]:
        """Clean ``near``; True when a trial lane took over with this chunk."""
        recent = np.concatenate([self._recent, far])
        self._recent = recent[-self.max_hold :] if self.max_hold else recent[:0]
        cleaned = self.current.process(near, far)
        trial = self.trial
        if trial is None:
            return cleaned, False
        tried = trial.process(near, far)
        if not active:
            return cleaned, False
        self.current.count(cleaned)
        trial.count(tried)
        if trial.active >= TRIAL_MIN and trial.out_power < self.current.out_power:
            self.current, self.trial = trial, None
            self.switches += 1
            return tried, True
        if trial.active >= TRIAL_MAX:
            self.trial = None
        return cleaned, False

    def reset(self) -> None:
        self.current = Lane(self.make_aec(), 0, np.zeros(0, dtype=np.int16))
        self.trial = None
        self._recent = np.zeros(0, dtype=np.int16)
