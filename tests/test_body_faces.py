"""Faces: the face service's timing, the drawn faces, the dummy display (blink, mouth), image folders, PNG."""

from __future__ import annotations

import io
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from gpiozero.pins.mock import MockFactory, MockPWMPin
from luma.core.device import dummy
from PIL import Image, ImageChops

from appliance.bus import EventBus
from appliance.events import FaceChanged, FaceRequested, OutputLevel, State, StateChanged
from appliance.hardware.body import build_body
from appliance.hardware.display import DisplayService, open_device
from appliance.hardware.face_art import FaceArtist, FaceImageError, FolderFaces, Look
from appliance.hardware.faces import FaceService
from appliance.settings.hardware import FACES, DisplayConfig, HardwareConfig


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


class Recorder:
    name = "recorder"

    def __init__(self) -> None:
        self.shown: list[str] = []

    async def show(self, face: str) -> None:
        self.shown.append(face)


def differs(a: Image.Image, b: Image.Image) -> bool:
    return ImageChops.difference(a.convert("RGB"), b.convert("RGB")).getbbox() is not None


# --- the face service ------------------------------------------------------------------------------------


async def test_tag_face_lasts_its_duration_then_neutral(nursery: trio.Nursery, autojump_clock: Any) -> None:
    bus, rec = EventBus(), Recorder()
    service = FaceService(bus, [rec])
    await nursery.start(service.run)
    bus.publish(FaceRequested("joy", duration=2.0))
    await trio.sleep(1.9)
    assert service.current == "joy"
    await trio.sleep(0.2)
    assert service.current == "neutral"
    bus.publish(FaceRequested("angry"))  # the configured default: 4 s
    await trio.sleep(3.9)
    assert service.current == "angry"
    await trio.sleep(0.2)
    assert rec.shown == ["neutral", "joy", "neutral", "angry", "neutral"]


async def test_faces_follow_the_state(nursery: trio.Nursery, autojump_clock: Any) -> None:
    bus, rec = EventBus(), Recorder()
    await nursery.start(FaceService(bus, [rec]).run)
    for old, new in [
        (State.IDLE, State.LISTENING),
        (State.LISTENING, State.THINKING),
        (State.THINKING, State.SPEAKING),
        (State.SPEAKING, State.IDLE),
        (State.IDLE, State.MUTED),
        (State.MUTED, State.IDLE),
    ]:
        bus.publish(StateChanged(old, new))
    await trio.sleep(0.01)
    assert rec.shown == ["neutral", "listening", "thinking", "neutral", "sleeping", "neutral"]


async def test_requested_face_survives_speaking_but_not_listening(nursery: trio.Nursery, autojump_clock: Any) -> None:
    bus, rec = EventBus(), Recorder()
    service = FaceService(bus, [rec])
    await nursery.start(service.run)
    bus.publish(FaceRequested("surprised"))
    bus.publish(StateChanged(State.THINKING, State.SPEAKING))
    bus.publish(StateChanged(State.SPEAKING, State.IDLE))
    await trio.sleep(1.0)
    assert service.current == "surprised"
    bus.publish(StateChanged(State.IDLE, State.LISTENING))  # the user speaks again: face follows
    await trio.sleep(0.01)
    assert service.current == "listening"
    await trio.sleep(5.0)
    assert service.current == "listening"


async def test_aliases_and_unknown_faces(nursery: trio.Nursery, autojump_clock: Any) -> None:
    bus = EventBus()
    service = FaceService(bus, [])
    with bus.subscribe(FaceChanged, name="test") as sub:
        await nursery.start(service.run)
        bus.publish(FaceRequested("Happy"))
        await trio.sleep(0.01)
        bus.publish(FaceRequested("smug"))
        await trio.sleep(0.01)
        names = []
        while True:
            try:
                names.append(sub.receive.receive_nowait().name)  # type: ignore[attr-defined]
            except trio.WouldBlock:
                break
    assert names == ["neutral", "joy"]
    assert service.current == "joy"


# --- drawn faces -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size,mode", [((128, 64), "1"), ((240, 240), "RGB"), ((160, 80), "RGB")])
def test_every_face_renders_and_differs(size: tuple[int, int], mode: str) -> None:
    artist = FaceArtist(size, mode, "#ffe080")
    images = {face: artist.render(Look(face)) for face in FACES}
    for face, image in images.items():
        assert image.size == size and image.mode == mode
        assert image.getbbox() is not None, f"{face} is blank"
    names = list(images)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert differs(images[a], images[b]), f"{a} and {b} look the same"


