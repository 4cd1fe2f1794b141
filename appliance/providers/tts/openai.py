"""OpenAI text to speech (``/v1/audio/speech``): raw PCM streamed as it is generated, so playback can start
with the first piece; WAV from compatible servers that do not offer PCM."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from appliance.audio.base import AudioClip
from appliance.providers.http_errors import StreamProgress, check_response, provider_errors
from appliance.providers.openai_raw import OpenAIHttp
from appliance.providers.sdk_errors import Warmth
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
        self._http = OpenAIHttp(api_key, base_url, timeout)

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
        progress = StreamProgress()  # a failure after the first bytes is a cut stream
        self.warmth.touch()
        with provider_errors(self.name, progress):
            async with self._http.stream("/audio/speech", body, _AUDIO) as response:
                await check_response(self.name, response)
                # Pieces as they arrive: see ``decode_response``.
                async for data in response.aiter_bytes():
                    progress.started = True
                    for clip in decoder.feed(data):
                        yield clip
            for clip in decoder.finish():
                yield clip

    async def warm(self) -> None:
        await self._http.warm(self.warmth)

    async def aclose(self) -> None:
        await self._http.aclose()
