"""The turn's types: what was said (``Utterance``), the conversation so far (``Message``), what a brain is
asked (``TurnRequest``) and what it answers (``Transcript``, ``ReplyChunk`` with its ``Tag``s), and the
``Brain`` protocol itself. Every layer may import this module; it imports only audio types and events.

A brain writes into a Trio memory channel instead of being an async generator, because a brain runs tasks
of its own (LLM stream, TTS prefetch) and Trio forbids yielding out of a nursery. The channel is unbuffered,
so a brain naturally works one chunk ahead of playback and no further.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import trio

from appliance.audio.base import Audio, AudioClip
from appliance.events import now


@dataclass(frozen=True, eq=False)
class Utterance:
    """What the user said: captured audio (16 kHz mono) and/or text (typed into the API, or already known).

    ``announce``: nobody spoke; the robot says ``text`` on its own (``appliance say``, the API's /say), so it
    goes into the history as the robot's words, not the user's.
    """

    audio: AudioClip | None = None
    text: str | None = None
    source: str = "voice"
    ended_at: float = field(default_factory=now)
    announce: bool = False

    def __post_init__(self) -> None:
        if self.audio is None and not self.text:
            raise ValueError("an utterance needs audio or text")


@dataclass(frozen=True, eq=False)
class Image:
    """A still for vision-capable models (JPEG or PNG bytes), attached to the latest user message."""

    data: bytes
    mime_type: str = "image/jpeg"


@dataclass(frozen=True)
class Message:
    role: Literal["user", "assistant"]
    content: str


@dataclass(frozen=True)
class Tag:
    """A control tag from the reply, e.g. ``[face:joy]`` → Tag("face", "joy")."""

    name: str
    value: str
    attributes: tuple[tuple[str, str], ...] = ()

    def attribute(self, key: str) -> str | None:
        return dict(self.attributes).get(key)


@dataclass(frozen=True)
class TurnRequest:
    turn_id: str
    utterance: Utterance
    history: tuple[Message, ...] = ()
    conversation_id: str = ""
    prompt_params: dict[str, str] = field(default_factory=dict)
    images: tuple[Image, ...] = ()  # pictures that came with the request (a client's camera), for the model


@dataclass(frozen=True)
class Transcript:
    """What the brain understood the user said. Sent before any reply chunk."""

    text: str


@dataclass(frozen=True, eq=False)
class ReplyChunk:
    """One speakable piece of the reply (usually a sentence).

    ``text`` is what the model wrote (tags included, for history), ``voice_text`` what is spoken, ``tags``
    the control tags found in it, ``audio`` the synthesized speech: a whole clip, or an ``AudioStream`` still
    arriving (None when there is nothing to say).
    """

    text: str
    voice_text: str
    tags: tuple[Tag, ...] = ()
    audio: Audio | None = None
    brain: str | None = None  # who wrote it, when a brain passes on another's reply (failover)


BrainOutput = Transcript | ReplyChunk


@runtime_checkable
class Brain(Protocol):
    @property
    def name(self) -> str: ...

    async def reply(self, request: TurnRequest, out: trio.MemorySendChannel[BrainOutput]) -> None:
        """Send a ``Transcript`` (if any) then ``ReplyChunk``s, in speaking order; close ``out`` when done.

        Raise a :class:`appliance.errors.ProviderError` on failure. Cancellation means the user interrupted:
        stop at once and let open streams close.
        """
        ...

    async def aclose(self) -> None: ...
