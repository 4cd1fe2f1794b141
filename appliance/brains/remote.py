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
import math
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    ConnectionTimeout,
    HandshakeError,
    WebSocketConnection,
    connect_websocket_url,
)

from appliance.audio.base import CAPTURE_RATE, AudioClip, AudioStream
from appliance.audio.convert import AudioFormatError, decode_wav, to_mono_int16
from appliance.brains.avatar_protocol import (
    SERVER_TYPES,
    ProtocolError,
    b64decode,
    b64encode,
    pcm16k,
    tags_from_frame,
)
from appliance.bus import EventBus
from appliance.conversation.tags import extract_tags
from appliance.errors import (
    ProviderBadReply,
    ProviderError,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)
from appliance.events import CancelTurnRequested
from appliance.groups import real_errors, single_error
from appliance.settings.brains import RemoteConfig
from appliance.turns import BrainOutput, ReplyChunk, Tag, Transcript, TurnRequest

log = logging.getLogger(__name__)

Frame = dict[str, Any]
T = TypeVar("T")


def _typed(frame: Frame, key: str, kind: type[T], default: T) -> T:
    """A frame's field when it has the expected JSON type, else ``default``: peers send what they like."""
    value = frame.get(key)
    return value if isinstance(value, kind) else default


STABLE_AFTER = 10.0  # seconds a connection must last before reconnect delays start over


class RemoteCanceled(ProviderBadReply):
    """The server gave up on the request (its speech recognition failed): another brain may understand it."""


def map_connect_error(provider: str, url: str, exc: BaseException) -> ProviderError | None:
    """Our error for a failure to open the WebSocket, or None when it is not a network failure."""
    real = real_errors(exc)
    if len(real) != 1:
        return None
    leaf = real[0]
    if isinstance(leaf, ProviderError):
        return leaf
    if isinstance(leaf, ConnectionRejected):
        status = leaf.status_code
        if status in (401, 403):
            return ProviderRejected(provider, f"{url} refused our key (HTTP {status})")
        return ProviderUnavailable(provider, f"{url} refused the WebSocket (HTTP {status})")
    if isinstance(leaf, ConnectionTimeout):
        return ProviderTimeout(provider, f"{url}: no WebSocket handshake in time")
    if isinstance(leaf, HandshakeError | ConnectionClosed):
        return ProviderUnavailable(provider, f"{url}: WebSocket handshake failed: {leaf}")
    if isinstance(leaf, OSError):  # refused, unreachable, DNS failure (gaierror), TLS (SSLError)
        return ProviderUnavailable(provider, f"cannot connect to {url}: {leaf.strerror or leaf}")
    if isinstance(leaf, trio.BrokenResourceError | trio.ClosedResourceError):
        return ProviderUnavailable(provider, f"{url}: connection lost during the handshake")
    return None


@dataclass(eq=False)
class _Turn:
    turn_id: str
    transaction_id: str | None = None
    send: trio.MemorySendChannel[Frame | ProviderError] = field(init=False)
    receive: trio.MemoryReceiveChannel[Frame | ProviderError] = field(init=False)

    def __post_init__(self) -> None:
        # Unbounded: the reader task must never wait on a turn (pongs would stall); a turn reads as fast as
        # frames come, and its frames are bounded by the one reply.
        self.send, self.receive = trio.open_memory_channel[Frame | ProviderError](math.inf)


