"""One reply of the HTTP API: a brain's turn as AIAvatarKit response frames, one reply at a time per session.

As on the WebSocket, a new request on a session interrupts the reply running there (its stream ends with a
``final`` marked ``interrupted``), and conversations are kept per ``context_id``. Frames are AIAvatarKit's
``AIAvatarResponse`` envelope; sentences carry their speech as base64 WAV.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from appliance.agent.tools import tool_watcher
from appliance.audio.base import AudioStream
from appliance.audio.convert import encode_wav
from appliance.brains.avatar_protocol import avatar_control_from_tags, b64encode, control_tags, response_frame
from appliance.errors import ProviderError
from appliance.groups import single_error
from appliance.providers.llm.base import ToolCall, ToolResult
from appliance.server.histories import Histories, History, LocalHistories
from appliance.turns import Brain, BrainOutput, Image, ReplyChunk, Transcript, TurnRequest, Utterance

log = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class HttpRequest:
    session_id: str
    user_id: str | None
    context_id: str | None
    utterance: Utterance | None  # None: only a session (``/start``)
    params: dict[str, str] = field(default_factory=dict)
    images: tuple[Image, ...] = ()  # AIAvatarKit's ``files`` (a client camera's still after a ``vision`` frame)


@dataclass(eq=False)
class _Running:
    scope: trio.CancelScope
    done: trio.Event = field(default_factory=trio.Event)


def envelope(kind: str, req: HttpRequest | None, transaction_id: str | None = None, **fields: Any) -> dict[str, Any]:
    """AIAvatarKit's AIAvatarResponse, for the session of ``req``."""
    if req is None:
        return response_frame(kind, transaction_id=transaction_id, **fields)
    return response_frame(kind, req.session_id, req.user_id, req.context_id, transaction_id, **fields)


async def chunk_fields(chunk: ReplyChunk) -> dict[str, Any]:
    control = {"animation_name": None, "animation_duration": None, "face_name": None, "face_duration": None}
    control.update(avatar_control_from_tags(chunk.tags) or {})
    audio = chunk.audio
    if isinstance(audio, AudioStream):  # a sentence goes out whole, its WAV header names its length
        audio = await audio.read_all()
    return {
        "text": chunk.text,
        "voice_text": chunk.voice_text,
        "avatar_control_request": control,
        "control_tags": control_tags(chunk.tags) or None,
        "audio_data": b64encode(encode_wav(audio)) if audio is not None else None,
    }


class HttpTurns:
    """Runs replies for the HTTP API: one per session at a time, histories per conversation."""

    def __init__(
        self, brain: Brain, *, history_limit: int = 20, idle_timeout: float = 600.0, histories: Histories | None = None
    ) -> None:
        self.brain = brain
        self.histories = histories or LocalHistories(history_limit, idle_timeout)
        self._running: dict[str, _Running] = {}
        self.turns = 0

    def busy(self) -> int:
        return len(self._running)

    def history(self, context_id: str) -> History:
        return self.histories.open(context_id)

    async def interrupt(self, session_id: str) -> None:
        # A loop: two requests waiting for the same reply to end both wake, and the later one must then
        # interrupt the earlier (the last request wins, as on the WebSocket), not run beside it.
        while (running := self._running.get(session_id)) is not None:
            running.scope.cancel()
            await running.done.wait()

    async def reply(self, req: HttpRequest, emit: Emit) -> None:
        """Answer one request, sending every frame through ``emit``; interrupts the session's running reply."""
        await self.interrupt(req.session_id)
        running = self._running[req.session_id] = _Running(trio.CancelScope())
        req.context_id = req.context_id or uuid.uuid4().hex
        transaction_id = uuid.uuid4().hex
        try:
            with running.scope:
                await self._turn(req, transaction_id, emit)
            if running.scope.cancelled_caught:
                with trio.move_on_after(1) as cleanup:
                    cleanup.shield = True
                    await emit(envelope("final", req, transaction_id, metadata={"interrupted": True}))
        finally:
            if self._running.get(req.session_id) is running:
                del self._running[req.session_id]
            running.done.set()

    async def _turn(self, req: HttpRequest, transaction_id: str, emit: Emit) -> None:
        assert req.utterance is not None
        history = self.history(req.context_id or "")
        heard: str | None = req.utterance.text
        said: list[str] = []
        voiced: list[str] = []
        vision: str | None = None
        self.turns += 1
        started = False
        send, receive = trio.open_memory_channel[BrainOutput](0)
        request = TurnRequest(
            transaction_id, req.utterance, history.messages(), req.context_id or "", req.params, req.images
        )
        emit = _one_at_a_time(emit)  # tool_call frames come from the tool's task, chunks from this one
        try:
            with single_error():
                async with trio.open_nursery() as inner:
                    token = tool_watcher.set(_tool_frames(req, transaction_id, emit))
                    inner.start_soon(self.brain.reply, request, send)  # its tasks inherit the watcher
                    tool_watcher.reset(token)
                    async with receive:
                        async for item in receive:
                            if isinstance(item, Transcript):
                                heard = item.text
                            if not started:
                                started = True
                                meta = {"request_text": heard}
                                await emit(envelope("start", req, transaction_id, metadata=meta))
                            if isinstance(item, ReplyChunk):
                                said.append(item.text)
                                voiced.extend([item.voice_text] if item.voice_text else [])
                                vision = vision or next((t.value for t in item.tags if t.name == "vision"), None)
                                await emit(envelope("chunk", req, transaction_id, **await chunk_fields(item)))
        except ProviderError as exc:
            log.warning("reply failed: %s", exc, extra={"turn_id": transaction_id})
            await emit(envelope("error", req, transaction_id, metadata={"error": str(exc)}))
            return
        finally:
            if heard or said:
                history.add_turn(heard, " ".join(said))
        if not heard and not said:
            await emit(envelope("canceled", req, transaction_id, metadata={"reason": "No speech recognized."}))
            return
        final = {"text": " ".join(said), "voice_text": " ".join(voiced), "metadata": {"request_text": heard}}
        if vision:  # as AIAvatarKit: the reply asked to look, so the final is a `vision` frame naming the source
            final["metadata"] = {"source": vision}  # the client answers with a new request carrying the picture
        await emit(envelope("vision" if vision else "final", req, transaction_id, **final))


def _one_at_a_time(emit: Emit) -> Emit:
    lock = trio.Lock()

    async def emit_locked(frame: dict[str, Any]) -> None:
        async with lock:
            await emit(frame)

    return emit_locked


def _tool_frames(req: HttpRequest, transaction_id: str, emit: Emit) -> Any:
    """AIAvatarKit's ``tool_call`` frames: ``metadata.tool_call`` = id, name, arguments (a JSON string) when the
    call starts, and again with ``result`` = {data, is_final} when it is done."""

    async def watch(call: ToolCall, result: ToolResult | None) -> None:
        described: dict[str, Any] = {"id": call.id, "name": call.name, "arguments": json.dumps(call.arguments)}
        if result is not None:
            described["result"] = {"data": _result_data(result), "is_final": True}
        await emit(envelope("tool_call", req, transaction_id, metadata={"tool_call": described}))

    return watch


def _result_data(result: ToolResult) -> dict[str, Any]:
    """A result as AIAvatarKit's tools give it (an object): ours if it is a JSON object, else wrapped."""
    if result.is_error:
        return {"error": result.content}
    try:
        data = json.loads(result.content)
    except ValueError:
        return {"result": result.content}
    return data if isinstance(data, dict) else {"result": data}
