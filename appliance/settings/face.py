"""The robot's face in configuration: a small display (``[hardware.display]``), avatar OSC
(``[hardware.osc]``) and what each state and tag shows (``[hardware.faces]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from appliance.settings.body_common import SPI_SELECT_PINS, STATES, Pin, check_colour
from appliance.settings_base import Section


class DisplayConfig(Section):
    """A small face display through luma.oled / luma.lcd, or luma's dummy device when simulated."""

    driver: Literal["auto", "none", "dummy", "ssd1306", "sh1106", "st7735", "st7789"] = Field(
        default="auto", description="auto = the dummy device when GPIO is simulated, none on a real board"
    )
    interface: Literal["auto", "i2c", "spi"] = Field(default="auto", description="auto: OLEDs i2c, LCDs spi")
    width: int | None = Field(default=None, ge=8, le=1024, description="default: the driver's usual size")
    height: int | None = Field(default=None, ge=8, le=1024)
    rotate: Literal[0, 1, 2, 3] = Field(default=0, description="quarter turns")
    i2c_port: Literal[0, 1] = 1
    i2c_address: int = Field(default=0x3C, ge=0x03, le=0x77)
    spi_port: Literal[0, 1] = 0
    spi_device: int = Field(default=0, ge=0, le=2)
    spi_speed_hz: int = Field(default=8_000_000, description="SPI clock; one of luma's speeds (0.5..52 MHz)")
    dc_pin: Pin | None = 24
    reset_pin: Pin | None = 25
    backlight_pin: Pin | None = Field(default=18, description="LCD backlight; null when always on")
    backlight_active_low: bool = False
    bgr: bool = Field(default=False, description="st7735: panel wants BGR colour order")
    h_offset: int = Field(default=0, ge=0, le=128)
    v_offset: int = Field(default=0, ge=0, le=128)
    fps: float = Field(default=15.0, gt=0, le=60, description="frame rate cap while animating")
    colour: str = Field(default="#ffffff", description="face colour (colour displays)")
    background: str = Field(default="#000000")
    image_folder: Path | None = Field(default=None, description="<face>.png (+ <face>-blink / <face>-talk)")
    blink_every: tuple[float, float] = Field(default=(2.5, 7.0), description="random interval range (s)")
    blink_time: float = Field(default=0.15, gt=0, le=2)
    mouth_floor_db: float = Field(default=-50.0, description="output level that closes the mouth")
    mouth_full_db: float = Field(default=-12.0, description="output level that opens it fully")

    @field_validator("colour", "background")
    @classmethod
    def _colour(cls, value: str) -> str:
        return check_colour(value, "colour")

    @field_validator("spi_speed_hz")
    @classmethod
    def _speed(cls, value: int) -> int:
        allowed = [int(mhz * 1_000_000) for mhz in (0.5, 1, 2, 4, 8, 16, 20, 24, 28, 32, 36, 40, 44, 48, 50, 52)]
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(str(a) for a in allowed)}")
        return value

    @field_validator("image_folder")
    @classmethod
    def _folder(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"{value} is not a directory")
        return value

    @model_validator(mode="after")
    def _ranges(self) -> DisplayConfig:
        low, high = self.blink_every
        if not 0 < low <= high:
            raise ValueError(f"blink_every: needs 0 < min <= max, got {list(self.blink_every)}")
        if self.mouth_floor_db >= self.mouth_full_db:
            raise ValueError("mouth_floor_db: must be below mouth_full_db")
        if self.spi_device >= len(SPI_SELECT_PINS[self.spi_port]):
            raise ValueError(f"spi_device: SPI{self.spi_port} has no chip select {self.spi_device}")
        return self

    @property
    def resolved_interface(self) -> str:
        if self.interface != "auto":
            return self.interface
        return "spi" if self.driver in ("st7735", "st7789") else "i2c"

    @property
    def size(self) -> tuple[int, int]:
        usual = {"st7735": (160, 128), "st7789": (240, 240)}.get(self.driver, (128, 64))
        return (self.width or usual[0], self.height or usual[1])


DEFAULT_OSC_FACES = {"neutral": 0, "joy": 1, "angry": 2, "sorrow": 3, "fun": 4, "surprised": 5}
DEFAULT_OSC_ANIMATIONS = {"idle": 0, "wave": 1, "clap": 2, "point": 3, "cheer": 4, "dance": 5}


class OscConfig(Section):
    """Faces and animations as VRChat avatar parameters (any OSC receiver works)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=9000, ge=1, le=65535)
    face_address: str = "/avatar/parameters/FaceOSC"
    faces: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_OSC_FACES))
    animation_address: str = "/avatar/parameters/VRCEmote"
    animations: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_OSC_ANIMATIONS))
    idle_animation: str = "idle"
    animation_duration: float = Field(default=3.0, gt=0, le=600, description="when a tag gives none (s)")

    @field_validator("face_address", "animation_address")
    @classmethod
    def _address(cls, value: str) -> str:
        if not value.startswith("/") or " " in value:
            raise ValueError(f"an OSC address starts with / and has no spaces, got {value!r}")
        return value

    @model_validator(mode="after")
    def _idle(self) -> OscConfig:
        if "neutral" not in self.faces:
            raise ValueError("faces: needs a value for 'neutral' (sent when a face times out)")
        if self.idle_animation not in self.animations:
            raise ValueError(f"idle_animation: {self.idle_animation!r} is not in animations")
        return self


DEFAULT_STATE_FACES = {
    "idle": "neutral",
    "listening": "listening",
    "thinking": "thinking",
    "speaking": "neutral",
    "muted": "sleeping",
    "error": "sorrow",
}
DEFAULT_FACE_ALIASES = {
    "happy": "joy",
    "smile": "joy",
    "sad": "sorrow",
    "anger": "angry",
    "mad": "angry",
    "relaxed": "fun",
    "surprise": "surprised",
    "think": "thinking",
    "sleep": "sleeping",
    "sleepy": "sleeping",
}


class FacesConfig(Section):
    duration: float = Field(default=4.0, gt=0, le=600, description="how long a [face:...] tag lasts (s)")
    sleep_after: float | None = Field(
        default=300.0, gt=0, description="idle this long (s) shows the sleeping face; null = never"
    )
    state_faces: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_STATE_FACES))
    aliases: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_FACE_ALIASES))

    @field_validator("state_faces")
    @classmethod
    def _states(cls, value: dict[str, str]) -> dict[str, str]:
        for state in value:
            if state not in STATES:
                raise ValueError(f"unknown state {state!r} (one of {', '.join(STATES)})")
        return {**DEFAULT_STATE_FACES, **value}


# ---------------------------------------------------------------------------------------------------------
# Presets: a board's wiring as configuration data. Only what the board has; the rest stays configurable.
