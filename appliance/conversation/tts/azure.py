"""Azure AI Speech text to speech (REST, SSML in, 24 kHz 16-bit PCM WAV out)."""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

from appliance.audio.base import AudioClip
from appliance.conversation.http_errors import check_response, http_client, provider_errors
from appliance.conversation.tts._audio import clip_from_bytes

OUTPUT_FORMAT = "riff-24khz-16bit-mono-pcm"


class AzureSynthesizer:
    name = "azure-tts"

    def __init__(self, api_key: str | None, region: str | None = None, voice: str = "en-US-JennyNeural",
                 language: str = "en-US", base_url: str | None = None, timeout: float = 15.0,
                 speed: float = 1.0) -> None:
        if not base_url and not region:
            raise ValueError("azure TTS needs a region (or a base_url)")
        self.url = (base_url.rstrip("/") if base_url else f"https://{region}.tts.speech.microsoft.com") + "/cognitiveservices/v1"
        self.voice, self.language, self.speed = voice, language, speed
        self._client = http_client(timeout, headers={"Ocp-Apim-Subscription-Key": api_key or ""})

    def ssml(self, text: str) -> str:
        body = escape(text)
        if self.speed != 1.0:
            body = f"<prosody rate={quoteattr(f'{self.speed:.2f}')}>{body}</prosody>"
        return (f"<speak version='1.0' xml:lang={quoteattr(self.language)}>"
                f"<voice name={quoteattr(self.voice)}>{body}</voice></speak>")

    async def synthesize(self, text: str) -> AudioClip:
        with provider_errors(self.name):
            response = await self._client.post(
                self.url, content=self.ssml(text).encode(),
                headers={"Content-Type": "application/ssml+xml", "X-Microsoft-OutputFormat": OUTPUT_FORMAT,
                         "User-Agent": "appliance"},
            )
            await check_response(self.name, response)
        return clip_from_bytes(self.name, response.content, "wav")

    async def aclose(self) -> None:
        await self._client.aclose()
