"""Which WebRTC AEC3 binding runs (issue 20): livekit where it has a wheel, pywebrtc-audio where only that
one does, none (the guard alone) where neither does; both take the same 10 ms frames."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from appliance.audio import echo_engines
from appliance.audio.echo_engines import installed_bindings, open_engine, resolve_backend


def _only(monkeypatch: pytest.MonkeyPatch, livekit: bool, pywebrtc: bool) -> None:
    monkeypatch.setattr(echo_engines, "livekit_available", lambda: livekit)
    monkeypatch.setattr(echo_engines, "pywebrtc_available", lambda: pywebrtc)


def test_livekit_is_preferred_and_pywebrtc_audio_is_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    _only(monkeypatch, livekit=True, pywebrtc=True)
    assert echo_engines.best_binding() == "livekit"
    _only(monkeypatch, livekit=False, pywebrtc=True)
    assert echo_engines.best_binding() == "pywebrtc-audio"
    assert resolve_backend("auto") == "webrtc"


def test_without_any_binding_auto_keeps_the_guard_and_webrtc_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _only(monkeypatch, livekit=False, pywebrtc=False)
    assert echo_engines.webrtc_available() is False
    assert resolve_backend("auto") == "off"
    with pytest.raises(ValueError, match="no wheel"):
        resolve_backend("webrtc")
    with pytest.raises(ValueError, match="no WebRTC AEC3 binding"):
        open_engine()


@pytest.mark.parametrize("binding", installed_bindings())
def test_each_binding_returns_whole_frames_of_int16(binding: str) -> None:
    engine = open_engine(binding=binding)
    assert engine.binding == binding
    rng = np.random.default_rng(1)
    far = (rng.standard_normal(480) * 3000).astype(np.int16)
    near = (rng.standard_normal(480) * 3000).astype(np.int16)
    out = engine.process(near, far)
    assert out.dtype == np.int16 and out.shape == (480,)
    engine.reset()
    silent = engine.process(np.zeros(160, dtype=np.int16), np.zeros(160, dtype=np.int16))
    assert silent.shape == (160,) and not silent.any()


@pytest.mark.parametrize("binding", installed_bindings())
def test_each_binding_runs_with_noise_suppression(binding: str) -> None:
    engine = open_engine(noise_suppression=True, binding=binding)
    rng = np.random.default_rng(2)
    noise = (rng.standard_normal(16000) * 300).astype(np.int16)
    out = np.concatenate([engine.process(noise[i : i + 160], np.zeros(160, np.int16)) for i in range(0, 16000, 160)])
    # after a second of steady noise the suppressor has lowered it
    assert np.mean(np.square(out[8000:], dtype=np.float64)) < np.mean(np.square(noise[8000:], dtype=np.float64))


@pytest.mark.skipif("livekit" not in installed_bindings(), reason="livekit has no wheel for this platform")
def test_livekit_through_requests_built_once_cancels_exactly_as_through_its_public_calls() -> None:
    from tests.test_echo_canceller import _room, _speechlike

    far = _speechlike(3.0).astype(np.int16)
    near = np.clip(_room(far.astype(np.float64), 800) + _speechlike(3.0, seed=5) * 0.1, -32768, 32767).astype(np.int16)
    direct, public = open_engine(binding="livekit"), open_engine(binding="livekit")
    assert isinstance(direct, echo_engines.LiveKitAec3) and isinstance(public, echo_engines.LiveKitAec3)
    assert direct._direct is not None
    public._direct = None  # the public calls, one protobuf message each
    outs = [
        np.concatenate([e.process(near[i : i + 320], far[i : i + 320]) for i in range(0, len(near), 320)])
        for e in (direct, public)
    ]
    assert np.array_equal(outs[0], outs[1]) and np.any(outs[0] != near)


@pytest.mark.skipif("livekit" not in installed_bindings(), reason="livekit has no wheel for this platform")
def test_a_request_livekit_refuses_is_an_error_not_a_crash() -> None:
    from livekit import rtc

    frame = rtc.AudioFrame.create(16000, 1, 160)
    unknown = SimpleNamespace(_ffi_handle=SimpleNamespace(handle=987654321))  # a module livekit never made
    calls = echo_engines._DirectCalls(unknown, frame, frame)
    with pytest.raises(RuntimeError, match="livekit"):
        calls.capture()
    with pytest.raises(RuntimeError, match="livekit"):
        calls.reverse()


@pytest.mark.skipif("livekit" not in installed_bindings(), reason="livekit has no wheel for this platform")
def test_an_answer_in_other_words_switches_to_the_public_calls_and_keeps_cancelling() -> None:
    # Another livekit may answer "done" in bytes we did not build: the robot must keep its ears, not crash.
    engine = open_engine(binding="livekit")
    assert isinstance(engine, echo_engines.LiveKitAec3) and engine._direct is not None
    from livekit.rtc._proto import ffi_pb2

    from tests.test_echo_canceller import _room, _speechlike

    answer = ffi_pb2.FfiResponse()
    answer.apm_process_stream.SetInParent()
    engine._direct._fail("apm_process_stream", answer.SerializeToString())
    far = _speechlike(2.0).astype(np.int16)
    near = np.clip(_room(far.astype(np.float64), 800), -32768, 32767).astype(np.int16)
    out = np.concatenate([engine.process(near[i : i + 320], far[i : i + 320]) for i in range(0, len(near), 320)])
    assert engine._direct is None  # the public calls from the first frame after
    assert out.shape == near.shape and np.any(out != near)
    errored = ffi_pb2.FfiResponse()
    errored.apm_process_stream.error = "bad frame"
    calls = open_engine(binding="livekit")._direct  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="bad frame"):
        calls._fail("apm_process_stream", errored.SerializeToString())
