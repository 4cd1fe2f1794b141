"""Buttons on gpiozero mock pins: press, hold, double press, push-to-talk and bounce, on virtual time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
from gpiozero.pins.mock import MockFactory, MockPWMPin

from appliance.bus import EventBus
from appliance.events import (
    CancelTurnRequested,
    Event,
    ListenReleased,
    ListenRequested,
    MuteRequested,
    SentenceStarted,
    State,
    StateChanged,
    TurnStarted,
)
from appliance.hardware.buttons import ButtonService
from appliance.settings.hardware import ButtonConfig
from appliance.state import StateService

COMMANDS = (ListenRequested, ListenReleased, CancelTurnRequested, MuteRequested)


@pytest.fixture
def factory() -> Any:
    f = MockFactory(pin_class=MockPWMPin)
    yield f
    f.reset()


class Rig:
    def __init__(self, bus: EventBus, factory: Any, sub: Any, pin: int = 17) -> None:
        self.bus, self.factory, self.sub, self.pin = bus, factory, sub, pin
        self.subscription: Any = None

    async def press(self, held: float = 0.1) -> None:
        self.factory.pin(self.pin).drive_low()
        await trio.sleep(held)
        self.factory.pin(self.pin).drive_high()

    def commands(self) -> list[Event]:
        out = []
        while True:
            try:
                out.append(self.sub.receive.receive_nowait())
            except trio.WouldBlock:
                return out


@pytest.fixture
async def bus() -> EventBus:
    return EventBus()


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


async def start(nursery: trio.Nursery, bus: EventBus, factory: Any, **button: Any) -> Rig:
    subscription = bus.subscribe(*COMMANDS, name="test")
    sub = subscription.__enter__()
    service = ButtonService(bus, [ButtonConfig(pin=17, **button)], factory)
    await nursery.start(service.run)
    rig = Rig(bus, factory, sub)
    rig.subscription = subscription  # keeps the subscription open for the test
    return rig


def kinds(events: list[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


async def test_press_starts_listening(bus: EventBus, factory: Any, nursery: trio.Nursery, autojump_clock: Any) -> None:
    rig = await start(nursery, bus, factory)
    await rig.press()
    await trio.sleep(1.0)
    assert kinds(rig.commands()) == ["ListenRequested"]


async def test_press_while_speaking_interrupts_then_listens(
    bus: EventBus, factory: Any, nursery: trio.Nursery, autojump_clock: Any
) -> None:
    rig = await start(nursery, bus, factory)
    bus.publish(StateChanged(State.THINKING, State.SPEAKING))
    await trio.sleep(0.01)
    await rig.press()
    await trio.sleep(1.0)
    assert kinds(rig.commands()) == ["CancelTurnRequested", "ListenRequested"]


async def test_press_while_listening_ends_the_utterance(
    bus: EventBus, factory: Any, nursery: trio.Nursery, autojump_clock: Any
) -> None:
    rig = await start(nursery, bus, factory)
    bus.publish(StateChanged(State.IDLE, State.LISTENING))
    await trio.sleep(0.01)
    await rig.press()
    await trio.sleep(1.0)
    assert kinds(rig.commands()) == ["ListenReleased"]


async def test_long_press_toggles_mute(bus: EventBus, factory: Any, nursery: trio.Nursery, autojump_clock: Any) -> None:
    rig = await start(nursery, bus, factory)
    await rig.press(held=2.0)
    await trio.sleep(1.0)
    events = rig.commands()
    assert kinds(events) == ["MuteRequested"] and events[0].muted  # type: ignore[attr-defined]
    bus.publish(StateChanged(State.IDLE, State.MUTED))
    await trio.sleep(0.01)
    await rig.press(held=2.0)
    await trio.sleep(1.0)
    events = rig.commands()
    assert kinds(events) == ["MuteRequested"] and not events[0].muted  # type: ignore[attr-defined]


async def test_double_press_cancels_the_turn(
    bus: EventBus, factory: Any, nursery: trio.Nursery, autojump_clock: Any
) -> None:
    rig = await start(nursery, bus, factory)
    bus.publish(StateChanged(State.THINKING, State.SPEAKING))
    await trio.sleep(0.01)
    await rig.press(held=0.08)
    await trio.sleep(0.1)
    await rig.press(held=0.08)
    await trio.sleep(1.0)
    assert kinds(rig.commands()) == ["CancelTurnRequested"]


async def test_two_slow_presses_are_two_presses(
    bus: EventBus, factory: Any, nursery: trio.Nursery, autojump_clock: Any
) -> None:
    rig = await start(nursery, bus, factory)
    await rig.press()
    await trio.sleep(0.6)
    bus.publish(StateChanged(State.IDLE, State.THINKING))
    await trio.sleep(0.01)
    await rig.press()
    await trio.sleep(1.0)
    assert kinds(rig.commands()) == ["ListenRequested", "CancelTurnRequested", "ListenRequested"]


async def test_contact_bounce_is_one_press(
    bus: EventBus, factory: Any, nursery: trio.Nursery, autojump_clock: Any
) -> None:
    rig = await start(nursery, bus, factory, double_press="none", hold="none")
    pin = factory.pin(17)
    for _ in range(5):  # a noisy contact: 5 ms chatter before it settles pressed
        pin.drive_low()
        await trio.sleep(0.002)
        pin.drive_high()
        await trio.sleep(0.003)
    pin.drive_low()
    await trio.sleep(0.3)
    pin.drive_high()
    await trio.sleep(0.5)
    assert kinds(rig.commands()) == ["ListenRequested"]


async def test_a_glitch_shorter_than_the_bounce_time_is_ignored(
    bus: EventBus, factory: Any, nursery: trio.Nursery, autojump_clock: Any
) -> None:
    rig = await start(nursery, bus, factory)
    pin = factory.pin(17)
    pin.drive_low()
    await trio.sleep(0.005)
    pin.drive_high()
    await trio.sleep(1.0)
    assert rig.commands() == []


async def test_push_to_talk_listens_while_held(
    bus: EventBus, factory: Any, nursery: trio.Nursery, autojump_clock: Any
) -> None:
    rig = await start(nursery, bus, factory, press="push_to_talk", hold="none", double_press="none")
    factory.pin(17).drive_low()
    await trio.sleep(0.1)
    assert kinds(rig.commands()) == ["ListenRequested"]
    await trio.sleep(3.0)
    factory.pin(17).drive_high()
    await trio.sleep(0.1)
    assert kinds(rig.commands()) == ["ListenReleased"]


async def test_pull_down_button_active_high(
    bus: EventBus, factory: Any, nursery: trio.Nursery, autojump_clock: Any
) -> None:
    rig = await start(nursery, bus, factory, pull_up=False, double_press="none", hold="none")
    factory.pin(17).drive_high()
    await trio.sleep(0.1)
    factory.pin(17).drive_low()
    await trio.sleep(0.1)
    assert kinds(rig.commands()) == ["ListenRequested"]


async def test_button_drives_the_state_machine(
    bus: EventBus, factory: Any, nursery: trio.Nursery, autojump_clock: Any
) -> None:
    state = StateService(bus)
    await nursery.start(state.run)
    rig = await start(nursery, bus, factory)
    await rig.press()
    await trio.sleep(1.0)
    assert state.state is State.LISTENING
    bus.publish(TurnStarted("t1", "offline"))
    bus.publish(SentenceStarted("t1", 0, "hello"))
    await trio.sleep(0.01)
    assert state.state is State.SPEAKING
    await rig.press(held=2.0)  # long press: mute
    await trio.sleep(1.0)
    assert state.state is State.MUTED
    await rig.press()  # a press while muted does nothing
    await trio.sleep(1.0)
    assert state.state is State.MUTED
    await rig.press(held=2.0)
    await trio.sleep(1.0)
    assert state.state is State.IDLE


def fail_to_open(factory: MockFactory, fails: Any, message: str) -> None:
    """Make ``factory`` raise OSError(message) when opening a pin for which ``fails(spec)`` is true."""
    real_pin = factory.pin

    def pin(spec, **kwargs):  # type: ignore[no-untyped-def]
        if fails(spec):
            raise OSError(message)
        return real_pin(spec, **kwargs)

    factory.pin = pin  # type: ignore[method-assign]


async def test_a_button_whose_line_failed_to_open_comes_back_after_a_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """gpiozero reserves a pin before it opens the line; when opening fails (a chip not there yet, a line
    busy), the half-built device keeps its reservation for as long as anything refers to it: the error the
    supervisor just caught, for one. The restarted service must still get its pin."""
    import gc

    from appliance.settings.system import SupervisorConfig
    from appliance.supervisor import Supervisor
    from appliance.systemd import Notifier

    factory = MockFactory()
    failures = [1]

    def first_time(spec: Any) -> bool:
        failures[0] -= 1
        return failures[0] >= 0

    fail_to_open(factory, first_time, "GPIO chip not ready")
    bus = EventBus()
    service = ButtonService(bus, [ButtonConfig(pin=17)], factory)
    supervisor = Supervisor(bus, SupervisorConfig(restart_initial_delay=0.5, max_failures=5), Notifier({}), False)
    supervisor.add(service, required=False)
    gc.disable()  # collections come at random moments: do not let one clean up behind our back
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            await trio.sleep(5)
            record = supervisor.records[service.name]
            assert record.status == "running", record.last_error
            assert record.restarts == 1
            nursery.cancel_scope.cancel()
    finally:
        gc.enable()


def test_an_rgb_led_that_fails_half_way_leaves_no_pin_reserved() -> None:
    from gpiozero import RGBLED

    from appliance.hardware.pins import build_device

    factory = MockFactory(pin_class=MockPWMPin)
    real_pin = factory.pin
    fail_to_open(factory, lambda spec: spec == 6, "line busy")  # green: red is already open by now
    with pytest.raises(OSError, match="line busy") as caught:  # kept, as a log handler may keep it
        build_device(factory, lambda: RGBLED(5, 6, 13, pin_factory=factory))
    factory.pin = real_pin  # type: ignore[method-assign]
    led = RGBLED(5, 6, 13, pin_factory=factory)  # every pin is free again
    led.close()
    assert caught.value.__traceback__ is not None
