"""Turn a TTS service's audio bytes into a clip, with a provider-named error for anything unusable."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from appliance.audio.base import AudioClip
from appliance.audio.convert import AudioFormatError, decode_wav
from appliance.errors import ProviderBadReply
from appliance.streams import closing


async def gather(pieces: AsyncIterator[AudioClip]) -> AudioClip:
    """A whole clip from a synthesizer's stream of pieces (all at one rate)."""
    async with closing(pieces):
        clips = [clip async for clip in pieces]
    return AudioClip(np.concatenate([c.samples for c in clips]), clips[0].sample_rate)


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


class WavStreamDecoder:
    """Cuts a WAV arriving in pieces into playable clips as soon as the header has passed.

    Only 16-bit PCM is streamed (what the engines send); anything else is gathered and decoded whole at the
    end. Servers that stream a WAV often write 0 or 0xFFFFFFFF as the data size: it is ignored.
    """

    def __init__(self, provider: str, audio_format: str = "wav", sample_rate: int = 24_000) -> None:
        self.provider = provider
        self.raw = audio_format == "pcm"
        self.rate, self.channels = sample_rate, 1
        self._head = bytearray()
        self._carry = b""
        self._whole: bytearray | None = None
        self._streaming = False
        self._sniffed = not self.raw  # raw PCM is checked for a RIFF header first
        self.received = False

    def feed(self, data: bytes) -> list[AudioClip]:
        if not data:
            return []
        self.received = True
        if not self._sniffed:
            self._head += data
            if len(self._head) < 4:
                return []
            self._sniffed = True
            data, self._head = bytes(self._head), bytearray()
            if data[:4] == b"RIFF":
                self.raw = False  # the engine sent a WAV after all
        if self._whole is not None:
            self._whole += data
            return []
        if not self.raw and not self._streaming:
            self._head += data
            return self._parse_header()
        return self._pcm(data)

    def _parse_header(self) -> list[AudioClip]:
        head = bytes(self._head)
        if len(head) >= 12 and (head[:4] != b"RIFF" or head[8:12] != b"WAVE"):
            raise ProviderBadReply(self.provider, "audio is not a WAV file")
        pos, fmt_ok = 12, False
        while pos + 8 <= len(head):
            chunk, size = head[pos : pos + 4], int.from_bytes(head[pos + 4 : pos + 8], "little")
            if chunk == b"data":
                if not fmt_ok:
                    self._whole = bytearray(head)  # not 16-bit mono PCM: decode at the end
                    return []
                self._streaming = True
                return self._pcm(head[pos + 8 :])
            if pos + 8 + size > len(head):
                return []  # wait for the rest of this chunk
            if chunk == b"fmt ":
                fmt = head[pos + 8 : pos + 8 + size]
                tag, channels, rate = (
                    int.from_bytes(fmt[0:2], "little"),
                    int.from_bytes(fmt[2:4], "little"),
                    int.from_bytes(fmt[4:8], "little"),
                )
                bits = int.from_bytes(fmt[14:16], "little")
                fmt_ok = tag == 1 and bits == 16 and channels == 1 and rate > 0
                self.rate, self.channels = rate, channels
            pos += 8 + size + (size & 1)
        return []

    def _pcm(self, data: bytes) -> list[AudioClip]:
        data = self._carry + data
        usable = len(data) - len(data) % 2
        self._carry = data[usable:]
        return [AudioClip.from_pcm(data[:usable], self.rate)] if usable else []

    def finish(self) -> list[AudioClip]:
        if self._whole is not None:
            return [clip_from_bytes(self.provider, bytes(self._whole), "wav")]
        if not self.received:
            raise ProviderBadReply(self.provider, "empty audio")
        if not self._sniffed:  # fewer than four bytes in all
            self._sniffed = True
            return self._pcm(bytes(self._head))
        if not self.raw and not self._streaming:
            raise ProviderBadReply(self.provider, "audio ended inside the WAV header")
        return []


async def decode_response(
    provider: str, response: Any, decoder: WavStreamDecoder, progress: Any
) -> AsyncIterator[AudioClip]:
    """Check an HTTP audio response, then yield its speech piece by piece as the bytes arrive."""
    from appliance.providers.http_errors import check_response

    await check_response(provider, response)
    # Pieces as they arrive, never gathered to a size first: waiting for a round 100 ms of audio would
    # hold back the first syllable until the engine had made that much.
    async for data in response.aiter_bytes():
        progress.started = True
        for clip in decoder.feed(data):
            yield clip
