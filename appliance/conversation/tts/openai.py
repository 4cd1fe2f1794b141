"""OpenAI text to speech (``/v1/audio/speech``), raw PCM for the lowest latency, WAV from compatible servers."""

from __future__ import annotations

from typing import Any

from appliance.audio.base import AudioClip
from appliance.audio.convert import AudioFormatError, decode_wav
from appliance.conversation.sdk_errors import Warmth, map_sdk_error, openai_client, warm_openai
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
        extra: dict[str, Any] = {}
        if self.instructions:
            extra["instructions"] = self.instructions
        if self.speed != 1.0:
            extra["speed"] = self.speed
        try:
            self.warmth.touch()
            response = await self._client.audio.speech.create(
                model=self.model, voice=self.voice, input=text, response_format="pcm", **extra
            )
            data = response.content
        except Exception as exc:
            mapped = map_sdk_error(self.name, exc)
            if mapped is None:
                raise
            raise mapped from exc
        if data[:4] == b"RIFF":
            try:
                clip = decode_wav(data, name="TTS reply")
            except AudioFormatError as exc:
                raise ProviderBadReply(self.name, str(exc)) from None
        else:
            clip = AudioClip.from_pcm(data, OPENAI_PCM_RATE)
        if len(clip.samples) == 0:
            raise ProviderBadReply(self.name, "empty audio")
        return clip

    async def warm(self) -> None:
        await warm_openai(self._client, self.warmth)

    async def aclose(self) -> None:
        await self._client.close()
