"""``RemoteBrain``: replies from a conversation server on the LAN that speaks the AIAvatarKit WebSocket protocol.

Two ways to run:

* as a service (``run``, started by the supervisor or by :class:`FailoverBrain`): one session is kept open,
  pinged every ``heartbeat_interval`` and reopened with exponential backoff when it breaks, so a turn never
  pays for the handshake and a dead or frozen server is known before the user speaks;
* alone (tests, ``appliance say``-style tools): each ``reply`` opens a session for that turn only.

One reader task per connection reads every frame (so pongs are always processed) and hands the frames of the
running turn to it. Frames of an earlier turn (a second ``final`` after an interruption, chunks still in
flight after a barge-in) are recognised by their ``transaction_id`` and dropped. A server ``stop`` ends the
turn (and asks for playback to stop) only once this turn's speech has gone out: AIAvatarKit sends one without
``transaction_id`` before every reply, clearing its previous response. A turn the server ends without a word
(and that nobody on our side interrupted: that cancels the task) is a ``ProviderBadReply``, so the next brain
gets the same utterance.

Failures are mapped once, here, into :mod:`appliance.errors`: refused or unreachable → ``ProviderUnavailable``,
bad key → ``ProviderRejected``, no pong / no frames in time → ``ProviderTimeout``, unusable frames →
``ProviderBadReply``. That is all :class:`~appliance.brains.failover.FailoverBrain` decides on.
"""

from __future__ import annotations

import json
import logging
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any

import trio
from trio_websocket import (
    ConnectionClosed,
    connect_websocket_url,
)

from appliance.audio.base import CAPTURE_RATE, AudioClip
from appliance.brains.avatar_protocol import (
    SERVER_TYPES,
    b64encode,
    pcm16k,
)
from appliance.brains.remote_frames import Frame, RemoteCanceled, error_text
from appliance.brains.remote_link import Link, LinkTurn, close_reason, map_connect_error
from appliance.brains.remote_reply import ReplyTurn
from appliance.bus import EventBus
from appliance.errors import (
    ProviderBadReply,
    ProviderError,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)
from appliance.groups import single_error
from appliance.settings.brains import RemoteConfig
from appliance.turns import BrainOutput, TurnRequest

log = logging.getLogger(__name__)

__all__ = ["RemoteBrain", "RemoteCanceled"]

STABLE_AFTER = 10.0  # seconds a connection must last before reconnect delays start over


