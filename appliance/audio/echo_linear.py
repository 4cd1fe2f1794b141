"""A linear echo filter beside AEC3, to keep the user's voice where AEC3's suppressor removes it.

AEC3's suppressor (livekit's most of all) removes what it takes for echo, and in double talk that includes the
user's voice: the cleaned signal then cannot show a barge-in (bench echo: a user 6 dB under the echo was cut
to the room's floor for 300 ms and more). A linear filter never removes more than the echo it predicts: its
residual keeps the near-end voice whole, over a residual echo 10-25 dB under the echo. Where this filter hears
the user, the canceller hands on its residual instead of AEC3's output (:mod:`appliance.audio.echo`).

The filter: a partitioned-block frequency-domain NLMS (overlap-save, 10 ms frames, FFT of 20 ms) over
``partitions`` x 10 ms of the echo path, from 20 ms before the delay the canceller measures (so a 200 ms room
costs no more than a 20 ms one). One partition's gradient is constrained every fourth frame, in turn. While
the reference has been silent for longer than the filter reaches, the filter rests (no cost while the robot
is quiet). Clock drift (100 ppm moves the echo 1.6 samples a second, which an NLMS of this length cannot
follow) is taken from the slope of the canceller's delay estimates and applied to the filter as a phase ramp
every frame.

The double-talk decision, per frame in five bands (200 Hz to 7 kHz): the residual's power against what the
filter leaves of the echo it predicts (the ratio 90% of robot-only frames stay under) plus the room's noise.
Near-end speech when two bands exceed that by ``_NEAR_RATIO`` in ``_NEEDED`` of the last ``_RECENT``
frames, held ``_HOLD`` frames (a word's quieter parts). Only once the filter removes 10 dB (``ready``): before,
it says nothing. The filter's step shrinks where the residual is far above what it expects (double talk it
missed), so the user's voice does not teach it.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from appliance.audio.echo_alignment import FRAME

_BINS = FRAME + 1
_BANDS = ((4, 10), (10, 20), (20, 40), (40, 80), (80, 140))  # bins of 50 Hz: 200 Hz to 7 kHz
_MU = 0.4
_READY_RATIO = 0.1  # residual / microphone while the robot speaks alone (10 dB) before the decision counts
_NEAR_RATIO = 8.0  # 9 dB over the expected residual plus noise, per band
_QUANTILE = 0.9  # the expected residual: what 90% of robot-only frames stay under (tracked in the log domain)
_STEP = 0.05
_RECENT = 6
_NEEDED = 3  # frames of the last _RECENT with the user heard
_HOLD = 10  # frames a near-end decision is held
_LONGEST_TALK = 150  # frames (1.5 s) held as the user's in a row: rather the filter lost the echo
_NOISE_UP = 1.002  # the noise floor rises slowly, falls at once (minimum tracking)


class LinearEchoFilter:
    def __init__(self, partitions: int = 16, history: int = 64) -> None:
        self.partitions = partitions
        self._bands = np.zeros((_BINS, len(_BANDS)))
        for j, (a, b) in enumerate(_BANDS):
            self._bands[a:b, j] = 1.0
        # Each bin's band for the step (bins under and over the bands take the nearest band's).
        self._band_of_bin = np.zeros((_BINS, len(_BANDS)))
        for k in range(_BINS):
            j = next((j for j, (a, b) in enumerate(_BANDS) if k < b), len(_BANDS) - 1)
            self._band_of_bin[k, j] = 1.0
        self._history = history  # frames of the reference's spectra kept (the bulk delay reaches this far)
        self.reset()

    def reset(self) -> None:
        self._w = np.zeros((self.partitions, _BINS), dtype=np.complex128)
        self._size = self._history + self.partitions
        self._x = np.zeros((2 * self._size, _BINS), dtype=np.complex128)
        self._xp = np.zeros((2 * self._size, _BINS))
        self._zeros = np.zeros(FRAME)
        self._quiet = 0  # frames of the reference in a row that were digital silence
        self._pos = 0
        self._prev_far = np.zeros(FRAME)
        self._far_power = np.zeros(_BINS)
        self._log_ratio = np.zeros(len(_BANDS))
        self._ratio = np.ones(len(_BANDS))
        self._ones = np.ones(len(_BANDS))
        self._noise = np.full(len(_BANDS), np.inf)
        self._py_last = np.zeros(len(_BANDS))
        self._trust_step = np.ones(len(_BANDS))
        self._erle = 1.0
        self._recent: deque[bool] = deque(maxlen=_RECENT)
        self._hold = 0
        self._held = 0  # frames in a row held as the user's
        self.forgotten = 0  # times it lost the echo and started afresh
        self._turn = 0
        self.delay_frames: int | None = None
        self.ready = False
        self.drift = 0.0  # samples per frame the echo moves later (clock drift)
        self._frames = 0
        self._lags: deque[tuple[int, float]] = deque(maxlen=20)

    def _forget(self) -> None:
        """Learn the echo path afresh (where the delay puts it stays; the drift is measured again)."""
        self._w[:] = 0.0
        self._log_ratio[:] = 0.0
        self._ratio = np.ones(len(_BANDS))
        self._erle = 1.0
        self._recent.clear()
        self._hold = self._held = 0
        self._lags.clear()
        self.set_drift(0.0)
        self.ready = False
        self.forgotten += 1

    def set_delay(self, lag_ms: float) -> None:
        """The echo lags the reference by ``lag_ms``: the filter starts 20 ms before that.

        The estimate wanders by a millisecond or two from one second to the next: the filter moves only when
        the echo's start leaves its first partitions, and then keeps what it learned (shifted)."""
        frames = min(int(max(0.0, lag_ms - 20.0) // 10), self._history - 1)
        if self.delay_frames is None:
            self.delay_frames = frames
            return
        shift = frames - self.delay_frames
        if -1 <= shift <= 2:
            return
        self._w = np.roll(self._w, -shift, axis=0)
        if shift > 0:
            self._w[-shift:] = 0.0
        else:
            self._w[:-shift] = 0.0
        self.delay_frames = frames

    def process(self, near: np.ndarray, far: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whole 10 ms frames of mic and reference: (linear residual as float, near-end voice per frame)."""
        frames = len(near) // FRAME
        mic = near[: frames * FRAME].astype(np.float64).reshape(frames, FRAME)
        ref = far[: frames * FRAME].astype(np.float64)
        # Every frame's spectra at once (one call each): the reference's [previous, this] frame, the mic's.
        joined = np.concatenate([self._prev_far, ref])
        pairs = np.concatenate([joined[:-FRAME].reshape(frames, FRAME), ref.reshape(frames, FRAME)], axis=1)
        spectra = np.fft.rfft(pairs, axis=1)
        mic_spectra = np.fft.rfft(np.concatenate([np.zeros((frames, FRAME)), mic], axis=1), axis=1)
        powers = np.square(spectra.real) + np.square(spectra.imag)
        self._prev_far = ref[-FRAME:] if frames else self._prev_far
        silent: np.ndarray = ~np.any(ref.reshape(frames, FRAME), axis=1)
        residual = mic.copy()
        near_end = np.zeros(frames, dtype=bool)
        for i in range(frames):
            self._push(spectra[i], powers[i], bool(silent[i]))
            delay = self.delay_frames
            if delay is not None and self._quiet <= delay + self.partitions + 1:
                residual[i], near_end[i] = self._frame(mic[i], mic_spectra[i], delay)
            elif self._hold:  # nothing of the robot can be in the microphone: the filter rests
                self._hold -= 1
        return residual.reshape(-1), near_end

    def rest(self, frames: int) -> None:
        """``frames`` of silent reference went by unprocessed (the canceller rests): what processing them would
        have changed once the filter's whole span is silent, its clock (for the drift) and the quiet count."""
        self._frames += frames
        self._quiet += frames
        self._hold = max(0, self._hold - frames)

    def _push(self, spectrum: np.ndarray, power: np.ndarray, silent: bool) -> None:
        self._frames += 1
        self._quiet = self._quiet + 1 if silent else 0
        size = self._size
        self._pos = (self._pos + 1) % size
        # Written twice, so the partitions of any frame are one contiguous slice.
        self._x[self._pos] = self._x[self._pos + size] = spectrum
        self._xp[self._pos] = self._xp[self._pos + size] = power

    def _frame(self, mic: np.ndarray, m_spec: np.ndarray, delay: int) -> tuple[np.ndarray, bool]:
        newest = self._pos + self._size - delay  # partition 0: the frame the delay points at
        x = self._x[newest - self.partitions + 1 : newest + 1][::-1]
        predicted = np.fft.irfft(np.einsum("pk,pk->k", self._w, x))[FRAME:]
        error = mic - predicted
        e_spec = np.fft.rfft(np.concatenate([self._zeros, error]))
        near_end = self._decide(e_spec, m_spec - e_spec)
        span = self._xp[newest - self.partitions + 1 : newest + 1].sum(axis=0)
        self._far_power += 0.3 * (span - self._far_power)
        if self.drift:
            self._w *= self._rotation
        if not near_end:
            self._adapt(x, e_spec * (self._band_of_bin @ self._trust_step))
        return error, near_end

    def observe_lag(self, lag_ms: float) -> None:
        """A new estimate of the echo's lag: place the filter, and follow the clocks' drift by its slope.

        The drift is the median slope between pairs of the last estimates at least 2 s apart (robust to the
        odd estimate that locks onto a reflection); the filter's response is then moved by it every frame.
        """
        self._lags.append((self._frames, lag_ms * FRAME / 10.0))
        self.set_delay(lag_ms)
        points = list(self._lags)
        if len(points) < 4 or points[-1][0] - points[0][0] < 300:
            return
        slopes = [
            (b[1] - a[1]) / (b[0] - a[0]) for i, a in enumerate(points) for b in points[i + 1 :] if b[0] - a[0] >= 150
        ]
        if slopes:
            self.set_drift(float(np.median(slopes)))

    def set_drift(self, samples_per_frame: float) -> None:
        self.drift = samples_per_frame
        self._rotation = np.exp(-2j * np.pi * np.arange(_BINS) * samples_per_frame / (2 * FRAME))

    def _adapt(self, x: np.ndarray, e_spec: np.ndarray) -> None:
        step = _MU / (self._far_power + 1e4 * FRAME)
        self._w += step * np.conj(x) * e_spec
        # Gradient constraint for one partition every fourth frame: keep its impulse response to one frame.
        if self._frames % 4:
            return
        j = self._turn = (self._turn + 1) % self.partitions
        taps = np.fft.irfft(self._w[j])
        taps[FRAME:] = 0.0
        self._w[j] = np.fft.rfft(taps)

    def _decide(self, e_spec: np.ndarray, y_spec: np.ndarray) -> bool:
        both = np.stack([e_spec, y_spec])
        pe, py_now = (np.square(both.real) + np.square(both.imag)) @ self._bands
        py = np.maximum(py_now, self._py_last)
        self._py_last = py_now
        noise = self._noise = np.minimum(self._noise * _NOISE_UP, np.maximum(pe, 1.0))
        expected = self._ratio * py + noise
        ready = self.ready
        # The step shrinks where the residual is far above what the filter leaves (double talk it missed, a
        # burst of noise): the user's voice must not teach the filter. Before the filter is ready it has no
        # idea what it leaves: it learns at the full step.
        self._trust_step = np.minimum(1.0, expected / np.maximum(pe, 1.0)) if ready else self._ones
        self._recent.append(ready and int(np.count_nonzero(pe > _NEAR_RATIO * expected)) >= 2)
        if sum(self._recent) >= _NEEDED:
            self._hold = _HOLD
        elif self._hold:
            self._hold -= 1
        self._held = self._held + 1 if self._hold else 0
        if self._held > _LONGEST_TALK:
            # Nobody talks that long over the robot (a barge-in stops it): the filter lost the echo (the path
            # or the drift changed) and, calling everything the user's, would never learn it back.
            self._forget()
            return False
        active = py > 4.0 * noise  # the robot's echo is well above the room
        if not self._hold and active.any():
            above = np.maximum(pe - noise, 1.0) > self._ratio * py
            self._log_ratio += np.where(above, _STEP * _QUANTILE, -_STEP * (1 - _QUANTILE)) * active
            self._ratio = np.exp(self._log_ratio)
            self._erle += 0.01 * (float(pe @ active) / float((pe + py) @ active) - self._erle)
            self.ready = self._erle < _READY_RATIO
        return self._hold > 0