def test_blink_and_mouth_change_the_picture() -> None:
    artist = FaceArtist((128, 64), "1")
    base = artist.render(Look("neutral"))
    assert differs(base, artist.render(Look("neutral", eyes=0.0)))
    half, full = artist.render(Look("neutral", mouth=0.4)), artist.render(Look("neutral", mouth=1.0))
    assert differs(base, half) and differs(half, full)
    assert sum(full.convert("L").tobytes()) > sum(half.convert("L").tobytes())  # a wider-open mouth lights more pixels


# --- the dummy display -----------------------------------------------------------------------------------


async def start_display(nursery: trio.Nursery, **cfg: Any) -> tuple[EventBus, DisplayService]:
    bus = EventBus()
    config = DisplayConfig(driver="dummy", **cfg)
    service = DisplayService(bus, config, None, driver="dummy", rng=random.Random(1))
    await nursery.start(service.run)
    return bus, service


async def test_dummy_display_shows_the_face(nursery: trio.Nursery, autojump_clock: Any) -> None:
    bus, display = await start_display(nursery)
    first = display.device.image.copy()
    await display.show("joy")
    await trio.sleep(0.1)
    assert display.device.image.size == (128, 64)
    assert differs(first, display.device.image)


async def test_eyes_blink_over_time(nursery: trio.Nursery, autojump_clock: Any) -> None:
    _, display = await start_display(nursery, blink_every=(1.0, 2.0))
    open_eyes = display.device.image.copy()
    frames = []
    for _ in range(100):  # 5 s in 50 ms steps: at least two blinks
        await trio.sleep(0.05)
        frames.append(display.device.image.copy())
    closed = [f for f in frames if differs(f, open_eyes)]
    assert closed, "never blinked"
    assert len(closed) < len(frames) / 2  # eyes are mostly open
    assert not differs(frames[-1], open_eyes) or not differs(frames[-2], open_eyes)


async def test_mouth_follows_the_output_level_while_speaking(nursery: trio.Nursery, autojump_clock: Any) -> None:
    bus, display = await start_display(nursery, blink_every=(1000.0, 1000.0))
    bus.publish(OutputLevel(-10.0))  # not speaking yet: ignored
    await trio.sleep(0.2)
    closed = display.device.image.copy()
    bus.publish(StateChanged(State.THINKING, State.SPEAKING))
    await trio.sleep(0.2)
    assert not differs(closed, display.device.image)
    bus.publish(OutputLevel(-10.0))
    await trio.sleep(0.07)
    loud = display.device.image.copy()
    assert differs(closed, loud)
    await trio.sleep(1.0)  # silence: the mouth closes again
    assert not differs(closed, display.device.image)
    opened = []
    for db in (-45.0, -30.0, -12.0):
        bus.publish(OutputLevel(db))
        await trio.sleep(0.07)
        opened.append(sum(display.device.image.convert("L").tobytes()))
        await trio.sleep(1.0)
    assert opened[0] < opened[1] < opened[2]


async def test_png_snapshot_for_the_control_api(nursery: trio.Nursery, autojump_clock: Any) -> None:
    _, display = await start_display(nursery)
    await display.show("surprised")
    await trio.sleep(0.1)
    png = display.snapshot_png()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(png))
    assert image.size == (128, 64)
    assert not differs(image, display.device.image)


async def test_body_face_png_without_a_display(nursery: trio.Nursery, autojump_clock: Any) -> None:
    bus = EventBus()
    factory = MockFactory(pin_class=MockPWMPin)
    body = build_body(bus, HardwareConfig.model_validate({"preset": "none", "display": {"driver": "none"}}), factory)
    assert body.display is None
    await nursery.start(body.faces.run)
    neutral = Image.open(io.BytesIO(body.face_png()))
    bus.publish(FaceRequested("angry"))
    await trio.sleep(0.01)
    assert body.face_name == "angry"
    assert differs(neutral, Image.open(io.BytesIO(body.face_png())))
    assert body.faces.render_png() == body.face_png()  # what the control API serves