class _Link:
    """One open WebSocket connection and the session started on it."""

    def __init__(self, ws: WebSocketConnection, session_id: str, provider: str) -> None:
        self.ws = ws
        self.session_id = session_id
        self.provider = provider
        self.turn: _Turn | None = None
        self.awaiting_accept: list[_Turn] = []  # requests sent whose `accepted` has not come, oldest first
        self.stale: dict[str, None] = {}  # transactions of finished or abandoned turns, oldest first
        self.error: ProviderError | None = None
        self.broken = trio.Event()
        self.last_frame_at = trio.current_time()

    async def send(self, frame: Frame) -> None:
        if self.error is not None:
            raise self.error
        try:
            await self.ws.send_message(json.dumps(frame, ensure_ascii=False))
        except ConnectionClosed as exc:
            raise ProviderUnavailable(self.provider, f"connection closed ({_reason(exc)})") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ProviderUnavailable(self.provider, f"connection lost: {exc}") from None

    def begin(self, turn: _Turn) -> None:
        self.turn = turn
        self.awaiting_accept.append(turn)

    def end(self, turn: _Turn, answered: bool) -> None:
        if self.turn is turn:
            self.turn = None
        if answered and turn in self.awaiting_accept:
            self.awaiting_accept.remove(turn)  # finished without an `accepted`: this server does not send them
        del self.awaiting_accept[:-16]  # requests abandoned long ago will not be accepted any more
        if turn.transaction_id:
            self.stale[turn.transaction_id] = None
            while len(self.stale) > 64:
                del self.stale[next(iter(self.stale))]  # forget the oldest
        turn.send.close()

    def deliver(self, frame: Frame) -> None:
        kind = frame.get("type")
        tx = _typed(frame, "transaction_id", str, None)
        if kind == "accepted":
            owner = self.awaiting_accept.pop(0) if self.awaiting_accept else None
            if owner is None or owner is not self.turn:
                if tx:
                    self.stale[tx] = None
                log.debug("accepted for an abandoned request", extra={"brain": self.provider})
                return
            owner.transaction_id = tx
        elif tx and tx in self.stale:
            log.debug("dropped %s of an earlier turn", kind, extra={"brain": self.provider})
            return
        turn = self.turn
        if turn is None:
            if kind not in ("final", "stop", "connected"):
                log.debug("frame %s between turns ignored", kind, extra={"brain": self.provider})
            return
        if tx:
            # Neither a stop nor an `interrupted` final is the start of this turn's reply: both may name the
            # response before it (AIAvatarKit closes its previous transaction so on every new request).
            meta = frame.get("metadata")
            adopt = kind != "stop" and not (kind == "final" and isinstance(meta, dict) and meta.get("interrupted"))
            if turn.transaction_id is None and adopt:
                turn.transaction_id = tx
            elif tx != turn.transaction_id:
                log.debug("dropped %s of transaction %s", kind, tx, extra={"brain": self.provider})
                return
        turn.send.send_nowait(frame)

    def fail(self, error: ProviderError) -> None:
        if self.error is None:
            self.error = error
        if self.turn is not None:
            self.turn.send.send_nowait(error)
        self.broken.set()


def _reason(exc: ConnectionClosed) -> str:
    reason = exc.reason
    if reason is None:
        return "no reason"
    return f"code {reason.code}" + (f": {reason.reason}" if reason.reason else "")


@dataclass(eq=False)
class _PcmSpeech:
    """A PCM-mode sentence: handed out at its descriptor as an ``AudioStream`` and fed as its frames arrive,
    so playback starts with the first frame instead of after the whole sentence."""

    audio_id: str
    channels: int
    sample_width: int
    expected: int  # bytes
    send: trio.MemorySendChannel[Any]
    held: ReplyChunk | None = None  # handed out with its first audio: a sentence never heard is never "said"
    remainder: bytes = b""
    size: int = 0

    @property
    def complete(self) -> bool:
        return self.size >= self.expected

    def feed(self, data: bytes) -> None:
        self.size += len(data)
        data = self.remainder + data
        frame = self.channels * self.sample_width
        whole = len(data) - len(data) % frame  # a frame may be split across two chunks
        self.remainder = data[whole:]
        if whole:
            try:
                self.send.send_nowait(to_mono_int16(data[:whole], self.sample_width, self.channels))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # nobody is listening any more (the turn was interrupted)

    def close(self) -> None:
        self.send.close()


