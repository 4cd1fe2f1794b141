"""What the body's sections share: GPIO pin numbers, the SPI buses' pins, colours, face and state names."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field

_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")

# BCM numbers a user can wire on the 40-pin header.
MAX_PIN = 27
Pin = Annotated[int, Field(ge=0, le=MAX_PIN, description=f"BCM GPIO number 0..{MAX_PIN}")]

FACES = ("neutral", "joy", "angry", "sorrow", "fun", "surprised", "thinking", "listening", "sleeping")
STATES = ("idle", "listening", "thinking", "speaking", "muted", "error")
# LED modes are the states plus how the robot is connected, shown while idle.
LED_MODES = (*STATES, "offline", "fallback")

I2C_PINS = {1: (2, 3), 0: (0, 1)}
SPI_BUS_PINS = {0: (9, 10, 11), 1: (19, 20, 21)}  # MISO, MOSI, SCLK
SPI_SELECT_PINS = {0: (8, 7), 1: (18, 17, 16)}


def check_colour(value: str, what: str) -> str:
    if not _HEX.match(value):
        raise ValueError(f"{what} must look like #rrggbb, got {value!r}")
    return value.lower()
