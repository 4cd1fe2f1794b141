"""VOICEVOX and AivisSpeech engines (same HTTP API): ``POST /audio_query`` then ``POST /synthesis``.

``speaker`` is the style id (``GET /speakers`` lists them). Speed, pitch and intonation are applied to the
query the engine returned, the way the engine's own UI does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from appliance.audio.base import AudioClip
from appliance.errors import ProviderBadReply
from appliance.providers.http_errors import StreamProgress, check_response, http_client, provider_errors, warm_http
from appliance.providers.sdk_errors import Warmth
from appliance.providers.tts._audio import WavStreamDecoder, decode_response, gather

VOICEVOX_URL = "http://127.0.0.1:50021"
AIVISSPEECH_URL = "http://127.0.0.1:10101"


class VoicevoxSynthesizer:
    def __init__(
        self,
        base_url: str | None = None,
        speaker: int = 1,
        *,
        name: str = "voicevox-tts",
        timeout: float = 15.0,
        speed: float = 1.0,
        pitch: float = 0.0,
        intonation: float = 1.0,
        api_key: str | None = None,
    ) -> None:
        self.name = name
        self.base_url = (base_url or (AIVISSPEECH_URL if name.startswith("aivis") else VOICEVOX_URL)).rstrip("/")
        self.speaker = speaker
        self.speed, self.pitch, self.intonation = speed, pitch, intonation
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = http_client(timeout, headers=headers)
        self.warmth = Warmth()

    async def _query(self, text: str) -> dict[str, Any]:
        params = {"speaker": self.speaker}
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
        return query

    async def synthesize(self, text: str) -> AudioClip:
        return await gather(self.synthesize_stream(text))

    async def synthesize_stream(self, text: str) -> AsyncIterator[AudioClip]:
        """The engine renders the whole sentence, but on a slow link its WAV still plays as it arrives."""
        decoder = WavStreamDecoder(self.name)
        progress = StreamProgress()
        self.warmth.touch()
        with provider_errors(self.name, progress):
            query = await self._query(text)
            async with self._client.stream(
                "POST", f"{self.base_url}/synthesis", params={"speaker": self.speaker}, json=query
            ) as response:
                async for clip in decode_response(self.name, response, decoder, progress):
                    yield clip
        for clip in decoder.finish():
            yield clip

    async def warm(self) -> None:
        await warm_http(self._client, self.base_url + "/version", self.warmth)

    async def aclose(self) -> None:
        await self._client.aclose()
