"""The capture service: keeps a microphone running, closes it while muted, reopens it when it fails.

A lost device (USB mic unplugged, sound server restarted) is not a crash: the service reports it on the bus
(``ServiceStatus`` "restarting" with the error, ``ErrorRaised`` once) and tries again with a short capped
backoff (0.1 s doubling to 1 s), so audio resumes within about a second of the device coming back. The
supervisor's restart policy (which gives up after repeated failures) is for bugs, not for unplugged cables.
"""

from __future__ import annotations

import logging
import sys
from contextlib import ExitStack
from typing import Any

import trio

from appliance.audio.base import AudioSource, BlockQueue
from appliance.audio.device import AudioDeviceError
from appliance.bus import EventBus, Subscription
from appliance.events import ErrorRaised, MuteRequested, ServiceStatus
from appliance.groups import leaves

log = logging.getLogger(__name__)


def device_errors() -> tuple[type[BaseException], ...]:
    """What counts as "the device failed": ours, and PortAudio's own when sounddevice is loaded."""
    errors: list[type[BaseException]] = [AudioDeviceError]
    sd = sys.modules.get("sounddevice")
    if sd is not None:
        errors.append(sd.PortAudioError)
    return tuple(errors)


class CaptureService:
    name = "capture"

    def __init__(
        self,
        source: AudioSource,
        queue: BlockQueue,
        bus: EventBus | None = None,
        retry_initial: float = 0.1,
        retry_max: float = 1.0,
        report_every: float = 10.0,
    ) -> None:
        self.source = source
        self.queue = queue
        self.bus = bus
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.report_every = report_every
        self.muted = False
        self.failures = 0  # consecutive failed attempts
        self.losses = 0  # times an open device was lost or failed to open
        self.opens = 0
        self.last_error: str | None = None
        self._scope: trio.CancelScope | None = None
        self._unmuted = trio.Event()
        self.echo: Any = None  # appliance.audio.echo.WebRtcEchoCanceller, set by the app when echo_cancel is on

    def reconfigure(self, source: AudioSource) -> None:
        """Read from ``source`` (a new input device) from the next start on; the supervisor restarts this."""
        self.source = source

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with ExitStack() as stack:
            sub = stack.enter_context(self.bus.subscribe(MuteRequested, name=self.name)) if self.bus else None
            async with trio.open_nursery() as nursery:
                if sub is not None:
                    nursery.start_soon(self._follow_mute, sub)
                nursery.start_soon(self._report_drops)
                await self._keep_open(task_status)

    async def _keep_open(self, task_status: trio.TaskStatus[None]) -> None:
        ready = False
        delay = self.retry_initial
        while True:
            if self.muted:
                if not ready:
                    task_status.started()
                    ready = True
                self._unmuted = trio.Event()
                await self._unmuted.wait()
                continue
            error: BaseException | None = None
            with trio.CancelScope() as scope:
                self._scope = scope
                try:
                    async with trio.open_nursery() as inner:
                        await inner.start(self.source.run, self._input_queue())
                        self.opens += 1
                        if self.failures:
                            log.info("microphone back after %d failed attempt(s)", self.failures)
                        self.failures, delay = 0, self.retry_initial
                        self._status("running", None)
                        if not ready:
                            task_status.started()
                            ready = True
                except device_errors() as exc:
                    error = exc
                except BaseExceptionGroup as group:  # from the inner nursery
                    matched, rest = group.split(device_errors())
                    if rest is not None:
                        raise
                    error = leaves(matched)[0] if matched is not None else group
            self._scope = None
            if error is None:
                if scope.cancelled_caught:
                    continue  # muted: the loop waits for unmute
                error = AudioDeviceError(f"{self.source.name} input ended")
            self.failures += 1
            self.losses += 1
            self.last_error = str(error)
            if self.failures == 1:
                log.warning("microphone unavailable: %s; retrying", error)
                if self.bus is not None:
                    self.bus.publish(ErrorRaised("capture", str(error)))
            self._status("restarting", str(error))
            if not ready:
                task_status.started()  # the appliance runs without a mic and picks it up when it appears
                ready = True
            await trio.sleep(delay)
            delay = min(self.retry_max, delay * 2)

    def _input_queue(self) -> Any:
        """Where the source writes: the listener's queue, through the echo canceller when there is one."""
        if self.echo is None:
            return self.queue
        from appliance.audio.echo import CancellingQueue

        return CancellingQueue(self.queue, self.echo)

    def _status(self, status: str, error: str | None) -> None:
        if self.bus is not None:
            self.bus.publish(ServiceStatus(self.name, status, self.losses, error))

    async def _follow_mute(self, sub: Subscription) -> None:
        async for event in sub:
            assert isinstance(event, MuteRequested)
            if event.muted == self.muted:
                continue
            self.muted = event.muted
            if event.muted:
                log.info("microphone closed (muted)")
                if self._scope is not None:
                    self._scope.cancel()
            else:
                self._unmuted.set()

    async def _report_drops(self) -> None:
        reported = (0, 0, 0)
        while True:
            await trio.sleep(self.report_every)
            now = (
                self.queue.dropped,
                getattr(self.source, "overflows", 0),
                getattr(self.source, "dropped_callbacks", 0),
            )
            if now != reported:
                log.warning(
                    "audio dropped: %d blocks behind the listener, %d device overflows, %d callbacks dropped",
                    *now,
                )
                reported = now
