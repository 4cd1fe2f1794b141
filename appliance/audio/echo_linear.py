"""A linear echo filter beside AEC3, to keep the user's voice where AEC3's suppressor removes it.

AEC3's suppressor (livekit's most of all) removes what it takes for echo, and in double talk that includes the
user's voice: the cleaned signal then cannot show a barge-in (bench echo: a user 6 dB under the echo was cut
to the room's floor for 300 ms and more). A linear filter never removes more than the echo it predicts: its
residual keeps the near-end voice whole, over a residual echo 10-25 dB under the echo. Where this filter hears
the user, the canceller hands on its residual instead of AEC3's output (:mod:`appliance.audio.echo`).

The filter: a partitioned-block frequency-domain NLMS (overlap-save, 10 ms frames, FFT of 20 ms) over
``partitions`` x 10 ms of the echo path, from 20 ms before the delay the canceller measures (so a 200 ms room
costs no more than a 20 ms one). 320 ms: a hall's reverberation (0.6 s) past 160 ms held its residual to 13 dB
under the echo, so a user 6 dB under it did not stand out (bench echo: -6 dB barge-in 20 -> 23 of 24, the warm
wake word at the echo's level 9 -> 12 of 12); the filter's CPU grows by a tenth (its calls, not the arithmetic,
dominate). The frames of a block (up to four) are predicted with the same filter and
adapted once by their summed gradients (a block NLMS): one call per transform for all of them, which halves
the filter's CPU against a frame at a time (Python and numpy's per-call overhead, not the arithmetic, dominate
at this size). Four partitions' gradients are constrained every 16 adapted frames, in turn. While the reference
has been silent for longer than the filter reaches, the filter rests (no cost while the robot is quiet). Clock
drift (100 ppm moves the echo 1.6 samples a second, which an NLMS of this length cannot follow) is taken from
the slope of the canceller's delay estimates and applied to the filter as a phase ramp (the arithmetic:
:mod:`appliance.audio.echo_partitions`).

The double-talk decision, per frame in five bands (200 Hz to 7 kHz): the residual's power against what the
filter leaves of the echo it predicts (the ratio 90% of robot-only frames stay under), or of what it left in the
frames before dying away with the room (``_TAIL``: at a word's end the prediction drops at once, the
reverberation past the filter's reach does not), plus the room's noise. Near-end speech when two bands exceed
that by ``_NEAR_RATIO`` in ``_NEEDED`` of the last ``_RECENT`` frames, held ``_HOLD`` frames (a word's quieter
parts). Only once the filter removes 5 dB: before, it says nothing; and never where the residual is louder than
the microphone (the filter adds echo: the path changed). The filter's step shrinks where the residual is far above
what it expects (double talk it missed) once it removes 10 dB (``ready``), so the user's voice does not teach it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from appliance.audio.echo_alignment import FRAME, frame_energies
from appliance.audio.echo_partitions import BATCH, BINS, CHUNK, CONSTRAIN_EVERY, EchoPath, rfft_rows

_BANDS = ((4, 10), (10, 20), (20, 40), (40, 80), (80, 140))  # bins of 50 Hz: 200 Hz to 7 kHz
_READY_RATIO = 0.1  # residual / microphone while the robot speaks alone (10 dB) before the decision counts
_NEAR_RATIO = 4.0  # 6 dB over the expected residual plus noise, per band
# The residual's tail: what the filter leaves of the echo dies away with the room (the reverberation past its reach,
# a word's end it mispredicts), at least this fast per frame (-1.5 dB per 10 ms, 60 dB in 0.4 s).
_TAIL = 0.7
_MAX_DRIFT = 0.05  # samples per frame (about 300 ppm): a steeper slope of the delay estimates is a jump, not drift
_DRIFT_SLEW = 0.004  # samples per frame (25 ppm) the drift may move by at one estimate (see observe_lag)
_LOST = 2.0  # residual / microphone (3 dB) from which the filter adds echo (see _batch)
_HEARS_RATIO = 0.3  # residual / microphone (5 dB) from which the filter may hear the user (see _decide)
_QUANTILE = 0.9  # the expected residual: what 90% of robot-only frames stay under (tracked in the log domain)
_STEP = 0.05
_RECENT = 6
_NEEDED = 3  # frames of the last _RECENT with the user heard
_HOLD = 10  # frames a near-end decision is held
_LONGEST_TALK = 150  # frames (1.5 s) held as the user's in a row: rather the filter lost the echo
_NOISE_UP = 1.002  # the noise floor rises slowly, falls at once (minimum tracking)
_UP, _DOWN = _STEP * _QUANTILE, -_STEP * (1 - _QUANTILE)  # the log ratio's step above and under it
_ONES = [1.0] * len(_BANDS)
_NONE = [0.0] * len(_BANDS)  # the trust of a frame the filter does not learn from (the user's)


@dataclass
class _Frames:
    """One block's frames: what the filter reads (mic, its energy per frame) and writes (residual, verdicts)."""

    mic: np.ndarray
    energy: list[float]
    residual: np.ndarray
    near_end: np.ndarray


