"""The WebRTC AEC3 bindings the echo canceller can run on, best first.

Both wrap the same WebRTC audio processing module; they differ in the WebRTC release inside and so in how well
AEC3 holds over minutes of reverberant speech (``python -m bench echo``, 10 min per room: livekit 30.3 / 29.6 dB
ERLE in the living room / hall against 23.1 / 17.7 dB for pywebrtc-audio 0.2.0, and 7 / 1 false barge-ins
against 52 / 96, at the same CPU):

- ``livekit``: the LiveKit SDK's ``AudioProcessingModule`` (wheels for x86_64 and aarch64 Linux); a 10 ms frame
  per call, the reverse (speaker) frame first, each frame processed in place.
- ``pywebrtc-audio``: the fallback where livekit is missing.

Neither exposes AEC3's settings nor its linear (pre-suppressor) output.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any, Protocol

import numpy as np

from appliance.audio.base import CAPTURE_RATE
from appliance.audio.echo_alignment import FRAME  # 10 ms: what WebRTC processes per call

log = logging.getLogger(__name__)


class Aec3Engine(Protocol):
    binding: str

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        """Cancel ``far`` (the speaker, paired sample for sample) out of ``near``: whole 10 ms frames, int16."""
        ...

    def reset(self) -> None: ...


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def livekit_available() -> bool:
    if not _has("livekit"):
        return False
    try:
        from livekit import rtc

        return hasattr(rtc, "AudioProcessingModule")
    except (ImportError, OSError):  # OSError: the native library does not load on this machine
        return False


def pywebrtc_available() -> bool:
    if not _has("pywebrtc_audio"):
        return False
    try:
        import pywebrtc_audio

        return hasattr(pywebrtc_audio, "EchoCanceller")  # a placeholder 0.0.1 exists for other platforms
    except ImportError:
        return False


def installed_bindings() -> list[str]:
    """The AEC3 bindings this machine has, best first."""
    found = [("livekit", livekit_available), ("pywebrtc-audio", pywebrtc_available)]
    return [name for name, available in found if available()]


def best_binding() -> str | None:
    """The binding this machine runs AEC3 on (None: neither has a wheel here, e.g. 32-bit Pi OS)."""
    bindings = installed_bindings()
    return bindings[0] if bindings else None


class LiveKitAec3:
    binding = "livekit"

    def __init__(self, noise_suppression: bool = False) -> None:
        from livekit import rtc

        self._rtc = rtc
        self._noise_suppression = noise_suppression
        self._apm: Any = None
        # One frame each way, reused: AEC3 works on them in place; the arrays are views of their buffers.
        self._reverse = rtc.AudioFrame.create(CAPTURE_RATE, 1, FRAME)
        self._mic = rtc.AudioFrame.create(CAPTURE_RATE, 1, FRAME)
        self._reverse_samples = np.frombuffer(self._reverse.data, dtype=np.int16)
        self._mic_samples = np.frombuffer(self._mic.data, dtype=np.int16)
        self.reset()

    def reset(self) -> None:
        self._apm = self._rtc.AudioProcessingModule(echo_cancellation=True, noise_suppression=self._noise_suppression)
        self._apm.set_stream_delay_ms(0)  # the tap pairs the streams; AEC3 finds the room's delay itself

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        out = np.empty(len(near), dtype=np.int16)
        for start in range(0, len(near) - FRAME + 1, FRAME):
            self._reverse_samples[:] = far[start : start + FRAME]
            self._apm.process_reverse_stream(self._reverse)
            self._mic_samples[:] = near[start : start + FRAME]
            self._apm.process_stream(self._mic)
            out[start : start + FRAME] = self._mic_samples
        return out


class PyWebRtcAec3:
    binding = "pywebrtc-audio"

    def __init__(self, noise_suppression: bool = False, ns_level: int = 1) -> None:
        import pywebrtc_audio

        if noise_suppression:
            self._aec: Any = pywebrtc_audio.AudioProcessor(
                CAPTURE_RATE, 1, echo_cancellation=True, noise_suppression=True, ns_level=ns_level
            )
        else:
            self._aec = pywebrtc_audio.EchoCanceller(CAPTURE_RATE, 1, 0)

    def reset(self) -> None:
        self._aec.reset()

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        return np.asarray(self._aec.process(near, far), dtype=np.int16)


def open_engine(noise_suppression: bool = False, ns_level: int = 1, binding: str | None = None) -> Aec3Engine:
    """AEC3 on ``binding`` (default: the best one installed). ``ns_level`` only tunes pywebrtc-audio's
    suppressor; livekit's runs at WebRTC's default level."""
    binding = binding or best_binding()
    if binding == "livekit":
        return LiveKitAec3(noise_suppression)
    if binding == "pywebrtc-audio":
        return PyWebRtcAec3(noise_suppression, ns_level)
    raise ValueError(f"no WebRTC AEC3 binding {binding!r} on this machine")
