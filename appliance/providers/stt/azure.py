"""Azure AI Speech, REST API for short audio (up to 60 s): one WAV in, one recognized phrase out."""

from __future__ import annotations

from appliance.audio.base import CAPTURE_RATE, AudioClip
from appliance.audio.convert import encode_wav, resample
from appliance.errors import ProviderBadReply
from appliance.providers.http_errors import check_response, http_client, provider_errors, warm_http
from appliance.providers.sdk_errors import Warmth
from appliance.providers.stt.google import bcp47

_NOTHING_SAID = {"NoMatch", "InitialSilenceTimeout", "BabbleTimeout"}


class AzureRecognizer:
    name = "azure-stt"

    def __init__(
        self,
        api_key: str | None,
        region: str | None = None,
        language: str | None = None,
        base_url: str | None = None,
        timeout: float = 15.0,
    ) -> None:
        if not base_url and not region:
            raise ValueError("azure STT needs a region (or a base_url)")
        root = base_url.rstrip("/") if base_url else f"https://{region}.stt.speech.microsoft.com"
        self.url = root + "/speech/recognition/conversation/cognitiveservices/v1"
        self.language = language
        self._client = http_client(timeout, headers={"Ocp-Apim-Subscription-Key": api_key or ""})
        self.warmth = Warmth()

    async def transcribe(self, audio: AudioClip, language: str | None = None) -> str:
        clip = AudioClip(resample(audio.samples, audio.sample_rate, CAPTURE_RATE), CAPTURE_RATE)
        self.warmth.touch()
        with provider_errors(self.name):
            response = await self._client.post(
                self.url,
                params={"language": bcp47(language or self.language), "format": "simple"},
                content=encode_wav(clip),
                headers={
                    "Content-Type": f"audio/wav; codecs=audio/pcm; samplerate={CAPTURE_RATE}",
                    "Accept": "application/json",
                },
            )
            await check_response(self.name, response)
            data = response.json()
        status = data.get("RecognitionStatus") if isinstance(data, dict) else None
        if status == "Success":
            text = data.get("DisplayText")
            if not isinstance(text, str):
                raise ProviderBadReply(self.name, "Success without DisplayText")
            return text.strip()
        if status in _NOTHING_SAID:
            return ""
        raise ProviderBadReply(self.name, f"recognition status {status!r}")

    async def warm(self) -> None:
        await warm_http(self._client, self.url, self.warmth)

    async def aclose(self) -> None:
        await self._client.aclose()
