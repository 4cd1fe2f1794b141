"""The STT-text wake word: the recognised text must contain a wake phrase.

No model runs on the device; every utterance the VAD finds goes to the speech recogniser, and the turn only
goes on to the LLM when the transcript contains one of the phrases, or while the conversation is still open
(``wakeword_timeout`` seconds after the last answered turn). It wraps any :class:`Brain`: the transcript is
the first thing a brain sends, so the wrapper reads it and either lets the reply through or cancels the brain
before the LLM has said anything.
"""

from __future__ import annotations

import logging
import re
import unicodedata

import trio

from appliance.turns import Brain, BrainOutput, Transcript, TurnRequest

log = logging.getLogger(__name__)


def normalise(text: str) -> str:
    """Lower case, no punctuation, single spaces, width-normalised (so "Hey, Robot!" matches "hey robot")."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


class TextWakeGate:
    def __init__(self, phrases: list[str], timeout: float = 60.0) -> None:
        self.phrases = [normalise(p) for p in phrases if normalise(p)]
        if not self.phrases:
            raise ValueError("the text wake word needs at least one phrase")
        self.timeout = timeout
        self.open_until = float("-inf")

    def matches(self, text: str) -> bool:
        padded = f" {normalise(text)} "
        return any(f" {phrase} " in padded for phrase in self.phrases)

    def is_open(self, now: float) -> bool:
        return now < self.open_until

    def admit(self, text: str, now: float) -> bool:
        return self.is_open(now) or self.matches(text)

    def answered(self, now: float) -> None:
        """A turn was answered: the conversation stays open without the wake word for ``timeout``."""
        self.open_until = now + self.timeout


class TextWakeBrain:
    """Passes a turn to ``inner`` only when its transcript wakes the robot."""

    def __init__(self, inner: Brain, gate: TextWakeGate) -> None:
        self.inner = inner
        self.gate = gate
        self.name = inner.name
        self.ignored = 0

    async def reply(self, request: TurnRequest, out: trio.MemorySendChannel[BrainOutput]) -> None:
        async with out:
            if request.utterance.source == "button":  # the talk button is a wake word of its own
                self.gate.answered(trio.current_time())
            send, receive = trio.open_memory_channel[BrainOutput](0)
            answered = False
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.inner.reply, request, send)
                async with receive:
                    async for item in receive:
                        if isinstance(item, Transcript) and not self.gate.admit(item.text, trio.current_time()):
                            self.ignored += 1
                            log.info("no wake phrase in %r: ignored", item.text, extra={"turn_id": request.turn_id})
                            nursery.cancel_scope.cancel()
                            return
                        await out.send(item)
                        answered = True
            if answered:
                self.gate.answered(trio.current_time())

    async def aclose(self) -> None:
        await self.inner.aclose()
