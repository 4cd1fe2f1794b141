"""Acoustic echo cancellation in the capture path, with the exact samples the speaker played as reference.

We own both ends of the audio, so the far-end reference is not a guess: the sink hands every block it plays
to a :class:`FarEndTap` (the device sink from inside its PortAudio callback, so a barge-in cut is seen as
the silence that really followed). The capture side pairs each microphone block with the same number of
reference samples, oldest first, and WebRTC's AEC3 (``pywebrtc-audio``) removes the echo; everything after it
(VAD, wake word, speaker gate, barge-in) sees the cleaned signal.

Alignment: the first pairing takes the newest reference, so the echo always lags its reference by the round
trip (output latency + room + input latency; positive, as AEC3 needs), and AEC3's own delay estimator finds
that lag. From then on both streams run sample for sample; the reference is trimmed only when it piles up
far beyond what any room needs (the mic stopped, a device was reopened). Clock drift between two cards moves
the lag slowly; :class:`DriftMeter` measures it from how the reference backlog grows and the tap resamples the
reference by it, so the lag stays put over hours.

Both run at 16 kHz (the reference is resampled from the sink's rate with soxr). AEC3 works in 10 ms frames;
blocks that are not a multiple of 10 ms are carried over (adds under 10 ms of latency).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from appliance.audio.base import CAPTURE_RATE, BlockQueue
from appliance.audio.echo_alignment import DriftMeter, estimate_delay_ms

log = logging.getLogger(__name__)

EchoCancelSetting = Literal["auto", "webrtc", "off"]
FRAME = CAPTURE_RATE // 100  # AEC3's 10 ms frame
_ACTIVE_DB = -50.0  # reference quieter than this is not "the robot speaking" for the ERLE figure
_MAX_BACKLOG = 0.6  # s of reference kept ahead of the mic; more means the pairing is lost: resynchronise
# s of reference kept in hand at the first pairing: the resampler hands its output over in bursts, and running
# dry would shift the pairing. Costs nothing: the echo still lags its reference by the round trip minus this,
# and any real round trip (output buffer + input buffer) is longer.
_SLACK = 0.005
_DELAY_WINDOW = 2.0  # s of audio the delay estimate correlates
_DELAY_EVERY = 1.0  # s of robot speech between delay estimates
_MIN_LAG_MS = 5.0  # an echo that lags its reference by less than this is realigned...
_TARGET_LAG_MS = 30.0  # ...to lag it by this much
_CONVERGED_DB = 12.0  # ERLE from which the guard trusts the canceller (lower margin)
_MAX_MIC_DELAY = int(0.06 * CAPTURE_RATE)  # the most latency alignment may add to what the listener hears


def webrtc_available() -> bool:
    """Whether the pywebrtc-audio wheel is installed (it has none for 32-bit ARM: Pi OS armhf keeps the guard)."""
    spec = importlib.util.find_spec("pywebrtc_audio")
    if spec is None:
        return False
    try:
        import pywebrtc_audio

        return hasattr(pywebrtc_audio, "EchoCanceller")  # a placeholder 0.0.1 exists for other platforms
    except ImportError:
        return False


def resolve_backend(setting: EchoCancelSetting) -> Literal["webrtc", "off"]:
    """What ``listening.echo_cancel`` means on this machine. ``webrtc`` without the wheel is a config error."""
    if setting == "off":
        return "off"
    if webrtc_available():
        return "webrtc"
    if setting == "webrtc":
        raise ValueError("echo_cancel = 'webrtc' needs pywebrtc-audio, which has no wheel for this platform")
    return "off"


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


@dataclass(frozen=True)
class EchoStats:
    backend: str
    erle_db: float | None  # echo reduction over the last seconds of robot speech
    delay_ms: float | None  # how long after the reference the echo arrives at the microphone
    drift_ppm: float
    resyncs: int
    noise_suppression: bool


def _power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64))) if x.size else 0.0


class WebRtcEchoCanceller:
    """WebRTC AEC3 (and optionally its noise suppressor) on 16 kHz int16 microphone blocks."""

    backend = "webrtc"

    def __init__(self, tap: FarEndTap, noise_suppression: bool = False, ns_level: int = 1) -> None:
        import pywebrtc_audio

        self.tap = tap
        self.noise_suppression = noise_suppression
        if noise_suppression:
            self._aec: Any = pywebrtc_audio.AudioProcessor(
                CAPTURE_RATE, 1, echo_cancellation=True, noise_suppression=True, ns_level=ns_level
            )
        else:
            self._aec = pywebrtc_audio.EchoCanceller(CAPTURE_RATE, 1, 0)
        self._near = np.zeros(0, dtype=np.int16)
        self._far = np.zeros(0, dtype=np.int16)
        self._out = np.zeros(0, dtype=np.int16)
        # ERLE: powers of mic and cleaned signal while the reference is active, smoothed over ~2 s.
        self._mic_power = 0.0
        self._out_power = 0.0
        self._active_frames = 0
        self._smooth = 0.01  # per 10 ms frame
        # Delay: a short history of both, correlated every few seconds while the robot speaks.
        keep = int(_DELAY_WINDOW * CAPTURE_RATE)
        self._hist_far: deque[np.ndarray] = deque(maxlen=keep // FRAME)
        self._hist_mic: deque[np.ndarray] = deque(maxlen=keep // FRAME)
        self._since_delay = 0
        self.delay_ms: float | None = None
        self.mic_delay = 0  # samples the microphone is held back by (see _measure)
        self.frames = 0

    def process(self, block: np.ndarray) -> np.ndarray:
        """Clean one microphone block; returns a block of the same length."""
        far = self.tap.take(len(block))
        self._near = np.concatenate([self._near, block]) if self._near.size else block
        self._far = np.concatenate([self._far, far]) if self._far.size else far
        pending = min(len(self._near), len(self._far))  # the mic may be held back (mic_delay): more near than far
        usable = pending - pending % FRAME
        if usable:
            near, far_frames = self._near[:usable], self._far[:usable]
            cleaned = np.asarray(self._aec.process(near, far_frames), dtype=np.int16)
            self._measure(near, far_frames, cleaned)
            self._near, self._far = self._near[usable:], self._far[usable:]
            self._out = np.concatenate([self._out, cleaned]) if self._out.size else cleaned
        if len(self._out) < len(block):  # only at the start with odd block sizes: pad the carried-over part
            self._out = np.concatenate([np.zeros(len(block) - len(self._out), dtype=np.int16), self._out])
        out, self._out = self._out[: len(block)], self._out[len(block) :]
        return out

    def _measure(self, near: np.ndarray, far: np.ndarray, cleaned: np.ndarray) -> None:
        active_power = 32768.0**2 * 10 ** (_ACTIVE_DB / 10)
        for start in range(0, len(near), FRAME):
            self.frames += 1
            f, m, c = far[start : start + FRAME], near[start : start + FRAME], cleaned[start : start + FRAME]
            self._hist_far.append(f)
            self._hist_mic.append(m)
            if _power(f) < active_power:
                continue
            a = self._smooth
            self._mic_power += a * (_power(m) - self._mic_power)
            self._out_power += a * (_power(c) - self._out_power)
            self._active_frames += 1
            self._since_delay += 1
        if self._since_delay * FRAME >= _DELAY_EVERY * CAPTURE_RATE and len(self._hist_far) * FRAME >= CAPTURE_RATE:
            self._since_delay = 0
            self.delay_ms = estimate_delay_ms(np.concatenate(self._hist_far), np.concatenate(self._hist_mic))
            if self.delay_ms is not None and self.delay_ms < _MIN_LAG_MS:
                # The echo comes (nearly) before its reference: AEC3 cannot cancel what it has not seen yet.
                # Hand the reference over sooner; AEC3's own delay estimator takes it from there.
                # Where the reference is not far enough ahead (a loop with no device latency), hold the mic back.
                shift = int((_TARGET_LAG_MS - self.delay_ms) * CAPTURE_RATE / 1000)
                early = min(shift, self.tap.backlog)
                late = min(shift - early, _MAX_MIC_DELAY - self.mic_delay)
                if early:
                    self.tap.advance(early)
                if late > 0:
                    self._near = np.concatenate([np.zeros(late, dtype=np.int16), self._near])  # mic only
                    self.mic_delay += late
                log.info(
                    "echo arrives %.0f ms after its reference: reference %d ms sooner, microphone %d ms later",
                    self.delay_ms,
                    early * 1000 // CAPTURE_RATE,
                    max(0, late) * 1000 // CAPTURE_RATE,
                )
                self._hist_far.clear()
                self._hist_mic.clear()

    @property
    def erle_db(self) -> float | None:
        if self._active_frames < 50:  # half a second of robot speech before the figure means anything
            return None
        return 10 * math.log10((self._mic_power + 1.0) / (self._out_power + 1.0))

    @property
    def converged(self) -> bool:
        """The echo is being removed: enough reduction, and the echo does not come before its reference."""
        erle = self.erle_db
        aligned = self.delay_ms is not None and self.delay_ms >= _MIN_LAG_MS  # measured, not assumed
        return erle is not None and erle >= _CONVERGED_DB and aligned

    def stats(self) -> EchoStats:
        erle = self.erle_db
        return EchoStats(
            self.backend,
            None if erle is None else round(erle, 1),
            None if self.delay_ms is None else round(self.delay_ms, 1),
            round(self.tap.correction_ppm, 1),
            self.tap.resyncs,
            self.noise_suppression,
        )


class CancellingQueue:
    """What a microphone source writes into when echo cancellation is on: cleans each block, then queues it.

    Runs on the Trio thread (sources put blocks from there); AEC3 takes about 0.1 ms per 10 ms frame.
    """

    def __init__(self, queue: BlockQueue, canceller: WebRtcEchoCanceller) -> None:
        self.queue = queue
        self.canceller = canceller

    @property
    def relaxed(self) -> bool:
        return self.queue.relaxed

    @property
    def dropped(self) -> int:
        return self.queue.dropped

    def put_nowait(self, block: np.ndarray) -> None:
        self.queue.put_nowait(self.canceller.process(block))

    def clear(self) -> None:
        self.queue.clear()

    async def wait_room(self, ahead: int) -> None:
        await self.queue.wait_room(ahead)

    def __len__(self) -> int:
        return len(self.queue)


def build_canceller(setting: EchoCancelSetting, noise_suppression: bool = False) -> WebRtcEchoCanceller | None:
    """The canceller ``listening.echo_cancel`` asks for on this machine, with a fresh tap (None when off)."""
    if resolve_backend(setting) == "off":
        return None
    return WebRtcEchoCanceller(FarEndTap(), noise_suppression)
