"""Keeping the speaker's reference and the microphone paired: the tap that hands the reference over block for
block, the echo's delay (GCC-PHAT) and the two clocks' drift (from the reference backlog's growth)."""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from typing import Any

import numpy as np

from appliance.audio.base import CAPTURE_RATE

log = logging.getLogger(__name__)

FRAME = CAPTURE_RATE // 100  # AEC3's 10 ms frame
_MAX_BACKLOG = 0.6  # s of reference kept ahead of the mic; more means the pairing is lost: resynchronise
# s of reference kept in hand at the first pairing: the resampler hands its output over in bursts, and running
# dry would shift the pairing. Costs nothing: the echo still lags its reference by the round trip minus this,
# and any real round trip (output buffer + input buffer) is longer.
_SLACK = 0.005


class DriftMeter:
    """Clock drift between speaker and microphone (ppm) from the growth of the reference backlog.

    The backlog jumps with every hand-over (the mic delivers in batches), so each second only its minimum
    counts; the slope of those minima over the last ``window`` seconds is the drift.
    """

    def __init__(self, window: float = 60.0, min_span: float = 20.0) -> None:
        self.window = window
        self.min_span = min_span
        self._points: deque[tuple[float, float]] = deque()  # (mic seconds, minimum backlog in samples)
        self._second_min = math.inf
        self._second = 0

    def observe(self, mic_seconds: float, backlog: int) -> None:
        second = int(mic_seconds)
        if second != self._second:
            if math.isfinite(self._second_min):
                self._points.append((float(self._second), self._second_min))
            self._second, self._second_min = second, math.inf
            while self._points and self._points[0][0] < mic_seconds - self.window:
                self._points.popleft()
        self._second_min = min(self._second_min, backlog)

    def reset(self) -> None:
        self._points.clear()
        self._second_min = math.inf

    def ppm(self) -> float | None:
        """Reference samples gained per microphone sample, in ppm (None until enough is seen)."""
        if len(self._points) < 5 or self._points[-1][0] - self._points[0][0] < self.min_span:
            return None
        t = np.array([p[0] for p in self._points])
        y = np.array([p[1] for p in self._points])
        slope = float(np.polyfit(t, y, 1)[0])  # samples per second
        return slope / CAPTURE_RATE * 1e6


def estimate_delay_ms(far: np.ndarray, mic: np.ndarray, max_ms: float = 700.0, min_ms: float = -200.0) -> float | None:
    """Lag of ``far`` inside ``mic`` by GCC-PHAT (robust to the room's colouring), or None when unclear.

    Negative: the echo arrives before its reference was handed to the canceller (the pairing is too late).
    """
    n = len(far) + len(mic)
    size = 1 << (n - 1).bit_length()
    f = np.fft.rfft(far.astype(np.float32), size)
    m = np.fft.rfft(mic.astype(np.float32), size)
    cross = m * np.conj(f)
    cross /= np.abs(cross) + 1e-9
    corr = np.fft.irfft(cross, size)
    ahead = min(len(mic) - 1, int(max_ms * CAPTURE_RATE / 1000))
    behind = min(len(far) - 1, int(-min_ms * CAPTURE_RATE / 1000))
    window = np.concatenate([corr[size - behind :], corr[: ahead + 1]]) if behind else corr[: ahead + 1]
    index = int(np.argmax(window))
    peak = float(window[index])
    if peak < 8.0 * float(np.median(np.abs(corr))) or peak <= 0.0:  # unrelated signals peak near 6x
        return None
    return (index - behind) * 1000.0 / CAPTURE_RATE


