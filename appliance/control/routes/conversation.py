"""Talking to the robot in text: a turn whose reply streams back (SSE) as it is spoken; cancelling it."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import trio

from appliance.audio.base import AudioClip
from appliance.audio.convert import encode_wav
from appliance.control import models as m
from appliance.control.context import ControlContext
from appliance.control.routes.common import SSE, Ctx, check_text, need_running, problem, protected
from appliance.control.sse import EventStream
from appliance.events import SentenceStarted, TurnFinished
from appliance.speaker import TappedBrain
from appliance.turns import ReplyChunk, Transcript, Utterance

router = protected()


@router.post(
    "/conversation",
    tags=["conversation"],
    responses={200: SSE, 409: {"model": m.Problem}, 503: {"model": m.Problem}},
)
async def conversation(body: m.ConversationRequest, ctx: Ctx) -> EventStream:
    """Say something to the robot as if spoken; the reply streams back as it is spoken.

    Events: ``turn`` (turn_id, brain), ``heard``, ``chunk`` (text, voice_text, tags, optional audio as
    base64 WAV), ``speaking`` (sentence index now playing), ``finished`` (outcome, spoken, timings).
    """
    text = check_text(ctx, body.text)
    need_running(ctx, "conversation")
    if ctx.appliance.conversation.busy() and not body.interrupt:
        raise problem(409, "a turn is running; send interrupt=true to replace it")
    if not ctx.slots.take():
        raise problem(503, "too many open streams", {"Retry-After": "5"})

    async def produce(out: trio.MemorySendChannel[tuple[str, Any]]) -> None:
        await _Converse(ctx, body.audio, out).run(text)

    return EventStream(produce, ctx.slots, buffer=ctx.limits.sse_buffer, heartbeat=ctx.limits.sse_heartbeat)


@router.post("/turn/cancel", response_model=m.Cancelled, tags=["conversation"])
async def cancel(_body: m.Empty, ctx: Ctx) -> m.Cancelled:
    """Barge in: stop the running turn (speech stops within a block)."""
    return m.Cancelled(cancelled=await ctx.commands.cancel("api"))


class _Converse:
    """One API turn: the brain's output tapped into the stream, and the turn's events after it."""

    def __init__(self, ctx: ControlContext, with_audio: bool, out: trio.MemorySendChannel[tuple[str, Any]]) -> None:
        self.ctx = ctx
        self.with_audio = with_audio
        self.out = out
        self.overflow = False
        self.stream_failed = trio.CancelScope()

    def emit(self, kind: str, data: Any) -> None:
        if self.overflow:
            return
        try:
            self.out.send_nowait((kind, data))
        except trio.WouldBlock:
            self.overflow = True  # the client is too slow; the robot keeps talking, the stream ends
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.overflow = True

    def tap(self, item: Any) -> None:
        if isinstance(item, Transcript):
            self.emit("heard", {"text": item.text})
        elif isinstance(item, ReplyChunk):
            chunk: dict[str, Any] = {
                "text": item.text,
                "voice_text": item.voice_text,
                "tags": [{"name": t.name, "value": t.value, "attributes": dict(t.attributes)} for t in item.tags],
            }
            if self.with_audio and isinstance(item.audio, AudioClip):  # TappedBrain hands speech over whole
                chunk["audio"] = base64.b64encode(encode_wav(item.audio)).decode("ascii")
            self.emit("chunk", chunk)

    def tap_failed(self, exc: Exception) -> None:
        self.emit("error", {"message": f"this stream failed ({type(exc).__name__}); the turn goes on"})
        self.stream_failed.cancel()

    async def run(self, text: str) -> None:
        conv = self.ctx.appliance.conversation
        brain = TappedBrain(conv.brain, self.tap, copy_audio=self.with_audio, on_error=self.tap_failed)
        with self.ctx.bus.subscribe(SentenceStarted, TurnFinished, name="control-conversation", size=256) as sub:
            try:
                active = await conv.start_turn(Utterance(text=text, source="api"), brain=brain)
            except RuntimeError as exc:
                self.emit("error", {"message": str(exc)})
                return
            self.emit("turn", {"turn_id": active.turn_id, "brain": conv.brain.name})
            with self.stream_failed:
                async for event in sub:
                    if self.overflow:
                        with trio.move_on_after(1):
                            await self.out.send(("overflow", {"message": "client too slow; the turn goes on"}))
                        return
                    if self.follow(event, active.turn_id):
                        return

    def follow(self, event: Any, turn_id: str) -> bool:
        """Pass on one of the turn's events; True when the turn is over."""
        if isinstance(event, SentenceStarted) and event.turn_id == turn_id:
            self.emit("speaking", {"index": event.index, "text": event.text})
        elif isinstance(event, TurnFinished) and event.turn_id == turn_id:
            timings = dataclasses.asdict(event.timings)
            self.emit(
                "finished", {"outcome": event.outcome, "spoken": event.spoken, "error": event.error, "timings": timings}
            )
            return True
        return False