class LinearEchoFilter:
    def __init__(self, partitions: int = 32, history: int = 64) -> None:
        self.partitions = partitions
        self._bands = np.zeros((BINS, len(_BANDS)))
        for j, (a, b) in enumerate(_BANDS):
            self._bands[a:b, j] = 1.0
        # The same, over a spectrum viewed as (real, imaginary) pairs: band powers in one product. The last column:
        # the frame's energy (Parseval over the 2 * FRAME points: the bins between the first and the last count twice).
        whole = np.full(2 * BINS, 1.0 / FRAME)
        whole[[0, 1, -2, -1]] = 0.5 / FRAME
        self._bands_ri = np.column_stack([np.repeat(self._bands, 2, axis=0), whole])
        # Each bin's band for the step (bins under and over the bands take the nearest band's).
        self._band_of_bin = np.array(
            [next((j for j, (_, b) in enumerate(_BANDS) if k < b), len(_BANDS) - 1) for k in range(BINS)]
        )
        self._history = history  # frames of the reference's spectra kept (the bulk delay reaches this far)
        self.reset()

    def reset(self) -> None:
        self._path = EchoPath(self.partitions, self._history, self._band_of_bin)  # the echo path and its reference
        self._quiet = 0  # frames of the reference in a row that were digital silence
        self._prev_far = np.zeros(FRAME, dtype=np.float32)
        # Per band (Python floats: see _decide).
        self._log_ratio = [0.0] * len(_BANDS)
        self._ratio = _ONES
        self._noise = [math.inf] * len(_BANDS)
        self._py_last = [0.0] * len(_BANDS)
        self._left = [0.0] * len(_BANDS)  # the expected residual of the last frame (see _decide)
        self._trust_step = _ONES
        self._erle = 1.0
        self._recent: deque[bool] = deque(maxlen=_RECENT)
        self._heard = 0  # of the _recent frames, those with the user heard
        self._hold = 0
        self._held = 0  # frames in a row held as the user's
        self.forgotten = 0  # times it lost the echo and started afresh
        self.delay_frames: int | None = None
        self.ready = False
        self.drift = 0.0  # samples per frame the echo moves later (clock drift)
        self._frames = 0
        self._lags: deque[tuple[int, float]] = deque(maxlen=20)

    @property
    def hears(self) -> bool:
        """It removes 5 dB of the echo itself: from here its verdict counts (see _decide)."""
        return self._erle < _HEARS_RATIO

    def forget(self) -> None:
        """Learn the echo path afresh (where the delay puts it stays; the drift is measured again)."""
        self._path.clear()
        self._log_ratio = [0.0] * len(_BANDS)
        self._ratio = _ONES
        self._left = [0.0] * len(_BANDS)
        self._erle = 1.0
        self._recent.clear()
        self._heard = 0
        self._hold = self._held = 0
        self._lags.clear()
        self.set_drift(0.0)
        self.ready = False
        self.forgotten += 1

    def set_delay(self, lag_ms: float) -> bool:
        """The echo lags the reference by ``lag_ms``: the filter starts 20 ms before that. True: it moved.

        The estimate wanders by a millisecond or two from one second to the next: the filter moves only when
        the echo's start leaves its first partitions, and then keeps what it learned (shifted)."""
        frames = min(int(max(0.0, lag_ms - 20.0) // 10), self._history - 1)
        if self.delay_frames is None:
            self.delay_frames = frames
            return False
        shift = frames - self.delay_frames
        if -1 <= shift <= 2:
            return False
        self._path.shift(shift)
        self.delay_frames = frames
        return True

    def process(
        self, near: np.ndarray, far: np.ndarray, energies: tuple[list[float], list[float]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Whole 10 ms frames of mic and reference: (linear residual as float, near-end voice per frame).

        ``energies``: each frame's energy (sum of squares) of the reference and of the mic, where the caller has
        them already (the canceller does: at 100 frames a second every numpy call counts)."""
        frames = len(near) // FRAME
        mic = near[: frames * FRAME].astype(np.float64).reshape(frames, FRAME)
        residual = mic.copy()
        near_end = np.zeros(frames, dtype=bool)
        if not frames:
            return residual.reshape(-1), near_end
        ref = np.concatenate([self._prev_far, far[: frames * FRAME]])
        self._prev_far = ref[-FRAME:]
        # Every frame's reference spectrum at once (one call): its [previous, this] frame.
        pairs = np.ndarray((frames, 2 * FRAME), ref.dtype, ref, 0, (FRAME * ref.itemsize, ref.itemsize))
        if energies is None:  # the filter on its own: the canceller hands over what it has taken already
            energies = (frame_energies(ref[FRAME:], frames).tolist(), frame_energies(mic, frames).tolist())
        sounding, mic_energy = energies  # a frame's energy is 0.0 (false) where it is digital silence
        out = _Frames(mic, mic_energy, residual, near_end)
        delay = self.delay_frames
        for first in range(0, frames, CHUNK):
            row = self._path.store(pairs[first : first + CHUNK]) - first  # frame i's reference is at row + i
            batch: list[tuple[int, int]] = []  # (frame, its count) of consecutive frames that run the filter
            for i in range(first, min(frames, first + CHUNK)):
                self._frames += 1
                self._quiet = 0 if sounding[i] else self._quiet + 1
                if delay is not None and self._quiet <= delay + self.partitions + 1:
                    batch.append((i, self._frames))
                    if len(batch) == BATCH:
                        self._batch(batch, row - delay, out)
                        batch = []
                    continue
                if batch:
                    self._batch(batch, row - delay, out)  # type: ignore[operator]  # batch: delay is set
                    batch = []
                if self._hold:  # nothing of the robot can be in the microphone: the filter rests
                    self._hold -= 1
            if batch:
                self._batch(batch, row - delay, out)  # type: ignore[operator]
        return residual.reshape(-1), near_end

    def rest(self, frames: int) -> None:
        """``frames`` of silent reference went by unprocessed (the canceller rests): what processing them would
        have changed once the filter's whole span is silent, its clock (for the drift) and the quiet count."""
        self._frames += frames
        self._quiet += frames
        self._hold = max(0, self._hold - frames)

    def _batch(self, batch: list[tuple[int, int]], row: int, out: _Frames) -> None:
        """Consecutive frames (at most BATCH): all predicted with the same filter (one call per step for all),
        judged one by one, and the filter adapted once by their summed gradients (a block NLMS: the update of
        a frame comes up to three frames late, which the echo path's slow change does not notice).

        ``row + i``: the row of the reference frame i's delay points at (its partition 0). The spectra of the
        error and of the echo removed are taken with the frame first and zeros after: the overlap-save spectrum
        (zeros first) times (-1)^k, which the step carries (see echo_partitions); the decision needs powers only."""
        first, count = batch[0][0], len(batch)
        oldest = row + first - self.partitions + 1  # frame f's partitions are rows oldest + f ... + partitions - 1
        frames = slice(first, first + count)
        x, predicted = self._path.predict(oldest, count)
        errors = np.subtract(out.mic[frames], predicted, out=out.residual[frames])
        spectra = rfft_rows(np.concatenate([errors, predicted]))  # the residual, the removed
        powers = (np.square(spectra.view(np.float64)) @ self._bands_ri).tolist()  # per row: the bands, the energy
        trusts, adapt, constrain = [], False, False
        for f, (i, counted) in enumerate(batch):
            pe, py = powers[f], powers[count + f]
            # A residual louder than the microphone: the filter adds echo (the path changed), no user's voice does that.
            lost = pe.pop() > _LOST * out.energy[i]
            py.pop()
            out.near_end[i] = near_end = self._decide(pe, py, lost)
            trusts.append(_NONE if near_end else self._trust_step)
            if not near_end:
                adapt = True
                constrain |= counted % CONSTRAIN_EVERY == 0
        self._path.learn(x, oldest, spectra[:count], trusts, adapt, constrain)

    def observe_lag(self, lag_ms: float) -> None:
        """A new estimate of the echo's lag: place the filter, and follow the clocks' drift by its slope.

        The drift is the median slope between pairs of the last estimates at least 2 s apart (robust to the
        odd estimate that locks onto a reflection); the filter's response is then moved by it every frame. A
        jump that moves the filter (the pairing moved: the tap took reference back) is not drift: the slopes
        start afresh from it, the drift found so far kept (across such a jump of 26 ms the slope said 700 ppm,
        and the filter, turned by that, lost the echo for 20 s: bench echo, 10 min of the living room).
        """
        if self.set_delay(lag_ms):
            self._lags.clear()
        self._lags.append((self._frames, lag_ms * FRAME / 10.0))
        points = list(self._lags)
        if len(points) < 4 or points[-1][0] - points[0][0] < 300:
            return
        slopes = [
            (b[1] - a[1]) / (b[0] - a[0]) for i, a in enumerate(points) for b in points[i + 1 :] if b[0] - a[0] >= 150
        ]
        slope = float(np.median(slopes)) if slopes else math.nan
        if abs(slope) <= _MAX_DRIFT:
            # Once found, it moves by at most _DRIFT_SLEW an estimate: a step of 3 ms between reflections turned
            # the slope from -100 to +50 ppm, and the filter, turned by that, lost the echo.
            if self.drift:
                slope = min(self.drift + _DRIFT_SLEW, max(self.drift - _DRIFT_SLEW, slope))
            self.set_drift(slope)

    def clock_corrected(self, ppm: float) -> None:
        """The reference is resampled by ``ppm`` more from now on (the echo moves by that much less): what the
        filter follows changes by as much, and the estimates from before do not show it."""
        if ppm:
            self._lags.clear()
            if self.drift:
                self.set_drift(self.drift + ppm * 1e-6 * FRAME)

    def set_drift(self, samples_per_frame: float) -> None:
        self.drift = samples_per_frame
        self._path.set_drift(samples_per_frame)

    def _decide(self, pe: list[float], py_now: list[float], lost: bool = False) -> bool:
        """One frame's verdict from its band powers (the residual's, the echo the filter removed): five numbers
        each, worked on as Python floats in one pass over the bands (a numpy call on five costs more than the
        arithmetic, and so does a list comprehension, a function call in Python 3.11, at 100 frames a second).
        ``lost``: the residual is louder than the microphone (the filter adds echo): not the user, and it learns at
        the full step.

        Per band: the echo removed (held a frame: ``py``), the room's noise (minimum tracking), what the filter
        leaves of the echo removed (``left``) and of the echo it left in the frames before, dying away (``tail``: the
        echo removed drops at a word's end at once, the room's reverberation past the filter's reach does not).
        """
        # The step shrinks where the residual is far above what the filter leaves (double talk it missed, a burst of
        # noise): the user's voice must not teach the filter. Before the filter is ready it has no idea what it
        # leaves: it learns at the full step.
        shrink = self.ready and not lost
        py, noise, left, tail, steps = [], [], [], [], []
        loud = 0  # bands where the residual stands out of what the filter is expected to leave
        bands = zip(pe, py_now, self._py_last, self._noise, self._ratio, self._left, strict=True)
        for p, now, last, n, ratio, before in bands:
            y = now if now > last else last
            floor = p if p > 1.0 else 1.0
            n *= _NOISE_UP
            if floor < n:
                n = floor
            a = ratio * y
            before *= _TAIL
            t = a if a > before else before
            expected = t + n
            py.append(y)
            noise.append(n)
            left.append(a)
            tail.append(t)
            if shrink:
                steps.append(1.0 if expected >= floor else expected / floor)
            if p > _NEAR_RATIO * expected:
                loud += 1
        self._py_last, self._noise, self._left = py_now, noise, tail
        self._trust_step = steps if shrink else _ONES
        # The user is heard where the residual stands out of what the filter is known to leave: that measure (the
        # ratio) holds as soon as the filter removes a little (bench echo: a user 6 dB under the echo is heard in 20
        # of 24 commands, against 7 once it removes 10 dB), while a filter that removes nothing yet would take all
        # the echo for the user.
        heard = self.hears and not lost and loud >= 2
        recent = self._recent
        self._heard += heard - (len(recent) == _RECENT and recent[0])
        recent.append(heard)
        if self._heard >= _NEEDED:
            self._hold = _HOLD
        elif self._hold:
            self._hold -= 1
        self._held = self._held + 1 if self._hold else 0
        if self._held > _LONGEST_TALK:
            # Nobody talks that long over the robot (a barge-in stops it): the filter lost the echo (the path
            # or the drift changed) and, calling everything the user's, would never learn it back.
            self.forget()
            return False
        if not self._hold:
            self._learn_ratio(pe, py, noise, left)
        return self._hold > 0

    def _learn_ratio(self, pe: list[float], py: list[float], noise: list[float], left: list[float]) -> None:
        """Track what the filter leaves (the ratio 90% of robot-only frames stay under) in the bands where the
        robot's echo is well above the room, and from it whether the filter is ready."""
        echo = robot = 0.0
        ratio = self._log_ratio
        for j, (e, power, n) in enumerate(zip(pe, py, noise, strict=True)):
            if power > 4.0 * n:
                above = e - n
                ratio[j] += _UP if (above if above > 1.0 else 1.0) > left[j] else _DOWN
                echo += e
                robot += power
        if robot:
            self._ratio = list(map(math.exp, ratio))
            self._erle += 0.01 * (echo / (echo + robot) - self._erle)
            self.ready = self._erle < _READY_RATIO
