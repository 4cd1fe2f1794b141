"""Status LEDs: single, PWM, RGB and APA102 strips showing the appliance's state as patterns.

Each state (and, while idle, being offline or on a fallback brain) maps to a pattern from the config. A
pattern is a Trio task inside its own cancel scope; the next state cancels it and starts the next one. The
LEDs are written from the event loop: a gpiozero value change or a short SPI write takes microseconds, and
gpiozero keeps whatever threads its pin library needs (software PWM on some factories).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Protocol

import trio

from appliance.bus import EventBus
from appliance.events import ConnectivityChanged, LedChanged, OutputLevel, State, StateChanged, TurnStarted
from appliance.hardware.pins import build_device
from appliance.settings.hardware import HardwareConfig, LedConfig, PatternConfig

log = logging.getLogger(__name__)

RGB = tuple[float, float, float]
OFF: RGB = (0.0, 0.0, 0.0)
GAMMA = 2.2

LEVEL_FLOOR_DB = -50.0
LEVEL_FULL_DB = -15.0
LEVEL_MIN_BRIGHTNESS = 0.15  # while speaking, the LED never goes fully dark between words
LEVEL_RELEASE = 0.12  # seconds for the level to fall to ~1/e after the voice stops


def hex_to_rgb(colour: str) -> RGB:
    value = int(colour[1:], 16)
    return ((value >> 16) / 255, ((value >> 8) & 0xFF) / 255, (value & 0xFF) / 255)


def rgb_to_hex(rgb: RGB) -> str:
    return "#" + "".join(f"{round(max(0.0, min(1.0, c)) * 255):02x}" for c in rgb)


def scale(rgb: RGB, factor: float) -> RGB:
    return (rgb[0] * factor, rgb[1] * factor, rgb[2] * factor)


def db_to_level(db: float, floor: float = LEVEL_FLOOR_DB, full: float = LEVEL_FULL_DB) -> float:
    return max(0.0, min(1.0, (db - floor) / (full - floor)))


# --- outputs -----------------------------------------------------------------------------------------------


class LedOutput(Protocol):
    """One LED device; ``pixels`` colours per frame (1 for anything that is not a strip)."""

    pixels: int

    def show(self, frame: Sequence[RGB]) -> None: ...

    def close(self) -> None: ...


class OnOffLed:
    """A plain LED: lit when the pattern is at least a quarter bright."""

    pixels = 1

    def __init__(self, config: LedConfig, factory: Any) -> None:
        from gpiozero import LED

        self.device = build_device(
            factory, lambda: LED(config.pins[0], active_high=config.active_high, pin_factory=factory)
        )
        self.brightness = config.brightness

    def show(self, frame: Sequence[RGB]) -> None:
        self.device.value = max(frame[0]) * self.brightness >= 0.25

    def close(self) -> None:
        self.device.close()


class DimmableLed:
    pixels = 1

    def __init__(self, config: LedConfig, factory: Any) -> None:
        from gpiozero import PWMLED

        self.device = build_device(
            factory, lambda: PWMLED(config.pins[0], active_high=config.active_high, pin_factory=factory)
        )
        self.brightness = config.brightness

    def show(self, frame: Sequence[RGB]) -> None:
        self.device.value = (max(frame[0]) * self.brightness) ** GAMMA

    def close(self) -> None:
        self.device.close()


class RgbLed:
    pixels = 1

    def __init__(self, config: LedConfig, factory: Any) -> None:
        from gpiozero import RGBLED

        red, green, blue = config.pins
        self.device = build_device(
            factory,
            lambda: RGBLED(red, green, blue, active_high=config.active_high, pwm=True, pin_factory=factory),
        )
        self.brightness = config.brightness

    def show(self, frame: Sequence[RGB]) -> None:
        b = self.brightness
        self.device.color = tuple(min(1.0, (c * b) ** GAMMA) for c in frame[0])

    def close(self) -> None:
        self.device.close()


class RecordingSPI:
    """Stands in for the SPI bus when pins are simulated: keeps the bytes instead of bit-banging them."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.closed = False

    def write(self, data: Sequence[int]) -> None:
        self.frames.append(bytes(data))
        del self.frames[:-16]

    def close(self) -> None:
        self.closed = True


