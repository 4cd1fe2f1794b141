"""The cloud brain's speech pipeline: sentences in, reply chunks out in speaking order.

Each sentence's speech is requested as soon as its text is known, at most ``prefetch`` ahead of the one being
handed out, so a turn ends about one synthesis after its last sentence was written. The first sentence is
what the user waits for: its request goes out before any other (and, given ``later``, the others wait for it:
``appliance serve`` lets them wait for an idle moment, so ten robots' first sentences go before anyone's next).
Speech that streams (``synthesize_stream``) is handed out with its first piece and fed as the rest arrives. A
synthesis failure is raised by the reader in speaking order, after everything before it was handed out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType

import trio

from appliance.audio.base import AudioClip, AudioStream
from appliance.errors import ProviderBadReply, ProviderError
from appliance.providers.tts.base import SpeechSynthesizer
from appliance.streams import closing
from appliance.turns import BrainOutput, ReplyChunk, Tag


@dataclass(eq=False)
class _Pending:
    """A sentence whose speech is being synthesized."""

    text: str
    voice_text: str
    tags: tuple[Tag, ...]
    tts: SpeechSynthesizer
    done: trio.Event = field(default_factory=trio.Event)
    requested: trio.Event = field(default_factory=trio.Event)  # its speech request is under way
    chunk: ReplyChunk | None = None
    error: BaseException | None = None


class SpeechQueue:
    """Owns the syntheses of one reply: the nursery they run in, the prefetch slots and the speaking order.

    The producer ``add``s sentences and closes the queue (``async with queue:``) when the reply is written;
    ``deliver`` hands the chunks out in order until then.
    """

    def __init__(
        self, nursery: trio.Nursery, prefetch: int, later: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self._nursery = nursery
        self._later = later
        self._slots = trio.Semaphore(prefetch)
        self._order_send, self._order_receive = trio.open_memory_channel[_Pending](prefetch)
        self._first: _Pending | None = None

    async def __aenter__(self) -> SpeechQueue:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._order_send.aclose()

    async def add(self, text: str, voice_text: str, tags: tuple[Tag, ...], tts: SpeechSynthesizer) -> None:
        """Queue one sentence; waits while ``prefetch`` sentences are already ahead of the one playing."""
        pending = _Pending(text, voice_text, tags, tts)
        first, self._first = self._first, self._first or pending
        await self._slots.acquire()
        self._nursery.start_soon(self._synthesize, pending, first)
        await self._order_send.send(pending)

    async def deliver(self, out: trio.MemorySendChannel[BrainOutput], handed: Callable[[ReplyChunk], None]) -> None:
        """Hand each chunk out in speaking order, as soon as its speech starts to be available."""
        async with self._order_receive:
            async for pending in self._order_receive:
                await pending.done.wait()
                if pending.error is not None:
                    raise pending.error
                assert pending.chunk is not None
                await out.send(pending.chunk)
                handed(pending.chunk)
                self._slots.release()

    async def _synthesize(self, pending: _Pending, first: _Pending | None) -> None:
        if first is not None:
            await first.requested.wait()
            if self._later is not None:
                await self._later()
        streaming = getattr(pending.tts, "synthesize_stream", None)
        pending.requested.set()
        try:
            if not pending.voice_text:
                pending.chunk = ReplyChunk(pending.text, pending.voice_text, pending.tags, None)
            elif streaming is None:
                audio = await pending.tts.synthesize(pending.voice_text)
                pending.chunk = ReplyChunk(pending.text, pending.voice_text, pending.tags, audio)
            else:
                await self._stream_speech(pending, streaming(pending.voice_text))
        except Exception as exc:  # handed to the reader, which raises it in speaking order
            if pending.done.is_set():
                raise  # a bug after the chunk was handed out: let the turn fail loudly
            pending.error = exc
        finally:
            pending.requested.set()
            pending.done.set()

    async def _stream_speech(self, pending: _Pending, pieces: AsyncIterator[AudioClip]) -> None:
        """Hand the chunk out with the first piece of speech, then keep feeding it as the rest arrives."""
        async with closing(pieces):
            head = await anext(pieces, None)
            if head is None:
                raise ProviderBadReply(pending.tts.name, "empty audio")
            send, stream = AudioStream.open(head.sample_rate)
            send.send_nowait(head.samples)
            pending.chunk = ReplyChunk(pending.text, pending.voice_text, pending.tags, stream)
            pending.done.set()
            async with send:
                try:
                    async for piece in pieces:
                        send.send_nowait(piece.samples)
                except ProviderError as exc:
                    send.send_nowait(exc)  # the player raises it after what did arrive
