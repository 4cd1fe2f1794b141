"""Google Cloud Speech-to-Text v1 ``speech:recognize`` (REST, API key, 16 kHz LINEAR16)."""

from __future__ import annotations

import base64

from appliance.audio.base import CAPTURE_RATE, AudioClip
from appliance.audio.convert import resample
from appliance.errors import ProviderBadReply
from appliance.providers.http_errors import check_response, http_client, provider_errors, warm_http
from appliance.providers.sdk_errors import Warmth

DEFAULT_BASE_URL = "https://speech.googleapis.com"


def bcp47(language: str | None, default: str = "en-US") -> str:
    """'ja' → 'ja-JP' for services that want a region; a full tag stays as written."""
    if not language:
        return default
    if "-" in language:
        return language
    regions = {
        "en": "en-US",
        "ja": "ja-JP",
        "zh": "zh-CN",
        "ko": "ko-KR",
        "pt": "pt-BR",
        "es": "es-ES",
        "fr": "fr-FR",
        "de": "de-DE",
        "it": "it-IT",
    }
    return regions.get(language, f"{language}-{language.upper()}")


class GoogleRecognizer:
    name = "google-stt"

    def __init__(
        self,
        api_key: str | None,
        language: str | None = None,
        base_url: str | None = None,
        timeout: float = 15.0,
        model: str | None = None,
        alternative_languages: list[str] | None = None,
    ) -> None:
        self.url = (base_url or DEFAULT_BASE_URL).rstrip("/") + "/v1/speech:recognize"
        self.language, self.model = language, model
        self.alternative_languages = list(alternative_languages or [])
        self._client = http_client(timeout, headers={"x-goog-api-key": api_key or ""})
        self.warmth = Warmth()

    async def transcribe(self, audio: AudioClip, language: str | None = None) -> str:
        samples = resample(audio.samples, audio.sample_rate, CAPTURE_RATE)
        config: dict[str, object] = {
            "encoding": "LINEAR16",
            "sampleRateHertz": CAPTURE_RATE,
            "languageCode": bcp47(language or self.language),
        }
        if self.model:
            config["model"] = self.model
        if self.alternative_languages:
            config["alternativeLanguageCodes"] = [bcp47(x) for x in self.alternative_languages]
        body = {
            "config": config,
            "audio": {"content": base64.b64encode(AudioClip(samples, CAPTURE_RATE).pcm()).decode()},
        }
        self.warmth.touch()
        with provider_errors(self.name):
            response = await self._client.post(self.url, json=body)
            await check_response(self.name, response)
            data = response.json()
        if not isinstance(data, dict):
            raise ProviderBadReply(self.name, "reply is not a JSON object")
        texts = []
        for result in data.get("results") or ():  # no results = nothing was said
            alternatives = result.get("alternatives") or []
            if alternatives and isinstance(alternatives[0].get("transcript"), str):
                texts.append(alternatives[0]["transcript"].strip())
        return " ".join(t for t in texts if t)

    async def warm(self) -> None:
        await warm_http(self._client, self.url, self.warmth)

    async def aclose(self) -> None:
        await self._client.aclose()
