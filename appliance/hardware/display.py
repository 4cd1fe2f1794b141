"""The face on a small display (luma.oled / luma.lcd), or on luma's dummy device when simulated.

The service keeps a :class:`~appliance.hardware.face_art.Look` (face, eyes, mouth) up to date from three
sources: the face chosen by the face service, a blink task, and the output level while speaking. A render
loop draws a frame when the look changes (at most ``fps`` a second) and hands it to the device in a worker
thread: pushing 115 kB over SPI to a 240x240 LCD takes tens of milliseconds the audio path must not wait for.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import trio
from PIL import Image

from appliance.bus import EventBus
from appliance.events import OutputLevel, PictureRequested, State, StateChanged
from appliance.hardware.face_art import FaceArtist, FolderFaces, Look, to_png
from appliance.hardware.leds import LevelMeter
from appliance.settings.hardware import DisplayConfig

log = logging.getLogger(__name__)

MOUTH_STEPS = 8  # the mouth opens in this many steps: smaller changes are not worth a frame


def resolve_driver(config: DisplayConfig, simulated: bool) -> str:
    if config.driver == "auto":
        return "dummy" if simulated else "none"
    return config.driver


def fit_picture(data: bytes, size: tuple[int, int], mode: str, background: str) -> Image.Image:
    """``data`` (PNG/JPEG) scaled to fit ``size``, centred on the background, in the device's colour mode."""
    import io

    with Image.open(io.BytesIO(data)) as source:
        source.load()
        picture = source.convert("RGB")
    picture.thumbnail(size)
    canvas = Image.new("RGB", size, background)
    canvas.paste(picture, ((size[0] - picture.width) // 2, (size[1] - picture.height) // 2))
    return canvas.convert(mode)


class _NoBacklight:
    def __call__(self, on: bool) -> None:
        pass

    def cleanup(self) -> None:
        pass


def open_device(config: DisplayConfig, driver: str, pin_factory: Any, serial: Any = None) -> Any:
    """The luma device for ``driver`` (blocking: it talks to the display); ``serial`` replaces the bus."""
    width, height = config.size
    if driver == "dummy":
        from luma.core.device import dummy

        return dummy(width=width, height=height, rotate=config.rotate, mode="RGB")
    from luma.core.interface.serial import i2c, spi

    from appliance.hardware.pins import GpiozeroAsRPiGPIO

    gpio = GpiozeroAsRPiGPIO(pin_factory) if pin_factory is not None else None
    if serial is None and config.resolved_interface == "i2c":
        serial = i2c(port=config.i2c_port, address=config.i2c_address)
    elif serial is None:
        serial = spi(
            gpio=gpio,
            port=config.spi_port,
            device=config.spi_device,
            bus_speed_hz=config.spi_speed_hz,
            gpio_DC=config.dc_pin,
            gpio_RST=config.reset_pin,
        )
    if driver in ("ssd1306", "sh1106"):
        from luma.oled import device as oled

        return getattr(oled, driver)(serial, width=width, height=height, rotate=config.rotate)
    from luma.lcd import device as lcd

    light: dict[str, Any] = {}
    if config.backlight_pin is None:
        light["backlight"] = _NoBacklight()
    else:
        light.update(gpio=gpio, gpio_LIGHT=config.backlight_pin, active_low=config.backlight_active_low)
    if driver == "st7735":
        return lcd.st7735(
            serial,
            width=width,
            height=height,
            rotate=config.rotate,
            bgr=config.bgr,
            h_offset=config.h_offset,
            v_offset=config.v_offset,
            **light,
        )
    return lcd.st7789(serial, width=width, height=height, rotate=config.rotate, **light)


class DisplayService:
    """Shows faces on a display; also a :class:`~appliance.hardware.faces.FaceController`."""

    name = "display"

    def __init__(
        self,
        bus: EventBus,
        config: DisplayConfig,
        pin_factory: Any = None,
        *,
        driver: str = "dummy",
        device: Any = None,
        rng: random.Random | None = None,
        threaded: bool | None = None,
    ) -> None:
        self.bus = bus
        self.config = config
        self.pin_factory = pin_factory
        self.driver = driver
        self.device = device
        self.rng = rng or random.Random()
        # Real panels are written from a worker thread; the dummy device only copies a small picture.
        self.threaded = threaded if threaded is not None else driver != "dummy"
        self.face = "neutral"
        self.eyes = 1.0
        self.speaking = False
        self.meter = LevelMeter(config.mouth_floor_db, config.mouth_full_db, release=0.08)
        self.artist: FaceArtist | FolderFaces | None = None
        self.image: Image.Image | None = None
        self.picture: Image.Image | None = None  # shown instead of the face while set (PictureRequested)
        self._picture_scope: trio.CancelScope | None = None
        self.frames = 0
        self._wake = trio.Event()

    # --- FaceController -------------------------------------------------------------------------------

    async def show(self, face: str) -> None:
        self.face = face
        self._wake.set()

    # --- the picture ----------------------------------------------------------------------------------

    def look(self, now: float) -> Look:
        mouth = 0.0
        if self.speaking:
            mouth = round(self.meter.current(now) * MOUTH_STEPS) / MOUTH_STEPS
        return Look(self.face, self.eyes, mouth)

    def snapshot(self) -> Image.Image:
        """The picture shown now (drawn at the display's size even before the first frame)."""
        if self.image is not None:
            return self.image
        artist = self.artist or FaceArtist(self.config.size, "RGB", self.config.colour, self.config.background)
        return artist.render(Look(self.face))

    def snapshot_png(self) -> bytes:
        return to_png(self.snapshot())

    # --- running --------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        owned = self.device is None
        if owned:
            self.device = await trio.to_thread.run_sync(open_device, self.config, self.driver, self.pin_factory)
        device = self.device
        try:
            cfg = self.config
            if cfg.image_folder is not None:
                folder = cfg.image_folder
                self.artist = await trio.to_thread.run_sync(
                    lambda: FolderFaces(folder, device.size, device.mode, cfg.background)
                )
            else:
                self.artist = FaceArtist(device.size, device.mode, cfg.colour, cfg.background)
            with self.bus.subscribe(StateChanged, OutputLevel, PictureRequested, name=self.name) as sub:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self._render_loop)
                    nursery.start_soon(self._blink)
                    task_status.started()
                    async for event in sub:
                        if isinstance(event, PictureRequested):
                            nursery.start_soon(self._show_picture, event)
                        elif isinstance(event, OutputLevel):
                            if self.speaking:
                                self.meter.feed(event.db, trio.current_time())
                        elif isinstance(event, StateChanged):
                            self.speaking = event.new is State.SPEAKING
                            if not self.speaking:
                                self.meter.reset()
                            self._wake.set()
        finally:
            if owned and self.device is not None:
                try:
                    self.device.cleanup()
                except Exception:
                    log.warning("display cleanup failed", exc_info=True)
                self.device = None

    async def _show_picture(self, event: PictureRequested) -> None:
        """The picture fitted to the display for its time, then the face again; a newer picture replaces it."""
        if self._picture_scope is not None:
            self._picture_scope.cancel()
        with trio.CancelScope() as scope:
            self._picture_scope = scope
            size, mode, background = self.device.size, self.device.mode, self.config.background
            try:
                picture = await trio.to_thread.run_sync(fit_picture, event.image, size, mode, background)
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                log.warning("picture not shown: %s", exc)
                return
            self.picture = picture
            self._wake.set()
            try:
                await trio.sleep(event.seconds)
            finally:
                if self._picture_scope is scope:
                    self.picture = None
                    self._picture_scope = None
                    self._wake.set()

    async def _blink(self) -> None:
        low, high = self.config.blink_every
        while True:
            await trio.sleep(self.rng.uniform(low, high))
            self.eyes = 0.0
            self._wake.set()
            await trio.sleep(self.config.blink_time)
            self.eyes = 1.0
            self._wake.set()

    async def _render_loop(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        interval = 1.0 / self.config.fps
        shown: Look | Image.Image | None = None
        await self._draw(self.look(trio.current_time()))
        shown = self.look(trio.current_time())
        task_status.started()
        while True:
            if not self.speaking:
                await self._wake.wait()
            self._wake = trio.Event()
            target: Look | Image.Image = self.picture if self.picture is not None else self.look(trio.current_time())
            # A picture is redrawn only when it is another one (comparing pictures would compare every pixel).
            changed = target is not shown if isinstance(target, Image.Image) else target != shown
            if changed:
                await self._draw(target)
                shown = target
            await trio.sleep(interval)  # frame rate cap; while speaking, also the mouth's sampling rate

    async def _draw(self, what: Look | Image.Image) -> None:
        artist, device = self.artist, self.device
        assert artist is not None and device is not None

        def draw() -> Image.Image:
            image = what if isinstance(what, Image.Image) else artist.render(what)
            device.display(image)
            return image

        if self.threaded:
            self.image = await trio.to_thread.run_sync(draw)
        else:
            self.image = draw()
            await trio.lowlevel.checkpoint()
        self.frames += 1
