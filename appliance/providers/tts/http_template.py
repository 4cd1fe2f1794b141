"""A synthesizer for any HTTP TTS engine described in config: URL, method, headers and a body template.

Placeholders ``{text}``, ``{voice}``, ``{language}`` and ``{speaker}`` are filled per sentence (JSON-escaped in
a JSON body, URL-encoded in the URL). The answer is WAV, raw 16-bit PCM, or JSON with base64 audio in a
field. This covers SpeechGateway, Style-Bert-VITS2, GPT-SoVITS, Coqui/Piper servers and most self-hosted
engines.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlsplit

from appliance.audio.base import AudioClip
from appliance.errors import ProviderBadReply
from appliance.providers.http_errors import StreamProgress, check_response, http_client, provider_errors, warm_http
from appliance.providers.sdk_errors import Warmth
from appliance.providers.tts._audio import WavStreamDecoder, clip_from_bytes, decode_response, gather


def _fill(template: str, values: dict[str, str], escape: Any) -> str:
    for key, value in values.items():
        template = template.replace("{" + key + "}", escape(value))
    return template


class HTTPTemplateSynthesizer:
    def __init__(
        self,
        url: str,
        *,
        method: str = "POST",
        headers: dict[str, str] | None = None,
        body: str | None = None,
        audio_format: str = "wav",
        sample_rate: int = 24_000,
        audio_field: str | None = None,
        voice: str = "",
        language: str = "",
        speaker: str = "",
        timeout: float = 15.0,
        name: str = "http-tts",
    ) -> None:
        self.name = name
        self.url, self.method, self.body = url, method.upper(), body
        self.headers = dict(headers or {})
        self.audio_format, self.sample_rate, self.audio_field = audio_format, sample_rate, audio_field
        self.values = {"voice": voice, "language": language, "speaker": speaker}
        content_type = next((v for k, v in self.headers.items() if k.lower() == "content-type"), "")
        self._json_body = "json" in content_type or (body or "").lstrip().startswith(("{", "["))
        if self._json_body and body is not None:
            probe = _fill(body, {"text": "x", **{k: "x" for k in self.values}}, lambda v: v)
            try:
                json.loads(probe)
            except ValueError as exc:
                raise ValueError(f"tts.body is not valid JSON once filled in: {exc}") from None
        self._client = http_client(timeout)
        parts = urlsplit(url)
        self._origin = f"{parts.scheme}://{parts.netloc}/"
        self.warmth = Warmth()

    def render(self, text: str) -> tuple[str, bytes | None]:
        values = {"text": text, **self.values}
        url = _fill(self.url, values, lambda v: quote(v, safe=""))
        if self.body is None:
            return url, None
        escape = (lambda v: json.dumps(v)[1:-1]) if self._json_body else (lambda v: v)
        return url, _fill(self.body, values, escape).encode()

    def _request(self, text: str) -> tuple[str, bytes | None, dict[str, str]]:
        url, body = self.render(text)
        headers = dict(self.headers)
        if body is not None and self._json_body and not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/json"
        return url, body, headers

    async def synthesize(self, text: str) -> AudioClip:
        if not self.audio_field:
            return await gather(self.synthesize_stream(text))
        url, body, headers = self._request(text)
        self.warmth.touch()
        with provider_errors(self.name):
            response = await self._client.request(self.method, url, content=body, headers=headers)
            await check_response(self.name, response)
            data = self._from_json(response.json())
        return clip_from_bytes(self.name, data, self.audio_format, self.sample_rate)

    async def synthesize_stream(self, text: str) -> AsyncIterator[AudioClip]:
        """Pieces as the engine sends them (WAV or raw PCM); JSON-wrapped audio comes whole."""
        if self.audio_field:
            yield await self.synthesize(text)
            return
        url, body, headers = self._request(text)
        decoder = WavStreamDecoder(self.name, self.audio_format, self.sample_rate)
        progress = StreamProgress()
        self.warmth.touch()
        with provider_errors(self.name, progress):
            async with self._client.stream(self.method, url, content=body, headers=headers) as response:
                async for clip in decode_response(self.name, response, decoder, progress):
                    yield clip
        for clip in decoder.finish():
            yield clip

    def _from_json(self, payload: Any) -> bytes:
        value = payload
        for key in self.audio_field.split(".") if self.audio_field else ():
            value = value.get(key) if isinstance(value, dict) else None
        if not isinstance(value, str) or not value:
            raise ProviderBadReply(self.name, f"reply has no audio in field {self.audio_field!r}")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ProviderBadReply(self.name, f"field {self.audio_field!r} is not base64 audio") from None

    async def warm(self) -> None:
        await warm_http(self._client, self._origin, self.warmth)

    async def aclose(self) -> None:
        await self._client.aclose()
