"""The robot's body in configuration: LEDs, buttons, a display face and an avatar over OSC.

``[hardware] preset = "respeaker-2mic"`` names a board instead of pins; anything written next to the preset
replaces that part of it (a ``leds`` list replaces the preset's LEDs, and so on). Every pin is checked once
for the whole body: out of range, or claimed twice (including the pins an SPI/I2C bus or the board's audio
codec already uses), is an error naming the field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from appliance.settings.body_common import (
    FACES,
    I2C_PINS,
    LED_MODES,
    MAX_PIN,
    SPI_BUS_PINS,
    SPI_SELECT_PINS,
    STATES,
    Pin,
    check_colour,
)
from appliance.settings.face import (
    DEFAULT_FACE_ALIASES,
    DEFAULT_OSC_ANIMATIONS,
    DEFAULT_OSC_FACES,
    DEFAULT_STATE_FACES,
    DisplayConfig,
    FacesConfig,
    OscConfig,
)
from appliance.settings_base import Section

# TEMPORARY re-exports while the body's modules still import these from here (removed with the callers' move)
__all__ = [
    "DEFAULT_FACE_ALIASES",
    "DEFAULT_OSC_ANIMATIONS",
    "DEFAULT_OSC_FACES",
    "DEFAULT_STATE_FACES",
    "FACES",
    "I2C_PINS",
    "LED_MODES",
    "MAX_PIN",
    "SPI_BUS_PINS",
    "SPI_SELECT_PINS",
    "STATES",
    "DisplayConfig",
    "FacesConfig",
    "OscConfig",
    "Pin",
    "check_colour",
]


class LedConfig(Section):
    """One LED or strip. ``led`` = on/off, ``pwm`` = dimmable, ``rgb`` = three pins, ``apa102`` = SPI strip."""

    kind: Literal["led", "pwm", "rgb", "apa102"]
    pins: list[Pin] = Field(default_factory=list, description="led/pwm: [pin]; rgb: [red, green, blue]; apa102: []")
    active_high: bool = Field(default=True, description="false for common-anode RGB LEDs / LEDs wired to 3V3")
    colour: str = Field(default="#ffffff", description="led/pwm: the colour the LED glows (for the status line)")
    count: int = Field(default=3, ge=1, le=1024, description="apa102: number of pixels")
    spi_port: Literal[0, 1] = 0
    spi_device: int = Field(default=0, ge=0, le=2, description="apa102: chip select (spidev<port>.<device>)")
    brightness: float = Field(default=1.0, gt=0, le=1, description="scales every pattern (APA102s are bright)")
    order: Literal["rgb", "rbg", "grb", "gbr", "brg", "bgr"] = Field(default="bgr", description="apa102 byte order")

    @field_validator("colour")
    @classmethod
    def _colour(cls, value: str) -> str:
        return check_colour(value, "colour")

    @model_validator(mode="after")
    def _pins_for_kind(self) -> LedConfig:
        wanted = {"led": 1, "pwm": 1, "rgb": 3, "apa102": 0}[self.kind]
        if len(self.pins) != wanted:
            shape = {1: "one pin", 3: "three pins (red, green, blue)", 0: "no pins (it uses the SPI bus)"}[wanted]
            raise ValueError(f"pins: a {self.kind} LED takes {shape}, got {self.pins}")
        if self.kind == "apa102" and self.spi_device >= len(SPI_SELECT_PINS[self.spi_port]):
            raise ValueError(f"spi_device: SPI{self.spi_port} has no chip select {self.spi_device}")
        return self


class ButtonConfig(Section):
    """A push button: press, long press (hold) and double press each map to an action."""

    pin: Pin
    pull_up: bool | None = Field(default=True, description="true: button to GND; false: to 3V3; null: external")
    active_high: bool | None = Field(default=None, description="only with pull_up = null: level when pressed")
    press: Literal["talk", "push_to_talk", "none"] = Field(
        default="talk", description="talk = start listening (again to stop); push_to_talk = listen while held"
    )
    hold: Literal["mute", "none"] = "mute"
    double_press: Literal["cancel", "none"] = "cancel"
    hold_time: float = Field(default=1.5, gt=0, le=30, description="seconds held for a long press")
    double_press_window: float = Field(default=0.4, gt=0, le=2, description="second press within this (s)")
    bounce_time: float = Field(default=0.03, ge=0, le=0.5, description="contact settle time (s)")

    @model_validator(mode="after")
    def _consistent(self) -> ButtonConfig:
        if self.pull_up is None and self.active_high is None:
            raise ValueError("active_high: must be set when pull_up is null (no internal pull resistor)")
        if self.pull_up is not None and self.active_high is not None:
            raise ValueError("active_high: only applies when pull_up is null (the pull sets the active level)")
        if self.press == "push_to_talk" and self.hold != "none":
            raise ValueError('hold: push_to_talk uses holding for talking; set hold = "none"')
        return self


class PatternConfig(Section):
    """How the LEDs show one state."""

    pattern: Literal["off", "solid", "pulse", "spin", "blink", "level"]
    colour: str = "#ffffff"
    brightness: float = Field(default=1.0, ge=0, le=1)
    period: float = Field(default=1.0, gt=0, le=60, description="pulse/spin/blink cycle (s)")

    @field_validator("colour")
    @classmethod
    def _colour(cls, value: str) -> str:
        return check_colour(value, "colour")


def _p(pattern: str, colour: str = "#000000", brightness: float = 1.0, period: float = 1.0) -> PatternConfig:
    return PatternConfig(pattern=pattern, colour=colour, brightness=brightness, period=period)  # type: ignore[arg-type]


DEFAULT_PATTERNS: dict[str, PatternConfig] = {
    "idle": _p("off"),
    "listening": _p("solid", "#0040ff"),
    "thinking": _p("spin", "#ffa000", period=1.2),
    "speaking": _p("level", "#00ff40"),
    "muted": _p("solid", "#ff0000", brightness=0.3),
    "error": _p("blink", "#ff0000", period=0.5),
    "offline": _p("pulse", "#a000ff", brightness=0.4, period=4.0),
    "fallback": _p("solid", "#00c0c0", brightness=0.15),
}


PRESETS: dict[str, dict[str, Any]] = {
    "none": {"leds": [], "buttons": [], "reserved_pins": []},
    # One LED (with a resistor) on GPIO18 and a push button from GPIO17 to GND.
    "breadboard": {
        "leds": [{"kind": "pwm", "pins": [18], "colour": "#ff2000"}],
        "buttons": [{"pin": 17}],
        "reserved_pins": [],
    },
    # An RGB LED (common cathode) on GPIO5/6/13 and the button on GPIO17: colours show every state.
    "breadboard-rgb": {
        "leds": [{"kind": "rgb", "pins": [5, 6, 13]}],
        "buttons": [{"pin": 17}],
        "reserved_pins": [],
    },
    # Seeed ReSpeaker 2-Mics Pi HAT: user button on GPIO17, three APA102 LEDs on SPI0 (CE1). The WM8960
    # codec takes I2S (GPIO18-21) and sits on I2C1, which an OLED may share.
    "respeaker-2mic": {
        "leds": [{"kind": "apa102", "count": 3, "spi_port": 0, "spi_device": 1, "brightness": 0.3}],
        "buttons": [{"pin": 17}],
        "reserved_pins": [18, 19, 20, 21],
    },
}
PRESET_NAMES = tuple(PRESETS)


class HardwareConfig(Section):
    """The whole body. Simulated (gpiozero mock pins, luma dummy display) when no GPIO chip is present."""

    preset: Literal["none", "breadboard", "breadboard-rgb", "respeaker-2mic"] = Field(
        default="breadboard-rgb", description="a board's wiring; fields set here replace the preset's"
    )
    pin_factory: Literal["auto", "mock", "lgpio", "rpigpio", "native"] = Field(
        default="auto", description="auto = lgpio on a Pi, gpiozero's mock pins elsewhere"
    )
    gpio_chip: int | None = Field(
        default=None,
        ge=0,
        description="the /dev/gpiochipN the header is on, for lgpio (default: gpiozero's choice; set it when "
        "another controller comes first, as on an arm64 virt machine)",
    )
    leds: list[LedConfig] = Field(default_factory=list)
    buttons: list[ButtonConfig] = Field(default_factory=list)
    reserved_pins: list[Pin] = Field(default_factory=list, description="pins the board uses otherwise")
    patterns: dict[str, PatternConfig] = Field(default_factory=lambda: dict(DEFAULT_PATTERNS))
    fps: float = Field(default=30.0, gt=0, le=120, description="LED animation frame rate")
    display: DisplayConfig = DisplayConfig()
    faces: FacesConfig = FacesConfig()
    osc: OscConfig = OscConfig()

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = _from_skeleton_keys(data)
        preset = PRESETS.get(data.get("preset", "breadboard-rgb"))
        if preset is None:
            return data  # the Literal check reports the unknown name
        return {**preset, **data}

    @field_validator("patterns")
    @classmethod
    def _patterns(cls, value: dict[str, PatternConfig]) -> dict[str, PatternConfig]:
        for mode in value:
            if mode not in LED_MODES:
                raise ValueError(f"unknown state {mode!r} (one of {', '.join(LED_MODES)})")
        return {**DEFAULT_PATTERNS, **value}

    @model_validator(mode="after")
    def _pins(self) -> HardwareConfig:
        claims = pin_claims(self)
        owner: dict[int, str] = {}
        shared: dict[int, str] = {}
        for pin, field, is_bus in claims:
            if is_bus:
                # Several SPI devices share clock/data lines; they must not collide with a plain GPIO.
                if pin in owner:
                    raise ValueError(f"{field}: GPIO{pin} is used twice (also by {owner[pin]})")
                shared.setdefault(pin, field)
                continue
            if pin in owner or pin in shared:
                raise ValueError(f"{field}: GPIO{pin} is used twice (also by {owner.get(pin) or shared[pin]})")
            owner[pin] = field
        return self


def describe(config: HardwareConfig) -> str:
    """One line saying what the body is, for ``appliance check-config``."""
    leds = (
        ", ".join(
            f"{led.kind}x{led.count}@SPI{led.spi_port}.{led.spi_device}"
            if led.kind == "apa102"
            else f"{led.kind}@{'/'.join(str(p) for p in led.pins)}"
            for led in config.leds
        )
        or "none"
    )
    buttons = ", ".join(f"GPIO{b.pin}({b.press}/{b.hold}/{b.double_press})" for b in config.buttons) or "none"
    d = config.display
    display = d.driver if d.driver in ("auto", "none") else f"{d.driver} {d.size[0]}x{d.size[1]} {d.resolved_interface}"
    osc = f"{config.osc.host}:{config.osc.port}" if config.osc.enabled else "off"
    return (
        f"preset={config.preset} pins={config.pin_factory} leds=[{leds}] buttons=[{buttons}] "
        f"display={display} osc={osc}"
    )


def _from_skeleton_keys(data: dict[str, Any]) -> dict[str, Any]:
    """The walking skeleton's ``[gpio]`` keys (status_led, button, button_pull_up, colours) as body parts."""
    legacy = {"status_led", "button", "button_pull_up", "colours"}
    if not legacy & data.keys():
        return data
    data = dict(data)
    if "status_led" in data:
        pins = data.pop("status_led")
        data["leds"] = [] if pins is None else [{"kind": "rgb", "pins": pins}]
    pull_up = data.pop("button_pull_up", True)
    if "button" in data:
        pin = data.pop("button")
        data["buttons"] = [] if pin is None else [{"pin": pin, "pull_up": pull_up}]
    colours = data.pop("colours", None)
    if isinstance(colours, dict):
        patterns = dict(data.get("patterns") or {})
        for state, colour in colours.items():
            base = DEFAULT_PATTERNS.get(state)
            pattern = base.pattern if base is not None else "solid"
            if colour in ("#000000", "#000"):
                pattern = "off"
            elif pattern == "off":
                pattern = "solid"
            patterns[state] = {"pattern": pattern, "colour": colour}
        data["patterns"] = patterns
    return data