def test_simulated_body_gets_the_dummy_display() -> None:
    factory = MockFactory(pin_class=MockPWMPin)
    body = build_body(EventBus(), HardwareConfig(), factory)
    assert body.simulated and body.display is not None and body.display.driver == "dummy"
    assert {s.name for s in body.services} == {"faces", "leds", "buttons", "display"}
    factory.reset()


# --- faces from a folder ---------------------------------------------------------------------------------


def make_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "faces"
    folder.mkdir()
    Image.new("RGB", (64, 64), "#2040ff").save(folder / "neutral.png")
    Image.new("RGB", (64, 64), "#ffd000").save(folder / "joy.png")
    Image.new("RGB", (64, 64), "#101010").save(folder / "neutral-blink.png")
    Image.new("RGB", (64, 64), "#ff0000").save(folder / "neutral-talk.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_folder_faces_fit_and_fall_back(tmp_path: Path) -> None:
    faces = FolderFaces(make_folder(tmp_path), (128, 64), "RGB")
    assert set(faces.faces()) == {"neutral", "joy"}
    joy = faces.render(Look("joy"))
    assert joy.size == (128, 64)
    assert joy.getpixel((64, 32)) == (255, 208, 0)
    assert joy.getpixel((2, 32)) == (0, 0, 0)  # fitted 64x64 into 128x64: black bars at the sides
    assert faces.render(Look("angry")).getpixel((64, 32)) == (32, 64, 255)  # no angry.png: neutral
    assert faces.render(Look("neutral", eyes=0.0)).getpixel((64, 32)) == (16, 16, 16)
    assert faces.render(Look("neutral", mouth=0.8)).getpixel((64, 32)) == (255, 0, 0)


def test_broken_face_image_is_a_clear_error(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    (folder / "angry.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(FaceImageError, match="angry.png"):
        FolderFaces(folder, (128, 64))
    with pytest.raises(FaceImageError, match="no face images"):
        FolderFaces(tmp_path, (128, 64))  # only the sub-folder there


async def test_display_uses_the_image_folder(tmp_path: Path, nursery: trio.Nursery, autojump_clock: Any) -> None:
    _, display = await start_display(nursery, image_folder=make_folder(tmp_path))
    assert display.device.image.getpixel((64, 32)) == (32, 64, 255)
    await display.show("joy")
    await trio.sleep(0.1)
    assert display.device.image.getpixel((64, 32)) == (255, 208, 0)


# --- a real luma LCD driver over mock pins ---------------------------------------------------------------


class FakeSpiDev:
    """Stands in for spidev: records what luma writes."""

    def __init__(self) -> None:
        self.written = 0
        self.mode = 0
        self.max_speed_hz = 0

    def open(self, port: int, device: int) -> None:
        self.opened = (port, device)

    def writebytes(self, data: Any) -> None:
        self.written += len(data)

    def close(self) -> None:
        pass


def test_st7789_driver_runs_on_mock_pins(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real luma.lcd driver, with D/C, reset and backlight through gpiozero mock pins."""
    from luma.core.interface import serial

    fake = FakeSpiDev()
    monkeypatch.setattr(serial.spi, "__spidev__", lambda self: fake, raising=False)
    factory = MockFactory(pin_class=MockPWMPin)
    config = DisplayConfig(driver="st7789", dc_pin=24, reset_pin=25, backlight_pin=18)
    device = open_device(config, "st7789", factory)
    try:
        assert device.size == (240, 240)
        assert factory.pin(18).state == 1  # backlight on
        assert factory.pin(25).state == 1  # out of reset
        before = fake.written
        device.display(FaceArtist(device.size, device.mode).render(Look("joy")))
        assert fake.written - before >= 240 * 240 * 2  # one full RGB565 frame went out
        assert factory.pin(24).state == 1  # D/C left in data mode
    finally:
        device.cleanup()
        factory.reset()


def test_dummy_device_matches_the_configured_size() -> None:
    device = open_device(DisplayConfig(driver="dummy", width=96, height=48, rotate=1), "dummy", None)
    assert isinstance(device, dummy)
    assert device.size == (48, 96)


async def test_threaded_drawing_reaches_the_device() -> None:
    """The path real panels take: frames drawn and sent from a worker thread (real clock, no timing asserted)."""
    bus = EventBus()
    service = DisplayService(bus, DisplayConfig(driver="dummy"), None, driver="dummy", threaded=True)
    async with trio.open_nursery() as n:
        await n.start(service.run)
        first = service.device.image.copy()
        await service.show("fun")
        with trio.fail_after(10):
            while not differs(first, service.device.image):
                await trio.sleep(0.01)
        n.cancel_scope.cancel()
    assert service.frames >= 2


class RecordingSerial:
    """A luma serial interface that keeps what the driver sends."""

    def __init__(self) -> None:
        self.commands: list[int] = []
        self.data_bytes = 0

    def command(self, *cmd: int) -> None:
        self.commands.extend(cmd)

    def data(self, data: Any) -> None:
        self.data_bytes += len(data)

    def cleanup(self) -> None:
        pass


@pytest.mark.parametrize(
    "driver,size,mode",
    [
        ("ssd1306", (128, 64), "1"),
        ("sh1106", (128, 64), "1"),
        ("st7735", (160, 128), "RGB"),
        ("st7789", (240, 240), "RGB"),
    ],
)
def test_each_supported_driver_takes_a_face(driver: str, size: tuple[int, int], mode: str) -> None:
    factory = MockFactory(pin_class=MockPWMPin)
    serial = RecordingSerial()
    device = open_device(DisplayConfig(driver=driver, backlight_pin=12), driver, factory, serial=serial)
    try:
        assert device.size == size and device.mode == mode
        assert serial.commands  # the driver initialised the panel
        sent = serial.data_bytes
        device.display(FaceArtist(device.size, device.mode).render(Look("surprised")))
        assert serial.data_bytes > sent
        if driver.startswith("st"):
            assert factory.pin(12).state == 1  # backlight on, through gpiozero
    finally:
        device.cleanup()
        factory.reset()


async def test_dozes_off_after_a_long_idle_and_wakes_on_activity(nursery: trio.Nursery, autojump_clock: Any) -> None:
    from appliance.settings.hardware import FacesConfig

    bus, rec = EventBus(), Recorder()
    service = FaceService(bus, [rec], config=FacesConfig(sleep_after=60.0))
    await nursery.start(service.run)
    await trio.sleep(59.0)
    assert service.current == "neutral"
    await trio.sleep(2.0)
    assert service.current == "sleeping"
    bus.publish(StateChanged(State.IDLE, State.LISTENING))
    await trio.sleep(0.01)
    assert service.current == "listening"
    bus.publish(StateChanged(State.LISTENING, State.IDLE))
    await trio.sleep(30.0)
    bus.publish(FaceRequested("joy", duration=5.0))  # activity restarts the count after the face ends
    await trio.sleep(64.0)
    assert service.current == "neutral"
    await trio.sleep(2.0)
    assert service.current == "sleeping"
    assert rec.shown == ["neutral", "sleeping", "listening", "neutral", "joy", "neutral", "sleeping"]


@pytest.mark.parametrize(("face", "inner_end"), [("angry", "lower"), ("sorrow", "higher")])
def test_brows_slope_the_way_the_feeling_does(face: str, inner_end: str) -> None:
    """Angry brows come down towards the middle of the face (a frown); sorrowful ones go up (worried). Read
    from the drawn pixels above each eye, not from the drawing code's numbers."""
    import numpy as np

    artist = FaceArtist((240, 240), "L")
    pixels = np.asarray(artist.render(Look(face)))
    neutral = np.asarray(artist.render(Look("neutral")))
    brows = (pixels > 0) & (neutral == 0)  # what this face adds to the neutral one
    brows[pixels.shape[0] // 2 :, :] = False  # the upper half only: brows, not the mouth
    middle = pixels.shape[1] // 2
    for columns, inner_first in ((slice(0, middle), False), (slice(middle, None), True)):  # left eye, right eye
        ys, xs = np.nonzero(brows[:, columns])
        assert len(xs) > 20, "no brow drawn"
        order = np.argsort(xs)
        inner = ys[order[:5]] if inner_first else ys[order[-5:]]  # the few columns nearest the middle
        outer = ys[order[-5:]] if inner_first else ys[order[:5]]
        inner_is_lower = inner.mean() > outer.mean()  # image rows grow downwards
        assert inner_is_lower == (inner_end == "lower"), (face, inner.mean(), outer.mean())
