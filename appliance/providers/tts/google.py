"""Google Cloud Text-to-Speech ``text:synthesize`` (REST, API key; LINEAR16 comes back as base64 WAV)."""

from __future__ import annotations

import base64
import binascii

from appliance.audio.base import AudioClip
from appliance.errors import ProviderBadReply
from appliance.providers.http_errors import check_response, http_client, provider_errors, warm_http
from appliance.providers.sdk_errors import Warmth
from appliance.providers.tts._audio import clip_from_bytes

DEFAULT_BASE_URL = "https://texttospeech.googleapis.com"


class GoogleSynthesizer:
    name = "google-tts"

    def __init__(
        self,
        api_key: str | None,
        voice: str | None = None,
        language: str = "en-US",
        base_url: str | None = None,
        timeout: float = 15.0,
        speed: float = 1.0,
        sample_rate: int = 24_000,
    ) -> None:
        self.url = (base_url or DEFAULT_BASE_URL).rstrip("/") + "/v1/text:synthesize"
        self.voice, self.language, self.speed, self.sample_rate = voice, language, speed, sample_rate
        self._client = http_client(timeout, headers={"x-goog-api-key": api_key or ""})
        self.warmth = Warmth()

    async def synthesize(self, text: str) -> AudioClip:
        voice = {"languageCode": self.language}
        if self.voice:
            voice["name"] = self.voice
        body = {
            "input": {"text": text},
            "voice": voice,
            "audioConfig": {
                "audioEncoding": "LINEAR16",
                "sampleRateHertz": self.sample_rate,
                "speakingRate": self.speed,
            },
        }
        self.warmth.touch()
        with provider_errors(self.name):
            response = await self._client.post(self.url, json=body)
            await check_response(self.name, response)
            content = response.json().get("audioContent")
        if not isinstance(content, str) or not content:
            raise ProviderBadReply(self.name, "reply has no audioContent")
        try:
            data = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise ProviderBadReply(self.name, "audioContent is not base64") from None
        return clip_from_bytes(self.name, data, "pcm", self.sample_rate)

    async def warm(self) -> None:
        await warm_http(self._client, self.url, self.warmth)

    async def aclose(self) -> None:
        await self._client.aclose()