def pin_claims(config: HardwareConfig) -> list[tuple[int, str, bool]]:
    """Every pin the body uses: (pin, the field that uses it, whether it is a shareable bus line)."""
    claims: list[tuple[int, str, bool]] = []
    for pin in config.reserved_pins:
        claims.append((pin, f"reserved_pins (preset {config.preset})", False))
    spi_selects: set[tuple[int, int]] = set()

    def spi(port: int, device: int, field: str) -> None:
        for pin in SPI_BUS_PINS[port]:  # MISO too: the kernel's SPI driver (and gpiozero) take all three
            claims.append((pin, field, True))
        if (port, device) in spi_selects:
            raise ValueError(f"{field}: SPI{port} chip select {device} is already used")
        spi_selects.add((port, device))
        claims.append((SPI_SELECT_PINS[port][device], f"{field} (chip select)", False))

    for i, led in enumerate(config.leds):
        for j, pin in enumerate(led.pins):
            claims.append((pin, f"leds.{i}.pins.{j}", False))
        if led.kind == "apa102":
            spi(led.spi_port, led.spi_device, f"leds.{i} (apa102 on SPI{led.spi_port})")
    for i, button in enumerate(config.buttons):
        claims.append((button.pin, f"buttons.{i}.pin", False))
    display = config.display
    if display.driver not in ("auto", "none", "dummy"):
        if display.resolved_interface == "i2c":
            for pin in I2C_PINS[display.i2c_port]:
                claims.append((pin, f"display (I2C{display.i2c_port})", True))
        else:
            spi(display.spi_port, display.spi_device, f"display (SPI{display.spi_port})")
            for name in ("dc_pin", "reset_pin", "backlight_pin"):
                pin = getattr(display, name)
                if pin is not None and (name != "backlight_pin" or display.driver in ("st7735", "st7789")):
                    claims.append((pin, f"display.{name}", False))
    return claims


# The skeleton called this section ``[gpio]`` / GPIOConfig; both names keep working.
GPIOConfig = HardwareConfig
