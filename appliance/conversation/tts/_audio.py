"""Turn a TTS service's audio bytes into a clip, with a provider-named error for anything unusable."""

from __future__ import annotations

from appliance.audio.base import AudioClip
from appliance.audio.convert import AudioFormatError, decode_wav
from appliance.errors import ProviderBadReply


def clip_from_bytes(provider: str, data: bytes, audio_format: str = "wav", sample_rate: int = 24_000) -> AudioClip:
    """``audio_format`` "wav" (any PCM WAV) or "pcm" (raw s16le mono at ``sample_rate``); a RIFF header wins."""
    if data[:4] == b"RIFF" or audio_format == "wav":
        try:
            clip = decode_wav(data, name=f"{provider} audio")
        except AudioFormatError as exc:
            raise ProviderBadReply(provider, str(exc)) from None
    else:
        clip = AudioClip.from_pcm(data, sample_rate)
    if len(clip.samples) == 0:
        raise ProviderBadReply(provider, "empty audio")
    return clip