class _ReplyReader:
    """Turns one transaction's frames into our reply chunks (sentence by sentence, tags attached)."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.pending_tags: list[Tag] = []
        self.pcm: _PcmSpeech | None = None

    def _text(self, frame: Frame) -> tuple[str, str, tuple[Tag, ...]]:
        text = _typed(frame, "text", str, "")
        voice = frame.get("voice_text")
        tags = tags_from_frame(frame)
        if not isinstance(voice, str):
            voice, text_tags = extract_tags(text)
            known = {(t.name, t.value) for t in tags}
            tags += tuple(t for t in text_tags if (t.name, t.value) not in known)
        # AIAvatarKit's sentence text keeps the space that followed it ("meet you. "): whoever joins our
        # sentences adds its own.
        return text.strip(), voice.strip(), tags

    def chunk(self, frame: Frame) -> list[ReplyChunk]:
        """The chunks a ``chunk`` frame lets us hand out (often one; none for an empty or tags-only frame)."""
        meta = _typed(frame, "metadata", dict, {})
        pcm_format = meta.get("pcm_format")
        audio_id = meta.get("audio_id", frame.get("audio_id"))
        # A sentence's audio frames share its descriptor's audio_id; AIAvatarKit repeats pcm_format in each of
        # them, so only the descriptor's frame count tells a new sentence from more of the current one.
        if (
            self.pcm is not None
            and audio_id is not None
            and audio_id == self.pcm.audio_id
            and "audio_frame_count" not in meta
        ):
            return self._feed(b64decode(frame.get("audio_data") or "", f"PCM chunk {audio_id}"))
        self.close()
        text, voice, tags = self._text(frame)
        if pcm_format is not None:
            stream = self._descriptor(frame, meta, pcm_format, audio_id)
            if stream is not None:
                assert self.pcm is not None
                self.pcm.held = ReplyChunk(text, voice, tags, stream)
                if frame.get("audio_data"):
                    return self._feed(b64decode(frame["audio_data"], "PCM descriptor audio_data"))
                return []
            audio = None
        elif frame.get("audio_data"):
            wav = b64decode(frame["audio_data"], "chunk audio_data")
            try:
                audio = decode_wav(wav, name="chunk audio_data")
            except AudioFormatError as exc:
                raise ProtocolError(str(exc)) from None
        else:
            audio = None
        if not voice and audio is None:
            self.pending_tags.extend(tags)  # an empty chunk, or tags that belong to the next sentence
            return []
        return [self._with_pending(ReplyChunk(text, voice, tags, audio))]

    def _feed(self, data: bytes) -> list[ReplyChunk]:
        assert self.pcm is not None
        speech = self.pcm
        speech.feed(data)
        done: list[ReplyChunk] = []
        if speech.held is not None and speech.size:
            done.append(self._with_pending(speech.held))
            speech.held = None
        if speech.complete:
            self.close()
        return done

    def _descriptor(self, frame: Frame, meta: dict[str, Any], fmt: Any, audio_id: Any) -> AudioStream | None:
        if not isinstance(fmt, dict):
            raise ProtocolError("metadata.pcm_format is not an object")
        try:
            rate = int(fmt["sample_rate"])
            channels, width = int(fmt.get("channels", 1)), int(fmt.get("sample_width", 2))
            frames: Any = meta.get("audio_frame_count", frame.get("audio_frame_count", 0))
            count = int(frames)
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"bad pcm_format {fmt!r}: {exc}") from None
        if rate <= 0 or channels <= 0 or width not in (1, 2, 4) or count < 0:
            raise ProtocolError(f"unusable pcm_format {fmt!r} with {count} frames")
        if count == 0:
            return None
        send, stream = AudioStream.open(rate)
        self.pcm = _PcmSpeech(str(audio_id), channels, width, count * channels * width, send)
        return stream

    def close(self) -> None:
        """End the PCM sentence being received (complete, or cut short by what came next or a failure)."""
        speech, self.pcm = self.pcm, None
        if speech is None:
            return
        speech.close()
        if speech.held is not None:  # announced, but no audio ever came: only its tags remain
            self.pending_tags.extend(speech.held.tags)

    def finish(self) -> list[ReplyChunk]:
        self.close()
        if self.pending_tags:  # tags after the last sentence still show
            tags, self.pending_tags = tuple(self.pending_tags), []
            return [ReplyChunk("", "", tags, None)]
        return []

    def _with_pending(self, chunk: ReplyChunk) -> ReplyChunk:
        if not self.pending_tags:
            return chunk
        tags = tuple(self.pending_tags) + chunk.tags
        self.pending_tags = []
        return ReplyChunk(chunk.text, chunk.voice_text, tags, chunk.audio)


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
        self._link: _Link | None = None
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
    async def _session(self) -> AsyncIterator[_Link]:
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

    async def _open(self, nursery: trio.Nursery) -> _Link:
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
                link = _Link(ws, uuid.uuid4().hex, self.name)
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

    async def _start(self, link: _Link) -> None:
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
            if kind in ("error", "final") and _error_text(frame):
                raise ProviderRejected(self.name, f"session refused: {_error_text(frame)}")
            log.debug("frame %s before connected ignored", kind, extra={"brain": self.name})

    async def _next_frame(self, link: _Link) -> Frame:
        try:
            message = await link.ws.get_message()
        except ConnectionClosed as exc:
            raise ProviderUnavailable(self.name, f"server closed the connection ({_reason(exc)})") from None
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

    async def _read(self, link: _Link) -> None:
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

    async def _heartbeat(self, link: _Link) -> None:
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
                link.fail(ProviderUnavailable(self.name, f"server closed the connection ({_reason(exc)})"))
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

    async def _turn(self, link: _Link, request: TurnRequest, out: trio.MemorySendChannel[BrainOutput]) -> None:
        turn = _Turn(request.turn_id)
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

    async def _ack_ping(self, link: _Link) -> None:
        timeout = self.config.ack_timeout
        try:
            with trio.fail_after(timeout):
                await link.ws.ping()
        except trio.TooSlowError:
            link.fail(ProviderTimeout(self.name, f"no pong within {timeout:g} s of the request: server frozen"))
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the reader reports the closed connection

    async def _send_request(self, link: _Link, request: TurnRequest) -> None:
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

    async def _stream(self, link: _Link, audio: AudioClip) -> None:
        """The utterance as mic data frames, then silence, so the server's own VAD ends it."""
        pcm = pcm16k(audio) + bytes(int(self.config.stream_tail * CAPTURE_RATE) * 2)
        step = self.config.stream_block_ms * CAPTURE_RATE // 1000 * 2
        for start in range(0, len(pcm), step):
            await link.send(
                {"type": "data", "session_id": link.session_id, "audio_data": b64encode(pcm[start : start + step])}
            )

    async def _receive(
        self, link: _Link, turn: _Turn, request: TurnRequest, out: trio.MemorySendChannel[BrainOutput]
    ) -> bool:
        """Forward the reply; True once the server said it was finished."""
        reader = _ReplyReader(self.name)
        text = request.utterance.text
        try:
            return await self._read_reply(turn, request, out, reader, text)
        finally:
            reader.close()  # a sentence still arriving ends where the reply ended

    async def _read_reply(
        self,
        turn: _Turn,
        request: TurnRequest,
        out: trio.MemorySendChannel[BrainOutput],
        reader: _ReplyReader,
        text: str | None,
    ) -> bool:
        cfg = self.config
        heard = False
        spoke = False  # speech of this turn went out: from here on a server `stop` is a barge-in of it
        deadline = trio.current_time() + cfg.reply_timeout

        async def send_heard(words: str | None) -> None:
            nonlocal heard
            if not heard and words and words.strip():
                heard = True
                await out.send(Transcript(words.strip()))

        while True:
            item: Frame | ProviderError | None = None
            try:
                item = turn.receive.receive_nowait()  # frames that queued up while a sentence played
            except trio.WouldBlock:
                with trio.move_on_at(deadline):
                    item = await turn.receive.receive()
            if item is None:
                raise ProviderTimeout(self.name, "the server stopped answering in the middle of a turn")
            if isinstance(item, ProviderError):
                raise item
            frame = item
            kind = frame["type"]
            if isinstance(frame.get("context_id"), str) and frame["context_id"]:
                self._contexts[request.conversation_id] = frame["context_id"]
            meta = _typed(frame, "metadata", dict, {})
            if kind in ("accepted", "start", "chunk", "voiced"):
                deadline = trio.current_time() + cfg.frame_timeout
            if kind == "start":
                await send_heard(meta.get("request_text") or text)
            elif kind == "chunk":
                await send_heard(text)  # a server that lost its `start`: we know what we asked
                try:
                    chunks = reader.chunk(frame)
                except ProtocolError as exc:
                    raise ProviderBadReply(self.name, str(exc)) from None
                for chunk in chunks:
                    await out.send(chunk)
                    spoke = spoke or _speaks(chunk)
                    deadline = trio.current_time() + cfg.frame_timeout  # its playing is not the server's silence
            elif kind == "final":
                await send_heard(meta.get("request_text") or text)
                try:
                    chunks = reader.finish()
                except ProtocolError as exc:
                    raise ProviderBadReply(self.name, str(exc)) from None
                for chunk in chunks:
                    await out.send(chunk)
                    spoke = spoke or _speaks(chunk)
                if meta.get("interrupted"):
                    log.info("server reports the reply was interrupted", extra={"brain": self.name})
                error = _error_text(frame)
                if error and not heard and not spoke:
                    raise ProviderUnavailable(self.name, f"server error: {error}")
                if not spoke:
                    # Nobody on our side interrupted (that cancels this task): a reply without a word is this
                    # server failing, and the next brain gets the same utterance.
                    raise ProviderBadReply(self.name, "the server ended the turn without saying anything")
                return True
            elif kind == "stop":
                if not spoke:
                    # AIAvatarKit sends this (without transaction_id) on every invoke, before `start`: it is
                    # clearing its previous response. Nothing of this turn plays yet, so there is nothing to stop.
                    log.debug("stop before this turn's speech ignored", extra={"brain": self.name})
                    continue
                log.info("server asked to stop speaking", extra={"brain": self.name, "turn_id": turn.turn_id})
                if self.bus is not None:
                    self.bus.publish(CancelTurnRequested(source=self.name))  # stop what is playing, now
                return True
            elif kind == "canceled":
                raise RemoteCanceled(self.name, "the server canceled the request (its speech recognition failed)")
            elif kind == "error":
                raise ProviderUnavailable(self.name, f"server error: {_error_text(frame) or 'no detail'}")
            elif kind == "tool_call":
                tool = meta.get("tool_call")
                log.info(
                    "server calls tool %s",
                    tool.get("name") if isinstance(tool, dict) else tool,
                    extra={"brain": self.name},
                )
            elif kind == "vision":
                log.info("server asks for an image (%s); not supported", meta.get("source"), extra={"brain": self.name})

    async def aclose(self) -> None:
        return None  # connections live in `run` / `reply` and close with them


def _speaks(chunk: ReplyChunk) -> bool:
    return chunk.audio is not None or bool(chunk.voice_text)


def _error_text(frame: Frame) -> str | None:
    meta = frame.get("metadata")
    if isinstance(meta, dict):
        error = meta.get("error")
        if error:
            return str(error)[:300]
    if frame.get("type") == "error":
        text = frame.get("text")
        return str(text)[:300] if text else None
    return None
