"""The linear echo filter's arithmetic: the echo path as a partitioned-block frequency-domain NLMS (overlap-save).

``partitions`` x 10 ms of the echo path over a history of the reference's spectra (10 ms frames, FFT of 20 ms).
What the filter hears and how much it trusts a frame is :mod:`appliance.audio.echo_linear`'s; this module keeps the
numbers: the reference's spectra, the prediction, the step normalised by the reference's power, the gradient and its
constraint, the clock drift as a phase ramp. Python and numpy's per-call overhead, not the arithmetic, dominate at
this size: a batch's frames (up to four) share every call. Single precision (complex64): its rounding (1e-7) lies
far under the 40 dB a filter of this length removes; the residual moves by under 0.04 of an int16 step (replay of
bench echo's three rooms: the same near-end verdicts), and the products and transforms cost a tenth of the
filter's CPU less.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from appliance.audio.echo_alignment import FRAME

BINS = FRAME + 1
CHUNK = 64  # frames of the reference appended at once (a longer block goes in several)
BATCH = 4  # frames predicted with one filter, and adapted at once
_MU = 0.4
_COMPLEX = np.complex64
_SMOOTH = 0.3  # of each frame's reference power in the step's normalisation
# The gradient constraint: this many partitions every so many adapted frames (each partition every 64 frames).
_CONSTRAINED = 4
CONSTRAIN_EVERY = 16

_ROWS = [(1,), (), (1,)]  # a transform along each row


def _direct_transforms() -> tuple[Any, Any]:
    """numpy 2's transforms as ufuncs, where they are there and give np.fft's numbers (they are numpy's private
    module: a numpy that changed them falls back to np.fft): np.fft's dispatch, checks and normalisation cost 2 us
    of the 5 a call takes at this size."""
    try:
        from numpy.fft import _pocketfft_umath as transforms  # type: ignore[attr-defined]

        probe = np.arange(8.0).reshape(1, 8)
        spectrum = transforms.rfft_n_even(probe, 1, axes=_ROWS, out=np.empty((1, 5), np.complex128))
        back = transforms.irfft(spectrum, 1 / 8, axes=_ROWS, out=np.empty((1, 8)))
        if np.array_equal(spectrum, np.fft.rfft(probe, axis=1)) and np.array_equal(back, np.fft.irfft(spectrum)):
            return transforms.rfft_n_even, transforms.irfft
    except (ImportError, AttributeError, TypeError, ValueError):  # numpy 1.x, or changed
        pass
    return None, None


_RFFT, _IRFFT = _direct_transforms()
_COMPLEX_OF: dict[np.dtype[Any], np.dtype[Any]] = {
    np.dtype(np.float32): np.dtype(np.complex64),
    np.dtype(np.float64): np.dtype(np.complex128),
}
_REAL_OF = {complex_: real for real, complex_ in _COMPLEX_OF.items()}


def rfft_rows(a: np.ndarray, n: int = 2 * FRAME) -> np.ndarray:
    """``np.fft.rfft(a, n, axis=1)`` of rows of float32 or float64 (``n`` even): the same numbers."""
    complex_ = _COMPLEX_OF.get(a.dtype)
    if _RFFT is None or complex_ is None:
        return np.fft.rfft(a, n, axis=1)
    return _RFFT(a, 1, axes=_ROWS, out=np.empty((len(a), n // 2 + 1), complex_))


def irfft_rows(a: np.ndarray) -> np.ndarray:
    """``np.fft.irfft(a, axis=1)`` of rows of complex64 or complex128: the same numbers."""
    real = _REAL_OF.get(a.dtype)
    if _IRFFT is None or real is None:
        return np.fft.irfft(a, axis=1)
    n = 2 * (a.shape[1] - 1)
    return _IRFFT(a, real.type(1) / real.type(n), axes=_ROWS, out=np.empty((len(a), n), real))


class EchoPath:
    def __init__(self, partitions: int, history: int, band_of_bin: np.ndarray) -> None:
        self.partitions = partitions
        # The echo path, oldest partition first: w[-1] meets the reference frame the delay points at.
        self.w = np.zeros((partitions, BINS), dtype=_COMPLEX)
        self._gradient, self._product = np.zeros_like(self.w), np.zeros_like(self.w)  # adapt's buffers
        self._products = np.zeros((BATCH, *self.w.shape), dtype=_COMPLEX)
        self._scaled = np.zeros((BATCH, BINS), dtype=_COMPLEX)  # predict's: each frame's x * w
        self._spans = np.zeros((BATCH + 1, BINS), dtype=np.float32)  # learn's: the far power before, each frame's span
        self._size = history + partitions
        # The reference's spectra (and their powers), oldest first; rows are appended at _end and the
        # last _size rows moved to the front when the buffer is full (so every window is one contiguous slice).
        rows = self._size + CHUNK
        self._x = np.zeros((rows, BINS), dtype=_COMPLEX)
        self._xp = np.zeros((rows, BINS), dtype=np.float32)
        self._end = self._size
        self._far_power = np.zeros(BINS)
        self._turn = 0
        self._rotations: list[np.ndarray] | None = None  # the drift's turn over 0 ... BATCH frames
        # A band's trust times the step of each of its bins, times (-1)^k: the error's spectrum is taken with its
        # frame first (see echo_linear's _batch). A batch's steps in one product.
        self._mu_of_band = np.zeros((int(band_of_bin.max()) + 1, BINS))
        self._mu_of_band[band_of_bin, np.arange(BINS)] = _MU * (1.0 - 2.0 * (np.arange(BINS) % 2))
        # The far power smoothed frame by frame, for a batch at once: row f weighs the power before the batch
        # (column 0) and the spans of its frames up to f.
        keep = 1.0 - _SMOOTH
        self._smoothing = [np.zeros((0, 1))] + [
            np.array(
                [[keep ** (f + 1)] + [_SMOOTH * keep ** (f - k) if k <= f else 0.0 for k in range(n)] for f in range(n)]
            )
            for n in range(1, BATCH + 1)
        ]

    def clear(self) -> None:
        self.w[:] = 0.0

    def shift(self, frames: int) -> None:
        """The delay moved by ``frames``: keep what was learned, shifted (what moves out is lost)."""
        self.w = np.roll(self.w, frames, axis=0)  # oldest partition first
        if frames > 0:
            self.w[:frames] = 0.0
        else:
            self.w[frames:] = 0.0

    def set_drift(self, samples_per_frame: float) -> None:
        """Turn the response every frame by a phase ramp: the echo moves ``samples_per_frame`` later a frame."""
        ramp = -2j * np.pi * np.arange(BINS) * samples_per_frame / (2 * FRAME)
        rotation = np.exp(ramp).astype(_COMPLEX)
        self._rotations = [rotation**count for count in range(BATCH + 1)] if samples_per_frame else None

    def store(self, pairs: np.ndarray) -> int:
        """Append the spectra of the reference's frames (at most CHUNK [previous, this] pairs of samples); returns
        the first one's row."""
        count = len(pairs)
        if self._end + count > len(self._x):
            keep = slice(self._end - self._size, self._end)
            for rows in (self._x, self._xp):
                rows[: self._size] = rows[keep]
            self._end = self._size
        new = slice(self._end, self._end + count)
        self._x[new] = spectra = rfft_rows(pairs)
        np.square(spectra.real, out=self._xp[new])
        self._xp[new] += np.square(spectra.imag)
        self._end += count
        return new.start

    def predict(self, oldest: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """``count`` frames' echo (time domain), frame f's partitions on rows oldest + f ... + partitions - 1;
        with the reference windows (for learn)."""
        x = self._windows(self._x, oldest, count)
        products = np.multiply(x, self.w, out=self._products[:count])
        return x, irfft_rows(np.add.reduce(products, axis=1))[:, FRAME:]

    def learn(
        self, x: np.ndarray, oldest: int, errors: np.ndarray, trusts: list[list[float]], adapt: bool, constrain: bool
    ) -> None:
        """After a batch's verdicts: the step's normalisation moves on by its frames, the response turns by the drift,
        and it adapts by the frames' errors (spectra, frame first) at their bands' trust (zeros: not learned from);
        ``constrain``: the gradient constraint is due."""
        count = len(trusts)
        spans = self._spans[: count + 1]
        spans[0] = self._far_power
        np.add.reduce(self._windows(self._xp, oldest, count), axis=1, out=spans[1:])
        far = self._smoothing[count] @ spans  # each frame's far power
        self._far_power = far[-1]
        if self._rotations is not None:
            self.w *= self._rotations[count]
        if adapt or constrain:
            self._adapt(x, errors, (np.array(trusts) @ self._mu_of_band) / (far + 1e4 * FRAME))
        if constrain:
            self._constrain()

    def _adapt(self, x: np.ndarray, errors: np.ndarray, steps: np.ndarray) -> None:
        """Add the frames' gradients: the sum over frames of conj(x) * step * error, as the conjugate of its conjugate
        (no conj(x) to make), frame by frame into one buffer (a (frames, partitions, bins) product summed costs half
        as much again)."""
        scaled = np.multiply(np.conj(errors), steps, out=self._scaled[: len(errors)])
        gradient = np.multiply(x[0], scaled[0], out=self._gradient)
        for f in range(1, len(scaled)):
            gradient += np.multiply(x[f], scaled[f], out=self._product)
        self.w += np.conj(gradient, out=gradient)

    def _windows(self, rows: np.ndarray, oldest: int, count: int) -> np.ndarray:
        """(count, partitions, bins) view: window f holds rows oldest + f to oldest + f + partitions - 1."""
        stride, item = rows.strides
        shape = (count, self.partitions, rows.shape[1])
        return np.ndarray(shape, rows.dtype, rows, oldest * stride, (stride, stride, item))

    def _constrain(self) -> None:
        """The gradient constraint, for _CONSTRAINED partitions in turn (one call for all): keep their impulse
        responses to one frame."""
        turn = self._turn
        parts = np.arange(turn, turn + _CONSTRAINED) % self.partitions
        taps = irfft_rows(self.w[parts])
        taps[:, FRAME:] = 0.0
        self.w[parts] = rfft_rows(taps)
        self._turn = (turn + _CONSTRAINED) % self.partitions
