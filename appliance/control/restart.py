"""Restarting one subsystem on request (after a config change) without touching the others.

The supervisor restarts a subsystem that *fails*; a configuration change is not a failure and must not
count towards giving up. ``Restartable`` wraps a supervised service: ``restart()`` cancels the running
instance's scope and starts it again in place, so the supervisor keeps seeing one healthy service.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from appliance.bus import EventBus
from appliance.events import ServiceStatus
from appliance.supervisor import Service, Supervisor

log = logging.getLogger(__name__)


class Restartable:
    def __init__(self, inner: Service, bus: EventBus) -> None:
        self.inner = inner
        self.name = inner.name
        self.bus = bus
        self.reconfigured = 0
        self._scope: trio.CancelScope | None = None
        self._running = trio.Event()

    def __getattr__(self, item: str) -> Any:  # behave like the wrapped service for everyone else
        return getattr(self.inner, item)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        first = True
        while True:
            with trio.CancelScope() as scope:
                self._scope = scope
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.inner.run)
                    self._running.set()
                    if first:
                        first = False
                        task_status.started()
                    else:
                        self.bus.publish(ServiceStatus(self.name, "running", error="restarted for new configuration"))
                return  # the service ended by itself: the supervisor decides what that means
            # Only our own restart() cancels this scope; outer cancellation propagates past the `with`.
            self._scope = None

    async def restart(self) -> None:
        """Stop the running instance and wait until the new one is ready (returns at once if not running)."""
        scope = self._scope
        if scope is None:
            return
        self.reconfigured += 1
        self._running = trio.Event()
        log.info("restarting %s for new configuration", self.name, extra={"service": self.name})
        self.bus.publish(ServiceStatus(self.name, "restarting", error="new configuration"))
        scope.cancel()
        with trio.move_on_after(10):
            await self._running.wait()


def make_restartable(supervisor: Supervisor, names: list[str] | None = None) -> dict[str, Restartable]:
    """Wrap the named (default: all) supervised services so they can be restarted one by one."""
    wrapped: dict[str, Restartable] = {}
    for name, record in supervisor.records.items():
        if names is not None and name not in names:
            continue
        service = record.service
        if not isinstance(service, Restartable):
            service = Restartable(service, supervisor.bus)
            record.service = service
        wrapped[name] = service
    return wrapped
