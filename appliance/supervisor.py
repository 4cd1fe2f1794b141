"""The root of the process: starts every subsystem, restarts crashed ones, talks to systemd.

Each subsystem is started with ``nursery.start`` and is ready when it calls ``task_status.started()``;
READY=1 goes to systemd once every one has. A subsystem that raises is logged and restarted after a delay
that doubles up to a cap. A required one that keeps failing ends the process with an error, so systemd
restarts the whole appliance; an optional one keeps being retried at the capped delay.

A configuration change is not a failure: ``reconfigure(name, section)`` hands a service its new settings and
``restart(name)`` stops its running instance and starts it again in place, without counting towards giving up.
"""

from __future__ import annotations

import logging
import signal
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from appliance.bus import EventBus
from appliance.events import ServiceStatus, StateChanged
from appliance.groups import root_cause
from appliance.heap import settle_heap
from appliance.settings.system import SupervisorConfig
from appliance.systemd import Notifier, watchdog_interval

log = logging.getLogger(__name__)


class Service(Protocol):
    name: str

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None: ...


class SupervisorGaveUp(Exception):
    """A required subsystem failed too often; the process should exit non-zero."""


@dataclass
class ServiceRecord:
    service: Service
    required: bool = True
    status: str = "starting"
    restarts: int = 0
    last_error: str | None = None
    failures: deque[float] = field(default_factory=deque)
    reconfigured: int = 0  # restarts for a configuration change (not failures)
    scope: trio.CancelScope | None = field(default=None, repr=False)  # the running instance's, for restart()
    running: trio.Event = field(default_factory=trio.Event, repr=False)


class Supervisor:
    def __init__(
        self,
        bus: EventBus,
        config: SupervisorConfig | None = None,
        notifier: Notifier | None = None,
        handle_signals: bool = True,
    ) -> None:
        self.bus = bus
        self.config = config or SupervisorConfig()
        self.notifier = notifier or Notifier()
        self.handle_signals = handle_signals
        self.records: dict[str, ServiceRecord] = {}
        self.ready = trio.Event()
        self.started_at: float | None = None
        self.stop_reason: str | None = None
        self._scope: trio.CancelScope | None = None

    def add(self, service: Service, *, required: bool = True) -> None:
        if service.name in self.records:
            raise ValueError(f"two services named {service.name!r}")
        self.records[service.name] = ServiceRecord(service, required)

    async def restart(self, name: str) -> bool:
        """Stop ``name``'s running instance and wait until the new one is ready; False if it was not running."""
        record = self.records[name]
        scope = record.scope
        if scope is None:
            return False
        record.reconfigured += 1
        record.running = trio.Event()
        log.info("restarting %s for new configuration", name, extra={"service": name})
        self.bus.publish(ServiceStatus(name, "restarting", error="new configuration"))
        scope.cancel()
        with trio.move_on_after(10):
            await record.running.wait()
        return True

    def takes_settings(self, name: str) -> bool:
        """Whether ``name`` is supervised and can be handed new settings by ``reconfigure``."""
        record = self.records.get(name)
        if record is None:
            return False
        return callable(getattr(record.service, "reconfigure", None)) or hasattr(record.service, "config")

    async def reconfigure(self, name: str, section: Any) -> bool:
        """Give ``name`` its new settings and restart it; False when the service takes no new settings.

        A service takes them through its ``reconfigure(section)``, or, if its only settings are one config
        section, as its ``config`` attribute.
        """
        service = self.records[name].service
        reconfigure = getattr(service, "reconfigure", None)
        if callable(reconfigure):
            reconfigure(section)
        elif hasattr(service, "config"):
            service.config = section
        else:
            return False
        await self.restart(name)
        return True

    def stop(self, reason: str = "requested") -> None:
        """Begin a clean shutdown."""
        if self.stop_reason is None:
            self.stop_reason = reason
            log.info("stopping: %s", reason)
            self.notifier.stopping()
        if self._scope is not None:
            self._scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.started_at = trio.current_time()
        with trio.CancelScope() as scope:
            self._scope = scope
            if self.stop_reason is not None:
                scope.cancel()
            async with trio.open_nursery() as nursery:
                if self.handle_signals:
                    await nursery.start(self._signals)
                for record in self.records.values():
                    await nursery.start(self._supervise, record)
                nursery.start_soon(self._watchdog)
                nursery.start_soon(self._status_to_systemd)
                settle_heap()  # every subsystem is up: what start-up built lives as long as the process
                self.ready.set()
                self.notifier.ready()
                log.info("ready: %s", ", ".join(self.records))
                task_status.started()
        self._scope = None

    async def _signals(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                self.stop(signal.Signals(signum).name)

    async def _supervise(self, record: ServiceRecord, *, task_status: trio.TaskStatus[None]) -> None:
        name = record.service.name
        signalled = False
        while True:
            self._set(record, "starting")
            try:
                async with trio.open_nursery() as inner:
                    await inner.start(self._run, record)
                    self._set(record, "running")
                    if not signalled:
                        signalled = True
                        task_status.started()
                error = "returned unexpectedly"
            except Exception as exc:
                error = _describe(exc)
                log.error("subsystem %s failed", name, exc_info=exc, extra={"service": name})
            record.last_error = error
            now = trio.current_time()
            record.failures.append(now)
            while record.failures and now - record.failures[0] > self.config.failure_window:
                record.failures.popleft()
            if record.required and len(record.failures) >= self.config.max_failures:
                self._set(record, "failed")
                raise SupervisorGaveUp(f"{name} failed {len(record.failures)} times: {error}")
            if not signalled and not record.required:
                signalled = True  # an optional part that cannot start must not hold READY back
                task_status.started()
            delay = min(
                self.config.restart_initial_delay * 2 ** (len(record.failures) - 1), self.config.restart_max_delay
            )
            record.restarts += 1
            self._set(record, "restarting")
            log.warning("restarting %s in %.1f s (%s)", name, delay, error, extra={"service": name})
            await trio.sleep(delay)

    async def _run(self, record: ServiceRecord, *, task_status: trio.TaskStatus[None]) -> None:
        """Run the service; a ``restart`` starts it again in place, which the supervisor does not see."""
        name = record.service.name
        first = True
        while True:
            try:
                with trio.CancelScope() as scope:
                    record.scope = scope
                    async with trio.open_nursery() as nursery:
                        await nursery.start(record.service.run)
                        record.running.set()
                        if first:
                            first = False
                            task_status.started()
                        else:
                            self.bus.publish(ServiceStatus(name, "running", error="restarted for new configuration"))
                    return  # the service ended by itself: _supervise decides what that means
                # Only restart() cancels this scope; an outer cancellation propagates past the `with`.
            finally:
                record.scope = None

    def _set(self, record: ServiceRecord, status: str) -> None:
        record.status = status
        self.bus.publish(ServiceStatus(record.service.name, status, record.restarts, record.last_error))

    async def _watchdog(self) -> None:
        interval = watchdog_interval()
        if interval is None:
            return
        # This task only runs while the event loop does, so a hung loop stops the pings and systemd acts.
        while True:
            self.notifier.watchdog()
            await trio.sleep(interval)

    async def _status_to_systemd(self) -> None:
        if not self.notifier.enabled:
            return
        with self.bus.subscribe(StateChanged, name="systemd-status") as sub:
            async for event in sub:
                assert isinstance(event, StateChanged)
                self.notifier.status(event.new.value)


def _describe(exc: BaseException) -> str:
    cause = root_cause(exc)
    return f"{type(cause).__name__}: {cause}"
