"""Which face the robot shows: requested by tags or the API, back to neutral when the time runs out."""

from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

import trio

from appliance.bus import EventBus
from appliance.events import FaceChanged, FaceRequested

log = logging.getLogger(__name__)

NEUTRAL = "neutral"


@runtime_checkable
class FaceController(Protocol):
    """Something that shows a face: a display, an avatar over OSC, LEDs, a log."""

    name: str

    async def show(self, face: str) -> None: ...


class LogFaceController:
    name = "log"

    async def show(self, face: str) -> None:
        log.debug("face: %s", face)


class FaceService:
    name = "faces"

    def __init__(self, bus: EventBus, controllers: list[FaceController], default_duration: float = 4.0) -> None:
        self.bus = bus
        self.controllers = controllers
        self.default_duration = default_duration
        self.current = NEUTRAL

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._show(NEUTRAL)
        with self.bus.subscribe(FaceRequested, name=self.name) as sub:
            task_status.started()
            revert_at = float("inf")
            while True:
                request = None
                with trio.move_on_at(revert_at):
                    request = await sub.receive.receive()
                if request is None:
                    revert_at = float("inf")
                    await self._show(NEUTRAL)
                    continue
                assert isinstance(request, FaceRequested)
                await self._show(request.name)
                duration = request.duration if request.duration is not None else self.default_duration
                revert_at = float("inf") if request.name == NEUTRAL else trio.current_time() + duration

    async def _show(self, face: str) -> None:
        self.current = face
        for controller in self.controllers:
            await controller.show(face)
        self.bus.publish(FaceChanged(face))
