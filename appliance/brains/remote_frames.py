"""Reading an AIAvatarKit server's reply frames into our reply chunks: text, voice text, control tags and
speech (a WAV per sentence, or PCM frames streamed under one descriptor)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from appliance.audio.base import AudioStream
from appliance.audio.convert import AudioFormatError, decode_wav, to_mono_int16
from appliance.brains.avatar_protocol import (
    ProtocolError,
    b64decode,
    tags_from_frame,
)
from appliance.conversation.tags import extract_tags
from appliance.errors import (
    ProviderBadReply,
)
from appliance.turns import ReplyChunk, Tag

log = logging.getLogger(__name__)

Frame = dict[str, Any]
T = TypeVar("T")


def typed(frame: Frame, key: str, kind: type[T], default: T) -> T:
    """A frame's field when it has the expected JSON type, else ``default``: peers send what they like."""
    value = frame.get(key)
    return value if isinstance(value, kind) else default


class RemoteCanceled(ProviderBadReply):
    """The server gave up on the request (its speech recognition failed): another brain may understand it."""


@dataclass(eq=False)
class _PcmSpeech:
    """A PCM-mode sentence: handed out at its descriptor as an ``AudioStream`` and fed as its frames arrive,
    so playback starts with the first frame instead of after the whole sentence."""

    audio_id: str
    channels: int
    sample_width: int
    expected: int | None  # bytes; None: streamed as it is made, it ends where the next frame is not its audio
    send: trio.MemorySendChannel[Any]
    held: ReplyChunk | None = None  # handed out with its first audio: a sentence never heard is never "said"
    remainder: bytes = b""
    size: int = 0

    @property
    def complete(self) -> bool:
        return self.expected is not None and self.size >= self.expected

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


class ReplyReader:
    """Turns one transaction's frames into our reply chunks (sentence by sentence, tags attached)."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.pending_tags: list[Tag] = []
        self.pcm: _PcmSpeech | None = None

    def _text(self, frame: Frame) -> tuple[str, str, tuple[Tag, ...]]:
        text = typed(frame, "text", str, "")
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
        meta = typed(frame, "metadata", dict, {})
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
            frames: Any = meta.get("audio_frame_count", frame.get("audio_frame_count"))
            # No count: the sentence is streamed while it is synthesized (appliance serve), its length unknown.
            count = None if frames is None else int(frames)
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"bad pcm_format {fmt!r}: {exc}") from None
        if rate <= 0 or channels <= 0 or width not in (1, 2, 4) or (count is not None and count < 0):
            raise ProtocolError(f"unusable pcm_format {fmt!r} with {count} frames")
        if count == 0:
            return None
        send, stream = AudioStream.open(rate)
        expected = None if count is None else count * channels * width
        self.pcm = _PcmSpeech(str(audio_id), channels, width, expected, send)
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


def speaks(chunk: ReplyChunk) -> bool:
    return chunk.audio is not None or bool(chunk.voice_text)


def error_text(frame: Frame) -> str | None:
    meta = frame.get("metadata")
    if isinstance(meta, dict):
        error = meta.get("error")
        if error:
            return str(error)[:300]
    if frame.get("type") == "error":
        text = frame.get("text")
        return str(text)[:300] if text else None
    return None
