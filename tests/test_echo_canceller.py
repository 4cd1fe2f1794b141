"""The echo canceller (issue 20): it removes a synthetic echo, aligns a delayed reference, the far-end tap sees
exactly what the sink played, and ``listening.echo_cancel`` does what it says."""

from __future__ import annotations

import numpy as np
import pytest
import trio
import trio.lowlevel
import trio.testing

from appliance.audio.base import CAPTURE_RATE, AudioClip, AudioStream, BlockQueue
from appliance.audio.echo import CancellingQueue, FarEndTap, WebRtcEchoCanceller
from appliance.audio.echo_alignment import BacklogLow, estimate_delay_ms
from appliance.audio.echo_engines import installed_bindings, resolve_backend, webrtc_available
from appliance.audio.playback import MemorySink

needs_webrtc = pytest.mark.skipif(not webrtc_available(), reason="pywebrtc-audio has no wheel for this platform")


def _speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise shaped into syllables: broadband like speech, with pauses (what AEC3 needs to converge)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * CAPTURE_RATE)
    x = np.convolve(rng.standard_normal(n), np.ones(4) / 4, mode="same")
    envelope = (np.sin(2 * np.pi * 3.0 * np.arange(n) / CAPTURE_RATE) > -0.3).astype(float)
    return x * envelope * 6000


def _room(far: np.ndarray, delay: int) -> np.ndarray:
    h = np.zeros(delay + 400)
    h[delay] = 0.5
    h[delay + 37] = -0.2
    h[delay + 211] = 0.1
    return np.convolve(far, h)[: len(far)]


def _run(
    far: np.ndarray, mic: np.ndarray, lead: int = 0, binding: str | None = None
) -> tuple[np.ndarray, WebRtcEchoCanceller]:
    tap = FarEndTap()
    canceller = WebRtcEchoCanceller(tap, binding=binding)
    out = []
    played = 0
    for start in range(0, len(mic) - 320 + 1, 320):
        while played < start + 320 + lead:  # the speaker hands its blocks over as it plays them
            tap.played(far[played : played + 320].astype(np.int16), CAPTURE_RATE)
            played += 320
        out.append(canceller.process(mic[start : start + 320].astype(np.int16)))
    return np.concatenate(out).astype(np.float64), canceller


def _db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(np.square(x)) + 1.0)


@needs_webrtc
@pytest.mark.parametrize("binding", installed_bindings())
def test_synthetic_echo_is_reduced_by_at_least_20_db(binding: str) -> None:
    far = _speechlike(8.0)
    mic = _room(far, 800)  # 50 ms
    out, canceller = _run(far, mic, binding=binding)
    assert canceller.binding == binding
    tail = slice(3 * CAPTURE_RATE, None)  # after convergence
    assert _db(mic[tail]) - _db(out[tail]) >= 20.0
    stats = canceller.stats()
    assert stats.backend == "webrtc" and stats.erle_db is not None and stats.erle_db >= 15.0
    assert stats.state == "running" and stats.reason is None and canceller.converged


@needs_webrtc
@pytest.mark.parametrize("binding", installed_bindings())
def test_user_voice_survives_the_canceller(binding: str) -> None:
    far = _speechlike(8.0)
    user = _speechlike(8.0, seed=5) * 0.5
    user[: 5 * CAPTURE_RATE] = 0  # the user speaks over the robot from 5 s on
    out, _ = _run(far, _room(far, 800) + user, binding=binding)
    part = slice(5 * CAPTURE_RATE, None)
    assert _db(out[part]) > _db(_room(far, 800)[part]) - 12.0  # far above the residual echo: still a voice


@needs_webrtc
def test_reference_alignment_finds_the_delay() -> None:
    far = _speechlike(8.0, seed=2)
    delay = 160 * 16  # 160 ms: the reference is handed over as it plays; the echo comes 160 ms later
    mic = _room(far, delay)
    out, canceller = _run(far, mic)
    tail = slice(4 * CAPTURE_RATE, None)
    assert _db(mic[tail]) - _db(out[tail]) >= 20.0
    assert canceller.delay_ms is not None and abs(canceller.delay_ms - 160.0) <= 25.0


