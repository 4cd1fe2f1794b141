"""LED patterns on gpiozero mock pins (and a recorded APA102 SPI stream), on virtual time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
from gpiozero.pins.mock import MockFactory, MockPWMPin

from appliance.bus import EventBus
from appliance.events import ConnectivityChanged, LedChanged, OutputLevel, State, StateChanged, TurnStarted
from appliance.hardware.leds import GAMMA, Apa102Strip, LedService, RecordingSPI, apa102_frame, decode_apa102
from appliance.settings.hardware import HardwareConfig


@pytest.fixture
def factory() -> Any:
    f = MockFactory(pin_class=MockPWMPin)
    yield f
    f.reset()


def hw(leds: list[dict[str, Any]], **extra: Any) -> HardwareConfig:
    return HardwareConfig.model_validate({"preset": "none", "leds": leds, **extra})


class Rig:
    def __init__(self, bus: EventBus, service: LedService, factory: Any) -> None:
        self.bus, self.service, self.factory = bus, service, factory
        self.state = State.IDLE

    def pin(self, n: int) -> float:
        return float(self.factory.pin(n).state)

    async def enter(self, state: State) -> None:
        self.bus.publish(StateChanged(self.state, state))
        self.state = state
        await trio.sleep(0.001)


async def rig(nursery: trio.Nursery, config: HardwareConfig, factory: Any, connectivity: str = "online") -> Rig:
    bus = EventBus()
    service = LedService(bus, config, factory, connectivity)
    await nursery.start(service.run)
    await trio.sleep(0.001)
    return Rig(bus, service, factory)


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


def lin(byte: int) -> float:
    return (byte / 255) ** GAMMA


async def test_rgb_led_shows_each_state(factory: Any, nursery: trio.Nursery, autojump_clock: Any) -> None:
    r = await rig(nursery, hw([{"kind": "rgb", "pins": [5, 6, 13]}]), factory)
    assert (r.pin(5), r.pin(6), r.pin(13)) == (0, 0, 0)  # idle: off
    await r.enter(State.LISTENING)  # solid #0040ff
    assert r.pin(5) == 0
    assert r.pin(6) == pytest.approx(lin(0x40), abs=1e-3)
    assert r.pin(13) == pytest.approx(1.0)
    await r.enter(State.MUTED)  # solid red at 30 %
    assert r.pin(5) == pytest.approx(0.3**GAMMA, abs=1e-3) and r.pin(6) == 0 and r.pin(13) == 0
    await r.enter(State.IDLE)
    assert (r.pin(5), r.pin(6), r.pin(13)) == (0, 0, 0)


async def test_error_blinks_on_virtual_time(factory: Any, nursery: trio.Nursery, autojump_clock: Any) -> None:
    r = await rig(nursery, hw([{"kind": "rgb", "pins": [5, 6, 13]}]), factory)
    await r.enter(State.ERROR)  # blink red, period 0.5
    seen = []
    for _ in range(4):
        seen.append(r.pin(5))
        await trio.sleep(0.25)
    assert seen == [1.0, 0.0, 1.0, 0.0]


async def test_thinking_pulses_on_a_single_rgb_led(factory: Any, nursery: trio.Nursery, autojump_clock: Any) -> None:
    r = await rig(nursery, hw([{"kind": "rgb", "pins": [5, 6, 13]}]), factory)
    await r.enter(State.THINKING)  # spin -> pulse on a one-pixel LED, period 1.2 s
    values = []
    for _ in range(12):
        values.append(r.pin(5))
        await trio.sleep(0.1)
    assert min(values) < 0.05 and max(values) > 0.8
    assert len({round(v, 3) for v in values}) > 5


async def test_speaking_follows_the_output_level(factory: Any, nursery: trio.Nursery, autojump_clock: Any) -> None:
    r = await rig(nursery, hw([{"kind": "pwm", "pins": [18]}]), factory)
    await r.enter(State.SPEAKING)
    await trio.sleep(0.5)
    quiet = r.pin(18)
    r.bus.publish(OutputLevel(-15.0))
    await trio.sleep(0.04)
    loud = r.pin(18)
    await trio.sleep(1.0)
    settled = r.pin(18)
    assert quiet > 0  # never fully dark while speaking
    assert loud > quiet * 5
    assert settled == pytest.approx(quiet, rel=0.05)


async def test_single_on_off_led(factory: Any, nursery: trio.Nursery, autojump_clock: Any) -> None:
    r = await rig(nursery, hw([{"kind": "led", "pins": [4]}]), factory)
    assert r.pin(4) == 0
    await r.enter(State.LISTENING)
    assert r.pin(4) == 1
    await r.enter(State.ERROR)
    await trio.sleep(0.25)
    assert r.pin(4) == 0  # blink's off half


async def test_active_low_rgb_led_inverts_the_pins(factory: Any, nursery: trio.Nursery, autojump_clock: Any) -> None:
    r = await rig(nursery, hw([{"kind": "rgb", "pins": [5, 6, 13], "active_high": False}]), factory)
    assert (r.pin(5), r.pin(6), r.pin(13)) == (1, 1, 1)  # off = high on a common-anode LED
    await r.enter(State.LISTENING)
    assert r.pin(13) == pytest.approx(0.0)


async def test_offline_and_fallback_show_while_idle(factory: Any, nursery: trio.Nursery, autojump_clock: Any) -> None:
    r = await rig(
        nursery,
        hw([{"kind": "rgb", "pins": [5, 6, 13]}], patterns={"offline": {"pattern": "solid", "colour": "#a000ff"}}),
        factory,
        "offline",
    )
    assert r.pin(13) == pytest.approx(1.0) and r.pin(6) == 0  # offline colour while idle
    await r.enter(State.LISTENING)
    assert r.pin(5) == 0  # listening looks the same as online
    await r.enter(State.IDLE)
    r.bus.publish(ConnectivityChanged("fallback", "remote"))
    await trio.sleep(0.001)
    assert r.service.mode == "fallback"
    assert r.pin(6) > 0  # cyan-ish
    r.bus.publish(ConnectivityChanged("online", "cloud"))
    await trio.sleep(0.001)
    assert (r.pin(5), r.pin(6), r.pin(13)) == (0, 0, 0)


async def test_offline_brain_answering_is_taken_as_offline(
    factory: Any, nursery: trio.Nursery, autojump_clock: Any
) -> None:
    r = await rig(nursery, hw([{"kind": "rgb", "pins": [5, 6, 13]}]), factory)
    r.bus.publish(TurnStarted("t1", "offline"))
    await trio.sleep(0.001)
    assert r.service.connectivity == "offline"
    r.bus.publish(TurnStarted("t2", "cloud"))
    await trio.sleep(0.001)
    assert r.service.connectivity == "online"


async def test_led_changed_is_published_for_the_status_line(
    factory: Any, nursery: trio.Nursery, autojump_clock: Any
) -> None:
    bus = EventBus()
    with bus.subscribe(LedChanged, name="test") as sub:
        service = LedService(bus, hw([{"kind": "rgb", "pins": [5, 6, 13]}]), factory)
        await nursery.start(service.run)
        bus.publish(StateChanged(State.IDLE, State.LISTENING))
        bus.publish(StateChanged(State.LISTENING, State.THINKING))
        await trio.sleep(0.01)
        colours = [sub.receive.receive_nowait().colour for _ in range(3)]  # type: ignore[attr-defined]
    assert colours == ["#000000", "#0040ff", "#ffa000"]


async def test_single_colour_led_reports_its_own_colour(
    factory: Any, nursery: trio.Nursery, autojump_clock: Any
) -> None:
    r = await rig(nursery, hw([{"kind": "pwm", "pins": [18], "colour": "#ff2000"}]), factory)
    await r.enter(State.LISTENING)
    assert r.service.colour == "#ff2000"


def test_apa102_frame_layout() -> None:
    frame = apa102_frame([(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)], "bgr")
    assert frame[:4] == b"\x00\x00\x00\x00"
    assert frame[4:8] == bytes([0xFF, 0, 0, 255])  # brightness word, then B G R
    assert decode_apa102(frame, 3) == [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    assert frame[16:] == b"\xff"  # end frame


async def test_apa102_strip_spins_while_thinking(factory: Any, nursery: trio.Nursery, autojump_clock: Any) -> None:
    r = await rig(nursery, hw([{"kind": "apa102", "count": 3, "spi_device": 1}]), factory)
    strip = r.service.outputs[0]
    assert isinstance(strip, Apa102Strip) and isinstance(strip.spi, RecordingSPI)
    assert decode_apa102(strip.spi.frames[-1], 3) == [(0, 0, 0)] * 3
    await r.enter(State.LISTENING)
    assert decode_apa102(strip.spi.frames[-1], 3) == [(0, lin8(0x40), 255)] * 3
    await r.enter(State.THINKING)
    brightest = []
    for _ in range(6):
        pixels = decode_apa102(strip.spi.frames[-1], 3)
        brightest.append(max(range(3), key=lambda i: pixels[i][0]))
        await trio.sleep(0.2)
    assert len(set(brightest)) == 3  # the bright pixel goes round


def lin8(byte: int) -> int:
    return round(lin(byte) * 255)


async def test_apa102_turns_off_when_the_service_stops(factory: Any, autojump_clock: Any) -> None:
    bus = EventBus()
    service = LedService(bus, hw([{"kind": "apa102", "count": 2}]), factory)
    async with trio.open_nursery() as n:
        await n.start(service.run)
        bus.publish(StateChanged(State.IDLE, State.LISTENING))
        await trio.sleep(0.01)
        strip = service.outputs[0]
        assert isinstance(strip, Apa102Strip)
        assert decode_apa102(strip.spi.frames[-1], 2)[0] != (0, 0, 0)
        n.cancel_scope.cancel()
    assert decode_apa102(strip.spi.frames[-1], 2) == [(0, 0, 0)] * 2
    assert strip.spi.closed
