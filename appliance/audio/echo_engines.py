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

import ctypes
import importlib.util
import logging
from collections.abc import Callable
from typing import Any, Literal, Protocol

import numpy as np

from appliance.audio.base import CAPTURE_RATE
from appliance.audio.echo_alignment import FRAME  # 10 ms: what WebRTC processes per call

log = logging.getLogger(__name__)

EchoCancelSetting = Literal["auto", "webrtc", "off"]


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
        self._direct: _DirectCalls | None = None
        self.reset()

    def reset(self) -> None:
        self._apm = self._rtc.AudioProcessingModule(echo_cancellation=True, noise_suppression=self._noise_suppression)
        self._apm.set_stream_delay_ms(0)  # the tap pairs the streams; AEC3 finds the room's delay itself
        try:
            self._direct = _DirectCalls(self._apm, self._reverse, self._mic)
        except (ImportError, AttributeError, TypeError) as exc:  # another livekit inside: its public calls
            log.debug("livekit AEC3 through its public calls (%s)", exc)
            self._direct = None

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        out = np.empty(len(near), dtype=np.int16)
        direct = self._direct
        for start in range(0, len(near) - FRAME + 1, FRAME):
            self._reverse_samples[:] = far[start : start + FRAME]
            if direct is not None:
                direct.reverse()
            else:
                self._apm.process_reverse_stream(self._reverse)
            self._mic_samples[:] = near[start : start + FRAME]
            if direct is not None:
                direct.capture()
            else:
                self._apm.process_stream(self._mic)
            out[start : start + FRAME] = self._mic_samples
            if direct is not None and not direct.usable:
                self._direct = direct = None
        return out


class _DirectCalls:
    """livekit's two AEC3 calls, each request built once: they only ever name the same module and frame buffers.

    Its public calls build, serialise and parse a protobuf message per 10 ms frame, a third of what AEC3 costs
    through them (bench echo: 0.002 core). The native call and its answer are the same; a refusal or an answer
    other than "done" is raised as the public call would.
    """

    def __init__(self, apm: Any, reverse: Any, mic: Any) -> None:
        from livekit.rtc._ffi_client import FfiClient
        from livekit.rtc._proto import ffi_pb2

        self._proto = ffi_pb2
        self._ffi = FfiClient.instance._ffi_lib
        self._answer_at = ctypes.POINTER(ctypes.c_ubyte)()
        self._answer_size = ctypes.c_size_t()
        self.usable = True
        self.reverse = self._prepare("apm_process_reverse_stream", apm, reverse)
        self.capture = self._prepare("apm_process_stream", apm, mic)

    def _prepare(self, kind: str, apm: Any, frame: Any) -> Callable[[], None]:
        request = self._proto.FfiRequest()
        call = getattr(request, kind)
        call.apm_handle = apm._ffi_handle.handle
        call.data_ptr = ctypes.addressof(ctypes.c_char.from_buffer(frame._data))
        call.size = len(frame._data)
        call.sample_rate = frame.sample_rate
        call.num_channels = frame.num_channels
        done = self._proto.FfiResponse()
        getattr(done, kind).SetInParent()
        done_bytes = done.SerializeToString()
        data = request.SerializeToString()
        buffer = ctypes.create_string_buffer(data, len(data))
        sent, size = ctypes.cast(buffer, ctypes.POINTER(ctypes.c_ubyte)), len(data)
        ffi, answer_at, answer_size = self._ffi, self._answer_at, self._answer_size
        at, length = ctypes.byref(answer_at), ctypes.byref(answer_size)

        def send() -> None:
            handle = ffi.livekit_ffi_request(sent, size, at, length)
            if not handle:  # refused (the public call asserts here): no answer to read
                raise RuntimeError(f"livekit refused {kind}")
            answer = ctypes.string_at(answer_at, answer_size.value)
            ffi.livekit_ffi_drop_handle(handle)
            if answer != done_bytes:
                self._fail(kind, answer)

        send.buffer = buffer  # type: ignore[attr-defined]  # the request lives as long as the call
        return send

    def _fail(self, kind: str, answer: bytes) -> None:
        response = self._proto.FfiResponse()
        response.ParseFromString(answer)
        error = getattr(response, kind).error
        if error:
            raise RuntimeError(error)
        # Done, but not in the words expected (another livekit): the frame was processed; the next go through
        # the public calls, which read any answer, rather than the robot losing its ears over a message format.
        log.warning("livekit %s answered unexpectedly; AEC3 goes through its public calls from now on", kind)
        self.usable = False


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


def webrtc_available() -> bool:
    """Whether a WebRTC AEC3 binding has a wheel here (none for 32-bit ARM: Pi OS armhf keeps the guard)."""
    return best_binding() is not None


def resolve_backend(setting: EchoCancelSetting) -> Literal["webrtc", "off"]:
    """What ``listening.echo_cancel`` means on this machine. ``webrtc`` without the wheel is a config error."""
    if setting == "off":
        return "off"
    if webrtc_available():
        return "webrtc"
    if setting == "webrtc":
        raise ValueError(
            "echo_cancel = 'webrtc' needs livekit or pywebrtc-audio, which have no wheel for this platform"
        )
    return "off"
