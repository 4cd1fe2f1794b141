"""VOICEVOX and AivisSpeech engines (same HTTP API): ``POST /audio_query`` then ``POST /synthesis``.

``speaker`` is the style id (``GET /speakers`` lists them). Speed, pitch and intonation are applied to the
query the engine returned, the way the engine's own UI does.
"""

from __future__ import annotations

from typing import Any

from appliance.audio.base import AudioClip
from appliance.conversation.http_errors import check_response, http_client, provider_errors, warm_http
from appliance.conversation.tts._audio import clip_from_bytes
from appliance.conversation.sdk_errors import Warmth
from appliance.errors import ProviderBadReply

VOICEVOX_URL = "http://127.0.0.1:50021"
AIVISSPEECH_URL = "http://127.0.0.1:10101"


class VoicevoxSynthesizer:
    def __init__(self, base_url: str | None = None, speaker: int = 1, *, name: str = "voicevox-tts",
                 timeout: float = 15.0, speed: float = 1.0, pitch: float = 0.0, intonation: float = 1.0,
                 api_key: str | None = None) -> None:
        self.name = name
        self.base_url = (base_url or (AIVISSPEECH_URL if name.startswith("aivis") else VOICEVOX_URL)).rstrip("/")
        self.speaker = speaker
        self.speed, self.pitch, self.intonation = speed, pitch, intonation
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = http_client(timeout, headers=headers)
        self.warmth = Warmth()

    async def synthesize(self, text: str) -> AudioClip:
        params = {"speaker": self.speaker}
        self.warmth.touch()
        with provider_errors(self.name):
            response = await self._client.post(f"{self.base_url}/audio_query", params={**params, "text": text})
            await check_response(self.name, response)
            try:
                query: Any = response.json()
            except ValueError:
                raise ProviderBadReply(self.name, "audio_query answered with something that is not JSON") from None
            if not isinstance(query, dict) or "accent_phrases" not in query:
                raise ProviderBadReply(self.name, "audio_query answer has no accent_phrases")
            query["speedScale"] = self.speed
            query["pitchScale"] = self.pitch
            query["intonationScale"] = self.intonation
            response = await self._client.post(f"{self.base_url}/synthesis", params=params, json=query)
            await check_response(self.name, response)
        return clip_from_bytes(self.name, response.content, "wav")

    async def warm(self) -> None:
        await warm_http(self._client, self.base_url + "/version", self.warmth)

    async def aclose(self) -> None:
        await self._client.aclose()
