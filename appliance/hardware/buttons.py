"""Push buttons: press = talk (or push-to-talk), long press = mute toggle, double press = cancel the turn.

gpiozero calls ``when_pressed`` / ``when_released`` on its own thread (or synchronously for mock pins); the
callback only pokes Trio through the Trio token. Everything with time in it happens in Trio, on Trio's
clock: debouncing (wait until the contact has been quiet for ``bounce_time``, then read the pin) and telling
a press from a hold or a double press. So the logic runs the same on virtual time in tests.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from appliance.bus import EventBus
from appliance.events import (
    CancelTurnRequested,
    ListenReleased,
    ListenRequested,
    MuteRequested,
    State,
    StateChanged,
)
from appliance.hardware.pins import build_device
from appliance.settings.hardware import ButtonConfig

log = logging.getLogger(__name__)

_BUSY = (State.THINKING, State.SPEAKING)


class ButtonWatcher:
    """One button: debounced edges in, gestures (press, hold, double, ptt-start/ptt-end) out as bus events."""

    def __init__(self, bus: EventBus, config: ButtonConfig, pin_factory: Any, index: int = 0) -> None:
        self.bus = bus
        self.config = config
        self.pin_factory = pin_factory
        self.source = "button" if index == 0 else f"button{index + 1}"
        self.state = State.IDLE
        self.device: Any = None
        self.pressed = False  # the debounced level
        self._poke_send, self._poke_receive = trio.open_memory_channel[None](64)
        self._edge_send, self._edge_receive = trio.open_memory_channel[bool](16)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from gpiozero import Button

        cfg = self.config
        token = trio.lowlevel.current_trio_token()

        def poke() -> None:  # on gpiozero's thread: hand over, nothing else
            try:
                token.run_sync_soon(self._poke)
            except trio.RunFinishedError:
                pass

        self.device = build_device(
            self.pin_factory,
            lambda: Button(
                cfg.pin,
                pull_up=cfg.pull_up,
                active_state=cfg.active_high,
                bounce_time=None,
                pin_factory=self.pin_factory,
            ),
        )
        try:
            self.device.when_pressed = poke
            self.device.when_released = poke
            self.pressed = bool(self.device.is_pressed)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._debounce)
                nursery.start_soon(self._gestures)
                task_status.started()
        finally:
            self.device.close()
            self.device = None

    def _poke(self) -> None:
        try:
            self._poke_send.send_nowait(None)
        except (trio.WouldBlock, trio.ClosedResourceError):
            pass  # a storm of bounces: one poke in the queue is as good as many

    async def _debounce(self) -> None:
        async for _ in self._poke_receive:
            # Wait until the contact has been quiet for bounce_time, then trust the level.
            while True:
                with trio.move_on_after(self.config.bounce_time) as quiet:
                    await self._poke_receive.receive()
                if quiet.cancelled_caught:
                    break
            device = self.device
            level = bool(device.is_pressed) if device is not None else False
            if level != self.pressed:
                self.pressed = level
                await self._edge_send.send(level)

    async def _next_edge(self, want: bool) -> None:
        while await self._edge_receive.receive() is not want:
            pass

    async def _gestures(self) -> None:
        cfg = self.config
        ptt = cfg.press == "push_to_talk"
        while True:
            await self._next_edge(True)
            first_press = trio.current_time()
            if ptt:
                self._action("ptt_start")
            if cfg.hold != "none":
                with trio.move_on_after(cfg.hold_time) as held:
                    await self._next_edge(False)
                if held.cancelled_caught:
                    self._action("hold")
                    await self._next_edge(False)
                    continue
            else:
                if not ptt and cfg.double_press == "none":
                    self._action("press")  # nothing to wait for: act on the press itself
                    await self._next_edge(False)
                    continue
                await self._next_edge(False)
            if ptt:
                self._action("ptt_end")
            if cfg.double_press != "none":
                with trio.move_on_at(first_press + cfg.double_press_window) as single:
                    await self._next_edge(True)
                if not single.cancelled_caught:
                    self._action("double")
                    await self._next_edge(False)
                    continue
            if not ptt:
                self._action("press")

    def _action(self, gesture: str) -> None:
        cfg = self.config
        publish = self.bus.publish
        log.info("button %s: %s", cfg.pin, gesture, extra={"button": self.source})
        if gesture == "press" and cfg.press == "talk":
            if self.state is State.MUTED:
                return
            if self.state is State.LISTENING:
                publish(ListenReleased(self.source))  # a second press ends the utterance
                return
            if self.state in _BUSY:
                publish(CancelTurnRequested(self.source))  # barge-in by button, then listen
            publish(ListenRequested(self.source))
        elif gesture == "ptt_start":
            if self.state in _BUSY:
                publish(CancelTurnRequested(self.source))
            publish(ListenRequested(self.source))
        elif gesture == "ptt_end":
            publish(ListenReleased(self.source))
        elif gesture == "hold" and cfg.hold == "mute":
            publish(MuteRequested(self.state is not State.MUTED, self.source))
        elif gesture == "double" and cfg.double_press == "cancel":
            publish(CancelTurnRequested(self.source))


class ButtonService:
    """Every configured button; each keeps the appliance state so a press means the right thing."""

    name = "buttons"

    def __init__(self, bus: EventBus, buttons: list[ButtonConfig], pin_factory: Any) -> None:
        self.bus = bus
        self.watchers = [ButtonWatcher(bus, cfg, pin_factory, i) for i, cfg in enumerate(buttons)]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.bus.subscribe(StateChanged, name=self.name) as sub:
            async with trio.open_nursery() as nursery:
                for watcher in self.watchers:
                    await nursery.start(watcher.run)
                task_status.started()
                async for event in sub:
                    assert isinstance(event, StateChanged)
                    for watcher in self.watchers:
                        watcher.state = event.new
