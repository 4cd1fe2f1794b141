"""Everything that crosses from one subsystem to another, as small frozen dataclasses.

Events marked ``droppable`` only refresh a display (levels, status); a slow subscriber may lose them.
Everything else (commands, turn results, state changes) is kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar

import trio


class State(str, Enum):  # noqa: UP042
    IDLE = "idle"
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"
    MUTED = "muted"
    ERROR = "error"


def now() -> float:
    """Trio's clock inside the event loop (so virtual-time tests line up), the monotonic clock outside it."""
    try:
        return trio.current_time()
    except RuntimeError:
        return time.monotonic()


@dataclass(frozen=True)
class Event:
    droppable: ClassVar[bool] = False
    at: float = field(default_factory=now, kw_only=True, compare=False)


# --- state -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StateChanged(Event):
    old: State
    new: State
    reason: str = ""


# --- listening ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeechStarted(Event):
    """The endpointer heard the start of speech (or the talk button opened the mic)."""

    barge_in: bool = False


@dataclass(frozen=True)
class SpeechDiscarded(Event):
    """A sound that started like speech was too short or too long to be an utterance."""

    reason: str


@dataclass(frozen=True)
class UtteranceCaptured(Event):
    duration: float
    source: str = "voice"


@dataclass(frozen=True)
class InputLevel(Event):
    droppable: ClassVar[bool] = True
    db: float


# --- commands (from buttons, the control API, the terminal) --------------------------------------------------


@dataclass(frozen=True)
class ListenRequested(Event):
    """Open the microphone for one utterance (push-to-talk / button press)."""

    source: str = "button"


@dataclass(frozen=True)
class ListenReleased(Event):
    """The talk button was released: the utterance ends here."""

    source: str = "button"


@dataclass(frozen=True)
class CancelTurnRequested(Event):
    source: str = "button"


@dataclass(frozen=True)
class MuteRequested(Event):
    muted: bool
    source: str = "button"


@dataclass(frozen=True)
class SayRequested(Event):
    text: str
    interrupt: bool = False
    source: str = "api"


# --- conversation ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TurnStarted(Event):
    turn_id: str
    brain: str


@dataclass(frozen=True)
class Heard(Event):
    turn_id: str
    text: str


@dataclass(frozen=True)
class SentenceStarted(Event):
    """A reply sentence starts playing now; faces and animations follow this moment."""

    turn_id: str
    index: int
    text: str


@dataclass(frozen=True)
class FaceRequested(Event):
    """A ``[face:...]`` tag reached its sentence (or the API asked): show it for ``duration`` seconds."""

    name: str
    duration: float | None = None
    turn_id: str | None = None


@dataclass(frozen=True)
class FaceChanged(Event):
    """The face now shown (after a request, or back to neutral when its time ran out)."""

    name: str


@dataclass(frozen=True)
class LedChanged(Event):
    droppable: ClassVar[bool] = True
    colour: str


@dataclass(frozen=True)
class ConnectivityChanged(Event):
    """Which kind of brain answers now: ``online`` (the configured one), ``fallback`` (a backup), ``offline``."""

    status: str
    brain: str = ""


@dataclass(frozen=True)
class AnimationRequested(Event):
    name: str
    duration: float | None = None
    turn_id: str | None = None


@dataclass(frozen=True)
class OutputLevel(Event):
    droppable: ClassVar[bool] = True
    db: float


@dataclass(frozen=True)
class TurnTimings:
    """Stage timestamps of a turn, seconds relative to the end of the utterance."""

    heard: float | None = None
    first_text: float | None = None
    first_audio: float | None = None
    finished: float | None = None


@dataclass(frozen=True)
class TurnFinished(Event):
    turn_id: str
    outcome: str  # "done" | "interrupted" | "failed" | "empty"
    spoken: str = ""
    error: str | None = None
    error_kind: str | None = None  # the ProviderError subclass, e.g. "ProviderTimeout"
    timings: TurnTimings = TurnTimings()
    brain: str = ""  # the brain whose reply was spoken (after a failover, not the one the turn started with)
    conversation_id: str = ""


@dataclass(frozen=True)
class PictureRequested(Event):
    """Show a picture (PNG or JPEG bytes, already checked to decode) on the display for ``seconds``."""

    image: bytes = field(repr=False)
    seconds: float
    caption: str = ""


# --- supervision -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceStatus(Event):
    service: str
    status: str  # "starting" | "running" | "restarting" | "failed" | "stopped" | "learning" (listening: noise floor)
    restarts: int = 0
    error: str | None = None


@dataclass(frozen=True)
class ErrorRaised(Event):
    where: str
    message: str


# --- listening -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WakeWordDetected(Event):
    """A wake word model fired. ``accepted`` is False when the self-trigger guard refused it (the robot was
    speaking and the microphone was not louder than its own echo), with the reason."""

    wake_word: str
    probability: float
    accepted: bool = True
    reason: str = ""


# --- brains and failover -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrainChanged(Event):
    """Replies now come from ``brain`` (after a failover, or back on the preferred one after recovery)."""

    brain: str
    previous: str | None
    reason: str = ""


@dataclass(frozen=True)
class BrainHealthChanged(Event):
    """A brain's circuit changed: ``healthy`` False means it is skipped until a probe succeeds."""

    brain: str
    healthy: bool
    circuit: str
    error: str | None = None


# --- integrations --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MqttStatus(Event):
    """The broker link changed: ``connecting``, ``connected``, ``refused``, ``unreachable``, ``disconnected``."""

    status: str
    detail: str = ""
