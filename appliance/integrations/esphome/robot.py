"""What Home Assistant may do to the robot, in one thin adapter.

It acts the way the control API does: mute and faces are bus events (``MuteRequested``, ``FaceRequested``),
the volume is the sink's gain, and anything spoken goes through the conversation service as a turn (so
barge-in, the state machine, faces and LEDs behave as for any reply).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from appliance.audio.base import Audio
from appliance.events import (
    CancelTurnRequested,
    FaceChanged,
    FaceRequested,
    LedChanged,
    ListenReleased,
    ListenRequested,
    MuteRequested,
    State,
)
from appliance.settings.hardware import FACES
from appliance.turns import BrainOutput, ReplyChunk, Tag, TurnRequest, Utterance

if TYPE_CHECKING:
    from appliance.assembly.parts import Appliance

log = logging.getLogger(__name__)

SOURCE = "home_assistant"


class _PlayBrain:
    """A one-shot brain that says what Home Assistant sent: the conversation loop plays it like any reply."""

    name = "home_assistant"

    def __init__(self, produce: Callable[[trio.MemorySendChannel[BrainOutput]], Any]) -> None:
        self._produce = produce

    async def reply(self, request: TurnRequest, out: trio.MemorySendChannel[BrainOutput]) -> None:
        async with out:
            await self._produce(out)

    async def aclose(self) -> None:
        return None


class Robot:
    def __init__(self, appliance: Appliance) -> None:
        self.app = appliance
        self.bus = appliance.bus
        self.led_brightness = 1.0
        self.led_on = True

    # --- reading ----------------------------------------------------------------------------------------

    def muted(self) -> bool:
        latest = self.bus.latest(MuteRequested)
        if latest is not None:
            return latest.muted
        return self.app.state.state is State.MUTED

    def volume(self) -> float:
        value = getattr(self.app.sink, "volume", None)
        return float(value) if isinstance(value, int | float) else 1.0

    def has_volume(self) -> bool:
        return hasattr(self.app.sink, "volume")

    def faces(self) -> list[str]:
        known = getattr(self.app.faces, "known", None) or FACES
        return sorted(known)

    def face(self) -> str:
        latest = self.bus.latest(FaceChanged)
        return latest.name if latest is not None else str(getattr(self.app.faces, "current", "neutral"))

    def led_colour(self) -> tuple[float, float, float]:
        latest = self.bus.latest(LedChanged)
        colour = latest.colour if latest is not None else "#000000"
        try:
            value = int(colour.lstrip("#"), 16)
        except ValueError:
            return (0.0, 0.0, 0.0)
        return ((value >> 16 & 255) / 255, (value >> 8 & 255) / 255, (value & 255) / 255)

    # --- acting -----------------------------------------------------------------------------------------

    def mute(self, muted: bool) -> None:
        self.bus.publish(MuteRequested(muted, source=SOURCE))

    def set_volume(self, volume: float) -> None:
        if self.has_volume():
            self.app.sink.volume = min(1.0, max(0.0, volume))  # type: ignore[attr-defined]

    def show_face(self, name: str) -> bool:
        if name not in self.faces():
            return False
        self.bus.publish(FaceRequested(name))
        return True

    def set_led(self, on: bool | None, brightness: float | None) -> None:
        """Home Assistant dims (or darkens) the status LED; the LED service still picks the colour."""
        if on is not None:
            self.led_on = on
        if brightness is not None:
            self.led_brightness = min(1.0, max(0.0, brightness))
        leds = getattr(self.app.body, "leds", None)
        for output in getattr(leds, "outputs", None) or ():
            if hasattr(output, "brightness"):
                output.brightness = self.led_brightness if self.led_on else 0.0

    def stop(self) -> None:
        self.bus.publish(CancelTurnRequested(source=SOURCE))

    def listen(self) -> None:
        """Open the microphone for one utterance, as a tap on the talk button does."""
        self.bus.publish(ListenRequested(source=SOURCE))
        self.bus.publish(ListenReleased(source=SOURCE))

    async def say(self, text: str, audio: Audio | None, *, face: str | None = None) -> bool:
        """Play ``audio`` as a turn of its own (interrupting the current one); True when it played to the end."""

        async def produce(out: trio.MemorySendChannel[BrainOutput]) -> None:
            tags = (Tag("face", face),) if face else ()
            await out.send(ReplyChunk(text, text, tags, audio))

        return await self.run_turn(text or "(announcement)", produce)

    async def run_turn(self, text: str, produce: Callable[[trio.MemorySendChannel[BrainOutput]], Any]) -> bool:
        conversation = self.app.conversation
        utterance = Utterance(text=text, source=SOURCE, announce=True)
        active = await conversation.start_turn(utterance, brain=_PlayBrain(produce))
        await active.done.wait()
        return not active.scope.cancelled_caught
