"""What the avatar server keeps per session and the frames it sends: AIAvatarKit's envelope, a sentence's chunks.

The server (``avatar.py``) reads frames and runs turns; this module makes and writes them, so the shape of every
frame the client sees is in one place (when a turn's frames leave: ``outbox.py``; a sentence's: ``chunks.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection
from wsproto.events import TextMessage

from appliance.audio.base import CAPTURE_RATE
from appliance.brains.avatar_protocol import response_frame
from appliance.listening.endpointer import EnergyEndpointer

BLOCK = 320  # 20 ms at 16 kHz, the block size the endpointer is tuned for


@dataclass(eq=False)
class Session:
    """One client session: its ids, the reply running now (scope, done), its mic stream's endpointer."""

    session_id: str
    user_id: str
    context_id: str | None
    metadata: dict[str, Any] = field(default_factory=dict)
    transaction_id: str | None = None
    scope: trio.CancelScope | None = None
    done: trio.Event | None = None
    endpointer: EnergyEndpointer = field(default_factory=lambda: EnergyEndpointer(BLOCK / CAPTURE_RATE))
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int16))


@dataclass
class Reply:
    """What a turn heard and said so far: the ``final`` frame and the history are made of it."""

    heard: str | None
    said: list[str] = field(default_factory=list)
    voiced: list[str] = field(default_factory=list)  # the final carries what was spoken too (AIAvatarKit prints it)


def frame_text(session: Session | None, kind: str, **fields: Any) -> str:
    frame = response_frame(
        kind,
        session.session_id if session else None,
        session.user_id if session else None,
        session.context_id if session else None,
        session.transaction_id if session else None,
        **fields,
    )
    return json.dumps(frame, ensure_ascii=False)


async def send_frame(ws: WebSocketConnection, session: Session | None, kind: str, **fields: Any) -> None:
    await send_texts(ws, [frame_text(session, kind, **fields)])


async def send_texts(ws: WebSocketConnection, frames: list[str]) -> None:
    """Frames in one write: a sentence's descriptor and its first audio leave together. Each write is a send, a
    wake-up of the robot and, on one machine, the kernel's delivery in the sender's time: in a 10-robot burst
    the sends were most of the server's busy time. Through trio-websocket's own encoder and lock (0.11-0.12);
    one message at a time when those are not there."""
    try:
        encoder, lock = getattr(ws, "_wsproto", None), getattr(ws, "_stream_lock", None)
        if len(frames) == 1 or encoder is None or lock is None:
            for text in frames:
                await ws.send_message(text)
            return
        if ws.closed is not None:
            raise ConnectionClosed(ws.closed)
        data = b"".join(encoder.send(TextMessage(data=text)) for text in frames)
        async with lock:
            try:
                await ws._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await ws._abort_web_socket()
    except ConnectionClosed:
        pass  # the reader notices and ends the connection
