"""``echo_cancel = "auto"`` backs the canceller off by itself when it cannot stay aligned (issue 20): a capture
that lags real time, a reference that keeps piling up (resynchronising), an echo delay out of reach. The
explicit ``webrtc`` keeps it on. Real canceller, simulated devices; time is Trio's MockClock or audio."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import trio
import trio.testing

from appliance.audio.base import CAPTURE_RATE, BlockQueue
from appliance.audio.echo import CancellingQueue, FarEndTap, WebRtcEchoCanceller
from appliance.audio.echo_backoff import BackoffLimits, EchoHealth
from appliance.audio.echo_engines import webrtc_available
from appliance.listening.guard import EchoGuard
from tests.test_echo_canceller import _room, _speechlike

needs_webrtc = pytest.mark.skipif(not webrtc_available(), reason="pywebrtc-audio has no wheel for this platform")
BLOCK = 320  # 20 ms


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "echo" in r.getMessage()]


def _guard(canceller: WebRtcEchoCanceller) -> EchoGuard:
    guard = EchoGuard("raise", 0.02, margin_db=12.0, cancelled_margin_db=3.0)
    guard.canceller = canceller
    return guard


async def _room_in_real_time(canceller: WebRtcEchoCanceller, seconds: float, mic_period: float, at: int = 0) -> int:
    """The speaker plays a 20 ms block every 20 ms (virtual time) into the tap; the microphone hands a 20 ms
    block of its echo (60 ms later) to the capture path every ``mic_period`` s. Returns the next sample."""
    far = _speechlike(seconds + 1, seed=7)
    mic = _room(far, 960)
    queue = BlockQueue(max_blocks=100_000)
    capture = CancellingQueue(queue, canceller)
    blocks = int(seconds * CAPTURE_RATE) // BLOCK

    async def speaker() -> None:
        for i in range(blocks):
            canceller.tap.played(far[i * BLOCK : (i + 1) * BLOCK].astype(np.int16), CAPTURE_RATE)
            await trio.sleep(0.02)

    async def microphone() -> None:
        for i in range(int(blocks * 0.02 / mic_period)):
            capture.put_nowait(mic[i * BLOCK : (i + 1) * BLOCK].astype(np.int16))
            await trio.sleep(mic_period)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(speaker)
        nursery.start_soon(microphone)
    return at + blocks * BLOCK


@needs_webrtc
async def test_auto_backs_off_when_the_capture_lags_real_time(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    canceller = WebRtcEchoCanceller(FarEndTap(), may_back_off=True)
    guard = _guard(canceller)
    await _room_in_real_time(canceller, 8.0, 0.02)  # a healthy device first: converged, low margin
    assert canceller.stats().state == "running" and guard.margin_db == 3.0
    with caplog.at_level(logging.INFO):
        await _room_in_real_time(canceller, 30.0, 0.021)  # the capture now delivers 95 % of real time
    stats = canceller.stats()
    assert stats.state == "backed_off" and stats.reason is not None and "capture lags" in stats.reason
    assert not canceller.converged and guard.margin_db == 12.0  # the guard's full margin is back
    assert len(_warnings(caplog)) == 1  # said once, not every block
    block = np.full(BLOCK, 1234, dtype=np.int16)
    assert np.array_equal(canceller.process(block, None), block)  # backed off: the mic passes untouched


@needs_webrtc
async def test_explicit_webrtc_keeps_trying_when_the_capture_lags(autojump_clock: trio.testing.MockClock) -> None:
    canceller = WebRtcEchoCanceller(FarEndTap(), may_back_off=False)
    await _room_in_real_time(canceller, 30.0, 0.021)
    stats = canceller.stats()
    assert stats.state == "misaligned" and stats.reason is not None and "capture lags" in stats.reason
    block = _speechlike(0.02, seed=9).astype(np.int16)
    assert not np.array_equal(canceller.process(block, None), block)  # still cancelling


@needs_webrtc
async def test_a_stopped_capture_is_not_a_lag(autojump_clock: trio.testing.MockClock) -> None:
    canceller = WebRtcEchoCanceller(FarEndTap(), may_back_off=True)
    await _room_in_real_time(canceller, 12.0, 0.02)
    await trio.sleep(30.0)  # muted, or the device was reopened
    await _room_in_real_time(canceller, 12.0, 0.02)
    assert canceller.stats().state == "running"


def _drifting(canceller: WebRtcEchoCanceller, seconds: float, speed: float) -> None:
    """The speaker hands over ``speed`` times as much reference as the microphone delivers (no clock)."""
    far = _speechlike(seconds * speed + 1, seed=4)
    mic = _room(far, 960)
    played = 0
    for start in range(0, int(seconds * CAPTURE_RATE) - BLOCK + 1, BLOCK):
        while played < (start + BLOCK) * speed:
            canceller.tap.played(far[played : played + BLOCK].astype(np.int16), CAPTURE_RATE)
            played += BLOCK
        canceller.process(mic[start : start + BLOCK].astype(np.int16), None)


@needs_webrtc
def test_auto_backs_off_when_the_alignment_keeps_resynchronising_and_retries_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    canceller = WebRtcEchoCanceller(FarEndTap(), may_back_off=True)
    with caplog.at_level(logging.INFO):
        _drifting(canceller, 20.0, 1.2)  # the reference piles up 0.2 s per second: resync every few seconds
        stats = canceller.stats()
        assert stats.state == "backed_off" and stats.reason is not None
        # The piling reference shows as resyncs, and as an echo delay that keeps growing: either says it.
        assert "resynchronised" in stats.reason or "delay estimate out of range" in stats.reason
        assert canceller.stats().erle_db is None and canceller.delay_ms is None
        _drifting(canceller, 130.0, 1.0)  # a healthy stretch: after 120 s of audio it tries again
        assert canceller.stats().state == "running"
        _drifting(canceller, 20.0, 1.2)  # and backs off again when the trouble is still there
        assert canceller.stats().state == "backed_off" and canceller.health.backoffs == 2
    assert len(_warnings(caplog)) == 1


@needs_webrtc
def test_auto_backs_off_when_the_echo_comes_later_than_the_canceller_can_reach() -> None:
    canceller = WebRtcEchoCanceller(FarEndTap(), may_back_off=True)
    far = _speechlike(12.0, seed=6)
    mic = _room(far, int(0.56 * CAPTURE_RATE))  # 560 ms: more than the reference can be held back
    for start in range(0, len(mic) - BLOCK + 1, BLOCK):
        canceller.tap.played(far[start : start + BLOCK].astype(np.int16), CAPTURE_RATE)
        canceller.process(mic[start : start + BLOCK].astype(np.int16), None)
    stats = canceller.stats()
    assert stats.state == "backed_off" and stats.reason is not None and "delay" in stats.reason


def test_health_rules_count_in_their_windows() -> None:
    health = EchoHealth(may_back_off=True, limits=BackoffLimits(resyncs=3, resync_window=10.0, delay_misses=2))
    for _ in range(3):  # three resyncs, 11 s apart: never three within 10 s
        health.resynced()
        for _ in range(550):
            health.block(0.02, None)
    health.delay_estimated(False, 600.0)
    health.delay_estimated(True, 100.0)  # a good estimate in between starts the count over
    health.delay_estimated(False, 600.0)
    assert health.state == "running"
    health.delay_estimated(False, 600.0)
    assert health.state == "backed_off" and health.reason is not None and "600 ms" in health.reason


def test_a_capture_that_hands_over_in_batches_is_not_a_lag() -> None:
    """A relaxed queue: the source hands 250 ms of audio over at once, four times a second, on time."""
    health = EchoHealth(may_back_off=True)
    for arrival in range(4 * 60):
        for _ in range(12):  # 12 blocks of 20 ms + one of 10 ms: 250 ms
            health.block(0.02, arrival * 0.25)
        health.block(0.01, arrival * 0.25)
    assert health.state == "running"
    for arrival in range(4 * 60):  # now 5 % short: 237.5 ms per quarter second
        for _ in range(12):
            health.block(0.02, 60.0 + arrival * 0.25)
        health.block(-0.0025, 60.0 + arrival * 0.25)
    assert health.state == "backed_off" and health.reason is not None and "capture lags" in health.reason


def test_a_stall_while_the_devices_open_is_not_a_lag() -> None:
    """A sound server rewiring its graph holds the capture back 300 ms once: one 5 s window looks slow
    (94 %), the ones after it do not."""
    health = EchoHealth(may_back_off=True)
    for block in range(50):
        health.block(0.02, block * 0.02)
    for block in range(50, 60 * 50):
        health.block(0.02, 0.3 + block * 0.02)  # every block from here on arrives 300 ms late...
    assert health.state == "running"
    slow = EchoHealth(may_back_off=True)
    for block in range(60 * 50):
        slow.block(0.02, block * 0.0212)  # ...while a slow machine falls behind all along (94 %)
    assert slow.state == "backed_off" and slow.reason is not None and "capture lags" in slow.reason


def test_resyncs_close_together_back_off_and_explicit_webrtc_only_says_so() -> None:
    for may_back_off, state in ((True, "backed_off"), (False, "misaligned")):
        health = EchoHealth(may_back_off=may_back_off, limits=BackoffLimits(resyncs=3, resync_window=10.0))
        for _ in range(3):
            health.resynced()
            health.block(2.0, None)
        assert health.state == state and health.reason is not None and "resynchronised 3 times" in health.reason
