"""A brain that says given text: ``appliance say``, the control API's /say, the error line."""

from __future__ import annotations

import trio

from appliance.conversation.sentences import SentenceSplitter
from appliance.conversation.tags import extract_tags
from appliance.providers.tts.base import SpeechSynthesizer
from appliance.turns import BrainOutput, ReplyChunk, TurnRequest


class ScriptedBrain:
    name = "scripted"

    def __init__(self, text: str, tts: SpeechSynthesizer) -> None:
        self.text = text
        self.tts = tts

    async def reply(self, request: TurnRequest, out: trio.MemorySendChannel[BrainOutput]) -> None:
        async with out:
            splitter = SentenceSplitter()
            for sentence in splitter.feed(self.text) + splitter.flush():
                voice_text, tags = extract_tags(sentence)
                audio = await self.tts.synthesize(voice_text) if voice_text else None
                await out.send(ReplyChunk(sentence, voice_text, tags, audio))

    async def aclose(self) -> None:
        return None
