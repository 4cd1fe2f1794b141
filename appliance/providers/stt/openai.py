"""OpenAI speech to text (``/v1/audio/transcriptions``), or any server that speaks it."""

from __future__ import annotations

from typing import Any

from appliance.audio.base import AudioClip
from appliance.audio.convert import encode_wav
from appliance.errors import ProviderBadReply
from appliance.providers.openai_raw import json_object, post_raw
from appliance.providers.sdk_errors import Warmth, map_sdk_error, openai_client, warm_openai


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
        self._client: Any = openai_client(api_key, base_url, timeout)

    async def transcribe(self, audio: AudioClip, language: str | None = None) -> str:
        body: dict[str, Any] = {"model": self.model}
        if language or self.language:
            body["language"] = language or self.language
        try:
            self.warmth.touch()
            upload = [("file", ("utterance.wav", encode_wav(audio), "audio/wav"))]
            response = await post_raw(self._client, "/audio/transcriptions", body, files=upload)
            result = json_object(self.name, response.content)
        except Exception as exc:
            mapped = map_sdk_error(self.name, exc)
            if mapped is None or mapped is exc:
                raise
            raise mapped from exc
        text = result.get("text")
        if not isinstance(text, str):
            raise ProviderBadReply(self.name, "transcription without text")
        return text.strip()

    async def warm(self) -> None:
        await warm_openai(self._client, self.warmth)

    async def aclose(self) -> None:
        await self._client.close()
