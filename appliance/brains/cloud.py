"""STT → streamed LLM (with tools) → sentence splitter → TTS, on the device.

Sentence n+1 is synthesized while sentence n plays; at most ``prefetch`` sentences are synthesized ahead
of the one playing, and chunks always leave in the order the model wrote them.

Around that pipe sit the agent features, each optional: tools (the model calls, we run them and stream
again; a slow tool gets a progress sentence), ``[vision:camera]`` (take a still and ask again with it),
guardrails on the request and on each reply sentence, a voice per ``[lang:xx]``, merging a request that
interrupts an unanswered one, and an on-finish hook for long-term memory.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from appliance.brains.cloud_settings import CloudAgent, CloudSettings, FinishedTurn
from appliance.brains.speech_queue import SpeechQueue
from appliance.conversation.prompt import render_prompt
from appliance.conversation.sentences import SentenceSplitter
from appliance.conversation.tags import extract_tags
from appliance.errors import ProviderTimeout
from appliance.groups import single_error
from appliance.providers.llm.base import Image, LLMService, ToolCall, ToolResult, ToolRound
from appliance.providers.stt.base import SpeechRecognizer
from appliance.providers.tts.base import SpeechSynthesizer
from appliance.streams import closing
from appliance.turns import BrainOutput, Message, ReplyChunk, Transcript, TurnRequest

log = logging.getLogger(__name__)


@dataclass
class _Reply:
    """What one reply has done so far (shared by the LLM reader and the tool runner)."""

    language: str | None
    images: tuple[Image, ...] = ()  # the pictures the next request to the model carries
    texts: list[str] = field(default_factory=list)
    tool_results: list[ToolResult] = field(default_factory=list)
    stop: trio.CancelScope = field(default_factory=trio.CancelScope)  # a guardrail ends the reply through it


@dataclass
class _Previous:
    text: str
    conversation_id: str
    started: float
    answered: bool = False  # finished, or the user already heard part of the answer
    parts: tuple[str, ...] = ()  # what the user said, utterance by utterance


class CloudBrain:
    name = "cloud"

    def __init__(
        self,
        stt: SpeechRecognizer,
        llm: LLMService,
        tts: SpeechSynthesizer,
        settings: CloudSettings,
        agent: CloudAgent | None = None,
    ) -> None:
        self.stt = stt
        self.llm = llm
        self.tts = tts
        self.settings = settings
        self.agent = agent or CloudAgent()
        self.prefetch = settings.prefetch  # the server raises it to its TTS concurrency
        self.later_speech: Callable[[], Awaitable[None]] | None = None  # serve: later sentences' TTS waits for idle
        self.voices = dict(self.agent.voices)
        self._previous: _Previous | None = None

    @classmethod
    def build(
        cls,
        stt: SpeechRecognizer,
        llm: LLMService,
        tts: SpeechSynthesizer,
        system_prompt: str,
        prompt_params: Mapping[str, str] | None = None,
        language: str | None = None,
        prefetch: int = 2,
        first_token_timeout: float = 30.0,
        *,
        tools: Any = None,
        max_tool_rounds: int = 4,
        progress_after: float = 1.5,
        progress_message: str = "",
        voices: Mapping[str, SpeechSynthesizer] | None = None,
        guardrails: Sequence[Any] = (),
        camera: Any = None,
        merge_window: float = 0.0,
        on_finish: Callable[[FinishedTurn], Any] | None = None,
        on_finish_timeout: float = 10.0,
        jobs: Any = None,
    ) -> CloudBrain:
        """The flat form, for a caller holding the config sections: sorts the values into the two groups."""
        settings = CloudSettings(
            system_prompt,
            dict(prompt_params or {}),
            language,
            prefetch,
            first_token_timeout,
            max_tool_rounds,
            progress_after,
            progress_message,
            merge_window,
            on_finish_timeout,
        )
        agent = CloudAgent(tools, dict(voices or {}), tuple(guardrails), camera, on_finish, jobs)
        return cls(stt, llm, tts, settings, agent)

    # --- the turn ---------------------------------------------------------------------------------

    async def reply(self, request: TurnRequest, out: trio.MemorySendChannel[BrainOutput]) -> None:
        from appliance.agent import guardrails

        async with out:
            utterance = request.utterance
            text = utterance.text
            if text is None:
                assert utterance.audio is not None
                text = await self.stt.transcribe(utterance.audio, self.settings.language)
            if not text.strip():
                return
            await out.send(Transcript(text))
            history, parts = self._merge(request, text)
            asked = " ".join(parts)
            previous = _Previous(asked, request.conversation_id, trio.current_time(), parts=parts)
            self._previous = previous
            verdict = await guardrails.apply(self.agent.guardrails, "request", asked)
            if verdict is not None and verdict.action == "block":
                log.info("request blocked by a guardrail", extra={"turn_id": request.turn_id})
                await self._say_directly(verdict.text, out)
                previous.answered = True
                return
            if verdict is not None:
                asked = verdict.text
            system = render_prompt(
                self.settings.system_prompt, {**self.settings.prompt_params, **request.prompt_params}
            )
            messages = (*history, Message("user", asked))
            state = _Reply(self.settings.language, request.images)
            with single_error():
                await self._speak_reply(system, messages, request.conversation_id, state, out)
            previous.answered = True
        await self._finished(request, text, state)

    def _merge(self, request: TurnRequest, text: str) -> tuple[tuple[Message, ...], tuple[str, ...]]:
        """Join ``text`` to the previous request when that one was cut off before any answer.

        People pause mid-sentence; the endpointer then sends half a question, and the rest interrupts it.
        Answering "what's the weather" + "in Tokyo tomorrow" as one request is what the user meant.
        """
        history = tuple(request.history)
        prev = self._previous
        if (
            self.settings.merge_window <= 0
            or prev is None
            or prev.answered
            or prev.conversation_id != request.conversation_id
            or trio.current_time() - prev.started > self.settings.merge_window
        ):
            return history, (text,)
        # The interrupted parts are in the history unanswered: they are now part of this request.
        while history and history[-1].role == "user" and history[-1].content in prev.parts:
            history = history[:-1]
        log.info("merging with the unanswered previous request", extra={"turn_id": request.turn_id})
        return history, (*prev.parts, text)

    async def _say_directly(self, text: str, out: trio.MemorySendChannel[BrainOutput]) -> None:
        voice_text, tags = extract_tags(text)
        audio = await self.tts.synthesize(voice_text) if voice_text else None
        await out.send(ReplyChunk(text, voice_text, tags, audio))

    async def _finished(self, request: TurnRequest, user_text: str, state: _Reply) -> None:
        if self.agent.on_finish is None:
            return
        from appliance.hooks import call_hook

        summary = FinishedTurn(
            request.turn_id, request.conversation_id, user_text, " ".join(state.texts), tuple(state.tool_results)
        )
        hook = self.agent.on_finish
        if self.agent.jobs is not None:  # the usual way: the turn ends now, memory is stored meanwhile
            self.agent.jobs.submit(f"on_finish {request.turn_id}", lambda: call_hook(hook, summary))
            return
        # No background service (a brain built outside the appliance): shielded, since the reply is complete
        # and a barge-in now must not lose the memory of it, and bounded.
        with trio.CancelScope(shield=True), trio.move_on_after(self.settings.on_finish_timeout) as waited:
            try:
                await call_hook(hook, summary)
            except Exception:
                log.warning("on-finish hook failed", exc_info=True, extra={"turn_id": request.turn_id})
        if waited.cancelled_caught:
            log.warning(
                "on-finish hook gave up after %g s", self.settings.on_finish_timeout, extra={"turn_id": request.turn_id}
            )

    async def _speak_reply(
        self,
        system: str,
        messages: tuple[Message, ...],
        conversation_id: str,
        state: _Reply,
        out: trio.MemorySendChannel[BrainOutput],
    ) -> None:
        async with trio.open_nursery() as nursery:
            speech = SpeechQueue(nursery, self.prefetch, self.later_speech)
            nursery.start_soon(self._write_reply, system, messages, conversation_id, state, speech)
            await speech.deliver(out, self._handed)

    def _handed(self, chunk: ReplyChunk) -> None:
        if self._previous is not None and chunk.voice_text:
            self._previous.answered = True  # heard: a new request is a new question, not the rest

    async def _write_reply(
        self, system: str, messages: tuple[Message, ...], conversation_id: str, state: _Reply, speech: SpeechQueue
    ) -> None:
        async with speech:  # the reply is written: the reader stops after the last sentence
            with state.stop:
                await self._produce(system, messages, conversation_id, state, speech)

    async def _produce(
        self,
        system: str,
        messages: tuple[Message, ...],
        conversation_id: str,
        state: _Reply,
        speech: SpeechQueue,
    ) -> None:
        """Stream the model, run the tools it calls and stream again, until it answers in words."""
        rounds: list[ToolRound] = []
        images, looked = state.images, False
        for round_number in range(self.settings.max_tool_rounds + 1):
            tools = self.agent.tools.specs() if self.agent.tools is not None else ()
            text, calls, look = await self._read_llm(
                system, messages, tools, tuple(rounds), images, conversation_id, state, speech
            )
            if look and not looked and self.agent.camera is not None:
                looked = True
                from appliance.agent.vision import CameraError

                try:
                    images = (await self.agent.camera.capture(),)
                    note = "(Here is what the camera sees.)"
                except CameraError as exc:  # say so, rather than fail the turn over a camera
                    log.warning("camera: %s", exc)
                    note = f"(The camera could not take a picture: {exc}. Answer without it.)"
                messages = (*messages, Message("assistant", text or "[vision:camera]"), Message("user", note))
                continue
            if not calls:
                return
            if round_number == self.settings.max_tool_rounds:
                log.warning("model still calling tools after %d rounds; stopping", self.settings.max_tool_rounds)
                return
            results = await self._run_tools(calls, state, speech)
            rounds.append(ToolRound(text, results))
            images += tuple(image for result in results for image in result.images)

    async def _read_llm(
        self,
        system: str,
        messages: tuple[Message, ...],
        tools: tuple[Any, ...],
        rounds: tuple[ToolRound, ...],
        images: tuple[Image, ...],
        conversation_id: str,
        state: _Reply,
        speech: SpeechQueue,
    ) -> tuple[str, list[ToolCall], bool]:
        """One model stream: speak its sentences, collect its tool calls. Returns (text, calls, wants a look)."""
        splitter = SentenceSplitter()
        calls: list[ToolCall] = []
        written: list[str] = []
        given = {"tools": tools, "rounds": rounds, "images": images, "conversation_id": conversation_id}
        kwargs: dict[str, Any] = {name: value for name, value in given.items() if value}
        look = False
        async with closing(self.llm.stream(system, messages, **kwargs)) as events:
            first = True
            while True:
                if first:
                    with trio.move_on_after(self.settings.first_token_timeout) as waited:
                        event = await anext(events, None)
                    if waited.cancelled_caught:
                        raise ProviderTimeout(self.llm.name, f"no reply within {self.settings.first_token_timeout:g} s")
                    first = False
                else:
                    event = await anext(events, None)
                if event is None:
                    break
                if isinstance(event, ToolCall):
                    calls.append(event)
                    continue
                written.append(event)
                for sentence in splitter.feed(event):
                    look = await self._queue(sentence, state, speech) or look
                    if look:
                        return "".join(written), calls, look
            for sentence in splitter.flush():
                look = await self._queue(sentence, state, speech) or look
        return "".join(written), calls, look

    async def _run_tools(
        self,
        calls: list[ToolCall],
        state: _Reply,
        speech: SpeechQueue,
    ) -> tuple[ToolResult, ...]:
        """Run the calls concurrently; if they take longer than ``progress_after``, say so meanwhile."""
        results: list[ToolResult | None] = [None] * len(calls)
        finished = trio.Event()

        async def run(index: int, call: ToolCall) -> None:
            log.info("tool call %s", call.name, extra={"tool": call.name})
            results[index] = await self.agent.tools.run(call)

        async def progress() -> None:
            with trio.move_on_after(self.settings.progress_after):
                await finished.wait()
                return
            sentence = next((t.progress for c in calls if (t := self.agent.tools.get(c.name)) and t.progress), None)
            sentence = sentence or self.settings.progress_message
            if sentence:
                await self._queue(sentence, state, speech)

        async with trio.open_nursery() as waiting:
            waiting.start_soon(progress)
            async with trio.open_nursery() as running:
                for index, call in enumerate(calls):
                    running.start_soon(run, index, call)
            finished.set()
        done = tuple(r for r in results if r is not None)
        state.tool_results.extend(done)
        return done

    async def _queue(
        self,
        sentence: str,
        state: _Reply,
        speech: SpeechQueue,
    ) -> bool:
        """Hand one sentence to synthesis. Returns True when it asks for a camera look."""
        from appliance.agent import guardrails

        voice_text, tags = extract_tags(sentence)
        look = blocked = False
        for tag in tags:
            if tag.name == "lang":
                state.language = tag.value.lower()
            elif tag.name == "vision":
                look = self.agent.camera is not None
        if voice_text:
            verdict = await guardrails.apply(self.agent.guardrails, "reply", voice_text)
            if verdict is not None:
                blocked = verdict.action == "block"
                sentence = voice_text = verdict.text
                voice_text, _ = extract_tags(voice_text)
        if not voice_text and all(tag.name == "vision" for tag in tags) and (look or not self.agent.client_camera):
            return look  # a bare [vision:camera]: our camera answers it, else a client's does (serve) or nobody
        if not any(ch.isalnum() for ch in voice_text):
            voice_text = ""  # a stray quote or bracket: nothing to say
        state.texts.append(sentence)
        await speech.add(sentence, voice_text, tags, self._voice(state.language))
        if blocked:
            log.info("reply stopped by a guardrail")
            state.stop.cancel()  # the model's stream and any tools stop here; what was queued is still said
        return look

    def _voice(self, language: str | None) -> SpeechSynthesizer:
        if language and self.voices:
            return self.voices.get(language) or self.voices.get(language.split("-")[0]) or self.tts
        return self.tts

    async def warm(self) -> None:
        """Open connections to every service before the utterance is finished (called at speech onset)."""
        async with trio.open_nursery() as nursery:
            for part in (self.stt, self.llm, self.tts, *self.voices.values()):
                warm = getattr(part, "warm", None)
                if warm is not None:
                    nursery.start_soon(warm)

    async def aclose(self) -> None:
        parts: list[Any] = [self.stt, self.llm, self.tts, *self.voices.values()]
        for part in parts:
            try:
                await part.aclose()
            except Exception:  # closing a client that never connected must not mask shutdown
                log.debug("closing %s failed", part.name, exc_info=True)
