"""Speech that needs no network: espeak-ng when installed, bundled recordings of the default lines otherwise."""

from __future__ import annotations

import logging

from appliance.audio.base import AudioClip
from appliance.errors import ProviderError
from appliance.providers.tts.espeak import EspeakSynthesizer, espeak_available
from appliance.settings.conversation import ConversationConfig

log = logging.getLogger(__name__)

_DEFAULTS = ConversationConfig()
BUNDLED = {_DEFAULTS.offline_message: "offline.wav", _DEFAULTS.error_message: "error.wav"}


class LocalVoice:
    name = "local-voice"

    def __init__(self, voice: str = "en-us") -> None:
        self.synthesizer = EspeakSynthesizer(voice) if espeak_available() else None
        self._cache: dict[str, AudioClip | None] = {}

    async def say(self, text: str) -> AudioClip | None:
        """Speech for ``text``, or None when this machine cannot speak it."""
        if text not in self._cache:
            self._cache[text] = await self._render(text)
        return self._cache[text]

    async def synthesize(self, text: str) -> AudioClip:
        clip = await self.say(text)
        if clip is None:
            from appliance.errors import ProviderUnavailable

            raise ProviderUnavailable(self.name, "espeak-ng is not installed")
        return clip

    async def _render(self, text: str) -> AudioClip | None:
        if self.synthesizer is not None:
            try:
                return await self.synthesizer.synthesize(text)
            except ProviderError as exc:
                log.warning("local speech failed: %s", exc)
        if text in BUNDLED:
            from appliance.audio.sources import bundled_clip

            return bundled_clip(BUNDLED[text])
        return None

    async def aclose(self) -> None:
        return None