def test_delay_estimate_on_a_plain_shift() -> None:
    far = _speechlike(2.0, seed=3)
    mic = np.concatenate([np.zeros(1200), far])[: len(far)]
    assert estimate_delay_ms(far, mic) == pytest.approx(75.0, abs=0.1)
    assert estimate_delay_ms(far, np.random.default_rng(1).standard_normal(len(far))) is None


@pytest.mark.parametrize("lag_ms", [-199.0, -150.0, 0.0, 480.0, 699.0])
def test_delay_estimate_at_the_ends_of_its_search_and_no_echo_from_beyond(lag_ms: float) -> None:
    """The correlation is circular, as long as the lags searched need (not the whole linear one): lags at both ends
    of the search are found where they are, and an echo from beyond it (1 s) is not folded onto a lag inside it."""
    rng = np.random.default_rng(4)
    source = _speechlike(4.0, seed=5) + rng.standard_normal(4 * CAPTURE_RATE) * 50
    second = CAPTURE_RATE

    def heard(lag: float) -> np.ndarray:  # two seconds of the microphone, the echo ``lag`` ms after the reference
        start = second - int(lag * CAPTURE_RATE / 1000)
        return source[start : start + 2 * second]

    far = source[second : 3 * second]
    assert estimate_delay_ms(far, heard(lag_ms)) == pytest.approx(lag_ms, abs=0.1)
    assert [estimate_delay_ms(far, rng.standard_normal(len(far)) * 3000) for _ in range(5)] == [None] * 5
    beyond = estimate_delay_ms(far, heard(1000.0 if lag_ms > 0 else -1000.0))
    assert beyond is None or (abs(beyond - lag_ms) > 50.0 and beyond not in (-200.0, 700.0))


def test_tap_pairs_in_order_and_pads_silence() -> None:
    tap = FarEndTap(slack=0.0)
    assert not tap.take(320).any()  # nothing played yet: the speaker is silent
    tap.played(np.arange(320, dtype=np.int16), CAPTURE_RATE)
    tap.played(np.arange(320, 640, dtype=np.int16), CAPTURE_RATE)
    first = tap.take(320)  # first pairing: the newest reference
    assert first[0] == 320 and first[-1] == 639
    tap.played(np.arange(640, 960, dtype=np.int16), CAPTURE_RATE)
    assert tap.take(160)[0] == 640 and tap.take(160)[0] == 800  # then sample for sample
    assert not tap.take(320).any()  # ran dry: silence, not a stale repeat


def test_tap_resynchronises_when_the_reference_piles_up() -> None:
    tap = FarEndTap(max_backlog=0.1, slack=0.0)
    tap.played(np.ones(320, dtype=np.int16), CAPTURE_RATE)
    tap.take(320)
    tap.played(np.full(CAPTURE_RATE, 7, dtype=np.int16), CAPTURE_RATE)  # a second while the mic was stopped
    assert (tap.take(320) == 7).all()
    assert tap.resyncs == 1


def test_the_backlog_low_is_the_least_of_the_last_whole_second_and_this_one() -> None:
    # What FarEndTap.advance may drop without running dry: the hand-overs make the backlog swing by a block.
    low = BacklogLow()
    for i in range(100):  # 2 s of 20 ms blocks, swinging between 480 and 800
        low.observe(i * 0.02, 480 + 320 * (i % 3 == 0))
    assert low.last_min == 480 and low.recent_min() == 480
    low.observe(2.0, 900)
    assert low.last_min == 480 and low.recent_min() == 480  # the second just ended still counts
    low.observe(3.0, 1000)
    assert low.last_min == 900 and low.recent_min() == 900
    low.reset()
    assert low.recent_min() == float("inf")


async def test_tap_sees_exactly_what_the_sink_played_including_a_cut() -> None:
    sink = MemorySink(sample_rate=16_000, realtime=False)
    tap = FarEndTap(history=1000)
    sink.far_end = tap
    clip = AudioClip((np.arange(16_000) % 2000).astype(np.int16), 16_000)
    await sink.play(clip)
    send, stream = AudioStream.open(16_000)
    await send.send((np.arange(48_000) % 500).astype(np.int16))
    with trio.move_on_after(0) as scope:  # a barge-in cuts the second clip
        await trio.lowlevel.checkpoint()
        await sink.play(stream)
    assert scope.cancelled_caught
    played = np.concatenate(sink.blocks)
    tapped = np.concatenate(list(tap.history or []))
    assert np.array_equal(tapped, played)
    assert tap.played_samples == sum(len(b) for b in sink.blocks)


