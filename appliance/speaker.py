"""Lines to speak on request (``/say``, ``/perform``, ``SayRequested`` from any subsystem), one at a time.

A queued line waits until the robot is not in a turn; an interrupting one cancels the running turn and goes
first. Each line is a turn of its own, answered by a ``ScriptedBrain`` with the robot's current voice, so
faces, state, history and metrics treat it like any reply.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio

from appliance.audio.base import AudioClip, AudioStream
from appliance.brains.scripted import ScriptedBrain
from appliance.bus import EventBus
from appliance.conversation.service import ConversationService
from appliance.events import SayRequested
from appliance.providers.tts.base import SpeechSynthesizer
from appliance.turns import Brain, ReplyChunk, Utterance

log = logging.getLogger(__name__)


class QueueFull(Exception):
    pass


@dataclass(eq=False)
class SayJob:
    text: str
    interrupt: bool = False
    source: str = "api"
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    turn_id: str | None = None
    started: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)


class Speaker:
    def __init__(self, conversation: ConversationService, bus: EventBus, max_queued: int = 16) -> None:
        self.conversation = conversation
        self.bus = bus
        self.max_queued = max_queued
        self.queue: deque[SayJob] = deque()
        self.current: SayJob | None = None
        self._wake = trio.Event()
        self._waiting: trio.CancelScope | None = None

    def submit(self, text: str, *, interrupt: bool = False, source: str = "api") -> SayJob:
        if len(self.queue) >= self.max_queued:
            raise QueueFull(f"{len(self.queue)} lines are already waiting")
        job = SayJob(text, interrupt, source)
        if interrupt:
            # Stop waiting for the running turn; starting the new one cancels that turn.
            self.queue.appendleft(job)
            if self._waiting is not None:
                self._waiting.cancel()
        else:
            self.queue.append(job)
        self._wake.set()
        return job

    def position(self, job: SayJob) -> int:
        """0 = speaking now, n = n-th in the queue, -1 = finished."""
        if job is self.current:
            return 0
        try:
            return self.queue.index(job) + 1
        except ValueError:
            return -1

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            with self.bus.subscribe(SayRequested, name="control-say") as sub:
                nursery.start_soon(self._work)
                task_status.started()
                async for event in sub:
                    assert isinstance(event, SayRequested)
                    try:
                        self.submit(event.text, interrupt=event.interrupt, source=event.source)
                    except QueueFull:
                        log.warning("say queue full; dropped a line from %s", event.source)

    async def _work(self) -> None:
        while True:
            while not self.queue:
                self._wake = trio.Event()
                await self._wake.wait()
            if not self.queue[0].interrupt:
                await self._wait_idle()
                if not self.queue:
                    continue
            job = self.queue.popleft()
            self.current = job
            try:
                await self._speak(job)
            except Exception:  # one line that cannot be spoken must not stop the queue
                log.exception("could not say %r", job.text[:40])
            finally:
                self.current = None
                job.done.set()

    async def _wait_idle(self) -> None:
        with trio.CancelScope() as self._waiting:
            await self.conversation.wait_idle()
        self._waiting = None

    async def _speak(self, job: SayJob) -> None:
        tts = await voice_of(self.conversation)
        active = await self.conversation.start_turn(
            Utterance(text=job.text, source=job.source, announce=True), brain=ScriptedBrain(job.text, tts)
        )
        job.turn_id = active.turn_id
        job.started.set()
        with trio.CancelScope() as self._waiting:
            await active.done.wait()
        self._waiting = None


async def voice_of(conversation: ConversationService) -> SpeechSynthesizer:
    """The synthesizer the robot answers with, so a said line sounds like a reply."""
    brain: Any = conversation.brain
    ensure = getattr(brain, "ensure", None)
    if ensure is not None:
        try:
            brain = await ensure()
        except Exception as exc:  # noqa: BLE001  a brain that cannot be built still leaves the local voice
            log.warning("brain unavailable for /say (%s); using the local voice", exc)
            brain = None
    for attr in ("tts", "voice"):
        tts = getattr(brain, attr, None)
        if tts is not None and hasattr(tts, "synthesize"):
            return tts
    if conversation.error_voice is not None:
        return conversation.error_voice
    from appliance.conversation.local_voice import LocalVoice

    return LocalVoice()


class TappedBrain:
    """Passes another brain's output through unchanged while showing each piece to ``tap`` (for SSE).

    The tap serves one API client, so its failure is that client's: ``on_error`` hears of it, the tap is
    dropped and the reply goes on (the conversation subsystem never sees it). Chunks reach the tap in
    order, each with its audio whole: with ``copy_audio`` a streamed sentence (``AudioStream``) is copied
    as it arrives (playback reads the copy without waiting) and its chunk is tapped once the stream ends.
    """

    def __init__(
        self,
        inner: Brain,
        tap: Callable[[Any], None],
        *,
        copy_audio: bool = False,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self.inner = inner
        self.tap: Callable[[Any], None] | None = tap
        self.copy_audio = copy_audio
        self.on_error = on_error
        self.name = inner.name

    def _show(self, item: Any) -> None:
        if self.tap is None:
            return
        try:
            self.tap(item)
        except Exception as exc:  # the client's stream ends; the robot's turn does not
            log.exception("control stream failed on %s; ending that stream", type(item).__name__)
            self.tap = None
            if self.on_error is not None:
                self.on_error(exc)

    async def reply(self, request: Any, out: trio.MemorySendChannel[Any]) -> None:
        from appliance.groups import single_error

        send, receive = trio.open_memory_channel[Any](0)
        shown = trio.Event()  # the previous chunk has been tapped: keeps taps in reply order
        shown.set()
        with single_error():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.inner.reply, request, send)
                async with out, receive:
                    async for item in receive:
                        if not isinstance(item, ReplyChunk):
                            self._show(item)
                        elif self.copy_audio and isinstance(item.audio, AudioStream) and self.tap is not None:
                            feed, copy = AudioStream.open(item.audio.sample_rate)
                            nursery.start_soon(self._tee, item, feed, shown, mine := trio.Event())
                            shown = mine
                            item = dataclasses.replace(item, audio=copy)
                        elif shown.is_set():
                            self._show(item)
                        else:
                            nursery.start_soon(self._show_after, item, shown, mine := trio.Event())
                            shown = mine
                        await out.send(item)

    async def _show_after(self, item: Any, previous: trio.Event, done: trio.Event) -> None:
        await previous.wait()
        self._show(item)
        done.set()

    async def _tee(
        self, chunk: ReplyChunk, feed: trio.MemorySendChannel[Any], previous: trio.Event, done: trio.Event
    ) -> None:
        assert isinstance(chunk.audio, AudioStream)
        pieces: list[np.ndarray] = []
        failed = False
        async with feed:
            try:
                async for piece in chunk.audio:
                    pieces.append(piece)
                    with contextlib.suppress(trio.BrokenResourceError):  # playback stopped (barge-in)
                        feed.send_nowait(piece)
            except Exception as exc:  # noqa: BLE001  the synthesizer failed mid-way: playback hears it as before
                failed = True
                with contextlib.suppress(trio.BrokenResourceError):
                    feed.send_nowait(exc)
        await previous.wait()
        clip = None
        if pieces and not failed:
            clip = AudioClip(np.concatenate(pieces), chunk.audio.sample_rate)
        self._show(dataclasses.replace(chunk, audio=clip))
        done.set()

    async def aclose(self) -> None:
        return None  # the wrapped brain belongs to the appliance
