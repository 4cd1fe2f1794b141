"""The one command layer: what every transport (the control API, MQTT, ...) asks the running robot to do.

Each action is small: publish a command event on the bus, set the speaker's gain, queue a line with the
speaker, or cancel the conversation's turn. Inputs are checked here, once, so every transport refuses the
same things with the same words (:class:`CommandRejected`); a transport only parses its own wire format.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import trio

from appliance.events import (
    FaceChanged,
    FaceRequested,
    ListenReleased,
    ListenRequested,
    MuteRequested,
    State,
    TurnFinished,
)
from appliance.settings.hardware import FACES

if TYPE_CHECKING:
    from appliance.assembly.parts import Appliance
    from appliance.speaker import Speaker

MIN_VOLUME, MAX_VOLUME = 0.0, 2.0


class CommandRejected(ValueError):
    """The robot will not do this; the message is safe to send back to whoever asked."""


class Commands:
    def __init__(self, appliance: Appliance, speaker: Speaker | None = None) -> None:
        self.app = appliance
        # The say queue: the control API's when it runs, else one the MQTT link runs itself.
        self.speaker = speaker

    # --- reading --------------------------------------------------------------------------------------------

    def state(self) -> State:
        return self.app.state.state

    def muted(self) -> bool:
        latest = self.app.bus.latest(MuteRequested)
        if latest is not None:
            return latest.muted
        return self.state() is State.MUTED

    def face(self) -> str:
        latest = self.app.bus.latest(FaceChanged)
        return latest.name if latest is not None else getattr(self.app.faces, "current", "neutral")

    def faces(self) -> list[str]:
        """The face names the robot knows (what a face command may name)."""
        known = getattr(self.app.faces, "known", None)
        return sorted(known) if known else list(FACES)

    def volume(self) -> float | None:
        value = getattr(self.app.sink, "volume", None)
        return float(value) if isinstance(value, int | float) and math.isfinite(value) else None

    def uptime(self) -> float:
        started = self.app.supervisor.started_at
        return 0.0 if started is None else max(0.0, trio.current_time() - started)

    def last_turn(self) -> TurnFinished | None:
        return self.app.bus.latest(TurnFinished)

    def service_running(self, name: str) -> bool:
        record = self.app.supervisor.records.get(name)
        return record is not None and record.status == "running"

    # --- acting ---------------------------------------------------------------------------------------------

    def set_muted(self, muted: bool, source: str) -> bool:
        self.app.bus.publish(MuteRequested(bool(muted), source=source))
        return bool(muted)

    def set_volume(self, volume: Any) -> float:
        if isinstance(volume, bool) or not isinstance(volume, int | float) or not math.isfinite(volume):
            raise CommandRejected(f"volume must be a number from {MIN_VOLUME} to {MAX_VOLUME}")
        if not MIN_VOLUME <= volume <= MAX_VOLUME:
            raise CommandRejected(f"volume {volume} is outside {MIN_VOLUME}..{MAX_VOLUME}")
        sink = self.app.sink
        if not hasattr(sink, "volume"):
            raise CommandRejected(f"the {getattr(sink, 'name', 'current')} speaker has no volume control")
        sink.volume = float(volume)
        return float(volume)

    def show_face(self, name: Any, duration: float | None = None) -> str:
        if not isinstance(name, str) or not name.strip():
            raise CommandRejected("face must be a face name")
        resolve = getattr(self.app.faces, "resolve", None)
        face = resolve(name) if callable(resolve) else (name if name in FACES else None)
        if face is None:
            raise CommandRejected(f"unknown face {name[:40]!r}; known: {', '.join(self.faces())}")
        self.app.bus.publish(FaceRequested(face, duration))
        return face

    def say(self, text: Any, *, interrupt: bool = False, source: str) -> str:
        """Queue a line to speak (behind the running turn unless ``interrupt``); returns the job id."""
        from appliance.speaker import QueueFull

        if not isinstance(text, str):
            raise CommandRejected("text must be a string")
        text = text.strip()
        limit = self.app.config.control.max_say_chars
        if not text:
            raise CommandRejected("text is blank")
        if len(text) > limit:
            raise CommandRejected(f"text is {len(text)} characters; the limit is {limit}")
        if self.speaker is None or not self.service_running("conversation"):
            raise CommandRejected("the robot cannot speak now (the conversation is not running)")
        try:
            job = self.speaker.submit(text, interrupt=bool(interrupt), source=source)
        except QueueFull as exc:
            raise CommandRejected(f"say queue is full: {exc}") from None
        return job.id

    def listen(self, source: str) -> None:
        """Open the microphone for one utterance, like pressing the talk button."""
        if self.muted():
            raise CommandRejected("the microphone is muted; unmute first")
        self.app.bus.publish(ListenRequested(source=source))

    def release(self, source: str) -> None:
        self.app.bus.publish(ListenReleased(source=source))

    async def cancel(self, source: str) -> bool:
        """Barge in: stop the running turn. True when there was one."""
        return await self.app.conversation.cancel_turn(f"cancel from {source}")
