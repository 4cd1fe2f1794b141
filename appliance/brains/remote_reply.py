"""One reply from the server, read frame by frame: one handler per message type.

``start`` and ``final`` carry what the server heard; ``chunk`` carries a sentence (or a piece of its speech);
``final`` ends the reply, and a reply without a word is this server failing (the next brain gets the same
utterance); ``stop`` after this turn's speech is the server's barge-in; ``canceled`` and ``error`` fail the
turn; ``tool_call`` and ``vision`` are logged.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from appliance.brains.avatar_protocol import ProtocolError
from appliance.brains.remote_frames import Frame, RemoteCanceled, ReplyReader, error_text, speaks, typed
from appliance.brains.remote_link import LinkTurn
from appliance.bus import EventBus
from appliance.errors import ProviderBadReply, ProviderError, ProviderTimeout, ProviderUnavailable
from appliance.events import CancelTurnRequested
from appliance.settings.brains import RemoteConfig
from appliance.turns import BrainOutput, ReplyChunk, Transcript, TurnRequest

log = logging.getLogger(__name__)

_KEEP_READING = None  # a handler's answer while the reply goes on; True ends the turn


class ReplyTurn:
    def __init__(
        self,
        provider: str,
        config: RemoteConfig,
        turn: LinkTurn,
        request: TurnRequest,
        out: trio.MemorySendChannel[BrainOutput],
        contexts: dict[str, str],
        bus: EventBus | None,
    ) -> None:
        self.name = provider
        self.config = config
        self.turn = turn
        self.request = request
        self.out = out
        self.contexts = contexts  # our conversation id -> the server's context id, kept across turns
        self.bus = bus
        self.reader = ReplyReader(provider)
        self.text = request.utterance.text
        self.heard = False
        self.spoke = False  # speech of this turn went out: from here on a server `stop` is a barge-in of it
        self.deadline = trio.current_time() + config.reply_timeout
        self.handlers: dict[str, Callable[[Frame, dict], Awaitable[bool | None]]] = {
            "start": self._start,
            "chunk": self._chunk,
            "final": self._final,
            "stop": self._stop,
            "canceled": self._canceled,
            "error": self._error,
            "tool_call": self._tool_call,
            "vision": self._vision,
        }

    async def run(self) -> bool:
        while True:
            frame = await self._next()
            kind = frame["type"]
            context_id = frame.get("context_id")
            if isinstance(context_id, str) and context_id:
                self.contexts[self.request.conversation_id] = context_id
            if kind in ("accepted", "start", "chunk", "voiced"):
                self.deadline = trio.current_time() + self.config.frame_timeout
            handler = self.handlers.get(kind)
            if handler is not None and await handler(frame, typed(frame, "metadata", dict, {})):
                return True

    async def _next(self) -> Frame:
        item: Frame | ProviderError | None = None
        try:
            item = self.turn.receive.receive_nowait()  # frames that queued up while a sentence played
        except trio.WouldBlock:
            with trio.move_on_at(self.deadline):
                item = await self.turn.receive.receive()
        if item is None:
            raise ProviderTimeout(self.name, "the server stopped answering in the middle of a turn")
        if isinstance(item, ProviderError):
            raise item
        return item

    async def _send_heard(self, words: str | None) -> None:
        if not self.heard and words and words.strip():
            self.heard = True
            await self.out.send(Transcript(words.strip()))

    async def _hand_out(self, chunks: list[ReplyChunk]) -> None:
        for chunk in chunks:
            await self.out.send(chunk)
            self.spoke = self.spoke or speaks(chunk)
            self.deadline = trio.current_time() + self.config.frame_timeout  # its playing is not the server's silence

    # --- one handler per message type ----------------------------------------------------------------------

    async def _start(self, frame: Frame, meta: dict) -> bool | None:
        await self._send_heard(meta.get("request_text") or self.text)
        return _KEEP_READING

    async def _chunk(self, frame: Frame, meta: dict) -> bool | None:
        await self._send_heard(self.text)  # a server that lost its `start`: we know what we asked
        try:
            chunks = self.reader.chunk(frame)
        except ProtocolError as exc:
            raise ProviderBadReply(self.name, str(exc)) from None
        await self._hand_out(chunks)
        return _KEEP_READING

    async def _final(self, frame: Frame, meta: dict) -> bool | None:
        await self._send_heard(meta.get("request_text") or self.text)
        try:
            chunks = self.reader.finish()
        except ProtocolError as exc:
            raise ProviderBadReply(self.name, str(exc)) from None
        await self._hand_out(chunks)
        if meta.get("interrupted"):
            log.info("server reports the reply was interrupted", extra={"brain": self.name})
        error = error_text(frame)
        if error and not self.heard and not self.spoke:
            raise ProviderUnavailable(self.name, f"server error: {error}")
        if not self.spoke:
            # Nobody on our side interrupted (that cancels this task): a reply without a word is this server
            # failing, and the next brain gets the same utterance.
            raise ProviderBadReply(self.name, "the server ended the turn without saying anything")
        return True

    async def _stop(self, frame: Frame, meta: dict) -> bool | None:
        if not self.spoke:
            # AIAvatarKit sends this (without transaction_id) on every invoke, before `start`: it is clearing its
            # previous response. Nothing of this turn plays yet, so there is nothing to stop.
            log.debug("stop before this turn's speech ignored", extra={"brain": self.name})
            return _KEEP_READING
        log.info("server asked to stop speaking", extra={"brain": self.name, "turn_id": self.turn.turn_id})
        if self.bus is not None:
            self.bus.publish(CancelTurnRequested(source=self.name))  # stop what is playing, now
        return True

    async def _canceled(self, frame: Frame, meta: dict) -> bool | None:
        raise RemoteCanceled(self.name, "the server canceled the request (its speech recognition failed)")

    async def _error(self, frame: Frame, meta: dict) -> bool | None:
        raise ProviderUnavailable(self.name, f"server error: {error_text(frame) or 'no detail'}")

    async def _tool_call(self, frame: Frame, meta: dict) -> bool | None:
        tool = meta.get("tool_call")
        name = tool.get("name") if isinstance(tool, dict) else tool
        log.info("server calls tool %s", name, extra={"brain": self.name})
        return _KEEP_READING

    async def _vision(self, frame: Frame, meta: dict) -> bool | None:
        log.info("server asks for an image (%s); not supported", meta.get("source"), extra={"brain": self.name})
        return _KEEP_READING
