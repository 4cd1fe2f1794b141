"""Which WebRTC AEC3 binding runs (issue 20): livekit where it has a wheel, pywebrtc-audio where only that
one does, none (the guard alone) where neither does; both take the same 10 ms frames."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.audio import echo, echo_engines
from appliance.audio.echo import resolve_backend
from appliance.audio.echo_engines import installed_bindings, open_engine


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
    assert echo.webrtc_available() is False
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
