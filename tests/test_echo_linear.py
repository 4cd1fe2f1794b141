"""The linear echo filter beside AEC3 (issue 20): it removes the echo it predicts, says when the user speaks over
the robot, keeps the user's voice in its residual, follows clock drift, and takes any block it is given."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from appliance.audio import echo_linear, echo_partitions
from appliance.audio.base import CAPTURE_RATE
from appliance.audio.echo import FarEndTap, WebRtcEchoCanceller
from appliance.audio.echo_alignment import FRAME
from appliance.audio.echo_engines import installed_bindings, webrtc_available
from appliance.audio.echo_linear import LinearEchoFilter
from tests.test_echo_canceller import _room, _speechlike

DELAY = 800  # 50 ms


def _db(x: np.ndarray) -> float:
    return 10 * float(np.log10(np.mean(np.square(x.astype(np.float64))) + 1.0))


def _feed(
    linear: LinearEchoFilter, mic: np.ndarray, far: np.ndarray, block: int = 320
) -> tuple[np.ndarray, np.ndarray]:
    residual, near_end = [], []
    for start in range(0, len(mic) - block + 1, block):
        r, n = linear.process(mic[start : start + block], far[start : start + block])
        residual.append(r)
        near_end.append(n)
    return np.concatenate(residual), np.concatenate(near_end)


def _scene(seconds: float, user_from: float | None = None, user_gain: float = 0.5) -> tuple[np.ndarray, ...]:
    far = _speechlike(seconds)
    echo = _room(far, DELAY)
    noise = np.random.default_rng(9).standard_normal(len(far)) * 5.0
    user = np.zeros(len(far))
    if user_from is not None:
        voice = _speechlike(seconds, seed=5) * user_gain
        start = int(user_from * CAPTURE_RATE)
        user[start:] = voice[start:]
    mic = np.clip(echo + noise + user, -32768, 32767).astype(np.int16)
    return far.astype(np.int16), mic, echo, user


def test_it_removes_the_echo_and_hears_no_user_in_the_robot_alone() -> None:
    far, mic, echo, _ = _scene(12.0)
    linear = LinearEchoFilter()
    linear.observe_lag(DELAY / 16)
    residual, near_end = _feed(linear, mic, far)
    tail = slice(6 * CAPTURE_RATE, None)
    assert _db(mic[tail]) - _db(residual[tail]) >= 15.0
    assert linear.ready
    assert not near_end[6 * 100 :].any()  # no user, no near-end frame


def test_it_hears_the_user_over_the_robot_and_keeps_the_voice() -> None:
    far, mic, echo, user = _scene(14.0, user_from=8.0)  # the user as loud as the echo
    linear = LinearEchoFilter()
    linear.observe_lag(DELAY / 16)
    residual, near_end = _feed(linear, mic, far)
    assert not near_end[2 * 100 : 8 * 100].any()
    # The user's first syllables are heard within their first 50 ms: what a barge-in needs (the robot stops
    # then). Later ones, over a robot that goes on regardless, it loses: what the filter leaves is learned from
    # the frames it did not flag, and the user's voice creeps into it.
    syllables = _onsets(user, len(near_end))
    assert len(syllables) >= 15 and all(near_end[s : s + 5].any() for s in syllables[:2])
    frames = np.repeat(near_end, FRAME)
    heard = frames & (np.arange(len(frames)) >= 8 * CAPTURE_RATE)
    assert _db(residual[heard]) >= _db(user[: len(frames)][heard]) - 1.0  # the voice is whole where heard
    assert _db(residual[heard] - user[: len(frames)][heard]) <= _db(echo[: len(frames)][heard]) - 10.0


def test_a_user_under_the_echo_is_heard_syllable_after_syllable() -> None:
    """A user 7 dB under the echo (bench echo's -6 dB barge-in): heard within 50 ms of most syllables, not only
    the first two. What the filter leaves is judged with its tail (the echo it left dies away with the room), so
    the residual need not clear the worst frame it ever left by 9 dB; the robot alone is still never the user."""
    far, mic, echo, user = _scene(14.0, user_from=8.0, user_gain=0.25)
    span = slice(8 * CAPTURE_RATE, None)
    assert _db(user[span]) <= _db(echo[span]) - 6.0
    linear = LinearEchoFilter()
    linear.observe_lag(DELAY / 16)
    _, near_end = _feed(linear, mic, far)
    assert not near_end[2 * 100 : 8 * 100].any()
    syllables = _onsets(user, len(near_end))[:12]
    assert sum(near_end[s : s + 5].any() for s in syllables) >= 10


def test_it_reaches_into_a_reverberant_rooms_tail() -> None:
    """A room that rings for half a second (bench echo's hall: 0.6 s): the filter reaches 320 ms past the echo's
    start, so the reverberation past 160 ms is removed too (16 partitions left the residual 17 dB under the echo)."""
    far = _speechlike(14.0)
    rng = np.random.default_rng(3)
    t = np.arange(CAPTURE_RATE // 2)
    ringing = rng.standard_normal(len(t)) * np.exp(-6.9 * t / len(t)) * 0.1
    ringing[0] = 1.0
    echo = np.convolve(far, np.concatenate([np.zeros(DELAY), ringing]))[: len(far)] * 0.5
    mic = np.clip(echo + rng.standard_normal(len(far)) * 5.0, -32768, 32767).astype(np.int16)
    linear = LinearEchoFilter()
    linear.observe_lag(DELAY / 16)
    residual, near_end = _feed(linear, mic, far.astype(np.int16))
    tail = slice(10 * CAPTURE_RATE, None)
    assert _db(mic[tail]) - _db(residual[tail]) >= 25.0
    assert not near_end[5 * 100 :].any()


def test_a_frames_energy_from_its_spectrum_is_its_energy() -> None:
    """The lost check (a residual louder than the microphone) takes the residual's energy from its spectrum's band
    product (Parseval) and the microphone's from its samples: the two measures must agree, loud or quiet."""
    rng = np.random.default_rng(8)
    frames = rng.standard_normal((6, FRAME)) * np.array([[1.0], [10.0], [300.0], [3000.0], [0.01], [0.0]])
    frames[1, 0] = 2000.0  # a click at the frame's first sample (the bins at both ends count once)
    spectra = np.fft.rfft(frames, 2 * FRAME, axis=1)
    energy = (np.square(spectra.view(np.float64)) @ LinearEchoFilter()._bands_ri)[:, -1]
    assert energy == pytest.approx(np.square(frames).sum(axis=1), rel=1e-9, abs=1e-6)


def _onsets(voice: np.ndarray, frames: int) -> list[int]:
    """Frames where a syllable of ``voice`` starts."""
    loud = np.abs(voice[: frames * FRAME]).reshape(frames, FRAME).max(axis=1) > 0
    return [i for i in range(1, frames) if loud[i] and not loud[i - 1]]


def test_it_says_nothing_before_it_removes_the_echo() -> None:
    far, mic, _, _ = _scene(3.0, user_from=0.5)
    linear = LinearEchoFilter()
    linear.observe_lag(DELAY / 16)
    _, near_end = _feed(linear, mic, far)
    assert not linear.ready and not near_end.any()
    unplaced = LinearEchoFilter()  # no delay estimate yet: the residual is the microphone
    residual, near_end = _feed(unplaced, mic, far)
    assert np.array_equal(residual, mic[: len(residual)]) and not near_end.any()


def test_the_drift_is_the_slope_of_the_delay_estimates_and_an_outlier_does_not_move_it() -> None:
    linear = LinearEchoFilter()
    silence = np.zeros(FRAME * 100, dtype=np.int16)  # 1 s
    lags = [50.0 + 0.1 * s for s in range(10)]  # the echo 0.1 ms (1.6 samples) later every second: +100 ppm
    lags[4] = 58.0  # one estimate locked on a reflection
    for lag in lags:
        linear.observe_lag(lag)
        linear.process(silence, silence)
    assert linear.drift == pytest.approx(1.6 / 100, rel=0.1)  # samples per 10 ms frame
    assert linear.delay_frames == 3  # 20 ms before the echo, whole frames; the outlier did not move it


def test_a_jump_or_a_step_of_the_delay_estimates_does_not_turn_the_drift() -> None:
    """bench echo, 10 min of the living room (-100 ppm): the tap paired the reference 26 ms later, and across that
    jump the slope said 700 ppm; later a step of 3 ms between reflections turned it to +50 ppm. Either way the
    filter, turned every frame by the wrong drift, lost the echo and took it for the user for seconds."""
    linear = LinearEchoFilter()
    silence = np.zeros(FRAME * 100, dtype=np.int16)  # 1 s
    lags = [80.0 - 0.1 * s for s in range(10)]  # -100 ppm
    for lag in lags + [lag - 26.0 for lag in [80.0 - 0.1 * s for s in range(10, 16)]]:
        linear.observe_lag(lag)
        linear.process(silence, silence)
    assert linear.drift == pytest.approx(-1.6 / 100, rel=0.15)
    for step in [3.0] * 3:  # estimates that stepped 3 ms later and stay there
        linear.observe_lag(80.0 - 26.0 - 1.6 + step)
        linear.process(silence, silence)
    assert linear.drift < -0.004  # still later, not flipped to earlier


def test_a_new_delay_far_away_moves_the_filter_and_a_wander_does_not() -> None:
    linear = LinearEchoFilter()
    linear.observe_lag(100.0)
    assert linear.delay_frames == 8
    linear.observe_lag(112.0)  # a wander of a frame or two
    assert linear.delay_frames == 8
    linear.observe_lag(400.0)
    assert linear.delay_frames == 38
    linear.observe_lag(5000.0)  # beyond what it keeps: the farthest it reaches
    assert linear.delay_frames is not None and linear.delay_frames < 64


@pytest.mark.parametrize("block", [160, 480, 320 * 7])
def test_any_whole_frames_and_hostile_samples(block: int) -> None:
    rng = np.random.default_rng(3)
    linear = LinearEchoFilter()
    linear.observe_lag(30.0)
    loud = rng.integers(-32768, 32767, size=block * 20, dtype=np.int16)  # full scale, clipping
    residual, near_end = _feed(linear, loud, loud[::-1].copy(), block)
    assert residual.shape == (block * 20,) and near_end.shape == (block * 20 // FRAME,)
    assert np.isfinite(residual).all()
    empty_residual, empty_near = linear.process(np.zeros(0, dtype=np.int16), np.zeros(0, dtype=np.int16))
    assert empty_residual.size == 0 and empty_near.size == 0


def _record_verdicts(linear: LinearEchoFilter, verdicts: list[bool]) -> None:
    process = linear.process

    def recording(near: np.ndarray, ref: np.ndarray, energies: Any = None) -> tuple[np.ndarray, np.ndarray]:
        residual, near_end = process(near, ref, energies)
        verdicts.extend(near_end.tolist())
        return residual, near_end

    linear.process = recording  # type: ignore[method-assign, assignment]


@pytest.mark.skipif(not webrtc_available(), reason="no WebRTC AEC3 binding on this platform")
@pytest.mark.parametrize("binding", installed_bindings())
def test_the_canceller_hands_on_the_voice_where_the_linear_filter_hears_it(binding: str) -> None:
    far, mic, _, user = _scene(14.0, user_from=8.0, user_gain=0.25)  # 12 dB under the echo's peaks
    outs = {}
    for keep in (False, True):
        tap = FarEndTap()
        canceller = WebRtcEchoCanceller(tap, binding=binding, keep_voice=keep)
        heard_frames: list[bool] = []
        if canceller.linear is not None:  # record its verdicts, frame by frame, as the canceller gets them
            _record_verdicts(canceller.linear, heard_frames)
        out = []
        for start in range(0, len(mic) - 320 + 1, 320):
            tap.played(far[start : start + 320], CAPTURE_RATE)
            out.append(canceller.process(mic[start : start + 320]))
        outs[keep] = np.concatenate(out)
        if keep:
            assert canceller.linear is not None and canceller.near_end_frames > 0
            flags = np.array(heard_frames)
    # Where the linear filter heard the user, the canceller hands on the voice, whole; never less of it than
    # AEC3 alone (which in this plain room cuts little; the bench's reverberant rooms show what it cuts).
    heard = np.repeat(flags, FRAME)
    assert heard.any()
    voice = user[: len(heard)][heard]
    assert abs(_db(outs[True][: len(heard)][heard]) - _db(voice)) <= 1.5
    assert _db(outs[True][: len(heard)][heard]) >= _db(outs[False][: len(heard)][heard]) - 0.5
    alone = slice(4 * CAPTURE_RATE, 8 * CAPTURE_RATE)  # the robot alone: the echo stays removed...
    assert _db(outs[True][alone]) <= _db(mic[alone]) - 15.0
    assert _db(outs[True][alone]) <= _db(outs[False][alone]) + 0.5  # ...never less than by AEC3 alone


@pytest.mark.skipif(not webrtc_available(), reason="no WebRTC AEC3 binding on this platform")
def test_the_linear_filter_learns_afresh_when_the_tap_pairs_the_reference_anew() -> None:
    far, mic, _, _ = _scene(3.0)
    tap = FarEndTap()
    canceller = WebRtcEchoCanceller(tap)
    assert canceller.linear is not None
    forgotten = []
    for start in range(0, len(mic) - 320 + 1, 320):
        if start == 2 * CAPTURE_RATE:
            tap.retreats += 1  # what the tap does when reference came late: the pairing moved
        tap.played(far[start : start + 320], CAPTURE_RATE)
        canceller.process(mic[start : start + 320])
        forgotten.append(canceller.linear.forgotten)
    moved = 2 * CAPTURE_RATE // 320
    assert forgotten[moved] == forgotten[moved - 1] + 1  # told at once
    assert forgotten[-1] == forgotten[moved]  # and once


def test_a_filter_that_lost_the_echo_does_not_call_the_robot_the_user_for_ever() -> None:
    far, mic, _, _ = _scene(20.0)
    moved = np.clip(-_room(far.astype(np.float64), DELAY + 5) * 1.5, -32768, 32767).astype(np.int16)
    mic[10 * CAPTURE_RATE :] = moved[10 * CAPTURE_RATE :]  # the echo path changed under it (the robot moved)
    linear = LinearEchoFilter()
    linear.observe_lag(DELAY / 16)
    _, near_end = _feed(linear, mic, far)
    assert near_end[10 * 100 : 11 * 100].mean() > 0.5  # at first the change looks like the user...
    assert not near_end[15 * 100 :].any()  # ...then it learns the new path instead of calling it hers


def test_an_unbroken_robot_it_lost_makes_it_start_afresh() -> None:
    # No pause in the robot's speech to learn the new path in: after 1.5 s of "the user" it starts afresh.
    rng = np.random.default_rng(4)
    far = np.convolve(rng.standard_normal(16 * CAPTURE_RATE), np.ones(4) / 4, mode="same") * 6000
    mic = _room(far, DELAY) + rng.standard_normal(len(far)) * 5.0
    mic[8 * CAPTURE_RATE :] = -_room(far, DELAY + 5)[8 * CAPTURE_RATE :] * 1.5
    linear = LinearEchoFilter()
    linear.observe_lag(DELAY / 16)
    residual, near_end = _feed(linear, mic.astype(np.int16), far.astype(np.int16))
    assert linear.forgotten >= 1
    assert not near_end[13 * 100 :].any()
    tail = slice(14 * CAPTURE_RATE, None)  # started afresh, it learns at the full step: the new path is removed
    assert _db(residual[tail]) <= _db(mic[tail]) - 15.0


def test_a_blocks_frames_share_their_transforms(monkeypatch: pytest.MonkeyPatch) -> None:
    """The frames of a block are predicted and transformed together (one call for all), not one by one: CPU is a
    bench figure (bench echo), the number of calls a block costs is what this counts."""
    calls = 0
    for name in ("rfft", "irfft"):
        real = getattr(np.fft, name)

        def counted(*args: object, _real: object = real, **kwargs: object) -> np.ndarray:
            nonlocal calls
            calls += 1
            return _real(*args, **kwargs)  # type: ignore[operator]

        monkeypatch.setattr(echo_linear.np.fft, name, counted)
    far, mic, _, _ = _scene(4.0)
    linear = LinearEchoFilter()
    linear.observe_lag(DELAY / 16)
    block = 4 * FRAME  # 40 ms
    _feed(linear, mic, far, block)
    blocks = len(mic) // block
    # the reference's spectra, the prediction, the residual's and the echo's spectra: 3 a block, plus the gradient
    # constraint now and then (was 2 a frame, 9 a block)
    assert calls <= 3.5 * blocks


class _DeafEngine:
    """An AEC3 that removes nothing (as AEC3 alone let a word's echo through in bench echo's hall)."""

    binding = "deaf"

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        return near

    def reset(self) -> None:
        pass


def test_before_the_filter_is_ready_the_canceller_hands_on_whichever_leaves_less(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The hall's two false barge-ins 7.6 and 8.3 s in: AEC3 let a word through while the linear filter, not yet
    # ready (it needs 10 dB of its own), already removed 8 dB of it; its residual was not looked at. (Not before it
    # removes 5 dB: where it removed 4, AEC3 letting a user's syllable through gave the onset, bench echo -6 dB.)
    monkeypatch.setattr("appliance.audio.echo.open_engine", lambda *args: _DeafEngine())
    far, mic, _, _ = _scene(8.0)
    tap = FarEndTap()
    canceller = WebRtcEchoCanceller(tap)
    assert canceller.linear is not None
    before = []  # (mic, out) of the blocks where the filter removes 5 dB and is not ready yet
    untouched = []  # whether AEC3's output went on as it was, where the filter runs but removes less
    for start in range(0, len(mic) - 320 + 1, 320):
        tap.played(far[start : start + 320], CAPTURE_RATE)
        out = canceller.process(mic[start : start + 320])
        if canceller.linear.hears and not canceller.linear.ready:
            before.append((mic[start : start + 320], out))
        elif canceller.linear.delay_frames is not None and not canceller.linear.hears:
            untouched.append(np.array_equal(out, mic[start : start + 320]))
    assert len(before) >= 10, "the filter runs for a while before it is ready"
    heard = np.concatenate([m for m, _ in before])
    handed = np.concatenate([o for _, o in before])
    assert _db(handed) <= _db(heard) - 3.0
    assert len(untouched) >= 10 and all(untouched)


@pytest.mark.parametrize("direct", [True, False])
def test_the_transforms_straight_to_numpy_give_np_ffts_numbers(direct: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # The filter's transforms skip np.fft's checks and dispatch (2 us of 5 a call, at 300 calls a second): the
    # numbers must stay numpy's to the bit, in both precisions the filter uses; without them (numpy 1.x, or a numpy
    # that changed its private module), np.fft itself.
    if not direct:
        monkeypatch.setattr(echo_partitions, "_RFFT", None)
        monkeypatch.setattr(echo_partitions, "_IRFFT", None)
    rng = np.random.default_rng(4)
    for real in (np.float32, np.float64):
        rows = rng.standard_normal((3, 2 * FRAME)).astype(real)
        frames = rng.standard_normal((4, FRAME)).astype(real)  # zero-padded to 2 * FRAME, as the residual's
        spectra = np.fft.rfft(rows, axis=1)
        assert np.array_equal(echo_partitions.rfft_rows(rows), spectra)
        assert np.array_equal(echo_partitions.rfft_rows(frames), np.fft.rfft(frames, 2 * FRAME, axis=1))
        assert np.array_equal(echo_partitions.irfft_rows(spectra), np.fft.irfft(spectra, axis=1))
        assert echo_partitions.irfft_rows(spectra).dtype == np.fft.irfft(spectra, axis=1).dtype


def test_the_energies_the_canceller_hands_over_change_nothing() -> None:
    # The canceller has each frame's energy of the reference and the microphone already and hands them over (every
    # numpy call counts at 100 frames a second): the filter then works exactly as with its own.
    far, mic, _, _ = _scene(14.0, user_from=8.0)
    own, handed = LinearEchoFilter(), LinearEchoFilter()
    for linear in (own, handed):
        linear.observe_lag(DELAY / 16)
    heard = 0
    for start in range(0, len(mic) - 320 + 1, 320):
        near, ref = mic[start : start + 320], far[start : start + 320]
        energies = tuple(
            [float(np.square(x[i : i + FRAME].astype(np.float64)).sum()) for i in (0, FRAME)] for x in (ref, near)
        )
        residual, near_end = own.process(near, ref)
        residual_handed, near_end_handed = handed.process(near, ref, energies)  # type: ignore[arg-type]
        assert np.array_equal(residual, residual_handed) and np.array_equal(near_end, near_end_handed)
        heard += int(near_end.sum())
    assert heard > 0  # both learned the room and heard the user, alike
