"""The brain of last resort: no network, one line in the local voice (``conversation.offline_message``)."""

from __future__ import annotations

import trio

from appliance.conversation.local_voice import LocalVoice
from appliance.conversation.tags import extract_tags
from appliance.turns import BrainOutput, ReplyChunk, Transcript, TurnRequest


class OfflineBrain:
    """Says that it is offline. Always works: it needs no network."""

    name = "offline"

    def __init__(self, message: str, voice: LocalVoice) -> None:
        self.message = message
        self.voice = voice

    async def reply(self, request: TurnRequest, out: trio.MemorySendChannel[BrainOutput]) -> None:
        async with out:
            if request.utterance.text:
                await out.send(Transcript(request.utterance.text))
            text = f"[face:sorrow] {self.message}"
            voice_text, tags = extract_tags(text)
            await out.send(ReplyChunk(text, voice_text, tags, await self.voice.say(self.message)))

    async def aclose(self) -> None:
        return None
