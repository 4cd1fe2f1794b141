"""OpenAI speech to text (``/v1/audio/transcriptions``), or any server that speaks it."""

from __future__ import annotations

from appliance.audio.base import AudioClip
from appliance.audio.convert import encode_wav
from appliance.errors import ProviderBadReply
from appliance.providers.http_errors import check_response, provider_errors
from appliance.providers.openai_raw import OpenAIHttp, json_object
from appliance.providers.sdk_errors import Warmth


class OpenAIRecognizer:
    name = "openai-stt"

    def __init__(
        self,
        model: str,
        api_key: str | None,
        base_url: str | None = None,
        timeout: float = 15.0,
        language: str | None = None,
    ) -> None:
        self.model = model
        self.language = language
        self.warmth = Warmth()
        self._http = OpenAIHttp(api_key, base_url, timeout)

    async def transcribe(self, audio: AudioClip, language: str | None = None) -> str:
        fields = {"model": self.model}
        language = language or self.language
        if language:
            fields["language"] = language
        self.warmth.touch()
        with provider_errors(self.name):
            response = await self._http.post_form(
                "/audio/transcriptions", fields, ("utterance.wav", encode_wav(audio), "audio/wav")
            )
            await check_response(self.name, response)
            result = json_object(self.name, response.content)
        text = result.get("text")
        if not isinstance(text, str):
            raise ProviderBadReply(self.name, "transcription without text")
        return text.strip()

    async def warm(self) -> None:
        await self._http.warm(self.warmth)

    async def aclose(self) -> None:
        await self._http.aclose()
