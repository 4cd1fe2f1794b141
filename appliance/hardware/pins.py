"""Where pins come from: gpiozero's pin factory (real lines on a Pi, mock pins elsewhere).

Also a small RPi.GPIO-shaped adapter over that factory, so luma's SPI displays drive their D/C, reset and
backlight lines through the same pins (and the same reservations) as the LEDs and buttons, also on a Pi 5
where RPi.GPIO does not work.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


def build_device(factory: Any, make: Callable[[], T]) -> T:
    """``make()`` a gpiozero device; if that fails, free the pins the half-built device reserved.

    gpiozero reserves a pin before it opens the line. When opening fails (a GPIO chip not there yet, a line
    busy), the half-built device keeps its reservation for as long as anything refers to it: the traceback
    of the error, which a supervisor logs and a log handler may keep. The restarted subsystem would then find
    its own pin "in use" by that ghost, again and again.
    """
    try:
        return make()
    except Exception as exc:
        _release_half_built(factory, exc)
        raise


def _release_half_built(factory: Any, exc: BaseException) -> None:
    from gpiozero import Device

    tb = exc.__traceback__
    while tb is not None:
        device = tb.tb_frame.f_locals.get("self")
        if isinstance(device, Device):  # the device whose __init__ failed (and any composite around it)
            try:
                device.close()  # a composite closes the parts it had already built
            except Exception:  # noqa: BLE001 - half-built: closing may fail; the reservation is what matters
                pass
            factory.release_all(device)
        tb = tb.tb_next


def resolve_factory_kind(kind: str) -> str:
    if kind != "auto":
        return kind
    return "lgpio" if os.path.exists("/dev/gpiochip0") and _importable("lgpio") else "mock"


class PinFactoryError(Exception):
    """The pin library asked for cannot be used here."""


def make_pin_factory(kind: str, chip: int | None = None) -> Any:
    """The gpiozero pin factory for ``kind``; ``auto`` picks lgpio when a GPIO chip exists, mock pins otherwise.

    With ``auto``, a GPIO chip that lgpio cannot drive (not a Pi) means simulated pins, said in a warning;
    a pin library asked for by name that cannot start raises :class:`PinFactoryError`.
    """
    resolved = resolve_factory_kind(kind)
    try:
        return _factory(resolved, chip)
    except Exception as exc:
        if kind == "auto" and resolved != "mock":
            log.warning("GPIO: %s pins unavailable (%s); simulating them", resolved, exc)
            return _factory("mock")
        raise PinFactoryError(f"{resolved} pins cannot be used here: {exc}") from exc


def _factory(kind: str, chip: int | None = None) -> Any:
    if kind == "mock":
        from gpiozero.pins.mock import MockFactory, MockPWMPin

        return MockFactory(pin_class=MockPWMPin)
    if kind == "lgpio":
        from gpiozero.pins.lgpio import LGPIOFactory

        return LGPIOFactory(chip=chip)  # None: gpiozero's choice (4 on a Pi 5's old kernels, else 0)
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
                self.devices[number] = build_device(
                    self.pin_factory,
                    partial(DigitalOutputDevice, number, initial_value=bool(initial), pin_factory=self.pin_factory),
                )

    def output(self, pin: int, value: int | bool) -> None:
        self.devices[pin].value = bool(value)

    def cleanup(self, pins: int | list[int] | None = None) -> None:
        numbers = list(self.devices) if pins is None else pins if isinstance(pins, list) else [pins]
        for number in numbers:
            device = self.devices.pop(number, None)
            if device is not None:
                device.close()
