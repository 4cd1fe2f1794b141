"""Acoustic echo cancellation in the capture path, with the exact samples the speaker played as reference.

We own both ends of the audio, so the far-end reference is not a guess: the sink hands every block it plays
to a :class:`FarEndTap` (the device sink from inside its PortAudio callback, so a barge-in cut is seen as
the silence that really followed). The capture side pairs each microphone block with the same number of
reference samples, oldest first, and WebRTC's AEC3 (see :mod:`appliance.audio.echo_engines`) removes the
echo; everything after it (VAD, wake word, speaker gate, barge-in) sees the cleaned signal.

Alignment (:mod:`appliance.audio.echo_reference`): the reference lies on a timeline the microphone reads at
an offset set once from the newest reference, so the echo lags it by the round trip (positive, as AEC3 needs)
and AEC3's delay estimator finds that lag. Late reference, pauses of either side and clock drift are handled
there without letting the pairing slip.

Both run at 16 kHz (the reference is resampled from the sink's rate with soxr). AEC3 works in 10 ms frames;
blocks that are not a multiple of 10 ms are carried over (adds under 10 ms of latency).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import trio

from appliance.audio.base import CAPTURE_RATE, BlockQueue
from appliance.audio.convert import to_int16
from appliance.audio.echo_alignment import FRAME, estimate_delay_ms, frame_energies
from appliance.audio.echo_backoff import EchoHealth
from appliance.audio.echo_clock import ClockFollower
from appliance.audio.echo_engines import EchoCancelSetting, open_engine, resolve_backend
from appliance.audio.echo_linear import LinearEchoFilter
from appliance.audio.echo_reference import FarEndTap
from appliance.audio.echo_trust import EchoTrust

log = logging.getLogger(__name__)

_ACTIVE_DB = -50.0  # reference quieter than this is not "the robot speaking" for the ERLE figure
_ACTIVE_POWER = 32768.0**2 * 10 ** (_ACTIVE_DB / 10)
_DELAY_WINDOW = 2.0  # s of audio the delay estimate correlates
_DELAY_EVERY = 1.0  # s of robot speech between delay estimates...
_DELAY_EVERY_SETTLED = 3.0  # ...and once the last _SETTLED estimates lie within _SETTLED_MS of each other
_DELAY_EVERY_STEADY = 8.0  # ...and once they show no drift left either (see ClockFollower)
_SETTLED = 4
_SETTLED_MS = 10.0  # a reverberant room's estimate jumps between reflections a few ms apart
_MIN_LAG_MS = 5.0  # an echo that lags its reference by less than this is realigned...
_TARGET_LAG_MS = 30.0  # ...to lag it by this much
_MAX_LAG_MS = 500.0  # AEC3's delay estimator searches about 0.5 s: an echo later than this is out of its reach
_MAX_MIC_DELAY = int(0.06 * CAPTURE_RATE)  # the most latency alignment may add to what the listener hears
# s of silent reference after which the canceller rests (the microphone passes through): a room's echo has died
# away long before, and both filters have been fed that much silence, so resting leaves them as more silence would.
_REST_AFTER = 1.0
_Energies = tuple[list[float], list[float], np.ndarray]  # each frame's: the reference's, the mic's, AEC3's output's
_Cleaned = tuple[np.ndarray, np.ndarray]  # the cleaned signal, each of its frames' energy


@dataclass(frozen=True)
class EchoStats:
    backend: str
    erle_db: float | None  # echo reduction over the last seconds of robot speech
    delay_ms: float | None  # how long after the reference the echo arrives at the microphone
    drift_ppm: float
    resyncs: int
    noise_suppression: bool
    state: str = "running"  # running, backed_off (auto switched it off: it could not stay aligned), misaligned
    reason: str | None = None  # why it is backed off or misaligned
    ran_dry: int = 0  # microphone blocks whose reference had not all arrived (padded; the pairing held)
    late_ms: float = 0.0  # reference that came after its microphone samples (dropped at its place)


class WebRtcEchoCanceller:
    """WebRTC AEC3 (and optionally its noise suppressor) on 16 kHz int16 microphone blocks."""

    backend = "webrtc"

    def __init__(
        self,
        tap: FarEndTap,
        noise_suppression: bool = False,
        ns_level: int = 1,
        may_back_off: bool = False,
        binding: str | None = None,
        keep_voice: bool = True,
    ) -> None:
        self.tap = tap
        self.health = EchoHealth(may_back_off)
        self._resyncs_seen = 0
        self.noise_suppression = noise_suppression
        self._aec = open_engine(noise_suppression, ns_level, binding)
        self.binding = self._aec.binding
        # Beside AEC3: a linear filter whose residual keeps the user's voice where AEC3's suppressor cuts it.
        self.linear = LinearEchoFilter() if keep_voice else None
        self.near_end_frames = 0
        self._pairings = 0  # the tap's new pairings (retreats, pairings by arrival) seen (see _follow_pairing)
        self._near = np.zeros(0, dtype=np.int16)
        self._far = np.zeros(0, dtype=np.int16)
        self._out = np.zeros(0, dtype=np.int16)
        # ERLE: powers of mic and cleaned signal while the reference is active, smoothed over ~2 s.
        self._mic_power = 0.0
        self._out_power = 0.0
        self._far_power = 0.0
        self._active_frames = 0
        self.trust = EchoTrust()  # see converged
        self._smooth = 0.01  # per 10 ms frame
        # Delay: a short history of both, correlated every few seconds while the robot speaks.
        keep = int(_DELAY_WINDOW * CAPTURE_RATE)
        self._hist_far: deque[np.ndarray] = deque(maxlen=keep // FRAME)
        self._hist_mic: deque[np.ndarray] = deque(maxlen=keep // FRAME)
        self._since_delay = 0
        self._lags: deque[float] = deque(maxlen=_SETTLED)  # the last delay estimates (ms)
        self.delay_ms: float | None = None
        self._lag_ok = False  # the latest estimate: the echo comes after its reference, as AEC3 needs
        self.clock = ClockFollower(tap)  # the drift, from the estimates' slope; the linear filter kept in step
        self.mic_delay = 0  # samples the microphone is held back by (see _measure)
        self.frames = 0
        self._silent_frames = 0  # reference frames in a row quieter than _ACTIVE_DB

    def process(self, block: np.ndarray, now: float | None = None) -> np.ndarray:
        """Clean one microphone block (arrived at real time ``now``); returns a block of the same length.

        Backed off (see :mod:`appliance.audio.echo_backoff`), the block passes through untouched.
        """
        if self.health.block(len(block) / CAPTURE_RATE, now):
            self._aec.reset()  # retrying: a fresh filter, paired afresh (the tap was dropped while off)
        if self.health.backed_off:
            self.tap.drop(len(block))
            return block
        far = self.tap.take(len(block))
        self._follow_pairing()
        if self.tap.resyncs != self._resyncs_seen:
            self._resyncs_seen = self.tap.resyncs
            self.health.resynced()
            if self.health.backed_off:
                self._stop()
                return block
        self._near = np.concatenate([self._near, block]) if self._near.size else block
        self._far = np.concatenate([self._far, far]) if self._far.size else far
        pending = min(len(self._near), len(self._far))  # the mic may be held back (mic_delay): more near than far
        usable = pending - pending % FRAME
        if usable:
            near, far_frames = self._near[:usable], self._far[:usable]
            frames = usable // FRAME
            energy = frame_energies(np.concatenate([far_frames, near]), 2 * frames).tolist()
            far_energy, mic_energy = energy[:frames], energy[frames:]
            if self._resting(far_energy):
                cleaned = near  # the robot has been quiet for a while: nothing to cancel, nothing to learn
            else:
                cleaned = self._aec.process(near, far_frames)
                out_energy = frame_energies(cleaned, frames)
                if self.linear is not None:
                    cleaned, out_energy = self._keep_voice(
                        near, far_frames, cleaned, (far_energy, mic_energy, out_energy)
                    )
                self._measure(near, far_frames, (far_energy, mic_energy, out_energy.tolist()))
            self._near, self._far = self._near[usable:], self._far[usable:]
            self._out = np.concatenate([self._out, cleaned]) if self._out.size else cleaned
        if len(self._out) < len(block):  # only at the start with odd block sizes: pad the carried-over part
            self._out = np.concatenate([np.zeros(len(block) - len(self._out), dtype=np.int16), self._out])
        out, self._out = self._out[: len(block)], self._out[len(block) :]
        if self.health.backed_off:
            self._stop()
        return out

    def _resting(self, far_energy: list[float]) -> bool:
        """Whether these frames (the reference's energy in each) pass through untouched: the reference has been
        silent for ``_REST_AFTER`` (AEC3 on a silent reference cost as much as the whole listener, and the robot is
        quiet most of the day)."""
        frames = len(far_energy)
        if sum(far_energy) >= _ACTIVE_POWER * (frames * FRAME):
            self._silent_frames = 0
            return False
        self._silent_frames += frames
        if self._silent_frames * FRAME <= _REST_AFTER * CAPTURE_RATE:
            return False
        self.frames += frames
        if self.linear is not None:
            self.linear.rest(frames)
        return True

    def _keep_voice(self, near: np.ndarray, far: np.ndarray, cleaned: np.ndarray, energies: _Energies) -> _Cleaned:
        """Where the linear filter hears the user over the echo, hand on its residual (the voice, whole).

        Elsewhere hand on whichever of the two leaves less: AEC3's suppressor now and then lets a syllable's onset
        through 10 dB under the raw echo (bench echo's false barge-ins), where the linear filter leaves less. From
        the 5 dB from which its verdict counts, not only once it is ready (10 dB): in the hall it is not for the
        first 9 s, while AEC3 alone let two words through 7.6 and 8.3 s in where the filter already removed 8 dB.
        Not sooner: with 4 dB it cut a syllable AEC3 let through (bench echo, -6 dB). (A user it missed is not
        lost by this: AEC3 leaves less there.)

        ``energies``: see _Energies; returns the cleaned signal with the energy of each of its frames.
        """
        assert self.linear is not None
        far_energy, mic_energy, theirs = energies
        residual, near_end = self.linear.process(near, far, (far_energy, mic_energy))
        take = near_end
        if self.linear.hears:
            frames = len(near_end)
            mine = np.add.reduce(np.square(residual.reshape(frames, FRAME)), axis=1)
            take = near_end | (mine < theirs)
        if not take.any():
            return cleaned, theirs
        self.near_end_frames += int(near_end.sum())
        mask = np.repeat(take, FRAME)
        out = cleaned.copy()
        out[mask] = to_int16(residual[mask])
        return out, frame_energies(out, len(take))

    def _follow_pairing(self) -> None:
        """The tap paired the reference anew (it came late, or piled up: a resync): the echo lies elsewhere against
        it, and what was measured on the old pairing no longer holds. The linear filter learns afresh (it would call
        its own slip the user); the next delay estimate hears the new pairing only (one spanning the move read the
        old lag, and the filter took the step for 170 ppm of drift: bench echo, 10 min of the living room); the
        guard's trust is earned anew (AEC3 relearns too: the same room's echo came through 1.7 s after a move).
        """
        pairings = self.tap.retreats + self.tap.pairings
        if pairings == self._pairings:
            return
        self._pairings = pairings
        self._hist_far.clear()
        self._hist_mic.clear()
        self.trust.restart()
        if self.linear is not None:
            self.linear.forget()

    def _stop(self) -> None:
        """Backed off: forget the pairing and what was measured; a retry starts from scratch."""
        self.tap.drop()
        if self.linear is not None:
            self.linear = LinearEchoFilter()
        self._near = self._far = self._out = np.zeros(0, dtype=np.int16)
        self._mic_power = self._out_power = self._far_power = 0.0
        self._active_frames = self._since_delay = self.mic_delay = 0
        self.trust.restart()
        self._hist_far.clear()
        self._hist_mic.clear()
        self.delay_ms = None
        self._lag_ok = False

    def _measure(self, near: np.ndarray, far: np.ndarray, energies: tuple[list[float], ...]) -> None:
        """After a block of whole frames; ``energies``: each frame's, of the reference, microphone, cleaned signal."""
        frames = len(near) // FRAME
        self.frames += frames
        self._hist_far.extend(far.reshape(frames, FRAME))
        self._hist_mic.extend(near.reshape(frames, FRAME))
        trust, a, count = self.trust, self._smooth, 0
        for far_energy, mic_energy, out_energy in zip(*energies, strict=True):
            if (far_power := far_energy / FRAME) >= _ACTIVE_POWER:
                mic_power, out_power = mic_energy / FRAME, out_energy / FRAME
                self._mic_power += a * (mic_power - self._mic_power)
                self._out_power += a * (out_power - self._out_power)
                self._far_power += a * (far_power - self._far_power)
                trust.frame(mic_power, out_power)
                count += 1
        self._active_frames += count
        self._since_delay += count
        due = (heard := self._since_delay * FRAME / CAPTURE_RATE) >= _DELAY_EVERY and heard >= self._delay_every()
        if due and len(self._hist_far) * FRAME >= CAPTURE_RATE:
            self._since_delay = 0
            lag = estimate_delay_ms(np.concatenate(self._hist_far), np.concatenate(self._hist_mic))
            if lag is not None:
                self._lags.append(lag)
                self._align(lag)
        self.trust.update(self._aligned())

    def _delay_every(self) -> float:
        """Seconds of robot speech to the next delay estimate: each costs 4 ms of CPU, a fifth of the canceller's
        budget at one a second; once the last estimates agree (the pairing holds), one every few seconds, and once
        they show no drift left and the pairing has not moved since, one every _DELAY_EVERY_STEADY."""
        settled = len(self._lags) == self._lags.maxlen and max(self._lags) - min(self._lags) <= _SETTLED_MS
        if not settled:
            return _DELAY_EVERY
        return _DELAY_EVERY_STEADY if self.clock.steady(self.mic_delay) else _DELAY_EVERY_SETTLED

    def _align(self, lag: float) -> None:
        """The echo lags its reference by ``lag`` ms: AEC3 needs it to come after, within its delay search."""
        self.delay_ms = lag
        self._lag_ok = lag >= _MIN_LAG_MS
        self.clock.delay_estimated(lag, self.mic_delay, self.linear)
        followable = lag <= _MAX_LAG_MS
        if lag < _MIN_LAG_MS:
            followable = self._realign(int((_TARGET_LAG_MS - lag) * CAPTURE_RATE / 1000)) and followable
        self.health.delay_estimated(followable, lag)

    def _realign(self, shift: int) -> bool:
        """The echo comes (nearly) before its reference: AEC3 cannot cancel what it has not seen yet.

        Hand the reference over ``shift`` samples sooner. Where the reference is not far enough ahead (a loop
        with no device latency), hold the mic back. False: nothing could move.
        """
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
        if self.linear is not None and (early or late > 0):
            self.linear = LinearEchoFilter()  # what it learned is for the old pairing
        return early > 0 or late > 0

    @property
    def erle_db(self) -> float | None:
        if self._active_frames < 50:  # half a second of robot speech before the figure means anything
            return None
        return 10 * math.log10((self._mic_power + 1.0) / (self._out_power + 1.0))

    @property
    def echo_path_db(self) -> float | None:
        """How loud the echo reaches the microphone before cancelling, relative to the reference (dB)."""
        if self._active_frames < 50:
            return None
        return 10 * math.log10((self._mic_power + 1.0) / (self._far_power + 1.0))

    @property
    def converged(self) -> bool:
        """The echo is being removed: enough reduction, and the echo does not come before its reference.

        Judged frame by frame over the last seconds of robot speech (see :mod:`appliance.audio.echo_trust`), so
        a barge-in does not undo it; a realignment, a new pairing, a backing off, or the echo no longer removed do.
        """
        return self.trust.trusted and self._aligned()

    def _aligned(self) -> bool:
        # The delay is measured, not assumed; the echo comes after its reference; nothing made us stop.
        return self.delay_ms is not None and self._lag_ok and self.health.state == "running"

    def stats(self) -> EchoStats:
        erle = self.erle_db
        return EchoStats(
            self.backend,
            None if erle is None else round(erle, 1),
            None if self.delay_ms is None else round(self.delay_ms, 1),
            round(self.tap.correction_ppm, 1),
            self.tap.resyncs,
            self.noise_suppression,
            self.health.state,
            self.health.reason,
            self.tap.ran_dry,
            round(self.tap.late_samples * 1000 / CAPTURE_RATE, 1),
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
    def busy(self) -> bool:
        # Batched like any capture while the robot speaks: the reference is paired on its timeline, so a
        # hand-over of several device blocks cannot shift it.
        return self.queue.busy

    def captured_at(self, at: float) -> None:
        """The next block's first sample was captured at ``at`` (``time.monotonic``): a new microphone stream."""
        self.canceller.tap.mic_time(at)

    @property
    def dropped(self) -> int:
        return self.queue.dropped

    def put_nowait(self, block: np.ndarray) -> None:
        self.queue.put_nowait(self.canceller.process(block, trio.current_time()))

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
    canceller = WebRtcEchoCanceller(FarEndTap(), noise_suppression, may_back_off=setting == "auto")
    log.info("echo canceller: WebRTC AEC3 through %s", canceller.binding)
    return canceller
