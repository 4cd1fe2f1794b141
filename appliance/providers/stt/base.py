from __future__ import annotations

from typing import Protocol, runtime_checkable

from appliance.audio.base import AudioClip


@runtime_checkable
class SpeechRecognizer(Protocol):
    """Speech to text. Raise an :class:`appliance.errors.ProviderError` on failure."""

    name: str

    async def transcribe(self, audio: AudioClip, language: str | None = None) -> str: ...

    async def aclose(self) -> None: ...
