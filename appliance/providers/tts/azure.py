"""Azure AI Speech text to speech (REST, SSML in, 24 kHz 16-bit PCM WAV out)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from xml.sax.saxutils import escape, quoteattr

from appliance.audio.base import AudioClip
from appliance.providers.http_errors import StreamProgress, http_client, provider_errors, warm_http
from appliance.providers.sdk_errors import Warmth
from appliance.providers.tts._audio import WavStreamDecoder, decode_response, gather

OUTPUT_FORMAT = "riff-24khz-16bit-mono-pcm"


class AzureSynthesizer:
    name = "azure-tts"

    def __init__(
        self,
        api_key: str | None,
        region: str | None = None,
        voice: str = "en-US-JennyNeural",
        language: str = "en-US",
        base_url: str | None = None,
        timeout: float = 15.0,
        speed: float = 1.0,
    ) -> None:
        if not base_url and not region:
            raise ValueError("azure TTS needs a region (or a base_url)")
        self.url = (
            base_url.rstrip("/") if base_url else f"https://{region}.tts.speech.microsoft.com"
        ) + "/cognitiveservices/v1"
        self.voice, self.language, self.speed = voice, language, speed
        self._client = http_client(timeout, headers={"Ocp-Apim-Subscription-Key": api_key or ""})
        self.warmth = Warmth()

    def ssml(self, text: str) -> str:
        body = escape(text)
        if self.speed != 1.0:
            body = f"<prosody rate={quoteattr(f'{self.speed:.2f}')}>{body}</prosody>"
        return (
            f"<speak version='1.0' xml:lang={quoteattr(self.language)}>"
            f"<voice name={quoteattr(self.voice)}>{body}</voice></speak>"
        )

    async def synthesize(self, text: str) -> AudioClip:
        return await gather(self.synthesize_stream(text))

    async def synthesize_stream(self, text: str) -> AsyncIterator[AudioClip]:
        """The WAV as Azure streams it, in playable pieces from the first one on."""
        decoder = WavStreamDecoder(self.name)
        progress = StreamProgress()
        self.warmth.touch()
        with provider_errors(self.name, progress):
            async with self._client.stream(
                "POST",
                self.url,
                content=self.ssml(text).encode(),
                headers={
                    "Content-Type": "application/ssml+xml",
                    "X-Microsoft-OutputFormat": OUTPUT_FORMAT,
                    "User-Agent": "appliance",
                },
            ) as response:
                async for clip in decode_response(self.name, response, decoder, progress):
                    yield clip
        for clip in decoder.finish():
            yield clip

    async def warm(self) -> None:
        await warm_http(self._client, self.url, self.warmth)

    async def aclose(self) -> None:
        await self._client.aclose()
