"""A sentence's frames: a WAV in one ``chunk``, or in PCM mode a descriptor and its speech in 200 ms frames, sent
as the synthesis streams it; the turn's first audio at once, the rest through the turn's ``Outbox``."""

from __future__ import annotations

import uuid
from typing import Any

import trio

from appliance.audio.base import AudioStream
from appliance.audio.convert import encode_wav
from appliance.brains.avatar_protocol import avatar_control_from_tags, b64encode, control_tags
from appliance.server.frames import Session, frame_text
from appliance.server.outbox import Outbox
from appliance.turns import ReplyChunk


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
