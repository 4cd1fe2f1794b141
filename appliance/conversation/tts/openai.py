"""OpenAI text to speech (``/v1/audio/speech``): raw PCM streamed as it is generated, so playback can start
with the first piece; WAV from compatible servers that do not offer PCM."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import numpy as np

from appliance.audio.base import AudioClip
from appliance.audio.convert import AudioFormatError, decode_wav
from appliance.conversation.sdk_errors import Warmth, map_sdk_error, openai_client, warm_openai
from appliance.conversation.tts._audio import PIECE_BYTES
from appliance.errors import ProviderBadReply

OPENAI_PCM_RATE = 24_000


class OpenAISynthesizer:
    name = "openai-tts"

    def __init__(self, model: str, voice: str, api_key: str | None, base_url: str | None = None,
                 timeout: float = 15.0, speed: float = 1.0, instructions: str | None = None) -> None:
        self.model = model
        self.voice = voice
        self.speed = speed
        self.instructions = instructions
        self.warmth = Warmth()
        self._client: Any = openai_client(api_key, base_url, timeout)

    async def synthesize(self, text: str) -> AudioClip:
        async with aclosing(self.synthesize_stream(text)) as pieces:
            clips = [piece async for piece in pieces]
        return AudioClip(np.concatenate([c.samples for c in clips]), clips[0].sample_rate)

    async def synthesize_stream(self, text: str) -> AsyncIterator[AudioClip]:
        """The speech in pieces as the server sends them; never yields an empty piece, raises if none came."""
        extra: dict[str, Any] = {}
        if self.instructions:
            extra["instructions"] = self.instructions
        if self.speed != 1.0:
            extra["speed"] = self.speed
        received = False
        try:
            self.warmth.touch()
            async with self._client.audio.speech.with_streaming_response.create(
                model=self.model, voice=self.voice, input=text, response_format="pcm", **extra
            ) as response:
                carry = b""
                wav: bytearray | None = None
                async for data in response.iter_bytes(PIECE_BYTES):
                    if not received and data[:4] == b"RIFF":
                        wav = bytearray()  # a compatible server answered WAV: decode it whole
                    received = received or bool(data)
                    if wav is not None:
                        wav += data
                        continue
                    data = carry + data
                    usable = len(data) - len(data) % 2
                    carry = data[usable:]
                    if usable:
                        yield AudioClip.from_pcm(data[:usable], OPENAI_PCM_RATE)
                if wav is not None:
                    yield self._decode(bytes(wav))
        except Exception as exc:
            mapped = map_sdk_error(self.name, exc, mid_stream=received)
            if mapped is None:
                raise
            raise mapped from exc
        if not received:
            raise ProviderBadReply(self.name, "empty audio")

    def _decode(self, data: bytes) -> AudioClip:
        try:
            clip = decode_wav(data, name="TTS reply")
        except AudioFormatError as exc:
            raise ProviderBadReply(self.name, str(exc)) from None
        return clip

    async def warm(self) -> None:
        await warm_openai(self._client, self.warmth)

    async def aclose(self) -> None:
        await self._client.close()
