from __future__ import annotations

from typing import Protocol, runtime_checkable

from appliance.audio.base import AudioClip


@runtime_checkable
class SpeechSynthesizer(Protocol):
    """Text to speech. Raise :class:`appliance.errors.ProviderError` on failure."""

    name: str

    async def synthesize(self, text: str) -> AudioClip: ...

    async def aclose(self) -> None: ...
