"""The robot's body assembled from ``[hardware]``: LEDs, buttons, face service, display and avatar OSC.

:func:`build_body` picks the pin factory (real or simulated), creates one service per part and returns them
as a :class:`Body`. Each part is an optional service of its own under the supervisor, so a display that
falls off the I2C bus is restarted without taking the LEDs or the conversation down.

Other code (the control API) reads the current face through :meth:`Body.face_png` (also reachable as
``FaceService.render_png()``) and :attr:`Body.face_name`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from appliance.bus import EventBus
from appliance.hardware.buttons import ButtonService
from appliance.hardware.display import DisplayService, resolve_driver
from appliance.hardware.face_art import FaceArtist, Look, to_png
from appliance.hardware.faces import FaceController, FaceService, LogFaceController
from appliance.hardware.leds import LedService
from appliance.hardware.osc import OscService
from appliance.hardware.pins import PinFactoryError, is_mock, make_pin_factory
from appliance.settings.hardware import FACES, HardwareConfig

log = logging.getLogger(__name__)

SNAPSHOT_SIZE = (128, 64)


@dataclass
class Body:
    config: HardwareConfig
    pin_factory: Any
    simulated: bool
    faces: FaceService
    leds: LedService | None = None
    buttons: ButtonService | None = None
    display: DisplayService | None = None
    osc: OscService | None = None
    services: list[Any] = field(default_factory=list)

    @property
    def face_name(self) -> str:
        return self.faces.current

    def face_png(self) -> bytes:
        """The face shown now as PNG bytes: the display's frame, or a drawing of it when there is no display."""
        if self.display is not None:
            return self.display.snapshot_png()
        cfg = self.config.display
        artist = FaceArtist(SNAPSHOT_SIZE, "RGB", cfg.colour, cfg.background)
        return to_png(artist.render(Look(self.faces.current)))


def build_body(bus: EventBus, config: HardwareConfig, pin_factory: Any = None, *, brain_name: str = "") -> Body:
    if pin_factory is not None:
        factory = pin_factory
    else:
        try:
            factory = make_pin_factory(config.pin_factory, config.gpio_chip)
        except PinFactoryError as exc:
            from appliance.settings_base import ConfigError

            raise ConfigError("configuration", [f"hardware.pin_factory: {exc}"]) from None
    simulated = is_mock(factory)
    if simulated:
        log.info("GPIO simulated (gpiozero mock pins)")
    controllers: list[FaceController] = [LogFaceController()]
    known = set(FACES)

    display = None
    driver = resolve_driver(config.display, simulated)
    if driver != "none":
        display = DisplayService(bus, config.display, factory, driver=driver)
        controllers.append(display)
        if config.display.image_folder is not None:
            known |= {p.stem.lower() for p in config.display.image_folder.iterdir() if p.is_file()}
            known = {name for name in known if not name.endswith(("-blink", "-talk"))}

    osc = None
    if config.osc.enabled:
        osc = OscService(bus, config.osc)
        controllers.append(osc)
        known |= set(config.osc.faces)

    faces = FaceService(bus, controllers, config=config.faces, known_faces=known)
    body = Body(config, factory, simulated, faces, display=display, osc=osc)
    faces.renderer = body.face_png
    if config.leds:
        connectivity = "offline" if brain_name == "offline" else "online"
        body.leds = LedService(bus, config, factory, connectivity)
    if config.buttons:
        body.buttons = ButtonService(bus, config.buttons, factory)
    body.services = [s for s in (faces, body.leds, body.buttons, display, osc) if s is not None]
    return body
