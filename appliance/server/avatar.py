"""A conversation server that speaks the AIAvatarKit WebSocket protocol, backed by any :class:`Brain`.

Run on a PC (``appliance serve``) it is the remote for several robots: each connection may hold several
sessions, each session one reply at a time (a new request interrupts the running one, which ends with a
``final`` marked ``interrupted``). Conversations are kept per ``context_id`` so a robot that reconnects
continues where it was. Mic streams (``data``) are endpointed with the same energy VAD the robot uses.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import numpy as np
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, WebSocketServer

from appliance.audio.base import CAPTURE_RATE, AudioClip
from appliance.brains.avatar_protocol import CLIENT_TYPES, ProtocolError, b64decode
from appliance.errors import ProviderError
from appliance.groups import single_error
from appliance.listening.endpointer import Onset, Segment
from appliance.server.chunks import send_chunk
from appliance.server.fair_accept import FairListener
from appliance.server.frames import BLOCK, Reply, Session, send_frame
from appliance.server.histories import Histories, History, LocalHistories
from appliance.server.outbox import InFlight, Outbox, when_idle
from appliance.settings.brains import ServerConfig
from appliance.turns import Brain, BrainOutput, Transcript, TurnRequest, Utterance

log = logging.getLogger(__name__)

_FRAME_OVERHEAD = 64 * 1024  # the JSON around an invoke's base64 audio
# Bytes a connection reads at once: trio-websocket's 4 KiB took an invoke (a second of speech is 43 KB of JSON)
# in eleven reads, each a wake-up, a parse step and a piece to join; ten robots' invokes come at once.
_RECEIVE_BYTES = 64 * 1024
# A server has no speaker to wait for: every sentence whose text is known is synthesized at once, up to this
# many per reply, and sent in order; so a turn ends about one synthesis after its last sentence was written.
TTS_CONCURRENCY = 4


def check_bind(config: ServerConfig) -> None:
    """Refuse to serve beyond this machine without a key: the server spends its owner's cloud keys."""
    from appliance.auth import is_loopback
    from appliance.settings_base import ConfigError

    if config.api_key is None and not is_loopback(config.host):
        raise ConfigError(
            "server",
            [
                f"server.host = {config.host!r} is reachable from the network but no server.api_key is set: set one "
                "($APPLIANCE_SERVER__API_KEY or the credential server_api_key), or bind 127.0.0.1"
            ],
        )


