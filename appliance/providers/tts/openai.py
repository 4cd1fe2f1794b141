"""OpenAI text to speech (``/v1/audio/speech``): raw PCM streamed as it is generated, so playback can start
with the first piece; WAV from compatible servers that do not offer PCM."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from appliance.audio.base import AudioClip
from appliance.providers.openai_raw import post_raw
from appliance.providers.sdk_errors import Warmth, map_sdk_error, openai_client, warm_openai
from appliance.providers.tts._audio import WavStreamDecoder, gather

OPENAI_PCM_RATE = 24_000
_AUDIO = {"Accept": "application/octet-stream"}  # what the SDK's speech.create asks for


class OpenAISynthesizer:
    name = "openai-tts"

    def __init__(
        self,
        model: str,
        voice: str,
        api_key: str | None,
        base_url: str | None = None,
        timeout: float = 15.0,
        speed: float = 1.0,
        instructions: str | None = None,
    ) -> None:
        self.model = model
        self.voice = voice
        self.speed = speed
        self.instructions = instructions
        self.warmth = Warmth()
        self._client: Any = openai_client(api_key, base_url, timeout)

    async def synthesize(self, text: str) -> AudioClip:
        return await gather(self.synthesize_stream(text))

    async def synthesize_stream(self, text: str) -> AsyncIterator[AudioClip]:
        """The speech in pieces as the server sends them; never yields an empty piece, raises if none came."""
        body: dict[str, Any] = {"model": self.model, "voice": self.voice, "input": text, "response_format": "pcm"}
        if self.instructions:
            body["instructions"] = self.instructions
        if self.speed != 1.0:
            body["speed"] = self.speed
        decoder = WavStreamDecoder(self.name, "pcm", OPENAI_PCM_RATE)  # compatible servers may answer WAV
        try:
            self.warmth.touch()
            response = await post_raw(self._client, "/audio/speech", body, stream=True, headers=_AUDIO)
            try:
                # Pieces as they arrive: see ``decode_response``.
                async for data in response.aiter_bytes():
                    for clip in decoder.feed(data):
                        yield clip
            finally:
                await response.aclose()
            for clip in decoder.finish():
                yield clip
        except Exception as exc:
            mapped = map_sdk_error(self.name, exc, mid_stream=decoder.received)
            if mapped is None or mapped is exc:
                raise
            raise mapped from exc

    async def warm(self) -> None:
        await warm_openai(self._client, self.warmth)

    async def aclose(self) -> None:
        await self._client.close()
