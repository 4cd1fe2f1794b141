"""Where pins come from: gpiozero's pin factory (real lines on a Pi, mock pins elsewhere).

Also a small RPi.GPIO-shaped adapter over that factory, so luma's SPI displays drive their D/C, reset and
backlight lines through the same pins (and the same reservations) as the LEDs and buttons, also on a Pi 5
where RPi.GPIO does not work.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any

log = logging.getLogger(__name__)


def resolve_factory_kind(kind: str) -> str:
    if kind != "auto":
        return kind
    return "lgpio" if os.path.exists("/dev/gpiochip0") and _importable("lgpio") else "mock"


class PinFactoryError(Exception):
    """The pin library asked for cannot be used here."""


def make_pin_factory(kind: str) -> Any:
    """The gpiozero pin factory for ``kind``; ``auto`` picks lgpio when a GPIO chip exists, mock pins otherwise.

    With ``auto``, a GPIO chip that lgpio cannot drive (not a Pi) means simulated pins, said in a warning;
    a pin library asked for by name that cannot start raises :class:`PinFactoryError`.
    """
    resolved = resolve_factory_kind(kind)
    try:
        return _factory(resolved)
    except Exception as exc:
        if kind == "auto" and resolved != "mock":
            log.warning("GPIO: %s pins unavailable (%s); simulating them", resolved, exc)
            return _factory("mock")
        raise PinFactoryError(f"{resolved} pins cannot be used here: {exc}") from exc


def _factory(kind: str) -> Any:
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


def is_mock(factory: Any) -> bool:
    from gpiozero.pins.mock import MockFactory

    return isinstance(factory, MockFactory)


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


class GpiozeroAsRPiGPIO:
    """The part of the RPi.GPIO API that luma uses (setup/output/cleanup), on gpiozero output devices."""

    BCM = 11
    BOARD = 10
    OUT = 0
    IN = 1
    LOW = 0
    HIGH = 1

    def __init__(self, pin_factory: Any) -> None:
        self.pin_factory = pin_factory
        self.devices: dict[int, Any] = {}

    def setmode(self, mode: int) -> None:
        if mode != self.BCM:
            raise ValueError("only BCM pin numbers are supported")

    def setwarnings(self, flag: bool) -> None:
        pass

    def setup(self, pin: int | list[int], direction: int, initial: int | None = None, **_: Any) -> None:
        from gpiozero import DigitalOutputDevice

        if direction != self.OUT:
            raise ValueError("only outputs are supported")
        for number in pin if isinstance(pin, list) else [pin]:
            if number not in self.devices:
                self.devices[number] = DigitalOutputDevice(
                    number, initial_value=bool(initial), pin_factory=self.pin_factory
                )

    def output(self, pin: int, value: int | bool) -> None:
        self.devices[pin].value = bool(value)

    def cleanup(self, pins: int | list[int] | None = None) -> None:
        numbers = list(self.devices) if pins is None else pins if isinstance(pins, list) else [pins]
        for number in numbers:
            device = self.devices.pop(number, None)
            if device is not None:
                device.close()