def apa102_frame(pixels: Sequence[RGB], order: str = "bgr", brightness: float = 1.0) -> bytes:
    """The bytes for one update of an APA102 chain: start frame, one 32-bit word per pixel, end frame."""
    out = bytearray(4)
    index = {"r": 0, "g": 1, "b": 2}
    for rgb in pixels:
        values = [round(min(1.0, (c * brightness) ** GAMMA) * 255) for c in rgb]
        out.append(0xE0 | 31)
        out.extend(values[index[ch]] for ch in order)
    # Each pixel delays the clock by half a bit; this many extra clock edges reach the end of the chain.
    out.extend(b"\xff" * ((len(pixels) + 15) // 16))
    return bytes(out)


def decode_apa102(frame: bytes, count: int, order: str = "bgr") -> list[tuple[int, int, int]]:
    """The (r, g, b) bytes of each pixel in a frame from :func:`apa102_frame` (for tests and tools)."""
    pixels = []
    for i in range(count):
        word = frame[4 + 4 * i : 8 + 4 * i]
        channels = dict(zip(order, word[1:], strict=True))
        pixels.append((channels["r"], channels["g"], channels["b"]))
    return pixels


class Apa102Strip:
    """APA102 / DotStar pixels on the SPI bus through gpiozero's SPI interface."""

    def __init__(self, config: LedConfig, factory: Any, spi: Any = None) -> None:
        self.pixels = config.count
        self.order = config.order
        self.brightness = config.brightness
        if spi is None:
            from appliance.hardware.pins import is_mock

            if is_mock(factory):
                spi = RecordingSPI()
            else:
                spi = factory.spi(port=config.spi_port, device=config.spi_device)
                try:
                    spi.rate = 4_000_000
                except Exception:  # software SPI has no settable clock
                    log.debug("SPI clock rate not settable", exc_info=True)
        self.spi = spi
        self.last = b""

    def show(self, frame: Sequence[RGB]) -> None:
        data = apa102_frame(frame, self.order, self.brightness)
        if data != self.last:
            self.spi.write(list(data))
            self.last = data

    def close(self) -> None:
        try:
            self.spi.write(list(apa102_frame([OFF] * self.pixels, self.order)))
        finally:
            self.spi.close()


def open_output(config: LedConfig, factory: Any) -> LedOutput:
    kinds: dict[str, Any] = {"led": OnOffLed, "pwm": DimmableLed, "rgb": RgbLed, "apa102": Apa102Strip}
    return kinds[config.kind](config, factory)


# --- patterns ----------------------------------------------------------------------------------------------


class LevelMeter:
    """The output level as 0..1: jumps up with the voice, falls back smoothly."""

    def __init__(
        self, floor_db: float = LEVEL_FLOOR_DB, full_db: float = LEVEL_FULL_DB, release: float = LEVEL_RELEASE
    ) -> None:
        self.floor_db, self.full_db, self.release = floor_db, full_db, release
        self.value = 0.0
        self.at = 0.0

    def feed(self, db: float, now: float) -> None:
        self.value = max(self.current(now), db_to_level(db, self.floor_db, self.full_db))
        self.at = now

    def current(self, now: float) -> float:
        return self.value * math.exp(-max(0.0, now - self.at) / self.release)

    def reset(self) -> None:
        self.value = 0.0


def pulse_brightness(t: float, period: float) -> float:
    return 0.5 - 0.5 * math.cos(2 * math.pi * t / period)


def spin_frame(t: float, period: float, pixels: int, colour: RGB) -> list[RGB]:
    """A bright pixel going round with a fading tail."""
    head = (t / period % 1.0) * pixels
    frame = []
    for i in range(pixels):
        behind = (head - i) % pixels
        frame.append(scale(colour, max(0.08, 1.0 - behind / max(1.0, pixels * 0.6))))
    return frame


class PatternPlayer:
    """Plays one pattern on every LED output until cancelled."""

    def __init__(self, outputs: Sequence[LedOutput], fps: float, meter: LevelMeter) -> None:
        self.outputs = outputs
        self.interval = 1.0 / fps
        self.meter = meter

    def fill(self, rgb: RGB) -> None:
        for out in self.outputs:
            out.show([rgb] * out.pixels)

    async def play(self, spec: PatternConfig) -> None:
        colour = scale(hex_to_rgb(spec.colour), spec.brightness)
        if spec.pattern == "off":
            self.fill(OFF)
            await trio.sleep_forever()
        if spec.pattern == "solid":
            self.fill(colour)
            await trio.sleep_forever()
        if spec.pattern == "blink":
            while True:
                self.fill(colour)
                await trio.sleep(spec.period / 2)
                self.fill(OFF)
                await trio.sleep(spec.period / 2)
        start = trio.current_time()
        while True:
            now = trio.current_time()
            t = now - start
            if spec.pattern == "pulse":
                self.fill(scale(colour, pulse_brightness(t, spec.period)))
            elif spec.pattern == "spin":
                for out in self.outputs:
                    if out.pixels > 1:
                        out.show(spin_frame(t, spec.period, out.pixels, colour))
                    else:
                        out.show([scale(colour, pulse_brightness(t, spec.period))])
            else:  # level
                level = self.meter.current(now)
                self.fill(scale(colour, LEVEL_MIN_BRIGHTNESS + (1 - LEVEL_MIN_BRIGHTNESS) * level))
            await trio.sleep(self.interval)


# --- the service -------------------------------------------------------------------------------------------


class LedService:
    """Shows the state on every configured LED and publishes the colour for the status line."""

    name = "leds"

    def __init__(self, bus: EventBus, config: HardwareConfig, pin_factory: Any, connectivity: str = "online") -> None:
        self.bus = bus
        self.config = config
        self.pin_factory = pin_factory
        self.outputs: list[LedOutput] = []
        self.meter = LevelMeter()
        self.state = State.IDLE
        self.connectivity = connectivity
        self.mode = ""
        self.colour = "#000000"
        self._inferred_offline = False
        self._scope: trio.CancelScope | None = None

    def current_mode(self) -> str:
        if self.state is State.IDLE and self.connectivity in ("offline", "fallback"):
            return self.connectivity
        return self.state.value

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            for led in self.config.leds:
                self.outputs.append(open_output(led, self.pin_factory))
            player = PatternPlayer(self.outputs, self.config.fps, self.meter)
            with self.bus.subscribe(StateChanged, OutputLevel, ConnectivityChanged, TurnStarted, name=self.name) as sub:
                async with trio.open_nursery() as nursery:
                    await self._switch(nursery, player)
                    task_status.started()
                    async for event in sub:
                        if isinstance(event, OutputLevel):
                            self.meter.feed(event.db, trio.current_time())
                            continue
                        if isinstance(event, StateChanged):
                            self.state = event.new
                        elif isinstance(event, ConnectivityChanged):
                            self.connectivity = event.status
                            self._inferred_offline = False
                        elif isinstance(event, TurnStarted):
                            self._infer_connectivity(event.brain)
                        if self.current_mode() != self.mode:
                            await self._switch(nursery, player)
        finally:
            for out in self.outputs:
                try:
                    out.close()
                except Exception:
                    log.warning("closing an LED failed", exc_info=True)
            self.outputs = []

    def _infer_connectivity(self, brain: str) -> None:
        # Without a ConnectivityChanged from the brains, the offline brain answering is the sign.
        if brain == "offline" and self.connectivity == "online":
            self.connectivity, self._inferred_offline = "offline", True
        elif brain != "offline" and self._inferred_offline:
            self.connectivity, self._inferred_offline = "online", False

    async def _switch(self, nursery: trio.Nursery, player: PatternPlayer) -> None:
        self.mode = self.current_mode()
        spec = self.config.patterns[self.mode]
        if self._scope is not None:
            self._scope.cancel()
        self._scope = await nursery.start(self._play, player, spec)
        self.colour = self.shown_colour(spec)
        self.bus.publish(LedChanged(self.colour))
        log.debug("LEDs: %s (%s %s)", self.mode, spec.pattern, spec.colour)

    def shown_colour(self, spec: PatternConfig) -> str:
        """The colour the LEDs show for ``spec`` (a single-colour LED glows in its own colour)."""
        if spec.pattern == "off" or not self.config.leds:
            return "#000000"
        colour = spec.colour
        if all(led.kind in ("led", "pwm") for led in self.config.leds):
            colour = self.config.leds[0].colour
        return rgb_to_hex(scale(hex_to_rgb(colour), spec.brightness))

    async def _play(
        self, player: PatternPlayer, spec: PatternConfig, *, task_status: trio.TaskStatus[trio.CancelScope]
    ) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await player.play(spec)
