"""Which face the robot shows, decided in one place.

The face follows the state (listening, thinking, sleeping while muted, ...). A ``[face:...]`` tag or an API
request shows its face for a while (its own duration or the configured one), then the face goes back to the
state's, which is neutral while idle or speaking. A state that starts something new (listening, thinking,
muted, error) ends a requested face early. Every change goes to each :class:`FaceController` and is
published as ``FaceChanged``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Protocol, runtime_checkable

import trio

from appliance.bus import EventBus
from appliance.events import FaceChanged, FaceRequested, State, StateChanged
from appliance.settings.hardware import FACES, FacesConfig

log = logging.getLogger(__name__)

NEUTRAL = "neutral"
# States in which a requested face stays up for its whole duration.
_KEEPS_REQUESTED = (State.IDLE, State.SPEAKING)


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

    def __init__(
        self,
        bus: EventBus,
        controllers: list[FaceController],
        default_duration: float | None = None,
        *,
        config: FacesConfig | None = None,
        known_faces: Iterable[str] = FACES,
    ) -> None:
        self.bus = bus
        self.controllers = controllers
        self.config = config or FacesConfig()
        self.default_duration = default_duration if default_duration is not None else self.config.duration
        self.known = set(known_faces)
        self.state = State.IDLE
        self.current = NEUTRAL
        self.requested: str | None = None
        self.dozing = False
        # Set by the body: the picture of the face shown now (the display's frame, or a drawing of it).
        self.renderer: Callable[[], bytes] | None = None

    def render_png(self) -> bytes | None:
        """The current face as PNG bytes, for the control API (None when nothing can draw it)."""
        return self.renderer() if self.renderer is not None else None

    def resolve(self, name: str) -> str | None:
        """The face a requested name means (aliases like happy -> joy), or None for an unknown one."""
        name = name.strip().lower()
        name = self.config.aliases.get(name, name)
        return name if name in self.known else None

    def state_face(self) -> str:
        return self.config.state_faces.get(self.state.value, NEUTRAL)

    def wanted(self) -> str:
        if self.requested:
            return self.requested
        if self.dozing:
            return "sleeping"
        return self.state_face()

    def _sleep_at(self, since: float) -> float:
        after = self.config.sleep_after
        awake_only = self.dozing or self.state is not State.IDLE or self.requested
        if after is None or awake_only or "sleeping" not in self.known:
            return float("inf")
        return since + after

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._show(self.wanted(), force=True)
        with self.bus.subscribe(FaceRequested, StateChanged, name=self.name) as sub:
            task_status.started()
            revert_at = float("inf")
            active_at = trio.current_time()
            while True:
                event = None
                with trio.move_on_at(min(revert_at, self._sleep_at(active_at))):
                    event = await sub.receive.receive()
                if event is not None:
                    self.dozing, active_at = False, trio.current_time()
                if event is None and trio.current_time() >= revert_at:  # the requested face's time is up
                    revert_at = float("inf")
                    self.requested = None
                    active_at = trio.current_time()
                elif event is None:  # idle for sleep_after: doze off until something happens
                    self.dozing = True
                elif isinstance(event, StateChanged):
                    self.state = event.new
                    if event.new not in _KEEPS_REQUESTED:
                        self.requested, revert_at = None, float("inf")
                elif isinstance(event, FaceRequested):
                    face = self.resolve(event.name)
                    if face is None:
                        log.info("unknown face %r ignored", event.name, extra={"turn_id": event.turn_id})
                        continue
                    duration = event.duration if event.duration is not None else self.default_duration
                    if face == NEUTRAL:
                        self.requested, revert_at = None, float("inf")
                    else:
                        self.requested, revert_at = face, trio.current_time() + duration
                await self._show(self.wanted())

    async def _show(self, face: str, force: bool = False) -> None:
        if face == self.current and not force:
            return
        self.current = face
        for controller in self.controllers:
            await controller.show(face)
        self.bus.publish(FaceChanged(face))