class AvatarServer:
    name = "avatar-server"

    def __init__(
        self,
        brain: Brain,
        config: ServerConfig,
        *,
        history_limit: int = 20,
        idle_timeout: float = 600.0,
        histories: Histories | None = None,
        listener: FairListener | None = None,
    ) -> None:
        self.brain = brain
        self.config = config
        if isinstance(getattr(brain, "prefetch", None), int):  # the cloud brain's sentences synthesized ahead
            brain.prefetch = max(brain.prefetch, TTS_CONCURRENCY)  # type: ignore[attr-defined]
        self.in_flight = InFlight()  # the turns running now (outbox.py: while several, idle moments are pauses)
        if hasattr(brain, "later_speech"):  # a reply's later sentences after every robot's first (outbox.py)
            brain.later_speech = lambda: when_idle(pause=self.in_flight.pause())
        self.history_limit = history_limit
        self.idle_timeout = idle_timeout
        check_bind(config)
        self._api_key = config.api_key.get_secret_value() if config.api_key else None
        self.max_pcm = int(config.max_audio_seconds * CAPTURE_RATE) * 2
        self.audio_in_flight = 0
        # Conversations: this process's own, or (serve's workers) a store every worker shares.
        self.histories = histories or LocalHistories(history_limit, idle_timeout)
        self.listener = listener  # a worker's side of the port its parent bound (fair_accept.py), else bind host:port
        self.port = 0
        self.connections = 0
        self.turns = 0

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        with single_error():  # a port already in use is reported as the OSError it is
            async with trio.open_nursery() as nursery:
                # The largest frame is an invoke with the longest audio allowed, base64: refused beyond that.
                largest = self.max_pcm * 4 // 3 + _FRAME_OVERHEAD
                if self.listener is None:  # (Any: trio-websocket is annotated for trio's listeners, serves any)
                    listeners: list[Any] = list(await trio.open_tcp_listeners(cfg.port, host=cfg.host))
                else:  # a worker: the port its parent bound, shared with the other workers (fair_accept.py)
                    listeners = [self.listener]
                server = WebSocketServer(
                    self._handle, listeners, max_message_size=largest, receive_buffer_size=_RECEIVE_BYTES
                )
                await nursery.start(server.run)
                self.port = self.listener.port if self.listener is not None else server.port
                log.info("serving the AIAvatarKit protocol on ws://%s:%d/ws", cfg.host, self.port)
                task_status.started(self.port)

    # --- connections --------------------------------------------------------------------------------------

    def _authorised(self, request: WebSocketRequest) -> tuple[bool, str | None]:
        """(allowed, subprotocol to echo): a Bearer header, or the browsers' ``Authorization.<base64>``."""
        if self._api_key is None:
            return True, None
        for name, value in request.headers:
            if name.lower() == b"authorization" and value.decode("latin-1") == f"Bearer {self._api_key}":
                return True, None
        for proto in request.proposed_subprotocols:
            if proto.startswith("Authorization."):
                try:
                    if b64decode(proto.split(".", 1)[1], "subprotocol").decode() == self._api_key:
                        return True, proto
                except (ProtocolError, UnicodeDecodeError):
                    continue
        return False, None

    async def _handle(self, request: WebSocketRequest) -> None:
        if request.path.split("?")[0] != "/ws":
            await request.reject(404, body=b"the WebSocket endpoint is /ws")
            return
        allowed, subprotocol = self._authorised(request)
        if not allowed:
            log.warning("refused a client with a bad key")
            await request.reject(403, body=b"policy violation: invalid API key")
            return
        if self.connections >= self.config.max_connections:
            await request.reject(503, body=b"too many connections")
            return
        ws = await request.accept(subprotocol=subprotocol)
        self._held(+1)
        sessions: dict[str, Session] = {}
        try:
            await self._serve_connection(ws, sessions)
        except Exception:  # one robot's broken turn must not take the server down for the others
            log.exception("connection failed; closing it")
            with trio.move_on_after(1):
                await ws.aclose(1011, "internal error")
        finally:
            self._held(-1)

    def _held(self, change: int) -> None:
        self.connections += change
        if self.listener is not None:  # the other workers take the next robots while this one holds more
            self.listener.held(self.connections)

    async def _serve_connection(self, ws: WebSocketConnection, sessions: dict[str, Session]) -> None:
        with single_error():
            async with trio.open_nursery() as nursery:
                try:
                    while True:
                        message = await self._next_message(ws, sessions)
                        if message is None:
                            await ws.aclose(1000, "idle")
                            break
                        if not await self._on_message(ws, message, sessions, nursery):
                            await ws.aclose()
                            break
                except ConnectionClosed:
                    pass
                nursery.cancel_scope.cancel()

    async def _next_message(self, ws: WebSocketConnection, sessions: dict[str, Session]) -> str | bytes | None:
        """The next client frame, or None when the connection has been idle too long.

        A connection must start a session soon after it opens, and one that then sends nothing for
        ``idle_timeout`` while no reply runs is closed, so idle sockets cannot hold every slot for good.
        """
        while True:
            limit = self.config.idle_timeout if sessions else self.config.start_timeout
            with trio.move_on_after(limit):
                return await ws.get_message()
            if not any(s.done is not None and not s.done.is_set() for s in sessions.values()):
                log.info("closing a connection idle for %.0f s", limit)
                return None

    async def _on_message(
        self, ws: WebSocketConnection, message: str | bytes, sessions: dict[str, Session], nursery: trio.Nursery
    ) -> bool:
        """Handle one client frame; False closes the connection."""
        try:
            frame = json.loads(message) if isinstance(message, str) else None
        except json.JSONDecodeError as exc:
            await send_frame(ws, None, "error", metadata={"error": f"malformed JSON: {exc.msg}"})
            return True
        except RecursionError:  # nested deeper than the parser goes: a bad frame like any other
            await send_frame(ws, None, "error", metadata={"error": "malformed JSON: nested too deeply"})
            return True
        if not isinstance(frame, dict) or frame.get("type") not in CLIENT_TYPES:
            kind = frame.get("type") if isinstance(frame, dict) else None
            what = "binary frame" if isinstance(message, bytes) else f"frame type {kind!r}"
            await send_frame(ws, None, "error", metadata={"error": f"unsupported {what}"})
            return True
        session_id = frame.get("session_id")
        if not isinstance(session_id, str) or not session_id:
            await send_frame(ws, None, "final", metadata={"error": "session_id is required"})
            return False
        kind = frame["type"]
        if kind == "start":
            context_id = frame.get("context_id") if isinstance(frame.get("context_id"), str) else None
            user_id = frame.get("user_id")
            user = user_id if isinstance(user_id, str) else "user"
            if session_id not in sessions and len(sessions) >= self.config.max_sessions:
                await send_frame(
                    ws,
                    None,
                    "error",
                    metadata={"error": f"this connection already holds {len(sessions)} sessions; stop one first"},
                )
                return True
            started = Session(
                session_id, user, context_id, frame["metadata"] if isinstance(frame.get("metadata"), dict) else {}
            )
            sessions[session_id] = started
            await send_frame(ws, started, "connected")
            return True
        session = sessions.get(session_id)
        if session is None:
            await send_frame(ws, None, "error", metadata={"error": f"session {session_id} was not started"})
            return True
        try:
            if kind == "stop":
                await self._interrupt(ws, session)
                del sessions[session_id]
            elif kind == "config":
                if isinstance(frame.get("metadata"), dict):
                    session.metadata.update(frame["metadata"])
            elif kind == "data":
                await self._listen(ws, session, frame, nursery)
            else:
                await self._invoke(ws, session, frame, nursery)
        except ProtocolError as exc:
            await send_frame(ws, session, "error", metadata={"error": str(exc)})
        return True

    # --- requests -----------------------------------------------------------------------------------------

    async def _invoke(
        self, ws: WebSocketConnection, session: Session, frame: dict[str, Any], nursery: trio.Nursery
    ) -> None:
        text = frame.get("text")
        if text is not None and not isinstance(text, str):
            raise ProtocolError("invoke: text must be a string")
        audio = None
        reserved = 0
        if not text:
            if frame.get("audio_data") is None:
                raise ProtocolError("invoke needs text or audio_data")
            encoded = frame["audio_data"]
            if isinstance(encoded, str) and len(encoded) * 3 // 4 > self.max_pcm:
                raise ProtocolError(f"invoke: audio longer than {self.config.max_audio_seconds:g} s")
            pcm = b64decode(encoded, "invoke.audio_data")
            if len(pcm) > self.max_pcm:
                raise ProtocolError(f"invoke: audio longer than {self.config.max_audio_seconds:g} s")
            if self.audio_in_flight + len(pcm) > self.config.max_audio_in_flight:
                raise ProtocolError("invoke: the server is answering too much audio at once; try again shortly")
            audio = AudioClip.from_pcm(pcm, CAPTURE_RATE)
            reserved = len(pcm)
        if isinstance(frame.get("context_id"), str) and frame["context_id"]:
            session.context_id = frame["context_id"]
        params = frame.get("system_prompt_params")
        params = {str(k): str(v) for k, v in params.items()} if isinstance(params, dict) else {}
        given = frame.get("metadata")
        meta = given if isinstance(given, dict) else {}
        utterance = Utterance(audio=audio, text=text or None, source="remote")
        self.audio_in_flight += reserved
        try:
            await self._begin(ws, session, utterance, params, meta.get("history"), nursery)
        except BaseException:
            self.audio_in_flight -= reserved
            raise
        if reserved:
            nursery.start_soon(self._release_audio, session.done, reserved)

    async def _release_audio(self, done: trio.Event | None, reserved: int) -> None:
        try:
            if done is not None:
                await done.wait()
        finally:
            self.audio_in_flight -= reserved

    async def _listen(
        self, ws: WebSocketConnection, session: Session, frame: dict[str, Any], nursery: trio.Nursery
    ) -> None:
        pcm = b64decode(frame.get("audio_data"), "data.audio_data")
        samples = np.concatenate([session.pending, AudioClip.from_pcm(pcm, CAPTURE_RATE).samples])
        whole = len(samples) - len(samples) % BLOCK
        session.pending = samples[whole:]
        for start in range(0, whole, BLOCK):
            result = session.endpointer.process(samples[start : start + BLOCK])
            if isinstance(result, Onset):
                await send_frame(ws, session, "voiced")
            elif isinstance(result, Segment):
                utterance = Utterance(audio=AudioClip(result.samples, CAPTURE_RATE), source="remote")
                await self._begin(ws, session, utterance, {}, None, nursery)

    async def _interrupt(self, ws: WebSocketConnection, session: Session) -> None:
        if session.scope is not None and session.done is not None and not session.done.is_set():
            session.scope.cancel()
            await session.done.wait()
            await send_frame(ws, session, "final", metadata={"interrupted": True})

    async def _begin(
        self,
        ws: WebSocketConnection,
        session: Session,
        utterance: Utterance,
        params: dict[str, str],
        seed: Any,
        nursery: trio.Nursery,
    ) -> None:
        await self._interrupt(ws, session)
        session.transaction_id = uuid.uuid4().hex
        session.context_id = session.context_id or uuid.uuid4().hex
        session.scope, session.done = trio.CancelScope(), trio.Event()
        history = self.histories.open(session.context_id, seed)
        nursery.start_soon(self._turn, ws, session, utterance, params, history, session.scope, session.done)

    async def _turn(
        self,
        ws: WebSocketConnection,
        session: Session,
        utterance: Utterance,
        params: dict[str, str],
        history: History,
        scope: trio.CancelScope,
        done: trio.Event,
    ) -> None:
        reply = Reply(heard=utterance.text)
        outbox = Outbox(ws, session, self.in_flight.pause)
        self.turns += 1
        try:
            with scope, self.in_flight.turn():
                request = TurnRequest(
                    session.transaction_id or "", utterance, history.messages(), session.context_id or "", params
                )
                try:
                    await self._relay(outbox, request, reply)
                except ProviderError as exc:
                    log.warning("reply failed: %s", exc, extra={"turn_id": session.transaction_id})
                    if reply.heard is None and not reply.said:
                        # Nothing of the audio was understood (speech recognition failed): AIAvatarKit answers
                        # `canceled` then, and its client carries on; an `error` would end its receive loop.
                        outbox.add("canceled", metadata={"reason": "speech recognition failed"})
                    else:
                        outbox.add("error", metadata={"error": str(exc)})
                    return
                if not reply.heard and not reply.said:  # nothing understood: what AIAvatarKit does
                    outbox.add("canceled", metadata={"reason": "No speech recognized."})
                    return
                outbox.add(
                    "final",
                    text=" ".join(reply.said),
                    voice_text=" ".join(reply.voiced),
                    metadata={"request_text": reply.heard},
                )
        finally:
            # Whatever the turn queued leaves, a cancelled turn's at once (its robot counts on each `accepted`).
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await outbox.flush(at_once=scope.cancel_called)
            if reply.heard or reply.said:
                history.add_turn(reply.heard, " ".join(reply.said))
            done.set()

    async def _relay(self, outbox: Outbox, request: TurnRequest, reply: Reply) -> None:
        """The brain's reply to the client as it comes: ``accepted``, ``start`` once, then a ``chunk`` per sentence.
        The brain starts first: its cloud request leaves before this robot's ``accepted`` (``outbox``)."""
        send, receive = trio.open_memory_channel[BrainOutput](1)  # 1: the brain goes on while `accepted` waits
        started = False
        with single_error():
            async with trio.open_nursery() as inner:
                inner.start_soon(self.brain.reply, request, send)
                outbox.add("accepted")
                async with receive:
                    while True:
                        try:
                            item = await outbox.take(receive.receive_nowait, receive.receive)
                        except trio.EndOfChannel:
                            break
                        if isinstance(item, Transcript):
                            reply.heard, started = item.text, True
                            outbox.add("start", metadata={"request_text": reply.heard})
                            continue
                        if not started:
                            started = True
                            outbox.add("start", metadata={"request_text": reply.heard})
                        reply.said.append(item.text)
                        if item.voice_text:
                            reply.voiced.append(item.voice_text)
                        await send_chunk(outbox, item, pcm=self.config.pcm)