def test_device_sink_taps_the_callback_output_and_the_silence_after_a_cut() -> None:
    from appliance.audio.device_sink import DeviceSink

    class Status:
        output_underflow = False

    sink = DeviceSink()
    sink.sample_rate = 16_000
    tap = FarEndTap(history=10)
    sink.far_end = tap
    sink._pending.extend([np.full(320, 5, dtype=np.int16), np.full(320, 6, dtype=np.int16)])
    out = np.zeros((480, 1), dtype=np.int16)
    sink._callback(out, 480, None, Status())
    sink._pending.clear()  # what a barge-in does
    out2 = np.zeros((480, 1), dtype=np.int16)
    sink._callback(out2, 480, None, Status())
    seen = list(tap.history or [])
    assert np.array_equal(seen[0], out[:, 0]) and np.array_equal(seen[1], out2[:, 0])
    assert (seen[0][:320] == 5).all() and (seen[0][320:] == 6).all()
    assert (seen[1][:160] == 6).all() and not seen[1][160:].any()  # the rest of the block, then silence


@needs_webrtc
async def test_cancelling_queue_cleans_what_the_source_puts() -> None:
    queue = BlockQueue()
    tap = FarEndTap()
    q = CancellingQueue(queue, WebRtcEchoCanceller(tap))
    q.put_nowait(np.full(320, 1000, dtype=np.int16))
    assert len(q) == 1 and q.relaxed is False and q.dropped == 0
    assert queue._blocks[0].shape == (320,)


def test_backend_resolution() -> None:
    assert resolve_backend("off") == "off"
    assert resolve_backend("auto") == ("webrtc" if webrtc_available() else "off")
    if webrtc_available():
        assert resolve_backend("webrtc") == "webrtc"


def test_webrtc_without_the_wheel_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.audio import echo_engines
    from appliance.settings.listening import ListeningConfig

    monkeypatch.setattr(echo_engines, "webrtc_available", lambda: False)
    assert resolve_backend("auto") == "off"
    from appliance.config import AppConfig

    with pytest.raises(ValueError, match="no wheel"):  # checked when the whole configuration is read
        AppConfig.model_validate({"listening": {"echo_cancel": "webrtc"}})
    assert ListeningConfig(echo_cancel="auto").echo_cancel == "auto"


@needs_webrtc
@pytest.mark.parametrize("binding", installed_bindings())
def test_the_canceller_rests_while_the_robot_is_quiet_and_cancels_as_well_after(
    binding: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a second of silent reference the microphone passes through untouched (AEC3 on silence cost as much
    as the whole listener); the robot speaking again brings it back at once, cancelling as well as if it had
    worked through the silence."""
    import appliance.audio.echo as echo

    far = _speechlike(12.0)
    far[4 * CAPTURE_RATE : 8 * CAPTURE_RATE] = 0  # the robot is quiet for 4 s between two replies
    user = np.zeros_like(far)
    user[5 * CAPTURE_RATE : 7 * CAPTURE_RATE] = _speechlike(2.0, seed=3)[: 2 * CAPTURE_RATE] * 0.3  # the room
    mic = _room(far, 800) + user
    resting, rested = _run(far, mic, binding=binding)
    quiet = slice(6 * CAPTURE_RATE, 8 * CAPTURE_RATE)  # more than a second into the silence
    assert np.array_equal(resting[quiet], mic[quiet].astype(np.int16)), "the microphone passes through"
    monkeypatch.setattr(echo, "_REST_AFTER", 1e9)
    working, _ = _run(far, mic, binding=binding)
    assert not np.array_equal(working[quiet], mic[quiet].astype(np.int16))  # without resting AEC3 ran here
    after = slice(9 * CAPTURE_RATE, None)  # a second into the next reply
    assert _db(mic[after]) - _db(resting[after]) >= _db(mic[after]) - _db(working[after]) - 2.0
    assert _db(mic[after]) - _db(resting[after]) >= 15.0
    assert rested.converged
    if rested.linear is not None:
        assert rested.linear._frames == len(mic) // 320 * 2  # its clock counted the rested frames too
