from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from appliance.settings_base import Section

_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")

DEFAULT_STATE_COLOURS = {
    "idle": "#000000",
    "listening": "#0040ff",
    "thinking": "#ffa000",
    "speaking": "#00ff40",
    "muted": "#ff0000",
    "error": "#ff0060",
}


class GPIOConfig(Section):
    """The robot's body as far as the skeleton knows it: one RGB status LED and one talk button."""

    pin_factory: Literal["auto", "mock", "lgpio", "rpigpio", "native"] = Field(
        default="auto", description="auto = lgpio on a Pi, gpiozero's mock pins elsewhere"
    )
    status_led: tuple[int, int, int] | None = Field(default=(5, 6, 13), description="RGB LED pins (BCM)")
    button: int | None = Field(default=17, description="talk button pin (BCM); null = none")
    button_pull_up: bool = True
    colours: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_STATE_COLOURS))

    @field_validator("colours")
    @classmethod
    def _colours(cls, value: dict[str, str]) -> dict[str, str]:
        for state, colour in value.items():
            if state not in DEFAULT_STATE_COLOURS:
                raise ValueError(f"unknown state {state!r} (one of {', '.join(DEFAULT_STATE_COLOURS)})")
            if not _HEX.match(colour):
                raise ValueError(f"colour for {state!r} must look like #rrggbb, got {colour!r}")
        return {**DEFAULT_STATE_COLOURS, **value}

    @model_validator(mode="after")
    def _pins(self) -> GPIOConfig:
        pins = [*(self.status_led or ()), *([self.button] if self.button is not None else [])]
        for pin in pins:
            if not 0 <= pin <= 27:
                raise ValueError(f"GPIO pin {pin} is outside 0..27")
        if len(set(pins)) != len(pins):
            raise ValueError(f"a GPIO pin is used twice: {pins}")
        return self
