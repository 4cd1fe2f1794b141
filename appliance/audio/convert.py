"""Sample-rate and format conversion, and reading/writing WAV with errors that say what is wrong."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np

from appliance.audio.base import AudioClip


class AudioFormatError(ValueError):
    """A WAV or PCM payload we cannot use; the message says why."""


def to_int16(samples: np.ndarray) -> np.ndarray:
    """Float samples on the int16 scale → int16, rounded to the nearest (half to even) and clipped."""
    return np.clip(np.rint(samples), -32768, 32767).astype(np.int16)


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """int16 mono at ``from_rate`` → int16 mono at ``to_rate``."""
    if from_rate == to_rate or samples.size == 0:
        return samples
    import soxr  # imported here: only sinks and odd-rate files need it

    out = soxr.resample(samples.astype(np.float32) / 32768.0, from_rate, to_rate, quality="HQ")
    return to_int16(out * 32768.0)


def to_mono_int16(raw: bytes, sample_width: int, channels: int) -> np.ndarray:
    if sample_width == 2:
        data = np.frombuffer(raw, dtype="<i2").astype(np.int16)
    elif sample_width == 1:
        data = ((np.frombuffer(raw, dtype=np.uint8).astype(np.int16) - 128) << 8).astype(np.int16)
    elif sample_width == 4:
        data = (np.frombuffer(raw, dtype="<i4") >> 16).astype(np.int16)
    else:
        raise AudioFormatError(f"unsupported sample width {sample_width * 8} bits (use 8, 16 or 32-bit PCM)")
    if channels > 1:
        usable = len(data) - len(data) % channels
        data = data[:usable].reshape(-1, channels).mean(axis=1).astype(np.int16)
    return data


def decode_wav(data: bytes, *, name: str = "WAV data") -> AudioClip:
    """Decode a PCM WAV (any rate, 8/16/32-bit, any channel count) into a mono int16 clip."""
    try:
        with wave.open(io.BytesIO(data), "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as exc:
        raise AudioFormatError(f"{name} is not a PCM WAV file: {exc}") from None
    if channels < 1 or rate <= 0:
        raise AudioFormatError(f"{name} has {channels} channels at {rate} Hz")
    if len(frames) < channels * width:
        raise AudioFormatError(f"{name} holds no audio frames")
    return AudioClip(to_mono_int16(frames, width, channels), rate)


def read_wav(path: Path) -> AudioClip:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AudioFormatError(f"cannot read {path}: {exc.strerror}") from None
    return decode_wav(data, name=str(path))


def encode_wav(clip: AudioClip) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(clip.sample_rate)
        wav.writeframes(clip.pcm())
    return buf.getvalue()


def write_wav(path: Path, clip: AudioClip) -> None:
    """Write atomically: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(encode_wav(clip))
    tmp.replace(path)
