"""STT → streamed LLM → sentence splitter → TTS, on the device.

Sentence n+1 is synthesized while sentence n plays; at most ``prefetch`` sentences are synthesized ahead
of the one playing, and chunks always leave in the order the model wrote them.
"""

from __future__ import annotations

import logging
from contextlib import aclosing
from dataclasses import dataclass, field

import trio

from appliance.brains._groups import single_error
from appliance.brains.base import BrainOutput, Message, ReplyChunk, Transcript, TurnRequest
from appliance.conversation.llm.base import LLMService
from appliance.conversation.local_voice import LocalVoice
from appliance.conversation.sentences import SentenceSplitter
from appliance.conversation.stt.base import SpeechRecognizer
from appliance.conversation.tags import extract_tags
from appliance.conversation.tts.base import SpeechSynthesizer
from appliance.errors import ProviderTimeout

log = logging.getLogger(__name__)


class _Prompt(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"  # an unknown {placeholder} stays as written rather than failing the turn


def render_prompt(template: str, params: dict[str, str]) -> str:
    return template.format_map(_Prompt(params))


@dataclass(eq=False)
class _Pending:
    """A sentence whose speech is being synthesized."""

    text: str
    voice_text: str
    tags: tuple
    done: trio.Event = field(default_factory=trio.Event)
    chunk: ReplyChunk | None = None
    error: BaseException | None = None


class CloudBrain:
    name = "cloud"

    def __init__(
        self,
        stt: SpeechRecognizer,
        llm: LLMService,
        tts: SpeechSynthesizer,
        system_prompt: str,
        prompt_params: dict[str, str] | None = None,
        language: str | None = None,
        prefetch: int = 2,
        first_token_timeout: float = 30.0,
    ) -> None:
        self.stt = stt
        self.llm = llm
        self.tts = tts
        self.system_prompt = system_prompt
        self.prompt_params = dict(prompt_params or {})
        self.language = language
        self.prefetch = prefetch
        self.first_token_timeout = first_token_timeout

    async def reply(self, request: TurnRequest, out: trio.MemorySendChannel[BrainOutput]) -> None:
        async with out:
            utterance = request.utterance
            text = utterance.text
            if text is None:
                assert utterance.audio is not None
                text = await self.stt.transcribe(utterance.audio, self.language)
            if not text.strip():
                return
            await out.send(Transcript(text))
            system = render_prompt(self.system_prompt, {**self.prompt_params, **request.prompt_params})
            messages = (*request.history, Message("user", text))
            with single_error():
                await self._speak_reply(system, messages, out)

    async def _speak_reply(
        self, system: str, messages: tuple[Message, ...], out: trio.MemorySendChannel[BrainOutput]
    ) -> None:
        slots = trio.Semaphore(self.prefetch)
        order_send, order_recv = trio.open_memory_channel[_Pending](self.prefetch)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_llm, system, messages, nursery, slots, order_send)
            async with order_recv:
                async for pending in order_recv:
                    await pending.done.wait()
                    if pending.error is not None:
                        raise pending.error
                    assert pending.chunk is not None
                    await out.send(pending.chunk)
                    slots.release()

    async def _read_llm(
        self,
        system: str,
        messages: tuple[Message, ...],
        nursery: trio.Nursery,
        slots: trio.Semaphore,
        order: trio.MemorySendChannel[_Pending],
    ) -> None:
        splitter = SentenceSplitter()
        first_sentence: _Pending | None = None
        async with order, aclosing(self.llm.stream(system, messages)) as deltas:
            first = True
            while True:
                if first:
                    with trio.move_on_after(self.first_token_timeout) as waited:
                        delta = await anext(deltas, None)
                    if waited.cancelled_caught:
                        raise ProviderTimeout(self.llm.name, f"no reply within {self.first_token_timeout:g} s")
                    first = False
                else:
                    delta = await anext(deltas, None)
                if delta is None:
                    break
                for sentence in splitter.feed(delta):
                    queued = await self._queue(sentence, nursery, slots, order, first_sentence)
                    first_sentence = first_sentence or queued
            for sentence in splitter.flush():
                queued = await self._queue(sentence, nursery, slots, order, first_sentence)
                first_sentence = first_sentence or queued

    async def _queue(
        self,
        sentence: str,
        nursery: trio.Nursery,
        slots: trio.Semaphore,
        order: trio.MemorySendChannel[_Pending],
        first: _Pending | None,
    ) -> _Pending:
        voice_text, tags = extract_tags(sentence)
        if not any(ch.isalnum() for ch in voice_text):
            voice_text = ""  # a stray quote or bracket: nothing to say
        pending = _Pending(sentence, voice_text, tags)
        await slots.acquire()
        nursery.start_soon(self._synthesize, pending, first)
        await order.send(pending)
        return pending

    async def _synthesize(self, pending: _Pending, first: _Pending | None) -> None:
        if first is not None:
            # The first sentence is what the user waits for: give its request the CPU and the network
            # alone. The rest only has to be ready before the sentence ahead of it finishes playing.
            await first.done.wait()
        try:
            audio = await self.tts.synthesize(pending.voice_text) if pending.voice_text else None
            pending.chunk = ReplyChunk(pending.text, pending.voice_text, pending.tags, audio)
        except Exception as exc:  # handed to the reader, which raises it in speaking order
            pending.error = exc
        finally:
            pending.done.set()

    async def warm(self) -> None:
        """Open connections to every service before the utterance is finished (called at speech onset)."""
        async with trio.open_nursery() as nursery:
            for part in (self.stt, self.llm, self.tts):
                warm = getattr(part, "warm", None)
                if warm is not None:
                    nursery.start_soon(warm)

    async def aclose(self) -> None:
        for part in (self.stt, self.llm, self.tts):
            try:
                await part.aclose()
            except Exception:  # closing a client that never connected must not mask shutdown
                log.debug("closing %s failed", part.name, exc_info=True)


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
