"""When the self-trigger guard trusts the echo canceller (issue 20; the JACK test's flaky self-interruption).

Until the canceller has converged, its residual can burst back to the whole echo (AEC3 before the delay is
found): the guard then expects the echo as it reaches the microphone uncancelled, whatever quiet residual it
learned. Once converged, the user talking over the robot (whose voice the ERLE figure counts as residual)
does not take that trust away; a canceller that really stopped removing the echo loses it.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest

from appliance.audio import echo
from appliance.audio.base import CAPTURE_RATE
from appliance.audio.echo import FarEndTap, WebRtcEchoCanceller
from appliance.audio.echo_engines import installed_bindings, webrtc_available
from appliance.listening.guard import EchoGuard
from tests.test_echo_canceller import _room, _speechlike

needs_webrtc = pytest.mark.skipif(not webrtc_available(), reason="pywebrtc-audio has no wheel for this platform")
BLOCK = 320  # 20 ms


def _guard_that_learned_a_quiet_residual(canceller: object) -> EchoGuard:
    guard = EchoGuard("raise", 0.02, margin_db=12.0, cancelled_margin_db=3.0)
    guard.canceller = canceller  # type: ignore[assignment]
    for _ in range(50):  # the robot speaks at -20 dBFS and the cleaned mic hears almost nothing of it
        guard.on_output(-20.0)
        guard.tick()
        guard.learn(-80.0)
    return guard


def test_an_unconverged_canceller_makes_the_guard_expect_the_whole_echo() -> None:
    canceller = SimpleNamespace(converged=False, echo_path_db=-2.0)
    guard = _guard_that_learned_a_quiet_residual(canceller)
    assert guard.expected_echo_db() == pytest.approx(-22.0)  # the uncancelled echo, not -80
    assert guard.margin_db == 12.0
    canceller.converged = True
    assert guard.expected_echo_db() == pytest.approx(-80.0)  # now the residual it learned
    assert guard.margin_db == 3.0


def test_before_the_echo_path_is_measured_a_loud_speaker_next_to_the_mic_is_assumed() -> None:
    guard = _guard_that_learned_a_quiet_residual(SimpleNamespace(converged=False, echo_path_db=None))
    assert guard.expected_echo_db() == pytest.approx(-26.0)  # the guard's own starting coupling, -6 dB


def test_without_a_canceller_the_learned_coupling_is_used() -> None:
    guard = _guard_that_learned_a_quiet_residual(None)
    assert guard.expected_echo_db() == pytest.approx(-80.0)


def _feed(canceller: WebRtcEchoCanceller, far: np.ndarray, mic: np.ndarray) -> tuple[list[bool], list[float]]:
    trust, erle = [], []
    for start in range(0, len(mic) - BLOCK + 1, BLOCK):
        canceller.tap.played(far[start : start + BLOCK].astype(np.int16), CAPTURE_RATE)
        canceller.process(mic[start : start + BLOCK].astype(np.int16))
        trust.append(canceller.converged)
        erle.append(canceller.erle_db if canceller.erle_db is not None else 0.0)
    return trust, erle


@needs_webrtc
@pytest.mark.parametrize("binding", installed_bindings())
def test_the_canceller_measures_the_uncancelled_echo_path(binding: str) -> None:
    canceller = WebRtcEchoCanceller(FarEndTap(), binding=binding)
    far = _speechlike(6.0)
    _feed(canceller, far, _room(far, 800))
    assert canceller.echo_path_db is not None
    # _room's strongest tap is 0.5 (-6 dB), two weaker ones add a little.
    assert -7.0 <= canceller.echo_path_db <= -4.0


@needs_webrtc
@pytest.mark.parametrize("binding", installed_bindings())
def test_a_barge_in_keeps_the_trust_and_a_lost_echo_path_takes_it_away(binding: str) -> None:
    canceller = WebRtcEchoCanceller(FarEndTap(), binding=binding)
    far = _speechlike(16.0)
    echo = _room(far, 800)
    user = _speechlike(16.0, seed=5) * 2.0  # the user, 6 dB louder than the robot's echo
    mic = echo.copy()
    second = CAPTURE_RATE
    mic[6 * second : 7 * second] += user[6 * second : 7 * second]  # a one-second barge-in
    lost = _room(_speechlike(16.0, seed=11), 800)  # from 10 s the speaker plays what the tap never got
    mic[10 * second :] = lost[10 * second :]
    trust, erle = _feed(canceller, far, mic)
    per_second = 50
    assert trust[5 * per_second], "converged on the plain echo"
    assert min(erle[6 * per_second : 8 * per_second]) < 12.0  # the ERLE figure alone would have said "diverged"
    assert all(trust[5 * per_second : 10 * per_second]), "the barge-in took the trust away"
    assert trust[11 * per_second - 1], "one second of echo it cannot remove is not yet a lost canceller"
    assert not any(trust[14 * per_second :]), "a canceller that no longer removes the echo is still trusted"


def test_the_delay_is_estimated_every_few_seconds_once_it_holds_and_every_second_when_it_moves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each estimate correlates 2 s of both signals (3 ms of CPU here): once a second was a tenth of the budget.
    canceller = WebRtcEchoCanceller(FarEndTap(), keep_voice=False)
    at: list[int] = []  # frames of robot speech at each estimate
    lags = iter([50.0] * 8 + [90.0] * 50)  # the echo's delay holds, then the robot is moved

    def scripted(far: np.ndarray, mic: np.ndarray) -> float:
        at.append(canceller._active_frames)
        return next(lags)

    monkeypatch.setattr(echo, "estimate_delay_ms", scripted)
    far = _speechlike(60.0)
    _feed(canceller, far, _room(far, 800))
    gaps = [round((b - a) / 100) for a, b in itertools.pairwise(at)]  # seconds of robot speech between
    assert gaps[:3] == [1, 1, 1]  # settling: every second
    assert gaps[3:7] == [3, 3, 3, 3]  # four estimates within 10 ms of each other: every 3 s
    assert gaps[7] == 8  # and over 20 s they show no drift either (the tap would resample by it): every 8 s
    assert gaps[8:11] == [1, 1, 1]  # it moved: every second until the new delay holds
    assert gaps[11] == 3


@needs_webrtc
def test_the_guard_trusts_the_canceller_only_after_two_seconds_of_robot_speech() -> None:
    # AEC3's first second can look converged and then let the echo through (bench echo, hall: a false barge-in
    # 1.4 s into the robot's speech): a whole window of robot speech before the margin drops.
    canceller = WebRtcEchoCanceller(FarEndTap())
    far = _speechlike(8.0)
    trust, _ = _feed(canceller, far, _room(far, 800))
    active = np.cumsum(_active_blocks(far))
    first = trust.index(True)
    # Frames of robot speech (2 s), counted on the far signal as fed: the tap pairs it a few ms later, which moves
    # a frame or two across the loudness threshold.
    assert active[first] >= 195
    assert all(trust[first:])


def _active_blocks(far: np.ndarray) -> list[int]:
    """Frames of robot speech (loud enough for the ERLE figure) per 20 ms block."""
    frames = far[: len(far) // 160 * 160].reshape(-1, 160)
    loud = np.mean(np.square(frames), axis=1) >= 32768.0**2 * 1e-5
    return [int(loud[i : i + 2].sum()) for i in range(0, len(loud), 2)]


@needs_webrtc
def test_a_new_pairing_of_the_reference_takes_the_trust_away_until_it_is_earned_anew() -> None:
    # After the tap pairs the reference anew (it came late) AEC3 relearns: bench echo's living room let the echo
    # through 1.7 s after such a move while the guard still trusted the canceller (a false barge-in).
    canceller = WebRtcEchoCanceller(FarEndTap())
    far = _speechlike(10.0)
    mic = _room(far, 800)
    trust: list[bool] = []
    moved = 5 * CAPTURE_RATE // BLOCK
    for i, start in enumerate(range(0, len(mic) - BLOCK + 1, BLOCK)):
        if i == moved:
            canceller.tap.retreats += 1  # what the tap does when reference came late: the pairing moved
        canceller.tap.played(far[start : start + BLOCK].astype(np.int16), CAPTURE_RATE)
        canceller.process(mic[start : start + BLOCK].astype(np.int16))
        trust.append(canceller.converged)
    assert trust[moved - 1], "converged before the move"
    active = np.cumsum(_active_blocks(far)[moved:])
    again = trust.index(True, moved)
    assert active[again - moved] >= 195, "trusted again before a whole window of robot speech on the new pairing"
    assert all(trust[again:])


def test_the_delay_after_a_new_pairing_is_estimated_on_the_new_pairing_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # An estimate whose 2 s spanned the move read the old lag: the linear filter took the step to the next one
    # for 170 ppm of drift and lost the echo (bench echo, 10 min of the living room: a false barge-in).
    canceller = WebRtcEchoCanceller(FarEndTap())
    heard: list[tuple[int, int]] = []  # (frames processed, frames of history) at each estimate

    def recorded(far: np.ndarray, mic: np.ndarray) -> float:
        heard.append((canceller.frames, len(far) // 160))
        return 50.0

    monkeypatch.setattr(echo, "estimate_delay_ms", recorded)
    far = _speechlike(12.0)
    mic = _room(far, 800)
    moved = 6 * CAPTURE_RATE // BLOCK
    for i, start in enumerate(range(0, len(mic) - BLOCK + 1, BLOCK)):
        if i == moved:
            canceller.tap.retreats += 1
            at = canceller.frames
        canceller.tap.played(far[start : start + BLOCK].astype(np.int16), CAPTURE_RATE)
        canceller.process(mic[start : start + BLOCK].astype(np.int16))
    after = [(frames, history) for frames, history in heard if frames > at]
    assert after, "estimated again after the move"
    assert all(history <= frames - at for frames, history in after)