class RemoteBrain:
    """A :class:`~appliance.turns.Brain` backed by an AIAvatarKit-protocol server."""

    def __init__(
        self,
        config: RemoteConfig,
        *,
        name: str = "remote",
        ssl_context: ssl.SSLContext | None = None,
        bus: EventBus | None = None,
    ) -> None:
        self.config = config
        self.name = name
        self.bus = bus  # a server's `stop` (its barge-in or guardrail) cancels the turn through it
        self._api_key = config.api_key.get_secret_value() if config.api_key else None
        self._ssl = ssl_context
        if self._ssl is None and config.url.startswith("wss:"):
            self._ssl = ssl.create_default_context()
            if not config.verify_tls:
                self._ssl.check_hostname = False
                self._ssl.verify_mode = ssl.CERT_NONE
        self._link: Link | None = None
        self._managed = False
        self._attempt: trio.Event | None = None  # set when the connection attempt in flight has ended
        self._turn_lock = trio.Lock()
        self._contexts: dict[str, str] = {}  # our conversation id → the server's context id
        self.last_error: ProviderError | None = None
        self.connects = 0

    # --- connection -----------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._link is not None and self._link.error is None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep one session open for as long as this runs: heartbeat, and reconnect with backoff."""
        cfg = self.config
        self._managed = True
        task_status.started()
        delay = cfg.reconnect_initial_delay
        try:
            while True:
                self._attempt = trio.Event()
                connected_at: float | None = None
                try:
                    async with self._session() as link:
                        self._link = link
                        self._attempt.set()
                        self.last_error = None
                        connected_at = trio.current_time()
                        log.info("connected to %s", cfg.url, extra={"brain": self.name})
                        await link.broken.wait()
                        assert link.error is not None
                        raise link.error
                except ProviderError as exc:
                    self.last_error = exc
                    # Only a connection that stayed up a while resets the backoff: a server that accepts and
                    # drops at once must not be hammered.
                    if connected_at is not None and trio.current_time() - connected_at >= STABLE_AFTER:
                        delay = cfg.reconnect_initial_delay
                    log.warning("%s; reconnecting in %.1f s", exc, delay, extra={"brain": self.name})
                finally:
                    self._link = None
                    self._attempt.set()
                await trio.sleep(delay)
                delay = min(delay * 2, cfg.reconnect_max_delay)
        finally:
            self._managed = False

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[Link]:
        """Connect, start a session and keep its reader and heartbeat running while the body runs."""
        with self._mapped_errors():
            async with trio.open_nursery() as nursery:
                link = await self._open(nursery)
                try:
                    yield link
                finally:
                    try:
                        # A frozen server never completes the close handshake; a broken link is not asked to.
                        with trio.move_on_after(0.5 if link.error is None else 0):
                            if link.error is None:
                                with suppress(ProviderError):  # ending the session politely is optional
                                    await link.send({"type": "stop", "session_id": link.session_id})
                            await link.ws.aclose()
                    finally:
                        nursery.cancel_scope.cancel()

    @contextmanager
    def _mapped_errors(self) -> Iterator[None]:
        """The connection's own failures (also those its background reader raises) as our errors."""
        try:
            with single_error():
                yield
        except ProviderError:
            raise
        except BaseException as exc:
            mapped = map_connect_error(self.name, self.config.url, exc)
            if mapped is None:
                raise
            raise mapped from None

    async def _open(self, nursery: trio.Nursery) -> Link:
        cfg = self.config
        headers = [(b"Authorization", f"Bearer {self._api_key}".encode())] if self._api_key else []
        try:
            with trio.fail_after(cfg.connect_timeout):
                ws = await connect_websocket_url(
                    nursery,
                    cfg.url,
                    self._ssl,
                    extra_headers=headers,
                    message_queue_size=64,
                    max_message_size=16 * 1024 * 1024,
                )
                link = Link(ws, uuid.uuid4().hex, self.name)
                await self._start(link)
        except trio.TooSlowError:
            raise ProviderTimeout(self.name, f"{cfg.url}: no session within {cfg.connect_timeout:g} s") from None
        except ProviderError:
            raise
        except BaseException as exc:
            mapped = map_connect_error(self.name, cfg.url, exc)
            if mapped is None:
                raise
            raise mapped from None
        self.connects += 1
        nursery.start_soon(self._read, link)
        nursery.start_soon(self._heartbeat, link)
        return link

    async def _start(self, link: Link) -> None:
        await link.send(
            {
                "type": "start",
                "session_id": link.session_id,
                "user_id": self.config.user_id,
                "context_id": None,
                "metadata": {"client": "appliance"},
            }
        )
        while True:
            frame = await self._next_frame(link)
            kind = frame.get("type")
            if kind == "connected":
                return
            if kind in ("error", "final") and error_text(frame):
                raise ProviderRejected(self.name, f"session refused: {error_text(frame)}")
            log.debug("frame %s before connected ignored", kind, extra={"brain": self.name})

    async def _next_frame(self, link: Link) -> Frame:
        try:
            message = await link.ws.get_message()
        except ConnectionClosed as exc:
            raise ProviderUnavailable(self.name, f"server closed the connection ({close_reason(exc)})") from None
        link.last_frame_at = trio.current_time()
        return self._parse(message)

    def _parse(self, message: str | bytes) -> Frame:
        if isinstance(message, bytes):
            raise ProviderBadReply(self.name, f"binary frame of {len(message)} bytes where JSON text was expected")
        try:
            frame = json.loads(message)
        except json.JSONDecodeError as exc:
            detail = f"malformed JSON frame ({exc.msg} at {exc.pos}): {message[:80]!r}"
            raise ProviderBadReply(self.name, detail) from None
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            raise ProviderBadReply(self.name, f"frame without a type: {message[:80]!r}")
        return frame

    async def _read(self, link: Link) -> None:
        while True:
            try:
                frame = await self._next_frame(link)
            except ProviderBadReply as exc:
                # One bad frame spoils the turn it belongs to; the connection itself is still usable.
                log.warning("%s", exc, extra={"brain": self.name})
                if link.turn is not None:
                    link.turn.send.send_nowait(exc)
                continue
            except ProviderError as exc:
                link.fail(exc)
                return
            if frame["type"] not in SERVER_TYPES:
                log.info("unknown frame type %r ignored", frame["type"], extra={"brain": self.name})
                continue
            link.deliver(frame)

    async def _heartbeat(self, link: Link) -> None:
        cfg = self.config
        while True:
            await trio.sleep(cfg.heartbeat_interval)
            try:
                with trio.fail_after(cfg.heartbeat_timeout):
                    await link.ws.ping()
            except trio.TooSlowError:
                link.fail(ProviderTimeout(self.name, f"no pong within {cfg.heartbeat_timeout:g} s: server frozen"))
                return
            except ConnectionClosed as exc:
                link.fail(ProviderUnavailable(self.name, f"server closed the connection ({close_reason(exc)})"))
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                link.fail(ProviderUnavailable(self.name, f"connection lost: {exc}"))
                return

    async def probe(self) -> None:
        """Raise unless the server answers now: a ping on the open session, or a fresh session when alone."""
        link = self._link
        if self._managed:
            if link is None or link.error is not None:
                raise self.last_error or ProviderUnavailable(self.name, "not connected")
            try:
                with trio.fail_after(self.config.heartbeat_timeout):
                    await link.ws.ping()
            except trio.TooSlowError:
                raise ProviderTimeout(self.name, "no pong: server frozen") from None
            except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
                raise ProviderUnavailable(self.name, "connection lost") from None
            return
        async with self._session():
            pass

    # --- turns ----------------------------------------------------------------------------------------------

    async def reply(self, request: TurnRequest, out: trio.MemorySendChannel[BrainOutput]) -> None:
        async with out, self._turn_lock:
            if not self._managed:
                async with self._session() as own:
                    await self._turn(own, request, out)
                return
            link = self._link
            if link is None and self._attempt is not None and not self._attempt.is_set():
                with trio.move_on_after(self.config.connect_timeout):
                    await self._attempt.wait()  # the first connection is being opened right now
                link = self._link
            if link is None or link.error is not None:
                known = link.error if link is not None else self.last_error
                raise known or ProviderUnavailable(self.name, f"not connected to {self.config.url}")
            await self._turn(link, request, out)

    async def _turn(self, link: Link, request: TurnRequest, out: trio.MemorySendChannel[BrainOutput]) -> None:
        turn = LinkTurn(request.turn_id)
        link.begin(turn)
        answered = False
        try:
            with single_error():
                async with trio.open_nursery() as nursery:
                    # A server that froze since the last heartbeat would cost the user a whole heartbeat cycle;
                    # a ping sent with the request finds out within ack_timeout, at no cost when all is well.
                    nursery.start_soon(self._ack_ping, link)
                    await self._send_request(link, request)
                    answered = await self._receive(link, turn, request, out)
                    nursery.cancel_scope.cancel()
        finally:
            link.end(turn, answered)

    async def _ack_ping(self, link: Link) -> None:
        timeout = self.config.ack_timeout
        try:
            with trio.fail_after(timeout):
                await link.ws.ping()
        except trio.TooSlowError:
            link.fail(ProviderTimeout(self.name, f"no pong within {timeout:g} s of the request: server frozen"))
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the reader reports the closed connection

    async def _send_request(self, link: Link, request: TurnRequest) -> None:
        utterance = request.utterance
        context_id = self._contexts.get(request.conversation_id)
        metadata: dict[str, Any] = {"turn_id": request.turn_id, "conversation_id": request.conversation_id}
        if context_id is None and request.history:
            # A server meeting this conversation for the first time (we just failed over to it) may use what
            # was said so far; AIAvatarKit ignores unknown metadata.
            metadata["history"] = [{"role": m.role, "content": m.content} for m in request.history]
        if self.config.input == "stream" and utterance.audio is not None and not utterance.text:
            await self._stream(link, utterance.audio)
            return
        frame: Frame = {
            "type": "invoke",
            "session_id": link.session_id,
            "user_id": self.config.user_id,
            "context_id": context_id,
            "system_prompt_params": dict(request.prompt_params),
            "files": [],
            "metadata": metadata,
        }
        if utterance.text:
            frame["text"] = utterance.text
        else:
            assert utterance.audio is not None
            frame["audio_data"] = b64encode(pcm16k(utterance.audio))
        await link.send(frame)

    async def _stream(self, link: Link, audio: AudioClip) -> None:
        """The utterance as mic data frames, then silence, so the server's own VAD ends it."""
        pcm = pcm16k(audio) + bytes(int(self.config.stream_tail * CAPTURE_RATE) * 2)
        step = self.config.stream_block_ms * CAPTURE_RATE // 1000 * 2
        for start in range(0, len(pcm), step):
            await link.send(
                {"type": "data", "session_id": link.session_id, "audio_data": b64encode(pcm[start : start + step])}
            )

    async def _receive(
        self, link: Link, turn: LinkTurn, request: TurnRequest, out: trio.MemorySendChannel[BrainOutput]
    ) -> bool:
        """Forward the reply; True once the server said it was finished."""
        reply = ReplyTurn(self.name, self.config, turn, request, out, self._contexts, self.bus)
        try:
            return await reply.run()
        finally:
            reply.reader.close()  # a sentence still arriving ends where the reply ended

    async def aclose(self) -> None:
        return None  # connections live in `run` / `reply` and close with them
