"""The body inside the whole appliance: a button press on mock pins drives a turn the LEDs and face follow."""

from __future__ import annotations

import io

import trio
from PIL import Image

from appliance.config import AppConfig
from appliance.events import FaceChanged, LedChanged, ListenRequested, State, StateChanged, TurnFinished
from tests.harness import running_appliance


def config() -> AppConfig:
    return AppConfig.model_validate(
        {
            "audio": {"input": "simulated", "output": "simulated", "simulated_speech_after": None},
            "hardware": {"pin_factory": "mock", "preset": "breadboard-rgb"},
            "log": {"status_line": "off"},
        }
    )


async def press(app, held: float = 0.1) -> None:  # type: ignore[no-untyped-def]
    pin = app.body.pin_factory.pin(17)
    pin.drive_low()
    await trio.sleep(held)
    pin.drive_high()


async def test_button_turn_lights_the_leds_and_changes_the_face() -> None:
    async with running_appliance(config()) as (app, log):
        assert app.body.simulated and app.body.display is not None
        before = Image.open(io.BytesIO(app.body.face_png()))
        await press(app)
        await log.wait_for(ListenRequested)
        await log.wait_for(StateChanged, lambda e: e.new is State.LISTENING)
        await trio.sleep(0.6)  # past the double-press window: the press counts, the next one ends the utterance
        await press(app)
        await log.wait_for(TurnFinished)
        await log.wait_for(StateChanged, lambda e: e.new is State.IDLE)
        await log.wait_for(LedChanged, lambda e: e.colour == "#400066")  # idle while offline
        faces = [e.name for e in log.of(FaceChanged)]
        colours = [e.colour for e in log.of(LedChanged)]
        assert faces[:3] == ["neutral", "listening", "thinking"]
        assert "sorrow" in faces  # the offline brain's [face:sorrow]
        assert colours[0] == "#400066"  # the offline brain answers: offline colour from the start
        assert "#0040ff" in colours and "#ffa000" in colours and "#00ff40" in colours
        after = Image.open(io.BytesIO(app.body.face_png()))
        assert after.size == before.size == (128, 64)
        assert app.faces.render_png() is not None
