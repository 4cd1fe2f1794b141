"""Faces and animations for an avatar over OSC (VRChat avatar parameters, or any OSC receiver).

python-osc builds the datagrams; they go out through a Trio UDP socket, so nothing here blocks or needs a
thread. Faces arrive through :meth:`OscService.show` (the face service already returns to neutral when a
face's time is up); animations come as ``AnimationRequested`` events and fall back to the idle animation
after their duration. A newer animation cancels the pending return to idle.
"""

from __future__ import annotations

import logging
import socket as _socket

import trio
from pythonosc.osc_message_builder import OscMessageBuilder

from appliance.bus import EventBus
from appliance.events import AnimationRequested
from appliance.settings.hardware import OscConfig

log = logging.getLogger(__name__)


def osc_message(address: str, value: int | float | str | bool) -> bytes:
    builder = OscMessageBuilder(address=address)
    builder.add_arg(value)
    return bytes(builder.build().dgram)


class OscService:
    name = "osc"

    def __init__(self, bus: EventBus, config: OscConfig) -> None:
        self.bus = bus
        self.config = config
        self.sent = 0
        self._sock: trio.socket.SocketType | None = None
        self._face = "neutral"
        self._reset_scope: trio.CancelScope | None = None

    async def show(self, face: str) -> None:
        self._face = face
        value = self.config.faces.get(face)
        if value is None:
            value = self.config.faces["neutral"]  # a face the avatar does not have: keep it neutral
        await self.send(self.config.face_address, value)

    async def send(self, address: str, value: int | float | str | bool) -> None:
        if self._sock is None:
            return
        try:
            await self._sock.send(osc_message(address, value))
            self.sent += 1
        except OSError as exc:  # nobody listening (ICMP refused) or the network is down: not our problem
            log.debug("OSC send to %s failed: %s", address, exc)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        infos = await trio.socket.getaddrinfo(cfg.host, cfg.port, type=_socket.SOCK_DGRAM)
        if not infos:
            raise OSError(f"cannot resolve OSC host {cfg.host!r}")
        family, kind, proto, _, address = infos[0]
        with trio.socket.socket(family, kind, proto) as sock:
            await sock.connect(address)
            self._sock = sock
            try:
                with self.bus.subscribe(AnimationRequested, name=self.name) as sub:
                    async with trio.open_nursery() as nursery:
                        await self.show(self._face)
                        await self.send(cfg.animation_address, cfg.animations[cfg.idle_animation])
                        task_status.started()
                        async for event in sub:
                            assert isinstance(event, AnimationRequested)
                            await self._animate(nursery, event)
            finally:
                self._sock = None

    async def _animate(self, nursery: trio.Nursery, event: AnimationRequested) -> None:
        cfg = self.config
        value = cfg.animations.get(event.name)
        if value is None:
            log.info("avatar has no animation %r", event.name)
            return
        if self._reset_scope is not None:
            self._reset_scope.cancel()
        await self.send(cfg.animation_address, value)
        if event.name == cfg.idle_animation:
            self._reset_scope = None
            return
        duration = event.duration if event.duration is not None else cfg.animation_duration
        self._reset_scope = trio.CancelScope()
        nursery.start_soon(self._back_to_idle, self._reset_scope, duration)

    async def _back_to_idle(self, scope: trio.CancelScope, duration: float) -> None:
        with scope:
            await trio.sleep(duration)
            await self.send(self.config.animation_address, self.config.animations[self.config.idle_animation])
