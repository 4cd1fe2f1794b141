"""Every turn as a trace, whichever brain answers it: the cloud brain, the remote AIAvatarKit server, the
offline line, or several of them through failover.

The brain the conversation talks to is wrapped in :class:`TracedBrain`: one ``turn`` span per reply, naming the
brain whose words the user heard, with the moments the transcript and the first reply chunk came, and each
chunk as an event. In a failover chain every member is wrapped in :class:`TracedAttempt` too: a ``brain`` span
per brain asked, under the turn, saying how it went (answered, failed with the error, or cancelled: beaten by a
faster brain or interrupted). The cloud brain's STT, LLM and TTS spans nest under its attempt.

Both watch the reply through :class:`_WatchedOut`, which stands in for the brain's output channel: no extra
task, no extra hop, and the brain's own exceptions pass through untouched (failover decides on them).
"""

from __future__ import annotations

from typing import Any, cast

import trio

from appliance.agent.tracing import Tracing, mark_status
from appliance.turns import BrainOutput, Transcript, TurnRequest


class _WatchedOut:
    """A brain's output channel that tells a span what passes through it."""

    def __init__(self, out: trio.MemorySendChannel[BrainOutput], span: Any, tracing: Tracing, default: str) -> None:
        self.out = out
        self.span = span
        self.tracing = tracing
        self.started = trio.current_time()
        self.answered_by = default  # the brain of the first chunk: the one the user hears
        self.chunks = 0

    def _ms(self) -> float:
        return round((trio.current_time() - self.started) * 1000, 1)

    def saw(self, item: BrainOutput) -> None:
        if isinstance(item, Transcript):
            self.span.set_attribute("appliance.transcript", self.tracing.user(item.text))
            self.span.set_attribute("appliance.transcript_ms", self._ms())
            self.span.add_event("transcript")
            return
        if self.chunks == 0:
            self.answered_by = item.brain or self.answered_by
            self.span.set_attribute("appliance.first_chunk_ms", self._ms())
        self.chunks += 1
        self.span.add_event(
            "chunk", {"appliance.brain": item.brain or self.answered_by, "text": self.tracing.clean(item.text)}
        )

    async def send(self, item: BrainOutput) -> None:
        await self.out.send(item)
        self.saw(item)  # after the send: the moment it was taken, not offered

    def send_nowait(self, item: BrainOutput) -> None:
        self.out.send_nowait(item)
        self.saw(item)

    def close(self) -> None:
        self.out.close()

    async def aclose(self) -> None:
        await self.out.aclose()

    async def __aenter__(self) -> _WatchedOut:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.out.close()

    def ended(self, error: BaseException | None) -> None:
        self.span.set_attribute("appliance.chunks", self.chunks)
        self.span.set_attribute("appliance.brain", self.answered_by)  # for the turn: the brain the user heard
        self.span.set_attribute("appliance.outcome", _outcome(error, self.chunks))
        mark_status(self.span, error)


class _Wrapped:
    """Looks like the brain it wraps to everyone else (name, probe, run, health, warm...)."""

    def __init__(self, inner: Any, tracing: Tracing) -> None:
        self.inner = inner
        self.tracing = tracing

    @property
    def name(self) -> str:
        return str(self.inner.name)  # a failover brain's name changes with its health

    def __getattr__(self, attribute: str) -> Any:
        if attribute == "inner":  # not set yet (copying): no recursion
            raise AttributeError(attribute)
        return getattr(self.inner, attribute)

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def _watched_reply(self, request: TurnRequest, out: trio.MemorySendChannel[BrainOutput], span: Any) -> None:
        """The inner brain's reply, told to ``span`` as it passes; the span ends saying how it went."""
        watched = _WatchedOut(out, span, self.tracing, self.name)
        error: BaseException | None = None
        try:
            await self.inner.reply(request, cast(trio.MemorySendChannel[BrainOutput], watched))
        except BaseException as exc:
            error = exc
            raise
        finally:
            watched.ended(error)


class TracedBrain(_Wrapped):
    """The brain the conversation talks to, with each reply as the ``turn`` span of one trace."""

    async def reply(self, request: TurnRequest, out: trio.MemorySendChannel[BrainOutput]) -> None:
        utterance = request.utterance
        with self.tracing.turn(request.turn_id, self.name, utterance.source) as span:
            if utterance.text is not None:
                span.set_attribute("appliance.user_text", self.tracing.user(utterance.text))
            await self._watched_reply(request, out, span)


class TracedAttempt(_Wrapped):
    """One member of a failover chain: each time it is asked, a ``brain`` span under the turn."""

    async def reply(self, request: TurnRequest, out: trio.MemorySendChannel[BrainOutput]) -> None:
        with self.tracing.tracer.start_as_current_span(
            "brain",
            attributes={"appliance.brain": self.name, "appliance.turn_id": request.turn_id},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            await self._watched_reply(request, out, span)


def _outcome(error: BaseException | None, chunks: int) -> str:
    if error is None:
        return "answered" if chunks else "no reply"
    if isinstance(error, Exception):
        return "failed mid-reply" if chunks else "failed"
    return "cancelled"  # beaten by a faster brain, or the user interrupted
