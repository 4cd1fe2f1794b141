"""What the avatar server keeps per session and the frames it sends: AIAvatarKit's envelope, a sentence's chunks.

The server (``avatar.py``) reads frames and runs turns; this module makes and writes them, so the shape of every
frame the client sees is in one place (when a turn's frames leave: ``outbox.py``).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection
from wsproto.events import TextMessage

from appliance.audio.base import CAPTURE_RATE, AudioStream
from appliance.audio.convert import encode_wav
from appliance.brains.avatar_protocol import avatar_control_from_tags, b64encode, control_tags, response_frame
from appliance.listening.endpointer import EnergyEndpointer
from appliance.turns import ReplyChunk

if TYPE_CHECKING:
    from appliance.server.outbox import Outbox

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


async def send_chunk(outbox: Outbox, chunk: ReplyChunk, *, pcm: bool) -> None:
    """One sentence: a WAV in one ``chunk``, or (``pcm``) a descriptor chunk then its PCM in 200 ms frames. The
    turn's first chunk leaves at once (its first audio frame, in PCM mode); the rest waits in ``outbox``."""
    # As AIAvatarKit: a sentence always carries an avatar_control_request (its fields null when there is no
    # face or animation); control_tags is null rather than empty.
    control = {"animation_name": None, "animation_duration": None, "face_name": None, "face_duration": None}
    control.update(avatar_control_from_tags(chunk.tags) or {})
    common: dict[str, Any] = {
        "text": chunk.text,
        "voice_text": chunk.voice_text,
        "avatar_control_request": control,
        "control_tags": control_tags(chunk.tags) or None,
    }
    audio = chunk.audio
    if pcm and isinstance(audio, AudioStream):
        await _stream_pcm(outbox, common, audio)
        return
    if isinstance(audio, AudioStream):
        # A WAV carries its length in its header, so a sentence is read to its end first.
        # A failure mid-way raises the provider's error: the client gets an `error` frame.
        audio = await audio.read_all()
    if audio is None:
        outbox.add("chunk", **common)
    elif not pcm:
        outbox.add("chunk", audio_data=b64encode(encode_wav(audio)), **common)
    else:
        fmt = _pcm_format(audio.sample_rate)
        audio_id = uuid.uuid4().hex
        meta = {"pcm_format": fmt, "audio_id": audio_id, "audio_frame_count": len(audio.samples)}
        outbox.add("chunk", **common, metadata=meta)
        outbox.extend(_pcm_frames(outbox.session, audio.pcm(), fmt, audio_id))
    if not outbox.first_sent:
        await outbox.urgent()


def _pcm_format(rate: int) -> dict[str, int]:
    return {"sample_rate": rate, "channels": 1, "sample_width": 2}


async def _stream_pcm(outbox: Outbox, common: dict[str, Any], audio: AudioStream) -> None:
    """A sentence whose speech is still arriving: its descriptor with the first piece, then each piece as it comes.

    AIAvatarKit's client (0.9.2, ``perform_response``) opens its player at a descriptor (pcm_format, no
    audio_data) and queues every frame that carries pcm_format and audio; it never reads the descriptor's
    ``audio_frame_count``. Ours reads it to know where a sentence ends; a streamed sentence's length is not known
    until its synthesis ends, so its descriptor leaves the count out and the sentence ends at the next frame
    that is not its audio. The descriptor waits for the first piece, so a synthesis that fails before any speech
    announces none. The turn's first sentence leaves its descriptor and first 200 ms at once; the rest of it
    (and every later sentence) waits in the outbox for the other robots' first audio.
    """
    fmt = _pcm_format(audio.sample_rate)
    audio_id = uuid.uuid4().hex
    announced = False
    try:
        while True:
            try:
                piece = await outbox.take(audio.receive_nowait, audio.receive)
            except trio.EndOfChannel:
                break
            if not announced:
                announced = True
                outbox.add("chunk", **common, metadata={"pcm_format": fmt, "audio_id": audio_id})
            frames = _pcm_frames(outbox.session, piece.astype("<i2", copy=False).tobytes(), fmt, audio_id)
            if not outbox.first_sent:
                outbox.extend([frames.pop(0)])
                await outbox.urgent()
            outbox.extend(frames)
    finally:
        audio.close()
    if not announced:
        outbox.add("chunk", **common)
        if not outbox.first_sent:
            await outbox.urgent()


def _pcm_frames(session: Session, raw: bytes, fmt: dict[str, int], audio_id: str) -> list[str]:
    step = fmt["sample_rate"] // 5 * 2  # at most 200 ms a frame
    # Each frame names its format again: AIAvatarKit's client queues a frame for its PCM stream only when it
    # carries pcm_format, and would try to play it as a WAV otherwise.
    meta = {"pcm_format": fmt, "audio_id": audio_id}
    return [
        frame_text(session, "chunk", audio_data=b64encode(raw[start : start + step]), metadata=meta)
        for start in range(0, len(raw), step)
    ]