class FarEndTap:
    """What the speaker played, for the echo canceller. ``played`` may be called from the audio thread.

    The tap only appends a copy (cheap, lock held for an append); resampling to 16 kHz and pairing happen on
    the capture side in :meth:`take`.
    """

    def __init__(self, max_backlog: float = _MAX_BACKLOG, history: int = 0, slack: float = _SLACK) -> None:
        self.max_backlog = int(max_backlog * CAPTURE_RATE)
        self.slack = int(slack * CAPTURE_RATE)
        self._lock = threading.Lock()
        self._arrived: deque[tuple[np.ndarray, int]] = deque()
        self._ready = np.zeros(0, dtype=np.int16)  # resampled to 16 kHz, not yet paired
        self._rate = 0
        self._resampler: Any = None
        self._correction = 0.0  # ppm the reference is resampled by (measured drift)
        self._synced = False
        self.drift = DriftMeter()
        self.mic_samples = 0
        self.resyncs = 0
        self.advances = 0
        self._skip = 0  # reference samples still to drop (see advance)
        self.played_samples = 0
        # Tests: keep the raw blocks as played (exactly what went to the device), up to ``history`` blocks.
        self.history: deque[np.ndarray] | None = deque(maxlen=history) if history else None

    def played(self, samples: np.ndarray, rate: int) -> None:
        """The sink just played ``samples`` (int16 mono at ``rate``)."""
        block = np.array(samples, dtype=np.int16, copy=True).reshape(-1)
        with self._lock:
            self._arrived.append((block, rate))
            self.played_samples += len(block)
            if self.history is not None:
                self.history.append(block)

    @property
    def backlog(self) -> int:
        """Reference samples in hand beyond the next block (what :meth:`advance` can drop)."""
        return max(0, len(self._ready) - self.slack - FRAME * 2)

    def advance(self, samples: int) -> None:
        """Hand the reference over ``samples`` sooner (the echo was seen arriving before its reference)."""
        self._skip += samples
        self.advances += 1
        self.drift.reset()  # the backlog steps: its slope before and after is not drift

    def drop(self) -> None:
        """Forget every reference sample: the canceller is not running; the next :meth:`take` pairs afresh."""
        with self._lock:
            self._arrived.clear()
        self._ready = np.zeros(0, dtype=np.int16)
        self._synced = False
        self._skip = 0
        self.drift.reset()

    @property
    def correction_ppm(self) -> float:
        return self._correction

    def _resample(self, block: np.ndarray, rate: int) -> np.ndarray:
        if rate != self._rate or self._resampler is None:
            self._new_resampler(rate)
        if self._resampler is None:
            return block
        return self._resampler.resample_chunk(block)

    def _new_resampler(self, rate: int) -> None:
        self._rate = rate
        if rate == CAPTURE_RATE and self._correction == 0.0:
            self._resampler = None
            return
        import soxr

        # The reference has ``1 + ppm`` times as many samples as the mic wants: resample from that much more.
        source_rate = rate * (1.0 + self._correction * 1e-6)
        self._resampler = soxr.ResampleStream(source_rate, CAPTURE_RATE, 1, dtype="int16", quality="HQ")

    def take(self, n: int) -> np.ndarray:
        """The ``n`` reference samples that pair with the next ``n`` microphone samples."""
        with self._lock:
            arrived, self._arrived = self._arrived, deque()
        pieces = [self._ready] + [self._resample(block, rate) for block, rate in arrived]
        ready = np.concatenate(pieces) if len(pieces) > 1 else self._ready
        if not self._synced or len(ready) > self.max_backlog + n + self.slack:
            if self._synced:
                self.resyncs += 1
                ahead_ms = len(ready) * 1000 // CAPTURE_RATE
                log.info("echo reference resynchronised (%d ms ahead of the microphone)", ahead_ms)
                self.drift.reset()
            keep = n + self.slack  # the newest: the echo lags it by the round trip
            ready = ready[-keep:] if len(ready) > keep else ready
            self._synced = bool(len(ready))  # nothing played yet: pair with silence and sync on the first audio
            self._skip = 0
        if self._skip and self._synced:
            dropped = min(self._skip, max(0, len(ready) - n))
            ready, self._skip = ready[dropped:], self._skip - dropped
        if len(ready) >= n:
            out, self._ready = ready[:n], ready[n:]
        else:  # nothing (or too little) played: the speaker was silent
            out = np.concatenate([ready, np.zeros(n - len(ready), dtype=np.int16)])
            self._ready = np.zeros(0, dtype=np.int16)
        self.mic_samples += n
        self.drift.observe(self.mic_samples / CAPTURE_RATE, len(self._ready))
        self._follow_drift()
        return out

    def _follow_drift(self) -> None:
        ppm = self.drift.ppm()
        if ppm is None or abs(ppm) < 20.0:
            return
        # What is left is on top of the correction already applied.
        self._correction = max(-2000.0, min(2000.0, self._correction + ppm))
        log.info("echo reference: clock drift %+.0f ppm, resampling by %+.0f ppm", ppm, self._correction)
        self._new_resampler(self._rate or CAPTURE_RATE)
        self.drift.reset()
