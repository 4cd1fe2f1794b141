"""Keeping the speaker's reference and the microphone paired: the echo's delay (GCC-PHAT), the two clocks' drift
(from the delay's slope) and the reference backlog's low. The reference: :mod:`appliance.audio.echo_reference`."""

from __future__ import annotations

import logging
import math
from collections import deque

import numpy as np

from appliance.audio.base import CAPTURE_RATE

log = logging.getLogger(__name__)

FRAME = CAPTURE_RATE // 100  # AEC3's 10 ms frame


def frame_energies(samples: np.ndarray, frames: int) -> np.ndarray:
    """Each 10 ms frame's energy (the sum of its squares) of ``frames`` int16 frames. Exact: every sum of squares of
    int16 frames lies far under 2^53, so any grouping of them gives the same number."""
    frame_samples = samples.reshape(frames, FRAME).astype(np.float64)
    return np.einsum("ij,ij->i", frame_samples, frame_samples)


class BacklogLow:
    """The least reference the tap held beyond the microphone's position (its backlog) over each second.

    The backlog jumps with every hand-over (both sides deliver in batches, the resampler in bursts): the least of a
    second or two is what :meth:`FarEndTap.advance` may drop without running dry. (Its slope is no measure of the
    drift: it counts whole blocks, see :class:`EchoDrift`.)
    """

    def __init__(self) -> None:
        self._second_min = math.inf
        self._last_min = math.inf
        self._second = 0

    def observe(self, mic_seconds: float, backlog: int) -> None:
        second = int(mic_seconds)
        if second != self._second:
            self._last_min = self._second_min
            self._second, self._second_min = second, math.inf
        self._second_min = min(self._second_min, backlog)

    def reset(self) -> None:
        self._second_min = math.inf
        self._last_min = math.inf

    @property
    def last_min(self) -> float:
        """The smallest backlog of the last whole second (inf before one)."""
        return self._last_min

    def recent_min(self) -> float:
        """The smallest backlog over this second and the last one seen (inf before any)."""
        return min(self._second_min, self._last_min)


class EchoDrift:
    """Clock drift between speaker and microphone (ppm) from the echo itself: the slope of its delay estimates.

    The tap's backlog counts whole blocks: at 100 ppm with 20 ms blocks it steps by one block
    every 200 s and is flat in between, so it cannot tell 100 ppm for minutes. The echo moves by the drift in
    samples (1.6 a second at 100 ppm) and GCC-PHAT places it to a sample: 20 s of estimates give the drift within
    a few ppm. The slope is the median over pairs of estimates at least ``min_span / 2`` apart (one that locks onto
    a reflection a few ms away does not move it). ``epoch`` says how the pairing stands (its moves, the correction
    already applied): estimates from before a change are not compared with those after it.
    """

    def __init__(self, min_span: float = 20.0, least_ppm: float = 4.0, keep: int = 16) -> None:
        self.min_span = min_span
        self.least_ppm = least_ppm
        self._points: deque[tuple[float, float]] = deque(maxlen=keep)  # (mic seconds, lag ms)
        self.epoch: object = None
        self.steady = False  # the last estimates show no drift left to correct (on this pairing)

    def observe(self, mic_seconds: float, lag_ms: float, epoch: object) -> float | None:
        """A new delay estimate; returns the drift to correct (ppm: reference samples gained per
        microphone sample) once it is known and worth correcting, else None."""
        if epoch != self.epoch:
            self._points.clear()
            self.epoch = epoch
        self._points.append((mic_seconds, lag_ms))
        ppm = self.ppm()
        self.steady = ppm is not None and abs(ppm) < self.least_ppm
        if ppm is None or self.steady:
            return None
        self._points.clear()  # corrected: the echo's slope from now on is what is left of it
        return ppm

    def ppm(self) -> float | None:
        points = list(self._points)
        if len(points) < 5 or points[-1][0] - points[0][0] < self.min_span:
            return None
        apart = self.min_span / 2
        slopes = [
            (b[1] - a[1]) / (b[0] - a[0]) for i, a in enumerate(points) for b in points[i + 1 :] if b[0] - a[0] >= apart
        ]
        # The echo comes later and later (ms per s) where the reference falls behind: it loses samples.
        return -float(np.median(slopes)) * 1000.0


def estimate_delay_ms(far: np.ndarray, mic: np.ndarray, max_ms: float = 700.0, min_ms: float = -200.0) -> float | None:
    """Lag of ``far`` inside ``mic`` by GCC-PHAT (robust to the room's colouring), or None when unclear.

    Negative: the echo arrives before its reference was handed to the canceller (the pairing is too late).
    The transforms are as long as the lags searched need (a circular correlation that does not wrap onto them), not
    the whole linear correlation: 43740 points for 2 s, against 65536 (the same estimates in bench echo's rooms, to
    a sample or two; the echo's peak stands 25x over the median and more).
    """
    ahead = min(len(mic) - 1, int(max_ms * CAPTURE_RATE / 1000))
    behind = min(len(far) - 1, int(-min_ms * CAPTURE_RATE / 1000))
    size = _fft_size(max(len(far), len(mic)) + max(ahead, behind) + 1)
    f = np.fft.rfft(far, size)  # in double precision: numpy's single precision forward transform takes 3x as long
    m = np.fft.rfft(mic, size)
    cross = m * np.conj(f)
    cross /= np.abs(cross) + 1e-9
    corr = np.fft.irfft(cross, size)
    window = np.concatenate([corr[size - behind :], corr[: ahead + 1]]) if behind else corr[: ahead + 1]
    index = int(np.argmax(window))
    peak = float(window[index])
    # Unclear where the peak is under 8x the median (unrelated signals peak near 6x it): where more than half the
    # lags reach an eighth of it (a count, not a sort).
    if peak <= 0.0 or 2 * np.count_nonzero(np.abs(corr) > peak / 8.0) > len(corr):
        return None
    return (index - behind) * 1000.0 / CAPTURE_RATE


def _fft_size(n: int) -> int:
    """The smallest 2^a 3^b 5^c from ``n`` on (pocketfft is as quick on those as on powers of two)."""
    best = 1 << (n - 1).bit_length()
    odd = 1
    while odd < best:  # odd runs over 3^b 5^c
        three = odd
        while three < best:
            size = three << max(0, (n - 1) // three).bit_length()  # three * 2^a, the first from n on
            best = min(best, size)
            three *= 3
        odd *= 5
    return best
