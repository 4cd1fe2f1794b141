"""The status LED and the talk button through gpiozero (real pins on a Pi, mock pins elsewhere).

gpiozero calls its callbacks on its own threads; they only hand an event to Trio through the Trio token.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import trio

from appliance.bus import EventBus
from appliance.events import (
    CancelTurnRequested,
    LedChanged,
    ListenReleased,
    ListenRequested,
    State,
    StateChanged,
)
from appliance.hardware.config import GPIOConfig

log = logging.getLogger(__name__)


def make_pin_factory(kind: str) -> Any:
    """The gpiozero pin factory for ``kind``; ``auto`` picks lgpio when a GPIO chip exists, mock pins otherwise."""
    if kind == "auto":
        kind = "lgpio" if os.path.exists("/dev/gpiochip0") and _importable("lgpio") else "mock"
    if kind == "mock":
        from gpiozero.pins.mock import MockFactory, MockPWMPin

        return MockFactory(pin_class=MockPWMPin)
    if kind == "lgpio":
        from gpiozero.pins.lgpio import LGPIOFactory

        return LGPIOFactory()
    if kind == "rpigpio":
        from gpiozero.pins.rpigpio import RPiGPIOFactory

        return RPiGPIOFactory()
    from gpiozero.pins.native import NativeFactory

    return NativeFactory()


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def hex_to_rgb(colour: str) -> tuple[float, float, float]:
    value = int(colour[1:], 16)
    return ((value >> 16) / 255, ((value >> 8) & 0xFF) / 255, (value & 0xFF) / 255)


class GPIOService:
    name = "gpio"

    def __init__(self, bus: EventBus, config: GPIOConfig, pin_factory: Any = None) -> None:
        self.bus = bus
        self.config = config
        self.pin_factory = pin_factory
        self.state = State.IDLE
        self.colour = config.colours["idle"]
        self.led: Any = None
        self.button: Any = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from gpiozero import Button, RGBLED

        factory = self.pin_factory or make_pin_factory(self.config.pin_factory)
        token = trio.lowlevel.current_trio_token()
        try:
            if self.config.status_led is not None:
                self.led = RGBLED(*self.config.status_led, pin_factory=factory)
            if self.config.button is not None:
                self.button = Button(
                    self.config.button, pull_up=self.config.button_pull_up, bounce_time=0.03, pin_factory=factory
                )
                self.button.when_pressed = lambda: token.run_sync_soon(self._pressed)
                self.button.when_released = lambda: token.run_sync_soon(self._released)
            self._show(self.state)
            with self.bus.subscribe(StateChanged, name=self.name) as sub:
                task_status.started()
                async for event in sub:
                    assert isinstance(event, StateChanged)
                    self.state = event.new
                    self._show(event.new)
        finally:
            for device in (self.button, self.led):
                if device is not None:
                    device.close()
            self.led = self.button = None

    def _show(self, state: State) -> None:
        self.colour = self.config.colours[state.value]
        if self.led is not None:
            self.led.color = hex_to_rgb(self.colour)
        self.bus.publish(LedChanged(self.colour))

    def _pressed(self) -> None:
        if self.state is State.SPEAKING or self.state is State.THINKING:
            self.bus.publish(CancelTurnRequested("button"))
        self.bus.publish(ListenRequested("button"))

    def _released(self) -> None:
        self.bus.publish(ListenReleased("button"))
