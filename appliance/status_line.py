"""The live one-line status in the terminal: state, LED colour, face, what was heard and said."""

from __future__ import annotations

import trio

from appliance.bus import EventBus
from appliance.events import (
    FaceChanged,
    Heard,
    LedChanged,
    ServiceStatus,
    State,
    StateChanged,
    TurnFinished,
    TurnStarted,
)
from appliance.logs import StatusAwareHandler

_ICON = {
    State.IDLE: "·",
    State.LISTENING: "◉",
    State.THINKING: "…",
    State.SPEAKING: "▶",
    State.MUTED: "⊘",
    State.ERROR: "!",
}


def _swatch(colour: str) -> str:
    r, g, b = int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)
    return f"\x1b[38;2;{r};{g};{b}m●\x1b[0m" if colour != "#000000" else "○"


class StatusLine:
    name = "status-line"

    def __init__(self, bus: EventBus, handler: StatusAwareHandler) -> None:
        self.bus = bus
        self.handler = handler
        self.state = State.IDLE
        self.led = "#000000"
        self.face = "neutral"
        self.brain = "-"
        self.heard = ""
        self.said = ""
        self.failing: set[str] = set()

    def render(self) -> str:
        parts = [
            f"{_ICON[self.state]} {self.state.value.upper():9}",
            f"LED {_swatch(self.led)} {self.led}",
            f"face {self.face:9}",
            f"brain {self.brain}",
        ]
        if self.failing:
            parts.append("down: " + ",".join(sorted(self.failing)))
        if self.heard:
            parts.append(f'heard "{self.heard[:40]}"')
        if self.said:
            parts.append(f'said "{self.said[:40]}"')
        return " │ ".join(parts)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.bus.subscribe(
            StateChanged, LedChanged, FaceChanged, Heard, TurnStarted, TurnFinished, ServiceStatus, name=self.name
        ) as sub:
            task_status.started()
            self.handler.set_status(self.render())
            async for event in sub:
                if isinstance(event, StateChanged):
                    self.state = event.new
                elif isinstance(event, LedChanged):
                    self.led = event.colour
                elif isinstance(event, FaceChanged):
                    self.face = event.name
                elif isinstance(event, TurnStarted):
                    self.brain, self.heard, self.said = event.brain, "", ""
                elif isinstance(event, Heard):
                    self.heard = event.text
                elif isinstance(event, TurnFinished):
                    self.said = event.spoken
                elif isinstance(event, ServiceStatus):
                    if event.status in ("running", "starting", "learning"):  # learning: the noise floor (listening)
                        self.failing.discard(event.service)
                    else:
                        self.failing.add(event.service)
                self.handler.set_status(self.render())
