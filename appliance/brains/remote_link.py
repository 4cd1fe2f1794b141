"""One WebSocket session with the server: its reader hands each turn the frames that belong to it, and
connection failures are mapped into our error tree."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    ConnectionTimeout,
    HandshakeError,
    WebSocketConnection,
)

from appliance.brains.remote_frames import Frame, typed
from appliance.errors import (
    ProviderError,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)
from appliance.groups import real_errors

log = logging.getLogger(__name__)


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
class LinkTurn:
    turn_id: str
    transaction_id: str | None = None
    send: trio.MemorySendChannel[Frame | ProviderError] = field(init=False)
    receive: trio.MemoryReceiveChannel[Frame | ProviderError] = field(init=False)

    def __post_init__(self) -> None:
        # Unbounded: the reader task must never wait on a turn (pongs would stall); a turn reads as fast as
        # frames come, and its frames are bounded by the one reply.
        self.send, self.receive = trio.open_memory_channel[Frame | ProviderError](math.inf)


class Link:
    """One open WebSocket connection and the session started on it."""

    def __init__(self, ws: WebSocketConnection, session_id: str, provider: str) -> None:
        self.ws = ws
        self.session_id = session_id
        self.provider = provider
        self.turn: LinkTurn | None = None
        self.awaiting_accept: list[LinkTurn] = []  # requests sent whose `accepted` has not come, oldest first
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
            raise ProviderUnavailable(self.provider, f"connection closed ({close_reason(exc)})") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ProviderUnavailable(self.provider, f"connection lost: {exc}") from None

    def begin(self, turn: LinkTurn) -> None:
        self.turn = turn
        self.awaiting_accept.append(turn)

    def end(self, turn: LinkTurn, answered: bool) -> None:
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
        tx = typed(frame, "transaction_id", str, None)
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


def close_reason(exc: ConnectionClosed) -> str:
    reason = exc.reason
    if reason is None:
        return "no reason"
    return f"code {reason.code}" + (f": {reason.reason}" if reason.reason else "")
