"""AmiVoice Cloud Platform, synchronous HTTP interface (``/v1/recognize`` or ``/v1/nolog/recognize``).

Multipart form: ``u`` the APPKEY, ``d`` the engine (``grammarFileNames=-a-general``), ``a`` the WAV. AmiVoice
answers HTTP 200 even for failures and reports them in ``code``/``message``; they map as below.
"""

from __future__ import annotations

from appliance.audio.base import CAPTURE_RATE, AudioClip
from appliance.audio.convert import encode_wav, resample
from appliance.errors import ProviderBadReply, ProviderError, ProviderRejected, ProviderUnavailable
from appliance.providers.http_errors import check_response, http_client, provider_errors, warm_http
from appliance.providers.sdk_errors import Warmth

DEFAULT_BASE_URL = "https://acp-api.amivoice.com/v1"
_NOTHING_SAID = {"+", "/"}  # no audio data / no speech detected
_REJECTED = {"-", "#"}  # bad APPKEY / malformed request
_UNAVAILABLE = {"!", ">", "<", "$", "o"}  # recognizer down, busy, timeouts


def amivoice_error(provider: str, code: str, message: str) -> ProviderError:
    detail = f"code {code!r}: {message}"[:300]
    if code in _REJECTED:
        return ProviderRejected(provider, detail)
    if code in _UNAVAILABLE:
        return ProviderUnavailable(provider, detail)
    return ProviderBadReply(provider, detail)


class AmiVoiceRecognizer:
    name = "amivoice-stt"

    def __init__(
        self,
        api_key: str | None,
        engine: str = "-a-general",
        base_url: str | None = None,
        timeout: float = 15.0,
        log_audio: bool = False,
    ) -> None:
        root = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.url = root + ("/recognize" if log_audio else "/nolog/recognize")
        self.api_key, self.engine = api_key or "", engine
        self._client = http_client(timeout)
        self.warmth = Warmth()

    async def transcribe(self, audio: AudioClip, language: str | None = None) -> str:
        clip = AudioClip(resample(audio.samples, audio.sample_rate, CAPTURE_RATE), CAPTURE_RATE)
        form = {"u": self.api_key, "d": f"grammarFileNames={self.engine}"}
        self.warmth.touch()
        with provider_errors(self.name):
            response = await self._client.post(
                self.url, data=form, files={"a": ("utterance.wav", encode_wav(clip), "audio/wav")}
            )
            await check_response(self.name, response)
            data = response.json()
        if not isinstance(data, dict):
            raise ProviderBadReply(self.name, "reply is not a JSON object")
        code = data.get("code") or ""
        if code in _NOTHING_SAID:
            return ""
        if code:
            raise amivoice_error(self.name, code, str(data.get("message", "")))
        text = data.get("text")
        if not isinstance(text, str):
            raise ProviderBadReply(self.name, "reply has no text")
        return text.strip()

    async def warm(self) -> None:
        await warm_http(self._client, self.url, self.warmth)

    async def aclose(self) -> None:
        await self._client.aclose()
